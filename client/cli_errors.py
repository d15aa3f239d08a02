"""How the `aegisfs` command line fails: the exit codes, `Failure` (one line on stderr),
and `AegisGroup`, the root group class that maps every exception a command raises to a
message and an exit code in one place (and loads the command groups of `cli.LAZY` on use).
"""
from __future__ import annotations

import importlib
import os
import sys
from typing import Any

import click

from .output import describe

EXIT_FAILED = 1          # the operation failed (missing file, bad path, unhealthy fsck ...)
EXIT_USAGE = 2           # click's own code for bad arguments
EXIT_UNAVAILABLE = 3     # the cluster cannot be reached (broker, MDS or DataNodes down)
EXIT_INTERNAL = 70       # a bug: EX_SOFTWARE


class Failure(click.ClickException):
    """An expected failure: one line on stderr and an exit code, no traceback."""

    def __init__(self, message: str, exit_code: int = EXIT_FAILED) -> None:
        super().__init__(message)
        # click's stub calls exit_code a ClassVar, but ClickException.main() reads it from
        # the instance (self.exit_code), so each failure can carry its own code
        self.exit_code = exit_code  # type: ignore[misc]

    def show(self, file: Any = None) -> None:
        click.echo(f"aegisfs: {self.message}", err=True)


def exit_code_for(exc: OSError) -> int:
    from broker.client import BrokerUnavailable
    if isinstance(exc, (BrokerUnavailable, ConnectionError, TimeoutError)):
        return EXIT_UNAVAILABLE
    return EXIT_FAILED


class AegisGroup(click.Group):
    """Turns exceptions from any command into one-line errors (see module docstring), and
    finds the commands named in `lazy` ({name: "module:attribute"}) when first asked for."""

    def __init__(self, *args: Any, lazy: dict[str, str] | None = None, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.lazy = dict(lazy or {})

    def list_commands(self, ctx: click.Context) -> list[str]:
        return sorted({*super().list_commands(ctx), *self.lazy})

    def get_command(self, ctx: click.Context, name: str) -> click.Command | None:
        if name not in self.commands and name in self.lazy:
            module, _, attr = self.lazy[name].partition(":")
            self.add_command(getattr(importlib.import_module(module), attr), name)
        return super().get_command(ctx, name)

    def invoke(self, ctx: click.Context) -> Any:
        try:
            return super().invoke(ctx)
        except (click.exceptions.ClickException, click.exceptions.Exit, click.Abort):
            raise
        except BrokenPipeError:
            # the reader went away (`aegisfs read /x | head`): not an error worth a message
            devnull = os.open(os.devnull, os.O_WRONLY)
            os.dup2(devnull, sys.stdout.fileno())
            raise click.exceptions.Exit(EXIT_FAILED)
        except OSError as exc:
            if _debug(ctx):
                raise
            command = ctx.invoked_subcommand or "aegisfs"
            raise Failure(f"{command}: {describe(exc)}", exit_code_for(exc)) from None
        except Exception as exc:
            if _debug(ctx):
                raise
            raise Failure(f"unexpected error: {exc.__class__.__name__}: {exc} "
                          "(run with --debug for the traceback)", EXIT_INTERNAL) from None


def _debug(ctx: click.Context) -> bool:
    return bool(ctx.obj and ctx.obj.debug)

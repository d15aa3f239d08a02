"""What every `aegisfs` command runs with: `State` (the merged configuration, the
[client] options and the AegisClient, connected on first use) and `pass_state`; the
one-line notice while a call waits out a metadata server restart.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import click

from .cli_errors import EXIT_USAGE, Failure

if TYPE_CHECKING:
    from .api import AegisClient


@dataclass
class State:
    broker: str | None
    timeout: float | None
    config: str | None
    debug: bool
    key: str | None = None
    retry_deadline: float | None = None
    _cfg: dict | None = field(default=None, repr=False)
    _fs: AegisClient | None = field(default=None, repr=False)

    @property
    def cfg(self) -> dict:
        """The merged configuration (file < environment), loaded once."""
        if self._cfg is None:
            from broker import config as broker_config
            try:
                self._cfg = broker_config.load(self.config)
            except broker_config.ConfigError as exc:
                raise Failure(f"configuration: {exc}", EXIT_USAGE) from None
        return self._cfg

    def option(self, key: str, flag: Any) -> Any:
        """A [client] setting: the flag when given, else the configuration's."""
        return flag if flag is not None else self.cfg["client"][key]

    @property
    def fs(self) -> AegisClient:
        if self._fs is None:
            from .api import AegisClient
            connect = float(self.cfg["client"]["connect_timeout"])
            if self.timeout:        # a short --timeout also bounds reaching the broker
                connect = min(connect, self.timeout)
            self._fs = AegisClient(self.broker, timeout=self.timeout, config=self.cfg,
                                   connect_timeout=connect, key=self.key,
                                   retry_deadline=self.retry_deadline, on_wait=_say_waiting)
        return self._fs

    def close(self) -> None:
        if self._fs is not None:
            self._fs.close()


pass_state = click.make_pass_decorator(State)
_waited: list[str] = []


def _say_waiting(state: str, exc: OSError | None) -> None:
    """A user sees one line when the CLI starts waiting out an MDS restart, and one
    when it is over; the retries themselves stay quiet."""
    if state == "waiting" and not _waited:
        _waited.append("waiting")
        click.echo(f"aegisfs: waiting for the metadata server ({exc})...", err=True)
    elif state == "back" and _waited and _waited[-1] == "waiting":
        _waited.append("back")
        click.echo("aegisfs: the metadata server is back", err=True)

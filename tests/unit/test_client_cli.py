"""The CLI's pure parts: help texts with examples, size parsing, error wording and codes."""
from __future__ import annotations

import errno

import click
import pytest
from click.testing import CliRunner

from broker.client import BrokerUnavailable
from client.cli import cli
from client.cli_errors import EXIT_FAILED, EXIT_UNAVAILABLE, exit_code_for
from client.cli_params import SizeType
from client.output import describe, human


def all_commands() -> list[str]:
    """Every top-level command, those loaded on demand (cli.LAZY) included."""
    return cli.list_commands(click.Context(cli))


def test_every_command_help_has_an_example():
    runner = CliRunner()
    assert "Example" in runner.invoke(cli, ["--help"]).output
    for name in all_commands():
        result = runner.invoke(cli, [name, "--help"])
        assert result.exit_code == 0, name
        assert "Example" in result.output, name
        assert "aegisfs" in result.output, name


def test_seed_commands_exist():
    assert {"write", "read", "stat", "ls", "rm", "put", "get", "mkdir", "mv", "du", "status",
            "fsck", "user", "whoami", "s3", "cat"} <= set(all_commands())


def test_help_lists_every_command_with_its_summary():
    """The lazily loaded groups are listed like the others, with their one-line help."""
    ctx = click.Context(cli)
    output = CliRunner().invoke(cli, ["--help"]).output
    for name in all_commands():
        summary = cli.get_command(ctx, name).get_short_help_str(limit=45)
        line = next((ln for ln in output.splitlines() if ln.split()[:1] == [name]), "")
        assert summary.rstrip(".")[:30] in line, (name, line)


# What a short command may not load at start: the network stack and checksums (until it
# connects), and never the servers or the heavy optional libraries.
HEAVY_AT_IMPORT = ("zmq", "msgpack", "crc32c", "asyncio", "importlib.metadata", "tomllib",
                   "client.api", "broker.client", "client.s3.server", "client.fsspec_fs",
                   "fsspec", "uvicorn", "streamlit", "client.batch")
# What the one-file verbs (write, read, stat, ls) may not load even once connected.
HEAVY_EVER = ("asyncio", "importlib.metadata", "fsspec", "uvicorn", "streamlit",
              "client.s3.server", "client.batch", "broker.routing", "zmq.auth", "hashlib")


def _loaded_after(code: str, names: tuple[str, ...]) -> list[str]:
    import subprocess
    import sys
    probe = (f"{code}\nimport sys\n"
             f"print(' '.join(n for n in {names!r} if n in sys.modules))")
    out = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True,
                         check=True).stdout
    return out.split()


def test_importing_the_cli_loads_nothing_heavy():
    assert _loaded_after("import client.cli", HEAVY_AT_IMPORT) == []


def test_the_one_file_verbs_load_only_what_they_use():
    # what `aegisfs write/read/stat/ls` import once they connect (State.fs, Client, CRCs)
    code = ("import client.cli, client.api, broker.client, broker.curve, broker.crc, "
            "client.streams, client.output")
    assert _loaded_after(code, HEAVY_EVER) == []
    assert "zmq" in _loaded_after(code, ("zmq",))    # the probe sees what is imported


def test_version_option():
    result = CliRunner().invoke(cli, ["--version"])
    assert result.exit_code == 0 and result.output.startswith("aegisfs, version ")


@pytest.mark.parametrize("text, value", [("65536", 65536), ("64K", 65536), ("64k", 65536),
                                         ("4M", 4 << 20), ("4MiB", 4 << 20), ("1G", 1 << 30),
                                         ("2 MB", 2 << 20)])
def test_size_parsing(text, value):
    assert SizeType().convert(text, None, None) == value


@pytest.mark.parametrize("text", ["", "abc", "-1", "0", "4X", "1.5M"])
def test_size_parsing_rejects(text):
    with pytest.raises(click.BadParameter):
        SizeType().convert(text, None, None)


def test_describe_names_the_path_once():
    # as the MDS sends them: message already ends with the path
    assert describe(OSError(errno.ENOENT, "No such file or directory: /a")) == \
        "No such file or directory: /a"
    # as the client annotates them: the path in filename
    exc = FileNotFoundError(errno.ENOENT, "No such file or directory")
    exc.filename = "/b"
    assert describe(exc) == "/b: No such file or directory"
    assert describe(OSError("plain message")) == "plain message"


def test_exit_codes_separate_unavailable_from_failed():
    assert exit_code_for(BrokerUnavailable(errno.ECONNREFUSED, "x")) == EXIT_UNAVAILABLE
    assert exit_code_for(TimeoutError(errno.ETIMEDOUT, "x")) == EXIT_UNAVAILABLE
    assert exit_code_for(FileNotFoundError(errno.ENOENT, "x")) == EXIT_FAILED
    assert exit_code_for(NotADirectoryError(errno.ENOTDIR, "x")) == EXIT_FAILED


def test_human_sizes():
    assert human(0) == "0 B" and human(1023) == "1023 B"
    assert human(1536) == "1.5 KiB" and human(5 << 30) == "5.0 GiB"


def test_completion_script_is_printed():
    result = CliRunner().invoke(cli, ["completion", "bash"])
    assert result.exit_code == 0 and "_AEGISFS_COMPLETE" in result.output


def test_bad_usage_is_exit_2_without_traceback():
    result = CliRunner().invoke(cli, ["put"])
    assert result.exit_code == 2 and "Traceback" not in result.output


def test_unexpected_errors_are_one_line_with_a_debug_hint(monkeypatch):
    from client.api import AegisClient

    def boom(self, path="/", detail=False):
        raise RuntimeError("something broke")

    monkeypatch.setattr(AegisClient, "ls", boom)
    result = CliRunner().invoke(cli, ["--broker", "tcp://127.0.0.1:1", "ls", "/"])
    assert result.exit_code == 70
    assert "unexpected error: RuntimeError: something broke" in result.output
    assert "--debug" in result.output and "Traceback" not in result.output
    result = CliRunner().invoke(cli, ["--broker", "tcp://127.0.0.1:1", "--debug", "ls", "/"])
    assert isinstance(result.exception, RuntimeError)     # --debug lets the traceback out


def test_expected_errors_name_the_command_and_path(monkeypatch):
    from client.api import AegisClient

    def missing(self, path, detail=False):
        exc = FileNotFoundError(errno.ENOENT, "No such file or directory")
        exc.filename = path
        raise exc

    monkeypatch.setattr(AegisClient, "ls", missing)
    result = CliRunner().invoke(cli, ["--broker", "tcp://127.0.0.1:1", "ls", "/gone"])
    assert result.exit_code == 1
    assert result.output.strip() == "aegisfs: ls: /gone: No such file or directory"


def test_client_defaults_come_from_the_config_flags_first(tmp_path, monkeypatch):
    from client.cli_state import State
    toml = tmp_path / "c.toml"
    toml.write_text("[client]\ntimeout = 7.0\nconnect_timeout = 4.0\nprogress = false\n")
    monkeypatch.delenv("AEGISFS_CLIENT_PROGRESS", raising=False)
    state = State("tcp://127.0.0.1:1", None, str(toml), False)
    assert (state.fs.timeout, state.fs.connect_timeout) == (7.0, 4.0)     # config
    assert state.option("progress", None) is False
    assert state.option("progress", True) is True                          # flag wins
    monkeypatch.setenv("AEGISFS_CLIENT_PROGRESS", "1")
    monkeypatch.setenv("AEGISFS_CLIENT_CONNECT_TIMEOUT", "3")
    state = State("tcp://127.0.0.1:1", 2.0, str(toml), False)
    assert state.option("progress", None) is True                          # env over file
    assert (state.fs.timeout, state.fs.connect_timeout) == (2.0, 2.0)     # --timeout bounds it
    state.close()

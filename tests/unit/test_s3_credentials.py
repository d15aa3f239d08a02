"""client/s3/credentials.py and `aegisfs s3 credentials`: keys are created once per user,
kept 0600, refused when others can read them."""
from __future__ import annotations

import json
import os
import stat

import pytest
from click.testing import CliRunner

from client.cli import cli
from client.s3.credentials import FILENAME, Credentials


def test_credentials_command_creates_then_shows(tmp_path):
    runner = CliRunner()
    args = ["s3", "credentials", "--user", "alice", "--keys-dir", str(tmp_path), "--json"]
    first = json.loads(runner.invoke(cli, args).output)
    again = json.loads(runner.invoke(cli, args).output)
    assert first == again and first["user"] == "alice"
    assert set(first) >= {"access_key_id", "secret_access_key", "endpoint"}
    assert stat.S_IMODE(os.stat(tmp_path / FILENAME).st_mode) == 0o600
    other = json.loads(runner.invoke(cli, [*args[:3], "bob", *args[4:]]).output)
    assert other["access_key_id"] != first["access_key_id"]
    creds = Credentials(tmp_path)
    assert creds.lookup(first["access_key_id"]) == (first["secret_access_key"], "alice")
    assert creds.lookup("AKNOTHERE") is None


def test_readable_by_others_is_refused(tmp_path):
    creds = Credentials(tmp_path)
    access, _ = creds.create("alice")
    os.chmod(tmp_path / FILENAME, 0o644)
    with pytest.raises(PermissionError):
        Credentials(tmp_path).lookup(access)

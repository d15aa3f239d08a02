"""chmod mode arguments (client/modes.py), checked against what coreutils chmod does to
real files and directories with umask 022; and chown's OWNER[:GROUP] argument."""
from __future__ import annotations

import os
import shutil
import stat as st
import subprocess

import pytest

from client.modes import ModeError, parse_mode, parse_owner

SYMBOLIC = ["u+x", "go-w", "a=r", "u=rwx,g=rx,o=", "+x", "+w", "-r", "=r", "o+t", "+t",
            "u+s", "g+s", "ug+s", "a+X", "g=u", "o=g", "u-x,g+w", "a-rwx,u+rw", "u+rw-x",
            "go=", "a+rwxst", "=", "ug=rw,o-r+x", "u+X,g-X"]
STARTS = [0o644, 0o755, 0o600, 0o000, 0o4755, 0o2750, 0o1777, 0o640, 0o111]

needs_chmod = pytest.mark.skipif(shutil.which("chmod") is None, reason="no chmod binary")


@needs_chmod
@pytest.mark.parametrize("text", SYMBOLIC)
def test_symbolic_modes_do_what_coreutils_does(tmp_path, text):
    f, d = tmp_path / "f", tmp_path / "d"
    f.touch()
    d.mkdir()
    for start in STARTS:
        for path, is_dir in ((f, False), (d, True)):
            os.chmod(path, start)
            subprocess.run(["chmod", "--", text, str(path)], check=True,
                           preexec_fn=lambda: os.umask(0o022))
            want = st.S_IMODE(os.stat(path).st_mode)
            got = parse_mode(text).apply(start, is_dir)
            assert got == want, (text, oct(start), is_dir, oct(got), oct(want))


def test_octal_modes_are_absolute():
    m = parse_mode("4755")
    assert (m.absolute, m.needs_current, m.apply(0o000)) == (0o4755, False, 0o4755)
    assert parse_mode("7").absolute == 0o7 and parse_mode("0640").apply(0o777) == 0o640
    assert parse_mode("u+x").needs_current


@pytest.mark.parametrize("bad", ["", "8", "77777", "u+y", "q+x", "u", "u+x,", ",u+x",
                                 "u+ug", "+x u"])
def test_bad_modes_are_refused_with_a_reason(bad):
    with pytest.raises(ModeError, match="invalid mode"):
        parse_mode(bad)


def test_owner_arguments():
    assert parse_owner("alice") == ("alice", None)
    assert parse_owner("alice:staff") == ("alice", "staff")
    assert parse_owner("alice:") == ("alice", None)
    assert parse_owner(":staff") == (None, "staff")
    for bad in ("", ":", "a:b:c"):
        with pytest.raises(ModeError):
            parse_owner(bad)

"""pjdfstest (the POSIX file-system suite, vendored in ../shared/vendor/pjdfstest) built
from source into a temporary directory and run against a mount of a real cluster; the
assertions passed and failed are printed per syscall directory. The default suite runs
the directories that must pass completely and are quick; --soak runs them all (the
table in docs/mount.md is that run)."""
from __future__ import annotations

import re
import shutil
import subprocess
import tempfile
import time
from pathlib import Path
from typing import Iterator

import pytest

from tests.support.mount import Mount, fuse_skip_reason

ROOT = Path(__file__).resolve().parents[2]
# the vendored suite, unmodified (third_party/README.md); never built in place
VENDOR = ROOT / "third_party" / "pjdfstest"
# ~80 s; the others with --soak (truncate's "not ok 2" was 12.t: a truncate to a
# petabyte must fail with EFBIG; the mount now refuses growth past the largest file;
# ftruncate's 12.t the same)
QUICK = ["mkdir", "rmdir", "symlink", "truncate", "ftruncate", "utimensat", "link",
         "unlink", "mknod"]
# must pass completely (the goal; utimensat since atimes are kept, link since hard
# links are, mknod since device numbers are); the others are measured
COMPLETE = {"mkdir", "rmdir", "unlink", "rename", "open", "truncate", "ftruncate",
            "symlink", "chmod", "utimensat", "link", "chown", "mkfifo", "mknod"}
ALL = sorted(["chmod", "chown", "ftruncate", "link", "mkdir", "mkfifo", "mknod", "open",
              "rename", "rmdir", "symlink", "truncate", "unlink", "utimensat",
              "posix_fallocate", "chflags", "granular"])


def _why_not() -> str | None:
    why = fuse_skip_reason()
    if why:
        return why
    if not VENDOR.is_dir():
        return f"the vendored pjdfstest is not at {VENDOR}"
    missing = [t for t in ("autoreconf", "automake", "gcc", "make", "prove")
               if shutil.which(t) is None]
    return f"missing {', '.join(missing)} (.ci/run installs them)" if missing else None


pytestmark = pytest.mark.skipif(_why_not() is not None, reason=f"pjdfstest: {_why_not()}")


@pytest.fixture(scope="module")
def pjdfstest(tmp_path_factory) -> Path:
    build = tmp_path_factory.mktemp("pjd") / "pjdfstest"
    shutil.copytree(VENDOR, build)
    for cmd in (["autoreconf", "-ifs"], ["./configure"], ["make", "pjdfstest"]):
        done = subprocess.run(cmd, cwd=build, capture_output=True, text=True, timeout=300)
        assert done.returncode == 0, f"{' '.join(cmd)}: {done.stdout[-2000:]}{done.stderr[-2000:]}"
    return build


@pytest.fixture(scope="module")
def mnt(cluster, tmp_path_factory) -> Iterator[Mount]:
    with Mount.start(cluster, tmp_path_factory.mktemp("pm") / "m") as m:
        yield m


def run_dir(pjd: Path, where: Path, name: str) -> tuple[int, list[str]]:
    """(assertions passed, the failed ones) of one syscall directory, run in a new
    directory of the mount (the quick and the full run share the module's mount)."""
    work = Path(tempfile.mkdtemp(prefix=f"pjd-{name}-", dir=where))
    work.chmod(0o755)         # as mkdir makes it: the tests' other users search it
    done = subprocess.run(["prove", "-v", "-r", str(pjd / "tests" / name)], cwd=work,
                          capture_output=True, text=True, timeout=1800)
    # TAP: "not ok N # TODO ..." is an expected failure (pjdfstest marks Linux's own
    # departures so), counted as passed, as prove does; a failure is named with its
    # file (prove -v starts each file's lines with "<path>/NN.t ..")
    passed, failed, current = 0, [], "?"
    for line in done.stdout.splitlines():
        if m := re.match(r"(\S+\.t) \.\.", line):
            current = Path(m.group(1)).name
        elif re.match(r"ok \d+|not ok \d+ # TODO", line):
            passed += 1
        elif re.match(r"not ok \d+", line):
            failed.append(f"{current}: {line}")
    return passed, failed


def _report(results: dict[str, tuple[int, list[str]]]) -> None:
    print("\npjdfstest against the mount:")
    for name, (ok, bad) in results.items():
        total = ok + len(bad)
        print(f"  {name:16s} {ok:5d}/{total:<5d} passed" + (f", {len(bad)} failed" if bad else ""))
        for line in bad[:5]:
            print(f"      {line[:160]}")


def test_pjdfstest_quick_directories(pjdfstest: Path, mnt: Mount) -> None:
    t0 = time.monotonic()
    results = {name: run_dir(pjdfstest, mnt.path, name) for name in QUICK}
    _report(results)
    print(f"  ({time.monotonic() - t0:.0f} s)")
    for name, (ok, bad) in results.items():
        assert ok > 0, f"{name}: nothing ran"
        assert not bad, f"{name}: {len(bad)} failed, first: {bad[0]}"


@pytest.mark.soak
@pytest.mark.timeout(3600)
def test_pjdfstest_every_directory(pjdfstest: Path, mnt: Mount) -> None:
    results = {name: run_dir(pjdfstest, mnt.path, name) for name in ALL}
    _report(results)
    ok = sum(r[0] for r in results.values())
    total = ok + sum(len(r[1]) for r in results.values())
    print(f"  overall          {ok}/{total} passed ({100 * ok / total:.1f} %)")
    for name in COMPLETE:
        assert not results[name][1], f"{name}: {results[name][1][0]}"
    assert ok >= 0.9 * total

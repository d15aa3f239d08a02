"""`aegisfs mount` on a real cluster (security on): everyday tools give the same result
on the mount as on local disk (cp, cat, ls, mkdir, mv, rm, chmod, truncate, append, tar,
git, sqlite), two mounts see each other's closed files and renames, and a SIGKILLed
daemon leaves a mount point that `aegisfs umount` clears and no partial file."""
from __future__ import annotations

import errno
import os
import random
import shutil
import sqlite3
import stat
import subprocess
import time
from pathlib import Path
from typing import Iterator

import pytest

from broker.client import Client
from broker.limits import MAX_FILE_BLOCKS
from client import AegisClient
from tests.support.mount import Mount, fuse_skip_reason
from tests.support.wait import wait_for

pytestmark = pytest.mark.skipif(fuse_skip_reason() is not None,
                                reason=f"no FUSE mounts here: {fuse_skip_reason()}")
MiB = 1 << 20
# each file costs ~5 MDS round trips at 5-15 ms here (fsync-bound): 2,000 files take
# ~150 s, so the default suite extracts 400 and --soak the full 2,000
TAR_FILES, TAR_FILES_SOAK = 400, 2000


@pytest.fixture(scope="module")
def mnt(cluster, tmp_path_factory) -> Iterator[Mount]:
    with Mount.start(cluster, tmp_path_factory.mktemp("m") / "a") as m:
        yield m


def sh(cmd: str, cwd: Path) -> str:
    done = subprocess.run(cmd, shell=True, cwd=cwd, capture_output=True, text=True,
                          timeout=300)
    assert done.returncode == 0, f"{cmd!r} in {cwd}: {done.stderr}"
    return done.stdout


def tree(root: Path) -> dict[str, tuple]:
    """Everything below root: type, permission bits, size and content digest."""
    out = {}
    for dirpath, dirs, files in os.walk(root):
        for name in dirs + files:
            p = Path(dirpath, name)
            st = p.lstat()
            rel = str(p.relative_to(root))
            if stat.S_ISDIR(st.st_mode):
                out[rel] = ("d", stat.S_IMODE(st.st_mode))
            elif stat.S_ISLNK(st.st_mode):
                out[rel] = ("l", os.readlink(p))
            else:
                out[rel] = ("f", stat.S_IMODE(st.st_mode), st.st_size,
                            hash(p.read_bytes()))
    return out


def both(local: Path, mounted: Path, cmd: str) -> None:
    """Run cmd in both places; the outputs and the trees must match."""
    a, b = sh(cmd, local), sh(cmd, mounted)
    assert a == b, f"{cmd!r}: local {a!r}, mount {b!r}"
    assert tree(local) == tree(mounted), cmd


def test_everyday_tools_match_local_disk(mnt: Mount, tmp_path: Path) -> None:
    local, mounted = tmp_path / "local", mnt.path / "everyday"
    local.mkdir()
    mounted.mkdir()
    src = tmp_path / "src"
    src.mkdir()
    rng = random.Random(15)
    (src / "big.bin").write_bytes(rng.randbytes(9 * MiB + 17))     # several blocks
    (src / "small.txt").write_text("hello\n")
    (src / "sub").mkdir()
    (src / "sub" / "empty").write_bytes(b"")
    os.chmod(src / "small.txt", 0o640)
    for cmd in [f"cp -a {src} tree", "cat tree/small.txt tree/sub/empty",
                "ls -A tree tree/sub", "mkdir -p tree/new/deeper && ls tree",
                "mv tree/small.txt tree/new/moved.txt", "mv tree/new tree/renamed",
                "chmod 604 tree/renamed/moved.txt && stat -c %a tree/renamed/moved.txt",
                "echo appended >> tree/renamed/moved.txt && cat tree/renamed/moved.txt",
                "truncate -s 3 tree/renamed/moved.txt && cat tree/renamed/moved.txt",
                "truncate -s 5000000 tree/big.bin && md5sum tree/big.bin",
                "dd if=/dev/zero of=tree/big.bin bs=4096 seek=3 count=2 conv=notrunc "
                "status=none && md5sum tree/big.bin",
                "ln -s renamed/moved.txt tree/link && cat tree/link && readlink tree/link",
                "cp tree/big.bin tree/copy && cmp tree/big.bin tree/copy && du -b tree/copy",
                "rm tree/copy && rm -r tree/renamed && ls tree",
                "find tree | sort"]:
        both(local, mounted, cmd)


def test_growing_a_file_past_the_largest_fails_at_once_with_efbig(mnt: Mount) -> None:
    """A truncate or write past what a file can hold (MAX_FILE_BLOCKS of the cluster's
    block size) fails before anything is sent, and the file is as it was."""
    path = mnt.path / "efbig"
    path.write_bytes(b"kept")
    with AegisClient(mnt.broker, key=mnt.key) as fs:
        largest = MAX_FILE_BLOCKS * fs.status()["block_size"]
    started = time.monotonic()
    for attempt in (lambda: os.truncate(path, 999_999_999_999_999),
                    lambda: os.truncate(path, largest + 1)):
        with pytest.raises(OSError) as info:
            attempt()
        assert info.value.errno == errno.EFBIG, info.value
    with open(path, "r+b") as f:
        with pytest.raises(OSError) as info:
            os.pwrite(f.fileno(), b"x", largest)
        assert info.value.errno == errno.EFBIG, info.value
    assert time.monotonic() - started < 5
    assert path.read_bytes() == b"kept"


def test_a_tree_quota_is_edquot_through_the_mount(mnt: Mount) -> None:
    """Writing past a tree quota fails with EDQUOT at fsync (close of a small new file
    commits in the background: then the next fsync of its directory reports EIO, and the
    file is not there), and the file that fitted is as it was."""
    (mnt.path / "mq").mkdir()
    (mnt.path / "mq" / "fits").write_bytes(b"a" * 1000)
    with AegisClient(mnt.broker, key=mnt.key) as fs:
        fs.quota_set("/mq", max_bytes=4096)
        try:
            with pytest.raises(OSError) as info:
                with open(mnt.path / "mq" / "too-big", "wb") as f:
                    f.write(b"b" * 5000)
                    f.flush()
                    os.fsync(f.fileno())
            assert info.value.errno == errno.EDQUOT, info.value
            assert (mnt.path / "mq" / "fits").read_bytes() == b"a" * 1000
            assert fs.stat("/mq/fits")["size"] == 1000
            assert not fs.exists("/mq/too-big") or fs.stat("/mq/too-big")["size"] == 0
            (mnt.path / "mq" / "late").write_bytes(b"c" * 5000)     # close returns
            fd = os.open(mnt.path / "mq", os.O_RDONLY)
            try:
                with pytest.raises(OSError) as info:
                    os.fsync(fd)                  # the background commit's EDQUOT
                assert info.value.errno == errno.EIO, info.value
                assert "/mq/late: the background commit" in mnt.log.read_text()
                os.fsync(fd)                      # reported once
            finally:
                os.close(fd)
            assert not fs.exists("/mq/late")
        finally:
            fs.quota_clear("/mq")


def test_two_mounts_see_each_others_closed_files_and_renames(
        cluster, mnt: Mount, tmp_path: Path) -> None:
    other = Mount.start(cluster, tmp_path / "b")
    try:
        data = os.urandom(3 * MiB + 5)
        (mnt.path / "shared.bin").write_bytes(data)
        assert (other.path / "shared.bin").read_bytes() == data
        os.rename(mnt.path / "shared.bin", mnt.path / "renamed.bin")
        wait_for(lambda: (other.path / "renamed.bin").exists()
                 and not (other.path / "shared.bin").exists(),
                 timeout=5, what="the rename seen by the second mount")
        assert (other.path / "renamed.bin").read_bytes() == data
        # a file still open for writing in one mount is not visible in the other
        with open(other.path / "inflight", "wb") as f:
            f.write(b"x" * (2 * MiB))
            f.flush()
            assert not (mnt.path / "inflight").exists()
        wait_for(lambda: (mnt.path / "inflight").exists(), timeout=5, what="closed file")
        assert (mnt.path / "inflight").stat().st_size == 2 * MiB
    finally:
        other.stop()


def test_block_payloads_go_straight_to_the_datanodes(cluster, mnt: Mount) -> None:
    """The mount writes and reads blocks through the DataNodes' data endpoints, as the
    CLI does (client/direct.py), not relayed by the broker (each payload encrypted and
    copied once more there): the nodes' data-endpoint counters grow by the bytes."""
    def counters() -> tuple[int, int]:
        infos = [raw.call(f"dn.{n}", {"op": "info"}).result for n in cluster.node_ids]
        return (sum(i["data_bytes_in"] for i in infos),
                sum(i["data_bytes_out"] for i in infos))

    data, other = os.urandom(5 * MiB + 17), os.urandom(3 * MiB + 5)
    with Client(cluster.broker, timeout=20, curve=cluster.curve) as raw, \
            AegisClient(cluster.broker, key=cluster.key) as fs:
        bytes_in, _ = counters()
        (mnt.path / "direct.bin").write_bytes(data)
        st = raw.call("mds", {"op": "stat", "path": "/direct.bin", "read": True}).result
        stored = sum(b["size"] * len(b["replicas"]) for b in st["blocks"])
        assert stored >= 2 * len(data)
        assert counters()[0] - bytes_in >= stored
        fs.write_bytes("/direct-read.bin", other)     # never in this mount's page cache
        _, bytes_out = counters()
        assert (mnt.path / "direct-read.bin").read_bytes() == other
        assert counters()[1] - bytes_out >= len(other)


def test_tar_of_thousands_of_files_matches_local_disk(mnt: Mount, tmp_path: Path,
                                                      soak: bool) -> None:
    count = TAR_FILES_SOAK if soak else TAR_FILES
    rng = random.Random(2000)
    src = tmp_path / "src"
    for i in range(count):
        d = src / f"d{i % 40:02d}" / f"s{i % 7}"
        d.mkdir(parents=True, exist_ok=True)
        (d / f"f{i}.txt").write_bytes(rng.randbytes(rng.choice([0, 10, 700, 5000, 70000])))
        if i % 13 == 0:
            os.chmod(d / f"f{i}.txt", 0o600)
    sh(f"tar -C {src} -cf {tmp_path}/in.tar .", tmp_path)
    dest = mnt.path / "tarx"
    dest.mkdir()
    started = time.monotonic()
    sh(f"tar -xf {tmp_path}/in.tar", dest)
    took = time.monotonic() - started
    print(f"tar -x of {count} files into the mount: {took:.1f} s "
          f"({count / took:.0f} files/s)")
    assert tree(dest) == tree(src)
    sh(f"tar -cf {tmp_path}/out.tar .", dest)
    back = tmp_path / "back"
    back.mkdir()
    sh(f"tar -xf {tmp_path}/out.tar", back)
    assert tree(back) == tree(src)


def test_git_init_commit_and_clone(mnt: Mount, tmp_path: Path) -> None:
    if shutil.which("git") is None:
        pytest.skip("git is not installed")
    repo = mnt.path / "repo"
    repo.mkdir()
    git = "git -c user.email=t@example.com -c user.name=t -c init.defaultBranch=main"
    sh(f"{git} init -q .", repo)
    for i in range(30):
        (repo / f"file{i}.py").write_text(f"print({i})\n" * (i + 1))
    sh(f"{git} add -A && {git} commit -qm first", repo)
    (repo / "file3.py").write_text("changed\n")
    sh(f"{git} commit -qam second", repo)
    log = sh("git log --format=%s", repo).split()
    assert log == ["second", "first"]
    sh("git fsck --full", repo)
    sh(f"git clone -q {repo} clone", tmp_path)
    assert (tmp_path / "clone" / "file3.py").read_text() == "changed\n"
    assert sh("git log --format=%s", tmp_path / "clone").split() == log


def test_sqlite_transactions_and_integrity(mnt: Mount) -> None:
    path = mnt.path / "db.sqlite"
    db = sqlite3.connect(path)
    db.execute("create table t (id integer primary key, v text)")
    for i in range(200):          # each commit rewrites the database file (docs/mount.md)
        with db:
            db.execute("insert into t (v) values (?)", (f"row {i} " * 20,))
            if i % 10 == 0:
                db.execute("update t set v = 'x' where id = ?", (i // 2 + 1,))
    db.close()
    db = sqlite3.connect(path)
    assert db.execute("pragma integrity_check").fetchone() == ("ok",)
    assert db.execute("select count(*) from t").fetchone() == (200,)
    db.close()


def test_sigkilled_daemon_leaves_nothing_partial(cluster, tmp_path: Path) -> None:
    m = Mount.start(cluster, tmp_path / "k")
    try:
        (m.path / "old.bin").write_bytes(b"old version")
        writer = subprocess.Popen(
            ["python3", "-c", "import sys,time\n"
             f"f=open({str(m.path / 'partial.bin')!r},'wb')\n"
             f"g=open({str(m.path / 'old.bin')!r},'r+b')\n"
             "f.write(b'p'*(5<<20)); g.write(b'NEW'); f.flush(); g.flush()\n"
             "print('written', flush=True); time.sleep(60)"],
            stdout=subprocess.PIPE, text=True)
        try:
            assert writer.stdout.readline().strip() == "written"
            m.kill()
        finally:
            writer.kill()
            writer.wait()
        with pytest.raises(OSError) as info:
            os.listdir(m.path)                 # a dead mount (stat may answer from cache)
        assert info.value.errno in (errno.ENOTCONN, errno.ECONNABORTED)
        done = m.umount()
        assert done.returncode == 0, done.stderr
        assert not os.path.ismount(m.path) and os.listdir(m.path) == []
        with AegisClient(cluster.broker, key=cluster.key) as fs:
            assert not fs.exists("/partial.bin")          # never committed
            assert fs.read_bytes("/old.bin") == b"old version"
        # and it mounts again
        m2 = Mount.start(cluster, m.path)
        try:
            assert (m.path / "old.bin").read_bytes() == b"old version"
        finally:
            m2.stop()
    finally:
        m.stop()


def test_changes_elsewhere_drop_cached_attributes(cluster, tmp_path: Path) -> None:
    # attributes kept 30 s, names looked up every time: only the event feed can make
    # the mount notice a new version within seconds
    m = Mount.start(cluster, tmp_path / "ev", "--attr-timeout", "30", "--entry-timeout", "0")
    try:
        with AegisClient(cluster.broker, key=cluster.key) as fs:
            fs.write_bytes("/events/f", b"1", parents=True)
            assert os.listdir(m.path / "events") == ["f"]
            assert (m.path / "events" / "f").stat().st_size == 1
            fs.write_bytes("/events/f", b"12345")
            wait_for(lambda: (m.path / "events" / "f").stat().st_size == 5, timeout=10,
                     what="the new size seen through the mount")
    finally:
        m.stop()


def test_run_cluster_mounts_and_unmounts(tmp_path: Path) -> None:
    from tests.support.cluster import start_cluster
    where = tmp_path / "mnt"
    c = start_cluster(tmp_path / "data", datanodes=1, replication=1, mount_dir=str(where))
    try:
        assert os.path.ismount(where)
        (where / "hello.txt").write_text("hi\n")   # committed in the background
        with AegisClient(c.broker, key=c.key) as fs:
            assert wait_for(lambda: fs.read_bytes("/hello.txt"), timeout=10,
                            what="the closed file committed",
                            retry=(FileNotFoundError,)) == b"hi\n"
    finally:
        c.stop()                 # the mount role first (SIGTERM: a clean unmount)
    assert not os.path.ismount(where)


def test_a_closed_small_file_reaches_another_mount_and_fsync_at_once(
        cluster, mnt: Mount, tmp_path: Path) -> None:
    """close() of a small new file returns before its background commit: another mount
    sees it once committed (within a bounded wait), whole; fsync returns only when it is
    committed, so the other mount sees it at once. The writing mount sees it at once."""
    other = Mount.start(cluster, tmp_path / "o", "--attr-timeout", "0",
                        "--entry-timeout", "0")
    try:
        (mnt.path / "vis").mkdir()
        data = os.urandom(4096)
        (mnt.path / "vis" / "closed").write_bytes(data)
        assert (mnt.path / "vis" / "closed").stat().st_size == 4096    # here: at once
        assert "closed" in os.listdir(mnt.path / "vis")
        started = time.monotonic()
        wait_for(lambda: (other.path / "vis" / "closed").exists(), timeout=10,
                 what="the closed file in the other mount")
        print(f"another mount saw the closed file after {time.monotonic() - started:.3f} s")
        assert (other.path / "vis" / "closed").read_bytes() == data
        for i in range(20):
            body = os.urandom(100 + i)
            with open(mnt.path / "vis" / f"synced{i}", "wb") as f:
                f.write(body)
                f.flush()
                os.fsync(f.fileno())
            assert (other.path / "vis" / f"synced{i}").read_bytes() == body, i
        # the directory's fsync (`sync DIR`) commits everything closed below it
        names = [f"batch{i}" for i in range(50)]
        for name in names:
            (mnt.path / "vis" / name).write_bytes(name.encode())
        fd = os.open(mnt.path / "vis", os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)
        with AegisClient(mnt.broker, key=mnt.key) as fs:
            for name in names:
                assert fs.read_bytes(f"/vis/{name}") == name.encode()
    finally:
        other.stop()


def test_rsync_in_and_out_matches_local_disk(mnt: Mount, tmp_path: Path) -> None:
    """rsync -a into the mount (temporary names, then renames, chmod and times set after
    close: files still waiting for their background commit) and back out again: the
    trees match, mtimes included, and a second rsync finds nothing to send."""
    if shutil.which("rsync") is None:
        pytest.skip("rsync is not installed")
    rng = random.Random(31)
    src = tmp_path / "src"
    for i in range(150):
        d = src / f"d{i % 5}"
        d.mkdir(parents=True, exist_ok=True)
        (d / f"f{i}").write_bytes(rng.randbytes(rng.choice([0, 1, 300, 4096, 20000])))
        if i % 9 == 0:
            os.chmod(d / f"f{i}", 0o600)
        os.utime(d / f"f{i}", (1_600_000_000 + i, 1_600_000_000 + i))
    (src / "big.bin").write_bytes(rng.randbytes(3 * MiB + 1))
    os.symlink("d0/f0", src / "link")
    dest = mnt.path / "rsynced"
    started = time.monotonic()
    sh(f"rsync -a {src}/ {dest}/", tmp_path)
    print(f"rsync -a of 152 entries into the mount: {time.monotonic() - started:.1f} s")

    def mtimes(root: Path) -> dict[str, int]:
        return {str(p.relative_to(root)): int(p.lstat().st_mtime) for p in root.rglob("*")
                if not p.is_symlink()}
    assert tree(dest) == tree(src)
    assert mtimes(dest) == mtimes(src)
    again = sh(f"rsync -a -i {src}/ {dest}/", tmp_path)   # itemized: nothing changed
    assert again.strip() == "", again
    back = tmp_path / "back"
    sh(f"rsync -a {dest}/ {back}/", tmp_path)
    assert tree(back) == tree(src)
    assert mtimes(back) == mtimes(src)


def test_hard_links_are_names_of_one_file(cluster, mnt: Mount, tmp_path: Path) -> None:
    """link(2) through the mount: every name shows every change at once (the kernel's
    cache of the other names is invalidated, within attr_timeout's 1 s), the file goes
    with its last name, and tar, cp -al and git's local clone make and keep links."""
    d = mnt.path / "links"
    d.mkdir()
    data = bytearray(os.urandom(3 * MiB + 5))
    (d / "a").write_bytes(data)
    os.link(d / "a", d / "b")
    assert [os.stat(d / n).st_nlink for n in "ab"] == [2, 2]
    os.chmod(d / "b", 0o600)
    assert stat.S_IMODE(os.stat(d / "a").st_mode) == 0o600
    with open(d / "b", "r+b") as f:           # a write in place through one name
        f.seek(MiB)
        f.write(b"Z" * 100)
    data[MiB:MiB + 100] = b"Z" * 100
    assert (d / "a").read_bytes() == data
    with open(d / "a", "ab") as f:            # an append through the other
        f.write(b"tail")
    assert os.stat(d / "b").st_size == len(data) + 4
    os.link(d / "b", d / "c")
    os.rename(d / "b", d / "c")               # two names of one file: nothing happens
    assert sorted(os.listdir(d)) == ["a", "b", "c"]
    os.unlink(d / "a")
    assert [os.stat(d / n).st_nlink for n in "bc"] == [2, 2]
    os.unlink(d / "c")
    assert os.stat(d / "b").st_nlink == 1
    assert (d / "b").read_bytes() == bytes(data) + b"tail"
    for src, dst, code in [(d, d / "dirlink", errno.EPERM),
                           (d / "b", d / "b", errno.EEXIST),
                           (d / "missing", d / "x", errno.ENOENT)]:
        with pytest.raises(OSError) as info:
            os.link(src, dst)
        assert info.value.errno == code, (src, dst)
    # the client API and a second mount see the same file under both names
    with AegisClient(cluster.broker, key=cluster.key) as fs:
        assert fs.link("/links/b", "/links/api") == 2
        assert fs.read_bytes("/links/api") == bytes(data) + b"tail"
    other = Mount.start(cluster, tmp_path / "o")
    try:
        assert (other.path / "links" / "api").stat().st_nlink == 2
        assert (other.path / "links" / "api").read_bytes() == bytes(data) + b"tail"
    finally:
        other.stop()
    # tar keeps the links of an archive; cp -al makes a tree of links
    src = tmp_path / "src"
    (src / "sub").mkdir(parents=True)
    (src / "one").write_bytes(os.urandom(5000))
    os.link(src / "one", src / "sub" / "two")
    sh(f"tar -C {src} -cf {tmp_path}/l.tar .", tmp_path)
    (d / "tarx").mkdir()
    sh(f"tar -xf {tmp_path}/l.tar", d / "tarx")
    assert tree(d / "tarx") == tree(src)
    assert os.stat(d / "tarx" / "sub" / "two").st_nlink == 2
    sh("cp -al tarx copy", d)
    assert os.stat(d / "copy" / "one").st_nlink == 4
    # git clone of a repository on the same file system hard-links its objects
    if shutil.which("git"):
        git = "git -c user.email=t@example.com -c user.name=t -c init.defaultBranch=main"
        (d / "repo").mkdir()
        sh(f"{git} init -q . && echo hi > f && {git} add f && {git} commit -qm one", d / "repo")
        sh("git clone -q --local repo clone && git -C clone fsck --full", d)
        objects = [p for p in (d / "clone" / ".git" / "objects").rglob("*") if p.is_file()
                   and p.parent.name != "pack" and p.parent.name != "info"]
        assert objects and all(p.stat().st_nlink == 2 for p in objects)
        assert (d / "clone" / "f").read_text() == "hi\n"


def test_rename_exchange_swaps_a_file_and_a_directory(mnt: Mount) -> None:
    import ctypes
    libc = ctypes.CDLL(None, use_errno=True)
    at_fdcwd, rename_exchange = -100, 2

    def exchange(a: Path, b: Path) -> int:
        done = libc.renameat2(at_fdcwd, bytes(a), at_fdcwd, bytes(b), rename_exchange)
        return 0 if done == 0 else ctypes.get_errno()
    d = mnt.path / "xchg"
    (d / "dir").mkdir(parents=True)
    (d / "dir" / "inner").write_bytes(b"inner")
    (d / "file").write_bytes(b"a file")
    (d / "new").write_bytes(b"not committed yet, maybe")   # a queued small file
    ino = os.stat(d / "file").st_ino
    assert exchange(d / "file", d / "dir") == 0
    assert (d / "dir").read_bytes() == b"a file" and os.stat(d / "dir").st_ino == ino
    assert (d / "file" / "inner").read_bytes() == b"inner"
    assert exchange(d / "new", d / "dir") == 0
    assert (d / "new").read_bytes() == b"a file"
    assert (d / "dir").read_bytes() == b"not committed yet, maybe"
    assert exchange(d / "new", d / "missing") == errno.ENOENT
    assert exchange(d / "file", d / "file" / "inner") == errno.EINVAL
    assert sorted(os.listdir(d)) == ["dir", "file", "new"]

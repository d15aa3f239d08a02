"""Data format versions (mds/metastore.py FORMAT, mds/snapshot.py version): a data
directory written before owners and modes existed (tests/fixtures/mds_v1, made by the
code of main at 81e0677 with tests/fixtures/make_mds_v1.py) opens with the new code,
through its version 1 snapshot or by replaying its records alone, with the documented
defaults; a newer version is refused with a clear error, never taken for damage."""
from __future__ import annotations

import errno
import json
import shutil
from pathlib import Path

import msgpack
import pytest

from mds import snapshot
from mds.metastore import MetaStore
from mds.namespace import NamespaceConfig
from mds.perms import Cred
from mds.snapshot import SnapshotVersionError, list_snapshots, write_snapshot
from mds.store_files import DATA_VERSION, FORMAT_FILE, RecoveryError
from mds.wal import encode_frame

FIXTURE = Path(__file__).parent.parent / "fixtures" / "mds_v1"
CONFIG = NamespaceConfig(replication=2, block_size=64, lease=30.0)


def old_dir(tmp_path: Path, snapshot: bool = True) -> Path:
    d = tmp_path / "mds"
    shutil.copytree(FIXTURE, d)
    if not snapshot:
        for _, p in list_snapshots(d):
            p.unlink()
    return d


def plain(v: object) -> object:
    if isinstance(v, bytes):
        return v.hex()
    if isinstance(v, dict):
        return {k: plain(x) for k, x in v.items()}
    if isinstance(v, (list, tuple)):
        return [plain(x) for x in v]
    return v


@pytest.mark.parametrize("with_snapshot", [True, False])
def test_a_version_1_directory_opens_with_the_documented_defaults(
        tmp_path: Path, with_snapshot: bool) -> None:
    d = old_dir(tmp_path, with_snapshot)
    assert not (d / FORMAT_FILE).exists()
    old = json.loads((FIXTURE.parent / "mds_v1.dump.json").read_text())
    with MetaStore(d, config=CONFIG) as store:
        assert store.format_version == 1
        ns = store.ns
        new = plain(ns.dump())
        # the same tree, files, blocks, drafts and queue as the old code held ...
        assert {p: v[0] for p, v in new["dirs"].items()} == old["dirs"]
        for path, f in old["files"].items():
            assert {k: v for k, v in new["files"][path].items() if k in f} == f
        assert {h: v[:9] for h, v in new["drafts"].items()} == old["drafts"]
        assert new["pending_deletes"] == old["pending_deletes"]
        assert new["counts"] == old["counts"]
        # ... and everything belongs to the superuser: dirs 0o755, files 0o644
        for path, (mtime, mode, owner, group, ctime) in new["dirs"].items():
            assert (mode, owner, group) == (0o755, "admin", "admin"), path
        for path, f in new["files"].items():
            assert (f["mode"], f["owner"], f["group"]) == (0o644, "admin", "admin"), path
            assert f["ctime"] >= f["mtime"]
        assert {h: v[9:] for h, v in new["drafts"].items()} == {
            h: ["admin", "admin", 0o644] for h in old["drafts"]}
        # an old draft commits as a file of the superuser
        store.submit(lambda ns: ns.prepare_commit("old-draft-2", []))
        assert ns.stat("/c/open2")["owner"] == "admin"
        # and the new operations work on old entries
        store.submit(lambda ns: ns.prepare_chown("/c", "alice", "alice"))
        store.submit(lambda ns: ns.prepare_mkdir("/c/new", cred=Cred("alice")))
        expected = ns.dump()
    # upgraded: FORMAT names the current version, and the whole state survives a reopen
    assert json.loads((d / FORMAT_FILE).read_text()) == {"format": "aegisfs-mds",
                                                         "version": DATA_VERSION}
    with MetaStore(d, config=CONFIG) as again:
        assert again.format_version == DATA_VERSION and again.ns.dump() == expected
        again.checkpoint_now()
    with MetaStore(d, config=CONFIG) as again:
        assert again.ns.dump() == expected


def test_a_newer_data_directory_is_refused_before_anything_is_read(tmp_path: Path) -> None:
    d = old_dir(tmp_path)
    def files() -> list:
        return sorted((p.name, p.read_bytes()) for p in d.iterdir() if p.name != "LOCK")
    before = files()
    (d / FORMAT_FILE).write_text(json.dumps({"format": "aegisfs-mds",
                                             "version": DATA_VERSION + 1}))
    with pytest.raises(OSError) as info:
        MetaStore(d, config=CONFIG)
    assert info.value.errno == errno.EPROTONOSUPPORT
    assert f"format version {DATA_VERSION + 1}" in str(info.value) and str(d) in str(info.value)
    (d / FORMAT_FILE).unlink()
    assert files() == before            # no torn-tail cut, no upgrade, nothing written
    (d / FORMAT_FILE).write_text("not json")
    with pytest.raises(RecoveryError, match="not an AegisFS MDS format file"):
        MetaStore(d, config=CONFIG)


def test_a_newer_snapshot_is_refused_not_renamed_as_corrupt(tmp_path: Path) -> None:
    d = tmp_path / "mds"
    with MetaStore(d, config=CONFIG) as store:
        store.submit(lambda ns: ns.prepare_mkdir("/a"))
        store.checkpoint_now()
        ns = store.ns
        path = write_snapshot(d, ns, store.last_seq)
    # rewrite the header frame with a future version
    with open(path, "rb") as f:
        frames = list(snapshot._frames(f, path))
    packer = msgpack.Packer(use_bin_type=True)
    header = dict(frames[0][1], version=snapshot.VERSION + 1)
    rest = path.read_bytes()[frames[1][0]:]
    path.write_bytes(encode_frame(packer.pack(header)) + rest)
    with pytest.raises(SnapshotVersionError) as info:
        MetaStore(d, config=CONFIG)
    assert info.value.errno == errno.EPROTONOSUPPORT and str(path) in str(info.value)
    assert path.exists() and not list(d.glob("*.corrupt"))

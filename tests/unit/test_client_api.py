"""AegisClient's own decisions, without sockets: endpoint precedence, path handling, error
naming, and reading the new version when a file is replaced mid-read."""
from __future__ import annotations

import errno
import io

import pytest

from client.api import AegisClient
from client.api_args import _abs
from client.streams import name_error
from broker.client import BrokerUnavailable

CFG = {"broker": {"client": "tcp://127.0.0.1:7000"}, "client": {"timeout": 12.0, "window": 3}}


def test_endpoint_precedence(monkeypatch):
    monkeypatch.delenv("AEGISFS_BROKER", raising=False)
    assert AegisClient(config=CFG).broker == "tcp://127.0.0.1:7000"
    monkeypatch.setenv("AEGISFS_BROKER", "tcp://127.0.0.1:7100")
    assert AegisClient(config=CFG).broker == "tcp://127.0.0.1:7100"
    assert AegisClient("tcp://127.0.0.1:7200", config=CFG).broker == "tcp://127.0.0.1:7200"
    fs = AegisClient(config=CFG)
    assert (fs.timeout, fs.window) == (12.0, 3)
    fs = AegisClient(config=CFG, timeout=1, window=16)
    assert (fs.timeout, fs.window) == (1.0, 16)


def test_paths_are_absolute():
    assert _abs("/a/b") == "/a/b"
    assert _abs("a/b") == "/a/b"
    with pytest.raises(OSError) as exc:
        _abs("")
    assert exc.value.errno == errno.EINVAL


def test_errors_name_the_path_once():
    exc = name_error(FileNotFoundError(errno.ENOENT, "No such file or directory"), "/x")
    assert exc.filename == "/x" and "/x" in str(exc)
    exc = name_error(FileNotFoundError(errno.ENOENT, "No such file or directory: /x"), "/x")
    assert exc.filename is None                     # already named by the MDS
    exc = name_error(BrokerUnavailable(errno.ECONNREFUSED, "cannot reach the broker"), "/x")
    assert exc.filename is None                     # about the cluster, not the file


class Versions(AegisClient):
    """An AegisClient whose MDS answers come from a list of file versions and whose block
    reads fail with EIO for versions marked gone (their blocks deleted under the reader)."""

    def __init__(self, versions, gone):
        super().__init__("tcp://127.0.0.1:1", config=CFG)
        self.versions, self.gone, self.stats = versions, gone, 0

    def _file_info(self, path):
        info = self.versions[min(self.stats, len(self.versions) - 1)]
        self.stats += 1
        return {**info, "path": path}

    def _reader(self, info, pieces):
        if info["version"] in self.gone:
            raise OSError(errno.EIO, f"{info['path']}: block 0 cannot be read: dn1: missing")
        return iter([memoryview(info["data"])])


def version(n, data):
    return {"version": n, "data": data, "size": len(data), "type": "file",
            "blocks": [{"id": bytes([n]) * 16, "size": len(data), "checksum": 0,
                        "replicas": ["dn1"]}]}


def test_a_file_replaced_mid_read_is_read_again_at_its_new_version():
    fs = Versions([version(1, b"old"), version(2, b"new")], gone={1})
    assert fs.read_bytes("/f") == b"new"
    out = io.BytesIO()
    fs = Versions([version(1, b"old"), version(2, b"new")], gone={1})
    assert fs.get("/f", out) == 3 and out.getvalue() == b"new"


def test_get_to_a_local_path_keeps_only_the_new_version(tmp_path):
    class PartlyRead(Versions):
        def _reader(self, info, pieces):
            if info["version"] == 1:      # half of the old version arrives, then blocks vanish
                def gen():
                    yield memoryview(b"old-old-old")
                    raise OSError(errno.EIO, "block 1 cannot be read: dn1: missing")
                return gen()
            return super()._reader(info, pieces)

    fs = PartlyRead([version(1, b"old"), version(2, b"new")], gone=set())
    assert fs.get("/f", tmp_path / "out") == 3
    assert (tmp_path / "out").read_bytes() == b"new"
    assert [p.name for p in tmp_path.iterdir()] == ["out"]      # no temporary file left

    fs = Versions([version(1, b"old"), version(1, b"old")], gone={1})
    with pytest.raises(OSError):
        fs.get("/f", tmp_path / "out2")
    assert [p.name for p in tmp_path.iterdir()] == ["out"]


def test_a_block_lost_without_a_new_version_is_an_error():
    fs = Versions([version(1, b"old"), version(1, b"old")], gone={1})
    with pytest.raises(OSError) as exc:
        fs.read_bytes("/f")
    assert exc.value.errno == errno.EIO and "/f" in str(exc.value)


def test_retries_are_bounded():
    fs = Versions([version(i, b"v%d" % i) for i in range(1, 10)], gone=set(range(1, 10)))
    with pytest.raises(OSError):
        fs.read_bytes("/f")
    assert fs.stats == 3                           # first look + two newer versions

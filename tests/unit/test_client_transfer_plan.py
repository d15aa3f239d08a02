"""Transfer planning without a cluster: cp-like destinations, -r trees both ways, and the
errors a plan reports (usage errors apart)."""
from __future__ import annotations

import errno
import os

import pytest

from client import transfer_plan as plan


class FakeFs:
    """The two verbs planning uses, over {path: size} files and a set of directories."""

    def __init__(self, files: dict[str, int], dirs: set[str]) -> None:
        self.files, self.dirs = files, dirs | {"/"}

    def isdir(self, path):
        return path.rstrip("/") in self.dirs or path == "/"

    def stat(self, path):
        if path in self.files:
            return {"type": "file", "size": self.files[path]}
        if path.rstrip("/") in self.dirs:
            return {"type": "dir", "size": 0}
        raise FileNotFoundError(errno.ENOENT, "No such file or directory", path)

    def ls(self, path, detail=False):
        base = path.rstrip("/")
        out = [{"name": p[len(base) + 1:], "type": "file", "size": s}
               for p, s in self.files.items() if p.rpartition("/")[0] == base]
        out += [{"name": d[len(base) + 1:], "type": "dir", "size": 0}
                for d in self.dirs if d != base and d.rpartition("/")[0] == base]
        return out


def test_single_upload_destination():
    fs = FakeFs({}, {"/up"})
    assert plan.upload_target(fs, "a/photo.png", "/x.png") == "/x.png"
    assert plan.upload_target(fs, "a/photo.png", "/up") == "/up/photo.png"
    assert plan.upload_target(fs, "a/photo.png", "/new/") == "/new/photo.png"
    assert plan.upload_target(fs, "-", "/up") == "/up"                 # stdin has no name
    assert plan.single_upload(("-",)) and not plan.single_upload(("a", "b"))


def test_upload_tree(tmp_path):
    (tmp_path / "t" / "sub").mkdir(parents=True)
    (tmp_path / "t" / "empty").mkdir()
    (tmp_path / "t" / "b.txt").write_bytes(b"bb")
    (tmp_path / "t" / "sub" / "a.bin").write_bytes(b"a")
    os.mkfifo(tmp_path / "t" / "pipe")
    (tmp_path / "one").write_bytes(b"123")
    warned = []
    files, empty = plan.plan_upload((str(tmp_path / "t"), str(tmp_path / "one")), "/dst/",
                                    True, warn=warned.append)
    assert [(dst, size) for _, dst, size in files] == [
        ("/dst/t/b.txt", 2), ("/dst/t/sub/a.bin", 1), ("/dst/one", 3)]
    assert empty == ["/dst/t/empty"]
    assert len(warned) == 1 and "pipe: not a regular file" in warned[0]


def test_upload_plan_errors(tmp_path):
    (tmp_path / "d").mkdir()
    with pytest.raises(plan.PlanError) as exc:
        plan.plan_upload((str(tmp_path / "d"),), "/x", False)
    assert exc.value.usage and "use -r" in exc.value.message
    with pytest.raises(plan.PlanError) as exc:
        plan.plan_upload(("-", str(tmp_path / "d")), "/x", True)
    assert exc.value.usage
    with pytest.raises(plan.PlanError) as exc:
        plan.plan_upload((str(tmp_path / "gone"), str(tmp_path / "d")), "/x", True)
    assert not exc.value.usage and exc.value.message.startswith("put: ")
    assert "gone" in exc.value.message


def test_download_tree_and_missing(tmp_path):
    fs = FakeFs({"/a/x": 1, "/a/s/y": 2, "/z": 3}, {"/a", "/a/s"})
    files, dirs, missing = plan.plan_download(fs, ("/a", "/z", "/nope"), "out", True)
    assert sorted((r, loc, n) for r, loc, n in files) == [
        ("/a/s/y", os.path.join("out", "a", "s", "y"), 2),
        ("/a/x", os.path.join("out", "a", "x"), 1), ("/z", os.path.join("out", "z"), 3)]
    assert dirs[0] == "out" and dirs.index(os.path.join("out", "a")) < \
        dirs.index(os.path.join("out", "a", "s"))                      # parents first
    assert [e.filename for e in missing] == ["/nope"]
    with pytest.raises(plan.PlanError) as exc:
        plan.plan_download(fs, ("/a",), "out", False)
    assert exc.value.usage
    with pytest.raises(plan.PlanError):
        plan.plan_download(fs, ("/z", "/a"), "-", True)


def test_single_download_destination(tmp_path):
    fs = FakeFs({"/a/x": 1}, {"/a"})
    assert plan.single_download(fs, ("/a/x",), True)
    assert not plan.single_download(fs, ("/a",), True)
    assert plan.download_target("/a/x", str(tmp_path)) == str(tmp_path / "x")
    assert plan.download_target("/a/x", str(tmp_path / "y")) == str(tmp_path / "y")

"""The file-system contract: what every AegisFS front-end must do the same way.

One suite, parameterised by fixtures (the fsspec pattern): a backend's test module
subclasses `FileSystemContract` and provides

    fsc        an object with AegisClient's verbs (mkdir, ls, stat, exists, write_bytes,
               read_bytes, rm, mv, du); errors are OSError subclasses with errno
    base       a fresh, empty directory path for the test (it exists)
    block_size the block size files are written with (so sizes can straddle blocks;
               FixedBlockSize wraps an AegisClient to write with it)

The live cluster, the in-process cluster and later the mount, fsspec and the S3 gateway run
it; a semantic difference between them is a failing test, not a surprise for a user.
"""
from __future__ import annotations

import errno
import random
from typing import Any

import pytest


class FixedBlockSize:
    """A backend's client with a fixed block size for writes (so that small sizes straddle
    blocks); every other verb is the client's own."""

    def __init__(self, client: Any, block_size: int) -> None:
        self._c, self._bs = client, block_size

    def write_bytes(self, path: str, data: bytes, parents: bool = True) -> dict:
        return self._c.write_bytes(path, data, block_size=self._bs, parents=parents)

    def __getattr__(self, name: str) -> Any:
        return getattr(self._c, name)


def _errno(exc_info: pytest.ExceptionInfo) -> int | None:
    return exc_info.value.errno


class FileSystemContract:
    """Subclass as `class TestSomething(FileSystemContract)` beside the three fixtures."""

    # -- helpers -------------------------------------------------------------------------

    @staticmethod
    def tree(fsc, top: str) -> dict:
        """path -> ("dir", None) / ("file", size) of everything under `top`."""
        out, stack = {}, [top]
        while stack:
            d = stack.pop()
            for e in fsc.ls(d, detail=True):
                p = d.rstrip("/") + "/" + e["name"]
                if e["type"] == "dir":
                    out[p] = ("dir", None)
                    stack.append(p)
                else:
                    out[p] = ("file", e["size"])
        return out

    def fails(self, fsc, base: str, code: int, fn, *args, **kwargs) -> None:
        """`fn` raises OSError with `code`, and nothing under `base` changed."""
        before = self.tree(fsc, base)
        with pytest.raises(OSError) as info:
            fn(*args, **kwargs)
        assert _errno(info) == code, f"{fn.__name__}{args}: {info.value!r}"
        assert self.tree(fsc, base) == before

    # -- directories ---------------------------------------------------------------------

    def test_mkdir_then_stat_and_ls(self, fsc, base):
        fsc.mkdir(f"{base}/d")
        assert fsc.stat(f"{base}/d")["type"] == "dir"
        assert fsc.ls(base) == ["d"]
        assert fsc.ls(f"{base}/d") == []

    def test_mkdir_of_an_existing_path_is_eexist_unless_parents(self, fsc, base):
        fsc.mkdir(f"{base}/d")
        fsc.write_bytes(f"{base}/f", b"x")
        self.fails(fsc, base, errno.EEXIST, fsc.mkdir, f"{base}/d")
        self.fails(fsc, base, errno.EEXIST, fsc.mkdir, f"{base}/f")
        fsc.mkdir(f"{base}/d", parents=True)          # mkdir -p of a directory: fine
        self.fails(fsc, base, errno.EEXIST, fsc.mkdir, f"{base}/f", parents=True)

    def test_mkdir_needs_its_parent_unless_parents(self, fsc, base):
        self.fails(fsc, base, errno.ENOENT, fsc.mkdir, f"{base}/a/b")
        fsc.mkdir(f"{base}/a/b/c", parents=True)
        assert self.tree(fsc, base) == {f"{base}/a": ("dir", None),
                                        f"{base}/a/b": ("dir", None),
                                        f"{base}/a/b/c": ("dir", None)}

    def test_mkdir_under_a_file_is_enotdir(self, fsc, base):
        fsc.write_bytes(f"{base}/f", b"x")
        self.fails(fsc, base, errno.ENOTDIR, fsc.mkdir, f"{base}/f/d")
        self.fails(fsc, base, errno.ENOTDIR, fsc.mkdir, f"{base}/f/d/e", parents=True)

    def test_ls_is_sorted_with_types_and_sizes(self, fsc, base):
        names = ["b", "a", "c.txt", "A", "z9", "ü"]
        for i, name in enumerate(names):
            if i % 2:
                fsc.mkdir(f"{base}/{name}")
            else:
                fsc.write_bytes(f"{base}/{name}", b"x" * i)
        entries = fsc.ls(base, detail=True)
        assert [e["name"] for e in entries] == sorted(names)
        for e in entries:
            i = names.index(e["name"])
            assert e["type"] == ("dir" if i % 2 else "file")
            if e["type"] == "file":
                assert e["size"] == i

    def test_ls_of_a_file_lists_the_file(self, fsc, base):
        fsc.write_bytes(f"{base}/f", b"abc")
        assert fsc.ls(f"{base}/f") == ["f"]
        assert fsc.ls(f"{base}/f", detail=True)[0]["size"] == 3

    def test_missing_paths_are_enoent(self, fsc, base):
        for fn in (fsc.ls, fsc.stat, fsc.read_bytes, fsc.rm, fsc.du):
            self.fails(fsc, base, errno.ENOENT, fn, f"{base}/nope")
        self.fails(fsc, base, errno.ENOENT, fsc.ls, f"{base}/nope/deeper")
        assert not fsc.exists(f"{base}/nope")

    def test_paths_are_normalised(self, fsc, base):
        fsc.mkdir(f"{base}//d/")
        fsc.write_bytes(f"{base}/d/./f", b"abc")
        assert fsc.read_bytes(f"{base}/d/f") == b"abc"
        assert fsc.stat(f"{base}/d//f/")["size"] == 3
        assert fsc.ls(f"{base}/") == ["d"]

    # -- files ---------------------------------------------------------------------------

    def test_round_trip_at_the_block_edges(self, fsc, base, block_size):
        rng = random.Random(5)
        for size in (0, 1, 4095, block_size - 1, block_size, block_size + 1,
                     3 * block_size + 7):
            data = rng.randbytes(size)
            fsc.write_bytes(f"{base}/f{size}", data)
            assert fsc.read_bytes(f"{base}/f{size}") == data, size
            st = fsc.stat(f"{base}/f{size}")
            assert st["type"] == "file" and st["size"] == size

    def test_ranged_reads(self, fsc, base, block_size):
        data = random.Random(6).randbytes(2 * block_size + 100)
        fsc.write_bytes(f"{base}/f", data)
        for offset, length in ((0, 1), (5, 100), (block_size - 3, 6), (block_size, None),
                               (len(data) - 1, 10), (len(data), 5), (0, None)):
            want = data[offset:] if length is None else data[offset:offset + length]
            assert fsc.read_bytes(f"{base}/f", offset, length) == want, (offset, length)

    def test_overwrite_replaces_the_whole_content(self, fsc, base, block_size):
        fsc.write_bytes(f"{base}/f", b"a" * (2 * block_size + 1))
        fsc.write_bytes(f"{base}/f", b"short")
        assert fsc.read_bytes(f"{base}/f") == b"short"
        assert fsc.stat(f"{base}/f")["size"] == 5
        assert fsc.ls(base) == ["f"]

    def test_files_and_directories_do_not_stand_in_for_each_other(self, fsc, base):
        fsc.mkdir(f"{base}/d")
        fsc.write_bytes(f"{base}/f", b"x")
        self.fails(fsc, base, errno.EISDIR, fsc.read_bytes, f"{base}/d")
        self.fails(fsc, base, errno.EISDIR, fsc.write_bytes, f"{base}/d", b"y")
        self.fails(fsc, base, errno.ENOTDIR, fsc.write_bytes, f"{base}/f/g", b"y")
        assert fsc.read_bytes(f"{base}/f") == b"x"

    def test_write_without_parents_needs_the_directory(self, fsc, base):
        self.fails(fsc, base, errno.ENOENT, fsc.write_bytes, f"{base}/a/f", b"x",
                   parents=False)
        fsc.write_bytes(f"{base}/a/b/f", b"x")      # parents by default
        assert fsc.stat(f"{base}/a/b")["type"] == "dir"

    # -- rm ------------------------------------------------------------------------------

    def test_rm_of_files_and_directories(self, fsc, base):
        fsc.write_bytes(f"{base}/f", b"x")
        fsc.mkdir(f"{base}/empty")
        fsc.write_bytes(f"{base}/full/g", b"y")
        fsc.rm(f"{base}/f")
        fsc.rm(f"{base}/empty")
        self.fails(fsc, base, errno.ENOTEMPTY, fsc.rm, f"{base}/full")
        fsc.rm(f"{base}/full", recursive=True)
        assert fsc.ls(base) == []
        self.fails(fsc, base, errno.ENOENT, fsc.rm, f"{base}/f")

    def test_the_root_cannot_be_removed(self, fsc, base):
        self.fails(fsc, base, errno.EINVAL, fsc.rm, "/", recursive=True)

    # -- mv ------------------------------------------------------------------------------

    def test_mv_renames_and_moves_into_directories(self, fsc, base):
        fsc.write_bytes(f"{base}/f", b"one")
        fsc.mkdir(f"{base}/d")
        assert fsc.mv(f"{base}/f", f"{base}/g") == f"{base}/g"
        assert fsc.mv(f"{base}/g", f"{base}/d") == f"{base}/d/g"       # into a directory
        assert fsc.read_bytes(f"{base}/d/g") == b"one"
        assert fsc.mv(f"{base}/d", f"{base}/e") == f"{base}/e"          # a whole tree
        assert self.tree(fsc, base) == {f"{base}/e": ("dir", None),
                                        f"{base}/e/g": ("file", 3)}

    def test_mv_replaces_a_file_atomically(self, fsc, base):
        fsc.write_bytes(f"{base}/new", b"new")
        fsc.write_bytes(f"{base}/old", b"old content")
        fsc.mv(f"{base}/new", f"{base}/old")
        assert fsc.ls(base) == ["old"]
        assert fsc.read_bytes(f"{base}/old") == b"new"

    def test_mv_refuses_what_posix_refuses(self, fsc, base):
        fsc.write_bytes(f"{base}/f", b"x")
        fsc.write_bytes(f"{base}/full/g", b"y")
        fsc.mkdir(f"{base}/d/sub", parents=True)
        self.fails(fsc, base, errno.ENOENT, fsc.mv, f"{base}/nope", f"{base}/x")
        self.fails(fsc, base, errno.EINVAL, fsc.mv, f"{base}/d", f"{base}/d/sub/x")
        self.fails(fsc, base, errno.ENOENT, fsc.mv, f"{base}/f", f"{base}/none/x")
        self.fails(fsc, base, errno.ENOTDIR, fsc.mv, f"{base}/f", f"{base}/f/x")

    def test_mv_onto_itself_changes_nothing(self, fsc, base):
        fsc.write_bytes(f"{base}/f", b"x")
        fsc.mv(f"{base}/f", f"{base}/f")
        assert fsc.read_bytes(f"{base}/f") == b"x" and fsc.ls(base) == ["f"]

    # -- du ------------------------------------------------------------------------------

    def test_du_counts_what_is_under_a_path(self, fsc, base):
        fsc.write_bytes(f"{base}/a/f", b"x" * 10)
        fsc.write_bytes(f"{base}/a/b/g", b"y" * 5)
        fsc.mkdir(f"{base}/c")
        got = fsc.du(f"{base}/a")
        assert (got["bytes"], got["files"]) == (15, 2)
        assert got["dirs"] in (1, 2)   # with or without the directory itself, but stable
        assert fsc.du(base)["bytes"] == 15

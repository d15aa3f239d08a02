from __future__ import annotations

import errno

import pytest

from mds import paths


@pytest.mark.parametrize("raw, canonical", [
    ("/", "/"),
    ("//", "/"),
    ("/a", "/a"),
    ("/a/", "/a"),
    ("//a//b///c", "/a/b/c"),
    ("/a/./b/.", "/a/b"),
    ("/./.", "/"),
    ("/héllo/wörld", "/héllo/wörld"),
    ("/a b/c-d_e.txt", "/a b/c-d_e.txt"),
])
def test_normalize_accepts_and_canonicalises(raw: str, canonical: str) -> None:
    assert paths.normalize(raw) == canonical
    assert paths.normalize(canonical) == canonical


@pytest.mark.parametrize("bad", [
    "", "a", "a/b", "./a",          # relative
    "/a/../b", "/..", "/a/..",      # '..' is refused, never resolved
    "/a\x00b",                      # NUL
    "/a/\udc80",                    # lone surrogate: not UTF-8
    None, b"/a", 5,                 # not a string
])
def test_normalize_rejects_with_einval(bad: object) -> None:
    with pytest.raises(OSError) as info:
        paths.normalize(bad)  # type: ignore[arg-type]
    assert info.value.errno == errno.EINVAL
    assert type(info.value) is OSError


@pytest.mark.parametrize("long", [
    "/" + "x" * 256,                # component > 255 bytes
    "/" + "é" * 128,                # 256 bytes of UTF-8 in 128 characters
    "/" + "/".join(["a" * 200] * 82),   # the whole path over MAX_PATH_BYTES
])
def test_too_long_is_enametoolong(long: str) -> None:
    with pytest.raises(OSError) as info:
        paths.normalize(long)
    assert info.value.errno == errno.ENAMETOOLONG


def test_error_carries_the_path_as_filename() -> None:
    with pytest.raises(OSError) as info:
        paths.normalize("/a/../b")
    assert info.value.filename == "/a/../b"
    assert "'..'" in str(info.value)


def test_length_limits_are_inclusive() -> None:
    name = "n" * 255
    assert paths.normalize("/" + name) == "/" + name
    # MAX_PATH_BYTES exactly is fine, one more is not
    limit = paths.MAX_PATH_BYTES
    exact = "/" + "/".join(["a" * 254] * (limit // 256))
    exact = exact + "/" + "b" * (limit - len(exact) - 1)
    assert len(exact.encode()) == limit
    assert paths.normalize(exact) == exact
    with pytest.raises(OSError) as info:
        paths.normalize(exact + "c")
    assert info.value.errno == errno.ENAMETOOLONG


def test_split_join_basename() -> None:
    assert paths.split("/a/b/c") == ("/a/b", "c")
    assert paths.split("/a") == ("/", "a")
    assert paths.split("//x//y/") == ("/x", "y")
    with pytest.raises(OSError) as info:
        paths.split("/")
    assert info.value.errno == errno.EINVAL
    assert paths.join("/", "a") == "/a"
    assert paths.join("/a", "b") == "/a/b"
    for bad in ("", "a/b", "..", "."):
        with pytest.raises(OSError):
            paths.join("/a", bad)
    assert paths.basename("/a/b") == "b"
    assert paths.basename("/") == ""
    assert paths.components("/") == []
    assert paths.components("/x/y") == ["x", "y"]


def test_is_within() -> None:
    assert paths.is_within("/a/b", "/a")
    assert paths.is_within("/a", "/a")
    assert paths.is_within("/anything", "/")
    assert not paths.is_within("/ab", "/a")
    assert not paths.is_within("/a", "/a/b")

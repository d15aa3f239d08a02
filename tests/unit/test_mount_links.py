"""The mount's bookkeeping of hard-linked names (client/mount/links.py) and its attribute
cache's part: linked files are never cached, and every drop is heard."""
from __future__ import annotations

import stat as S

from client.mount.cache import AttrCache
from client.mount.links import InodeNumbers, LinkNames


def linked(ino: int, count: int = 2) -> dict:
    return {"type": "file", "nlink": count, "inode": ino}


def test_names_of_one_file_know_each_other() -> None:
    names = LinkNames()
    assert not names and names.others("/a") == []
    names.note("/a", linked(7))
    names.note("/d/b", linked(7))
    names.note("/x", linked(8))
    names.note("/plain", {"type": "file"})            # one name: not remembered
    assert sorted(names.others("/a")) == ["/d/b"] and names.others("/plain") == []
    names.add("/a", "/c")                              # a link made here
    assert sorted(names.others("/d/b")) == ["/a", "/c"]
    # a new version (new inode id) of the file: the name follows it
    names.note("/a", linked(9))
    assert sorted(names.others("/d/b")) == ["/c"] and names.others("/a") == []
    # down to one name: forgotten
    names.note("/c", {"type": "file", "inode": 7})
    assert names.others("/d/b") == []
    names.move("/d", "/e")
    assert names.under("/e") == ["/e/b"] and names.under("/d") == []
    names.forget("/e/b")
    names.forget("/never")
    assert sorted(names.under("/")) == ["/a", "/x"]


def test_the_cache_keeps_no_linked_file_and_reports_drops() -> None:
    cache = AttrCache(60)
    heard: list[tuple[str, bool]] = []
    cache.on_change = lambda path, tree: heard.append((path, tree))
    reg = {"st_mode": S.S_IFREG | 0o644, "st_nlink": 1}
    cache.put("/one", reg)
    cache.put("/two", {**reg, "st_nlink": 2})
    cache.put("/dir", {"st_mode": S.S_IFDIR | 0o755, "st_nlink": 5})
    assert cache.get("/one") == reg and cache.get("/two") is None
    assert cache.get("/dir") is not None
    cache.drop("/one")
    cache.drop_entry("/dir")
    cache.drop_tree("/t")
    assert heard == [("/one", False), ("/dir", False), ("/t", True)]



def test_a_file_made_here_keeps_its_number_after_the_commit() -> None:
    inos = InodeNumbers()
    assert inos.of("/old", 17) == 17                  # the MDS's numbers as they are
    t = inos.temp("/new")
    assert t > InodeNumbers.TEMP_INO and inos.temp("/new") == t
    assert inos.temp("/other") not in (t, 17)
    inos.move("/new", "/d/renamed")                   # renamed before its commit
    assert inos.of("/d/renamed", 42) == t             # first seen in the MDS as 42
    assert inos.of("/d/renamed", 42) == t and inos.of("/a/link", 42) == t
    assert inos.of("/new", 43) == 43

"""The FUSE operations of `aegisfs mount` over AegisClient (mfusepy's fusepy-style API).

The MDS is the authority for names and attributes; the kernel checks permissions from
the attributes reported here (`default_permissions`), the MDS checks them again for the
mount's own key. `AegisOperations` holds the mount's state (attribute cache, known
directories, open handles, the queue of closed small files) and is made of three parts:
ops_attrs.py (getattr, readdir, statfs), ops_names.py (mkdir, rename, unlink, chmod,
chown, utimens, links and special files), ops_files.py (open files and the background
commit of small ones). Files: see handles.py.
"""
from __future__ import annotations

import logging
import threading
from typing import Any

import mfusepy

from .cache import AttrCache, KnownDirs, OwnChanges
from .conn import MountClient
from .handles import FileHandle
from .ids import IdMap
from .links import InodeNumbers, KernelCache, LinkNames
from .ops_attrs import AttrOps
from .ops_files import FileOps
from .ops_names import NameOps
from .pending import PendingQueue

log = logging.getLogger(__name__)


class AegisOperations(AttrOps, NameOps, FileOps, mfusepy.Operations):
    use_ns = True

    def __init__(self, fs: MountClient, ids: IdMap, *, attr_timeout: float = 1.0,
                 spool_dir: str | None = None, background: bool = True,
                 pending_files: int = 4096, pending_bytes: int = 64 << 20) -> None:
        self.fs = fs
        self.ids = ids
        self.cache = AttrCache(attr_timeout)
        self.spool_dir = spool_dir
        self._handles: dict[int, FileHandle] = {}
        self._by_path: dict[str, set[int]] = {}
        self._next = 1
        self._lock = threading.Lock()
        self._statfs: tuple[float, dict] | None = None
        self._max_file_size: int | None = None
        self.invalidator: Any = None       # events.Invalidator, started by init()
        # small new files closed without fsync: committed in batches (pending.py)
        self.background = background
        self.pending = PendingQueue(self._commit_batch, max_files=pending_files,
                                    max_bytes=pending_bytes)
        self._committer_started = False
        self._block_size: int | None = None
        self.own = OwnChanges()             # our commits: their events keep the parent
        self.known = KnownDirs(attr_timeout)  # negative lookups answered here
        self.links = LinkNames()            # names seen of hard-linked files
        self.inos = InodeNumbers()          # st_ino of files made here
        self.kernel = KernelCache()         # bound to the session by init()
        self.cache.on_change = self._names_changed

    # Extended attributes are not supported. Not registering the xattr operations makes
    # libfuse answer ENOSYS, after which the kernel stops asking (and answers EOPNOTSUPP
    # itself): otherwise every write costs a getxattr("security.capability") round trip.
    getxattr = setxattr = listxattr = removexattr = None

    def init(self, path: str) -> None:
        """The mount is live: follow the event feed to drop what changed elsewhere."""
        self.kernel.bind()
        from .events import Invalidator, events_endpoint
        endpoint = events_endpoint(self.fs.broker)
        if endpoint and self.cache.ttl > 0:
            self.invalidator = Invalidator(endpoint, self.fs._curve, self.cache,
                                           self.own, self.known)
            self.invalidator.start()

    def _names_changed(self, path: str, tree: bool) -> None:
        """A change to `path` (and below, `tree`): the kernel forgets its attributes of
        the other names of hard-linked files there (client/mount/links.py)."""
        if not self.links:
            return
        names = self.links.under(path) if tree else [path]
        others = {q for p in names for q in self.links.others(p)}
        if others:
            self.kernel.invalidate(sorted(others))

    def destroy(self, path: str) -> None:
        """Unmount: open drafts are aborted (a file not closed is not committed)."""
        if self.invalidator is not None:
            self.invalidator.stop()
        for fh in list(self._handles):
            try:
                self.release("", fh)
            except OSError as exc:
                log.warning("unmount: %s", exc)
        if self._committer_started:
            self.pending.stop(drain=True)      # closed files are committed before we go
        self.fs.close()

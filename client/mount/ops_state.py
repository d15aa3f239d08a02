"""The state that the parts of ``client.mount.ops.AegisOperations`` share (ops_attrs.py,
ops_names.py, ops_files.py): declared here once for the type checker, set by
AegisOperations.__init__. No behaviour of its own.
"""
from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import threading

    from .cache import AttrCache, KnownDirs, OwnChanges
    from .conn import MountClient
    from .handles import FileHandle
    from .ids import IdMap
    from .links import InodeNumbers, KernelCache, LinkNames
    from .pending import PendingQueue


class MountState:
    """What every part of AegisOperations may use of the mount's state."""

    fs: MountClient
    ids: IdMap
    cache: AttrCache                # attributes, kept for attr_timeout
    known: KnownDirs                # directories whose every name is known
    own: OwnChanges                 # our commits: their events keep the parent
    pending: PendingQueue           # small new files closed, their commit to come
    links: LinkNames                # names seen of hard-linked files
    inos: InodeNumbers              # st_ino of files made here
    kernel: KernelCache             # the kernel's attribute cache of paths
    spool_dir: str | None
    background: bool
    _handles: dict[int, FileHandle]
    _by_path: dict[str, set[int]]   # path -> the handles open on it
    _next: int                      # the next file handle number
    _lock: threading.Lock           # guards _handles, _by_path, _next
    _statfs: tuple[float, dict] | None
    _max_file_size: int | None
    _block_size: int | None
    _committer_started: bool

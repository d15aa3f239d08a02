"""The state that the record parts of ``mds.namespace.Namespace`` share (ns_create.py,
ns_commit.py, ns_remove.py, ns_link.py, ns_attrs.py, ns_clone.py, ns_restore.py): declared
here once for the type checker, set by Namespace.__init__. No behaviour of its own (as
client/mount/ops_state.py is for the mount's parts).
"""
from __future__ import annotations

import builtins   # `bytes` in the class body below is the Namespace counter
from typing import TYPE_CHECKING, Callable, Sequence

if TYPE_CHECKING:
    from mds.blockmap import BlockMap
    from mds.drafts import Drafts
    from mds.namespace import NamespaceConfig
    from mds.tree import Tree
    from mds.treequota import TreeQuota, TreeQuotas


class NamespaceState:
    """What every record part of Namespace may use of its state."""

    config: NamespaceConfig
    tree: Tree
    blockmap: BlockMap
    drafts: Drafts
    quotas: TreeQuotas              # per-tree limits (mds/treequota.py)
    next_inode: int
    files: int
    dirs: int
    blocks: int
    bytes: int
    _clock: Callable[[], float]
    _random: Callable[[int], builtins.bytes]
    _restored_quotas: Sequence

    if TYPE_CHECKING:    # Namespace's own
        def _quotas_over(self, names: Sequence[str]) -> list[TreeQuota]: ...

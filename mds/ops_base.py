"""What every group of MDS operations shares: the field types their declarations use,
the caller classes, the caller's credentials (`cred_of`), and `HandlerBase`, the state
the handlers reach and the helpers they call. The groups are mixins of `mds.ops.Handlers`
(ops_namespace.py, ops_write.py, ops_datanode.py, ops_admin.py), which builds the state
and the service table.

Who a client is comes from the broker's stamp (`ctx.caller_id`), made a `perms.Cred` by
`cred_of` in one place; the namespace's `prepare_*` and reads check it (mds/perms.py).
"""
from __future__ import annotations

import errno
import logging
from typing import Any, Callable

from broker import protocol as P
from broker.capability import RECEIPT_BYTES
from broker.service import Bytes, Context, Int, List, Map, Nil, OneOf, Str

from .cluster import ClusterView
from .grants import Grants
from .inode import BLOCK_ID_LEN
from .metastore import MetaStore
from .namespace import MAX_BLOCK_SIZE, MAX_HANDLE_LEN, Namespace
from .paths import MAX_PATH_BYTES
from .perms import MODE_BITS, SUPERUSER, Cred
from .quota import Allocations
from .repair import RepairPlanner
from .tree import MAX_NAME

log = logging.getLogger(__name__)

CLIENT = frozenset({P.CALLER_CLIENT})
DATANODE = frozenset({P.CALLER_DATANODE})

# Field types shared by the declarations of the handler groups.
# the path module checks the rest (EINVAL; ENAMETOOLONG over MAX_PATH_BYTES: the bound
# here is wider so that a too-long path gets that errno, and still bounds the request)
PATH = Str(2 * MAX_PATH_BYTES)
HANDLE = Str(MAX_HANDLE_LEN)
NODE = Str(P.MAX_SERVICE_LEN - 3)     # registered as "dn.<id>"
BLOCK = Bytes(BLOCK_ID_LEN, BLOCK_ID_LEN)
COUNT = Int(0, 1 << 63)
CHECKSUM = Int(0, 0xFFFF_FFFF)
# odd exclude entries are taken as (unknown) node names: they exclude nothing
EXCLUDE = List(OneOf(NODE, Int(-(1 << 63), 1 << 64), Nil()), 1024)
MODE = Int(0, MODE_BITS)
UMASK = Int(0, 0o777)                 # the caller's umask (default 0o022; a mount: 0)
NAME = Str(MAX_NAME, 1)               # an owner or group name
RECEIPT = Bytes(RECEIPT_BYTES)  # a wrong one is refused by the receipt check, not here
# a DataNode's data endpoint (datanode/dataplane.py), as its heartbeat advertises it
DATA_ADVERT = Map({"endpoint": Str(256, 8), "key?": Str(40, 40)})
COMMIT_BLOCK = Map({"id": BLOCK, "size": Int(0, MAX_BLOCK_SIZE), "checksum": CHECKSUM,
                    "replicas?": List(NODE, 255), "receipts?": List(RECEIPT, 255),
                    "from?": PATH})


def bad_request(message: str) -> OSError:
    return OSError(errno.EINVAL, message)


def cred_of(ctx: Context) -> Cred:
    """The credentials of a client request: the user the broker stamped, in the group of
    its own name (group membership beyond that is not kept yet); the superuser is the
    user named perms.SUPERUSER."""
    return Cred(ctx.caller_id, superuser=ctx.caller_id == SUPERUSER)


class HandlerBase:
    """The state every handler group uses (set by `Handlers.__init__`) and the helpers
    they share."""

    store: MetaStore
    ns: Namespace
    cluster: ClusterView
    repair: RepairPlanner
    grants: Grants
    allocations: Allocations
    endpoints: dict[str, list[str]]   # node -> [data endpoint, CURVE public key or ""]
    epoch: int | None
    ha_status: Callable[[], dict] | None

    def _with_endpoints(self, out: dict, nodes: Any) -> dict:
        """Add the data endpoints of `nodes` that have one, as one table per reply
        (`endpoints: {node: [endpoint, key]}`), for the client to send payloads there."""
        table = {n: self.endpoints[n] for n in set(nodes) if n in self.endpoints}
        if table:
            out["endpoints"] = table
        return out

    def submit(self, prepare: Callable) -> dict:
        return self.store.submit(prepare)

    def _submit_all(self, records: list) -> None:
        for rec in records:
            try:
                self.store.submit(rec)
            except OSError as exc:   # the state moved on since the planner looked
                log.info("repair record %s skipped: %s", rec.get("op"), exc)

"""The namespace verbs of the MDS (service "mds"): mkdir, ls, stat, du, rm, mv, rename,
link, utimens, chmod, chown and the tree quotas (quota_set/clear/get/ls). A mixin of
`mds.ops.Handlers`; each verb reads the namespace or submits its `prepare_*` record and
emits its event. `stat` is also the read path: it mints the read capabilities
(mds/grants.py) of the blocks it lists.
"""
from __future__ import annotations

import errno

from broker.service import Bool, Context, Float, Int, Str, operation

from .ops_base import (CLIENT, COUNT, MODE, NAME, PATH, UMASK, HandlerBase, bad_request,
                       cred_of)
from .tree import MAX_NAME

# read capabilities in one stat reply (~60 bytes each): more blocks ask with caps_from
MAX_STAT_CAPS = 4096


class NamespaceOps(HandlerBase):
    """Namespace verbs, mixed into Handlers."""

    @operation({"path": PATH, "parents?": Bool(), "mode?": MODE, "umask?": UMASK},
               callers=CLIENT, mutating=True)
    def mkdir(self, h: dict, payload: list, ctx: Context) -> dict:
        """Make directory `path` (with missing parents when `parents`), owned by the
        caller, with `mode` (default 0o777) & ~`umask` (default 0o022) -> {}. Needs
        write and search on the directory that gets the new entry (EACCES)."""
        cred = cred_of(ctx)
        self.submit(lambda ns: ns.prepare_mkdir(h["path"], parents=bool(h.get("parents")),
                                                cred=cred, mode=h.get("mode"),
                                                umask=h.get("umask")))
        ctx.emit("dir.create", path=h["path"])
        return {}

    @operation({"path": PATH, "start_after?": Str(MAX_NAME), "limit?": Int(1, 1 << 31)},
               callers=CLIENT)
    def ls(self, h: dict, payload: list, ctx: Context) -> dict:
        """List `path` -> entries: [{name, type: file/dir, size, mtime, mode, owner, group,
        ctime, atime}], sorted by name; a page: `limit` entries after `start_after`.
        Needs read on a directory listed (EACCES)."""
        return {"entries": self.ns.ls(h["path"], start_after=h.get("start_after"),
                                      limit=h.get("limit"), cred=cred_of(ctx))}

    @operation({"path": PATH, "read?": Bool(), "caps_from?": COUNT, "blocks?": Bool()},
               callers=CLIENT)
    def stat(self, h: dict, payload: list, ctx: Context) -> dict:
        """Describe `path` -> {path, type, size, mtime, mode, owner, group, ctime, atime,
        replication, block_size, blocks: [{id, size, checksum, replicas, cap?}], cap_ttl,
        endpoints?} (blocks empty for a directory; endpoints: the replicas' data
        endpoints). Needs search on the ancestors only; a file's block
        list (the read path) only goes to a caller that may read it, else `blocks` is left
        out; with `read` (a client about to read) such a caller gets EACCES instead.
        `cap` is a read capability valid on every replica for `cap_ttl` seconds, given for
        at most 4096 blocks from index `caps_from` (default 0); stat again with caps_from
        for the others, or when a DataNode refuses an expired one. `blocks: false` (a
        caller that only wants the attributes, like a HEAD) leaves the block list and
        the capabilities out without building them; with `read` as well, a file the
        caller may not read is still EACCES (an S3 HEAD needs read permission)."""
        cred = cred_of(ctx)
        read, want_blocks = bool(h.get("read")), h.get("blocks", True)
        if want_blocks:
            # file_info resolves the path and checks read permission itself: a file the
            # caller may read costs one lookup, not stat + may_read + file_info
            try:
                info = self.ns.file_info(h["path"], cred=cred)
            except IsADirectoryError:
                pass                 # described below, as without `read`
            except PermissionError:
                if read:
                    raise
                # no read on the file (stat then describes it without blocks) or no
                # search on an ancestor (stat then raises the same EACCES)
            else:
                self._add_caps(info, h.get("caps_from") or 0, ctx)
                return info
        info = self.ns.stat(h["path"], cred=cred)
        if info["type"] == "file":
            del info["blocks"]       # the count tree.stat gives, not a block list
            if read:
                self.ns.need_read(info["path"], cred)
        elif want_blocks:
            info["blocks"] = []
        return info

    def _add_caps(self, info: dict, first: int, ctx: Context) -> None:
        """Read capabilities for at most MAX_STAT_CAPS blocks of a file_info from `first`."""
        mint, wall = self.grants.mint_read, ctx.wall
        for b in info["blocks"][first:first + MAX_STAT_CAPS]:
            b["cap"] = mint(b["id"], wall)
        info["cap_ttl"] = self.grants.read_ttl
        self._with_endpoints(info, (n for b in info["blocks"] for n in b["replicas"]))

    @operation({"path": PATH}, callers=CLIENT)
    def du(self, h: dict, payload: list, ctx: Context) -> dict:
        """Usage below `path` -> {bytes, files, dirs}. Needs read and search on every
        directory below (EACCES)."""
        return self.ns.du(h["path"], cred=cred_of(ctx))

    @operation({"path": PATH, "bytes?": COUNT, "files?": COUNT}, callers=CLIENT,
               mutating=True)
    def quota_set(self, h: dict, payload: list, ctx: Context) -> dict:
        """Limit directory tree `path` to `bytes` and/or `files` (entries: files and
        directories below it; an absent limit: none) -> {path, bytes, files}. Every
        enclosing tree's quota applies too; a limit below the usage is taken (the tree can
        then only shrink). The superuser only (EPERM); EINVAL without a limit."""
        if h.get("bytes") is None and h.get("files") is None:
            raise bad_request("quota_set needs bytes or files (quota_clear removes a quota)")
        cred = cred_of(ctx)
        return self.submit(lambda ns: ns.prepare_quota(h["path"], h.get("bytes"),
                                                       h.get("files"), cred=cred))

    @operation({"path": PATH}, callers=CLIENT, mutating=True)
    def quota_clear(self, h: dict, payload: list, ctx: Context) -> dict:
        """Remove the quota of directory `path` (no-op without one) -> {path}. The
        superuser only (EPERM)."""
        cred = cred_of(ctx)
        self.submit(lambda ns: ns.prepare_quota(h["path"], None, None, cred=cred))
        return {"path": h["path"]}

    @operation({"path": PATH}, callers=CLIENT)
    def quota_get(self, h: dict, payload: list, ctx: Context) -> dict:
        """The quotas that apply in directory `path`, root first, its own last ->
        {quotas: [{path, max_bytes, max_files, bytes, files}]} (a limit None: none).
        Needs read on `path` (EACCES)."""
        return {"quotas": self.ns.quota_get(h["path"], cred=cred_of(ctx))}

    @operation(callers=CLIENT)
    def quota_ls(self, h: dict, payload: list, ctx: Context) -> dict:
        """Every quota on a directory the caller may read -> {quotas: [...]} as
        quota_get, by path."""
        return {"quotas": self.ns.quota_ls(cred=cred_of(ctx))}

    @operation({"path": PATH, "recursive?": Bool()}, callers=CLIENT, mutating=True)
    def rm(self, h: dict, payload: list, ctx: Context) -> dict:
        """Remove file or directory `path` (a non-empty one only when `recursive`) -> {}.
        Needs write and search on the parent, the sticky rule, and with `recursive` read,
        write and search on every directory emptied (EACCES)."""
        cred = cred_of(ctx)
        kind = self.ns.stat(h["path"], cred=cred)["type"]
        self.submit(lambda ns: ns.prepare_rm(h["path"], recursive=bool(h.get("recursive")),
                                             cred=cred))
        ctx.emit("file.delete" if kind == "file" else "dir.delete", path=h["path"])
        return {}

    @operation({"src": PATH, "dst": PATH}, callers=CLIENT, mutating=True)
    def mv(self, h: dict, payload: list, ctx: Context) -> dict:
        """Rename `src` to `dst` (into `dst` when it is a directory) -> {path: final}.
        Needs write and search on both parents and the sticky rule on both (EACCES)."""
        cred = cred_of(ctx)
        dst = self.ns.resolve_move(h["src"], h["dst"])
        self.submit(lambda ns: ns.prepare_rename(h["src"], dst, cred=cred))
        ctx.emit("file.rename", src=h["src"], dst=dst)
        return {"path": dst}

    @operation({"src": PATH, "dst": PATH, "noreplace?": Bool(), "exchange?": Bool()},
               callers=CLIENT, mutating=True)
    def rename(self, h: dict, payload: list, ctx: Context) -> dict:
        """rename(2): `src` becomes exactly `dst` -> {path}. A file replaces a file, a
        directory an empty directory (ENOTEMPTY, EISDIR, ENOTDIR otherwise); with
        `noreplace`, EEXIST when `dst` exists; with `exchange` (RENAME_EXCHANGE), both
        exist (ENOENT) and trade places atomically, whatever their kinds (EINVAL when
        one holds the other). Permissions as mv."""
        cred = cred_of(ctx)
        if h.get("exchange"):
            if h.get("noreplace"):
                raise bad_request("noreplace and exchange exclude each other")
            done = self.submit(lambda ns: ns.prepare_exchange(h["src"], h["dst"], cred=cred))
            ctx.emit("file.exchange", src=done["a"], dst=done["b"])
            return {"path": done["b"]}
        if h.get("noreplace"):
            try:
                self.ns.stat(h["dst"], cred=cred)
            except (FileNotFoundError, NotADirectoryError):
                pass
            else:
                raise FileExistsError(errno.EEXIST, "File exists", h["dst"])
        result = self.submit(lambda ns: ns.prepare_rename(h["src"], h["dst"], cred=cred))
        ctx.emit("file.rename", src=result["src"], dst=result["dst"])
        return {"path": result["dst"]}

    @operation({"src": PATH, "dst": PATH}, callers=CLIENT, mutating=True)
    def link(self, h: dict, payload: list, ctx: Context) -> dict:
        """link(2): `dst` becomes another name of file `src` -> {path, nlink, inode}. The names
        share one file: a change through either is seen through both, and the file goes
        with its last name. EPERM for a directory, EEXIST when `dst` exists, EMLINK past
        65,000 names, EXDEV across a tree quota's boundary; needs write and search on
        the directory that gets the entry (EACCES)."""
        cred = cred_of(ctx)
        result = self.submit(lambda ns: ns.prepare_link(h["src"], h["dst"], cred=cred))
        ctx.emit("file.link", src=result["src"], dst=result["dst"], nlink=result["nlink"])
        return {"path": result["dst"], "nlink": result["nlink"], "inode": result["inode"]}

    @operation({"path": PATH, "mtime?": Float(-1e11, 1e11), "atime?": Float(-1e11, 1e11),
                "keep_mtime?": Bool()}, callers=CLIENT, mutating=True)
    def utimens(self, h: dict, payload: list, ctx: Context) -> dict:
        """utimensat(2): set the mtime of `path` (now when absent; unchanged with
        `keep_mtime`, UTIME_OMIT) and, given, its atime (kept apart from the mtime from
        then on) -> {path, mtime}. An explicit time needs the owner or the superuser
        (EPERM); now, write permission too (EACCES)."""
        cred = cred_of(ctx)
        result = self.submit(lambda ns: ns.prepare_utimes(
            h["path"], h.get("mtime"), atime=h.get("atime"),
            keep_mtime=bool(h.get("keep_mtime")), cred=cred))
        ctx.emit("file.attr", path=result["path"], mtime=result["mtime"])
        return result

    @operation({"path": PATH, "mode": MODE}, callers=CLIENT, mutating=True)
    def chmod(self, h: dict, payload: list, ctx: Context) -> dict:
        """Set the 12 mode bits of `path` -> {path, type, mode, owner, group}. The owner
        or the superuser only (EPERM); the setgid bit is dropped for a caller outside the
        entry's group."""
        cred = cred_of(ctx)
        result = self.submit(lambda ns: ns.prepare_chmod(h["path"], h["mode"], cred=cred))
        ctx.emit(f"{result['type']}.attr", **result)
        return result

    @operation({"path": PATH, "owner?": NAME, "group?": NAME}, callers=CLIENT,
               mutating=True)
    def chown(self, h: dict, payload: list, ctx: Context) -> dict:
        """Set the `owner` and/or `group` of `path` -> {path, type, mode, owner, group}.
        A new owner: the superuser only; a new group: the owner to a group it is in, or
        the superuser (EPERM)."""
        cred = cred_of(ctx)
        result = self.submit(lambda ns: ns.prepare_chown(h["path"], h.get("owner"),
                                                         h.get("group"), cred=cred))
        ctx.emit(f"{result['type']}.attr", **result)
        return result

"""The gateway's storage layer: buckets, objects, sidecars and multipart uploads as
blocking AegisClient calls. Each method runs whole on one worker thread (AegisClient keeps
one broker socket per thread, and a stream must stay on the thread that opened it).

Copies and multipart completion move no byte: CopyObject is the MDS's server-side copy,
CompleteMultipartUpload commits the parts' blocks as the object's block list, and an
UploadPartCopy of whole source blocks shares them (other ranges stream, that range only).

Two identities: `fs` is the requesting user's own connection (identity.py), which does
every operation on objects, so the MDS checks that user's permissions; `meta` is the
gateway's own (admin) connection, which owns /.s3meta (sidecars, bucket records, multipart
uploads) and writes there only after the user's own operation succeeded.

Sidecar (/.s3meta/<bucket>/<key>): JSON {etag, size, mtime, content_type, meta}, written
after the object's commit with the committed mtime; a sidecar whose size/mtime do not
match the object (a crash between the two writes, a native `aegisfs put`) is ignored and
the object gets a derived ETag and binary/octet-stream.
"""
from __future__ import annotations

import concurrent.futures
import errno
import hashlib
import io
import json
import logging
import queue
import secrets
import threading
import time
from dataclasses import dataclass, field
from typing import Any, Callable, Iterable, Iterator

from ..api import AegisClient
from . import naming
from .errors import S3Error, from_oserror

log = logging.getLogger(__name__)

READ_AHEAD = 3                     # 4 MiB pieces read ahead while composing
MIN_PART = 5 * 1024 * 1024          # every part but the last, as S3
DEFAULT_TYPE = "binary/octet-stream"
NATIVE_OWNER = "admin"              # owns top-level directories not created through S3


@dataclass
class ObjectInfo:
    key: str
    size: int
    mtime: float
    etag: str                       # without quotes
    content_type: str = DEFAULT_TYPE
    meta: dict[str, str] = field(default_factory=dict)
    # head()'s read_info of the file (block list and read capabilities): what read()
    # streams from, so that a GET costs one stat; None for listings and folder markers
    source: dict | None = field(default=None, repr=False, compare=False)


def _derived_etag(size: int, mtime: float) -> str:
    return hashlib.md5(f"{size}:{mtime!r}".encode()).hexdigest()


def _info(key: str, entry: dict, side: dict | None) -> ObjectInfo:
    size, mtime = int(entry.get("size") or 0), float(entry.get("mtime") or 0)
    if side and side.get("size") == size and side.get("mtime") == mtime:
        return ObjectInfo(key, size, mtime, side["etag"],
                          side.get("content_type") or DEFAULT_TYPE, side.get("meta") or {})
    return ObjectInfo(key, size, mtime, _derived_etag(size, mtime))


class Sidecars:
    """Sidecars read recently, shared by the requests of one gateway: aws-cli fetches a
    big object as many ranged GETs, and each would read the same sidecar again (an MDS
    stat and a DataNode read). An entry is used only for the object version it
    describes (its size and mtime match the stat that the user's own request just made,
    as `_info` checks any sidecar), so it is never staler than the file itself; entries
    live `ttl` seconds, at most `limit` of them."""

    def __init__(self, ttl: float = 10.0, limit: int = 4096,
                 now: Callable[[], float] = time.monotonic) -> None:
        self.ttl, self.limit, self.now = ttl, limit, now
        self._lock = threading.Lock()
        self._entries: dict[str, tuple[dict, float]] = {}

    def get(self, path: str, size: int, mtime: float) -> dict | None:
        with self._lock:
            hit = self._entries.get(path)
        if hit is None or hit[1] < self.now():
            return None
        side = hit[0]
        return side if side.get("size") == size and side.get("mtime") == mtime else None

    def put(self, path: str, side: dict) -> None:
        with self._lock:
            if len(self._entries) >= self.limit:
                self._entries.clear()
            self._entries[path] = (side, self.now() + self.ttl)

    def drop(self, path: str) -> None:
        with self._lock:
            self._entries.pop(path, None)


def readers() -> concurrent.futures.ThreadPoolExecutor:
    """A few long-lived read-ahead threads (each keeps one broker socket per client)."""
    return concurrent.futures.ThreadPoolExecutor(4, "s3-read-ahead")


class Store:
    """One user's view. `user`: the S3 user (owner of its multipart uploads); `owner`:
    the AegisFS user to give the directories the gateway makes for it (a bucket, an
    upload's part directory), None to leave them the gateway's (one identity)."""

    def __init__(self, fs: AegisClient, *, meta: AegisClient | None = None,
                 user: str = NATIVE_OWNER, owner: str | None = None,
                 pool: concurrent.futures.ThreadPoolExecutor | None = None,
                 sidecars: Sidecars | None = None) -> None:
        self.fs = fs
        self.meta = meta or fs
        self.user = user
        self.owner = owner
        self._readers = pool or readers()
        self.sidecars = sidecars or Sidecars()

    def _prefetched(self, paths: Iterable[str], piece: int = 4 << 20) -> Iterator[bytes]:
        """The files' bytes in order, read on a reader thread while the caller consumes."""
        q: queue.Queue = queue.Queue(READ_AHEAD)
        stop = threading.Event()

        def put(item: Any) -> bool:
            while not stop.is_set():
                try:
                    q.put(item, timeout=0.5)
                    return True
                except queue.Full:
                    pass
            return False

        def read() -> None:
            try:
                for path in paths:
                    with self.fs.open(path, "rb") as f:
                        while data := f.read(piece):
                            if not put(data):
                                return
                put(None)
            except BaseException as exc:       # handed to the consumer, raised there
                put(exc)

        self._readers.submit(read)
        try:
            while (item := q.get()) is not None:
                if isinstance(item, BaseException):
                    raise item
                yield item
        finally:
            stop.set()

    # -- small JSON records --------------------------------------------------------------

    def _read_json(self, path: str) -> dict | None:
        try:
            return json.loads(self.meta.read_bytes(path))
        except (FileNotFoundError, NotADirectoryError, IsADirectoryError):
            return None
        except ValueError:
            return None

    def _write_json(self, path: str, value: dict) -> None:
        self.meta.write_bytes(path, json.dumps(value).encode())

    def secure_meta(self) -> None:
        """Make /.s3meta the gateway's own (docs/s3.md, "Metadata sidecars"): sidecars
        and bucket records tell ETags, content types, user metadata and key names of
        objects that a native user may not be able to read, so no native user may list
        or read them; the gateway reads them only after the user's own request on the
        object passed. The root and .uploads are META_MODE/UPLOADS_MODE (users pass
        through to their own upload directory, 0700), everything else directly below is
        PRIVATE_MODE; a sidecar tree made later is made so (_write_sidecar_json). Creates
        what is missing and narrows what an older gateway left 0755; idempotent."""
        for path, mode in ((naming.META_ROOT, naming.META_MODE),
                           (naming.BUCKETS, naming.PRIVATE_MODE),
                           (naming.UPLOADS, naming.UPLOADS_MODE)):
            try:
                self.meta.mkdir(path, mode=mode)
            except FileExistsError:
                pass
        changes: list[tuple[str, dict]] = []
        if self.meta.stat(naming.META_ROOT, blocks=False)["mode"] & 0o7777 != naming.META_MODE:
            changes.append((naming.META_ROOT, {"mode": naming.META_MODE}))
        for e in self.meta.ls(naming.META_ROOT, detail=True):
            path = f"{naming.META_ROOT}/{e['name']}"
            mode = naming.UPLOADS_MODE if path == naming.UPLOADS else naming.PRIVATE_MODE
            if e["mode"] & 0o7777 != mode:
                changes.append((path, {"mode": mode}))
        for (path, _), out in zip(changes, self.meta.set_attrs(changes)):
            if isinstance(out, OSError) and not isinstance(out, FileNotFoundError):
                raise out
        if changes:
            log.info("/.s3meta: made %d entr%s private", len(changes),
                     "y" if len(changes) == 1 else "ies")

    def _write_sidecar_json(self, bucket: str, path: str, value: dict) -> None:
        """A sidecar: into its directory if that exists; else the bucket's sidecar tree
        is made first, private (PRIVATE_MODE) - never by write_bytes' parents, which
        would make it 0755 - and the directories below it then."""
        data = json.dumps(value).encode()
        try:
            self.meta.write_bytes(path, data, parents=False)
            return
        except FileNotFoundError:
            pass
        tree = naming.meta_bucket(bucket)
        try:
            self.meta.mkdir(tree, mode=naming.PRIVATE_MODE)
        except FileExistsError:
            pass
        except FileNotFoundError:          # /.s3meta itself is gone: make it again
            self.secure_meta()
            try:
                self.meta.mkdir(tree, mode=naming.PRIVATE_MODE)
            except FileExistsError:
                pass
        self.meta.write_bytes(path, data)

    def _read_many(self, paths: list[str]) -> list[dict | None]:
        if not paths:
            return []
        outs = [io.BytesIO() for _ in paths]
        results = self.meta.get_many(list(zip(paths, outs)), errors="return")
        found: list[dict | None] = []
        for out, res in zip(outs, results):
            try:
                found.append(json.loads(out.getvalue()) if isinstance(res, dict) else None)
            except ValueError:
                found.append(None)
        return found

    # -- buckets -------------------------------------------------------------------------

    def bucket_owner(self, bucket: str) -> str:
        """The bucket's owner; NoSuchBucket when there is no such top-level directory."""
        path = naming.bucket_path(bucket)
        try:
            if self.meta.stat(path).get("type") != "dir":
                raise S3Error("NoSuchBucket", resource=bucket, BucketName=bucket)
        except (FileNotFoundError, NotADirectoryError):
            raise S3Error("NoSuchBucket", resource=bucket, BucketName=bucket) from None
        record = self._read_json(naming.bucket_record(bucket))
        return record["owner"] if record else NATIVE_OWNER

    def may_enter(self, bucket: str) -> None:
        """PermissionError unless the user may search the bucket's directory (a lookup
        of a name that cannot be a key: no listing of a big directory)."""
        try:
            self.fs.stat(naming.bucket_path(bucket) + "/\x01probe")
        except FileNotFoundError:
            pass

    def list_buckets(self, user: str) -> list[tuple[str, float]]:
        try:
            entries = self.meta.ls("/", detail=True)
        except FileNotFoundError:
            return []
        dirs = [e for e in entries if e["type"] == "dir" and naming.is_bucket_name(e["name"])]
        records = self._read_many([f"{naming.BUCKETS}/{e['name']}.json" for e in dirs])
        out = []
        for e, rec in zip(dirs, records):
            if (rec["owner"] if rec else NATIVE_OWNER) == user:
                out.append((e["name"], float(rec["created"] if rec else e.get("mtime") or 0)))
        return out

    def create_bucket(self, bucket: str, user: str) -> None:
        path = naming.bucket_path(bucket)
        try:
            owner = self.bucket_owner(bucket)
        except S3Error:
            owner = None
        if owner is not None:
            raise S3Error("BucketAlreadyOwnedByYou" if owner == user else
                          "BucketAlreadyExists", resource=bucket, BucketName=bucket)
        record = json.dumps({"owner": user, "created": time.time()}).encode()
        try:
            # the record first: a bucket directory never exists without its owner
            try:
                self.meta.write_bytes(naming.bucket_record(bucket), record,
                                      parents=False, exclusive=True)
            except FileNotFoundError:          # no /.s3meta/.buckets yet
                self.secure_meta()
                self.meta.write_bytes(naming.bucket_record(bucket), record,
                                      parents=False, exclusive=True)
        except FileExistsError:
            raise S3Error("BucketAlreadyExists", resource=bucket) from None
        # users may not write "/": the gateway makes the directory, private as an S3
        # bucket (0700), and gives it to the user
        try:
            self.meta.mkdir(path, mode=0o700 if self.owner else None)
        except FileExistsError:
            pass
        if self.owner:
            self.meta.chown(path, owner=self.owner, group=self.owner)

    def delete_bucket(self, bucket: str) -> None:
        path = naming.bucket_path(bucket)
        # the caller checked that the user owns the bucket; removing a top-level
        # directory needs write permission on "/", which only the gateway has
        if self.meta.ls(path):
            raise S3Error("BucketNotEmpty", resource=bucket, BucketName=bucket)
        for up in self._uploads(bucket):
            self.abort_upload(up["id"])
        try:
            self.meta.rm(path)
        except OSError as exc:
            if exc.errno == errno.ENOTEMPTY:
                raise S3Error("BucketNotEmpty", resource=bucket) from None
            raise
        for p, rec in ((naming.meta_bucket(bucket), True),
                       (naming.bucket_record(bucket), False)):
            try:
                self.meta.rm(p, recursive=rec)
            except FileNotFoundError:
                pass

    # -- objects -------------------------------------------------------------------------

    def head(self, bucket: str, key: str) -> ObjectInfo:
        """The object as the user may see it: one stat as the user that is also what a
        GET reads from (`source`), then the sidecar (from the cache when it describes
        this version of the object)."""
        path = naming.object_path(bucket, key)
        resource = f"/{bucket}/{key}"
        try:
            # with read=True the MDS refuses (EACCES) a file the user may not read: this
            # refuses here, before a GET has sent its 200 (as S3, HEAD needs read too)
            st = self.fs.read_info(path)
        except (FileNotFoundError, NotADirectoryError):
            raise S3Error("NoSuchKey", resource=resource, Key=key) from None
        except PermissionError:
            raise S3Error("AccessDenied", resource=resource) from None
        sidecar = naming.meta_path(bucket, key)
        if naming.is_marker(key):
            side = self._read_json(sidecar)
            if st["type"] != "dir" or side is None:
                raise S3Error("NoSuchKey", resource=resource, Key=key)
            return ObjectInfo(key, 0, float(side.get("mtime", 0)), side["etag"],
                              side.get("content_type") or DEFAULT_TYPE, side.get("meta") or {})
        if st["type"] != "file":
            raise S3Error("NoSuchKey", resource=resource, Key=key)
        size, mtime = int(st.get("size") or 0), float(st.get("mtime") or 0)
        side = self.sidecars.get(sidecar, size, mtime)
        if side is None:
            side = self._read_json(sidecar)
            if side is not None:
                self.sidecars.put(sidecar, side)
        info = _info(key, st, side)
        info.source = st
        return info

    def put(self, bucket: str, key: str, chunks: Iterable[bytes],
            finish: Callable[[], Any], content_type: str | None,
            meta: dict[str, str], etag: Callable[[], str] | None = None) -> ObjectInfo:
        """Stream `chunks` into the object; finish() (which raises when the body was bad)
        runs before the commit, so a refused body leaves nothing behind. `etag()` gives
        the ETag once the body is in (default: the MD5 of what was written)."""
        path = naming.object_path(bucket, key)
        resource = f"/{bucket}/{key}"
        md5 = hashlib.md5()
        try:
            if naming.is_marker(key):
                for c in chunks:
                    if c:
                        raise S3Error("InvalidArgument", "a key ending in '/' is a folder "
                                      "and cannot have content", resource)
                finish()
                self.fs.mkdir(path, parents=True)
                mtime = time.time()
                size = 0
            else:
                with self.fs.open(path, "wb") as f:    # an exception aborts the draft
                    _write_hashed(f, chunks, md5)
                    finish()
                st = self.fs.stat(path)
                size, mtime = int(st["size"]), float(st["mtime"])
        except (NotADirectoryError, IsADirectoryError, FileExistsError) as exc:
            raise S3Error("InvalidArgument", "the key conflicts with an existing object or "
                          f"folder ({exc.strerror})", resource) from None
        tag = etag() if etag else md5.hexdigest()
        info = ObjectInfo(key, size, mtime, tag, content_type or DEFAULT_TYPE, meta)
        self._write_sidecar(bucket, key, info)
        return info

    def copy(self, sb: str, sk: str, bucket: str, key: str, src: ObjectInfo,
             content_type: str | None, meta: dict[str, str]) -> ObjectInfo:
        """CopyObject without moving a byte: the MDS's server-side copy shares the
        source's blocks. The bytes are the source's, so its ETag is kept. A folder marker
        has no blocks and is copied as a put of nothing."""
        if naming.is_marker(key) or naming.is_marker(sk):
            return self.put(bucket, key, self.chunks(sb, sk), lambda: None, content_type, meta)
        path = naming.object_path(bucket, key)
        self._shared(lambda: self.fs.copy(naming.object_path(sb, sk), path), path,
                     f"/{bucket}/{key}")
        return self._commit_sidecar(bucket, key, path, src.etag, content_type, meta)

    def _shared(self, make: Callable[[], Any], path: str, resource: str) -> None:
        """Run a copy or compose to `path`, whose parent directories may be missing
        (keys with "/" make them implicitly, as put does)."""
        try:
            try:
                make()
            except FileNotFoundError:
                parent = path.rsplit("/", 1)[0]
                if self.fs.exists(parent):
                    raise               # the source is what is missing
                self.fs.mkdir(parent, parents=True)
                make()
        except (NotADirectoryError, IsADirectoryError, FileExistsError) as exc:
            raise S3Error("InvalidArgument", "the key conflicts with an existing object or "
                          f"folder ({exc.strerror})", resource) from None

    def _commit_sidecar(self, bucket: str, key: str, path: str, tag: str,
                        content_type: str | None, meta: dict[str, str]) -> ObjectInfo:
        st = self.fs.stat(path)
        info = ObjectInfo(key, int(st["size"]), float(st["mtime"]), tag,
                          content_type or DEFAULT_TYPE, meta)
        self._write_sidecar(bucket, key, info)
        return info

    def _write_sidecar(self, bucket: str, key: str, info: ObjectInfo) -> None:
        """The object's sidecar, after its commit: also kept in the cache, for the GETs
        that usually follow."""
        path = naming.meta_path(bucket, key)
        side = {"etag": info.etag, "size": info.size, "mtime": info.mtime,
                "content_type": info.content_type, "meta": info.meta}
        self._write_sidecar_json(bucket, path, side)
        self.sidecars.put(path, side)

    def read(self, bucket: str, key: str, start: int, length: int,
             emit: Callable[[memoryview], None], chunk: int = 4 << 20,
             source: dict | None = None) -> None:
        """emit() the bytes [start, start+length) in pieces of at most `chunk`: slices of
        the verified blocks, not copies (a default-size block is one piece: each emit is
        a hop to the event loop, which cost more per GiB at 1 MiB pieces). Only the blocks of the range are fetched, the
        window's worth at once from the start. `source`: head()'s read_info of the object
        (saves a stat), else it is stat'ed here."""
        if length <= 0 or naming.is_marker(key):
            return
        info = source or self.fs.read_info(naming.object_path(bucket, key))
        left = length
        for data in self.fs.iter_range(info, start, length):
            for i in range(0, data.nbytes, chunk):
                emit(data[i:i + chunk])
            left -= data.nbytes
        if left:
            raise OSError(errno.EIO, f"/{bucket}/{key}: the object ended early")

    def chunks(self, bucket: str, key: str, start: int = 0, length: int | None = None,
               chunk: int = 1 << 20) -> Iterator[bytes]:
        if naming.is_marker(key):
            return
        with self.fs.open(naming.object_path(bucket, key), "rb") as f:
            f.seek(start)
            left = f.size - start if length is None else length
            while left > 0:
                data = f.read(min(chunk, left))
                if not data:
                    raise OSError(errno.EIO, f"/{bucket}/{key}: the object ended early")
                left -= len(data)
                yield data

    def delete(self, bucket: str, key: str) -> None:
        """Remove an object (no error if absent, as S3), then the empty directories it
        leaves, so they do not show up as prefixes."""
        segs = naming.check_key(bucket, key)
        # the object as the user first: a refusal (PermissionError) leaves the sidecar
        for fs, root, path in (
                (self.fs, naming.bucket_path(bucket), naming.object_path(bucket, key)),
                (self.meta, f"{naming.META_ROOT}/{bucket}", naming.meta_path(bucket, key))):
            try:
                if naming.is_marker(key) and root.startswith(naming.META_ROOT):
                    fs.rm(path)
                elif naming.is_marker(key):
                    pass              # the folder goes below, when it is empty
                elif fs.stat(path)["type"] == "file":
                    fs.rm(path)
            except (FileNotFoundError, NotADirectoryError):
                pass
            depth = len(segs) - (0 if naming.is_marker(key) else 1)
            for i in range(depth, 0, -1):
                try:
                    fs.rm(root + "/" + "/".join(segs[:i]))
                except OSError:
                    break              # not empty (or gone): the ones above are not empty

    # -- listing -------------------------------------------------------------------------

    def walk(self, bucket: str, prefix: str, after: str, rollup: bool
             ) -> Iterator[tuple[str, dict | None]]:
        """(key, ls entry) in S3 (UTF-8 byte) order for the keys starting with `prefix`
        and greater than `after`; with rollup (delimiter "/"), a directory below the
        prefix's level comes as (its prefix "a/b/", None) instead of its contents."""
        base = naming.bucket_path(bucket)
        head, _, _ = prefix.rpartition("/")
        start = head + "/" if head else ""
        yield from self._walk(base, start, prefix, after, rollup)

    def _walk(self, base: str, dirkey: str, prefix: str, after: str, rollup: bool
              ) -> Iterator[tuple[str, dict | None]]:
        try:
            entries = self.fs.ls(base + ("/" + dirkey.rstrip("/") if dirkey else ""),
                                 detail=True)
        except (FileNotFoundError, NotADirectoryError):
            return
        except PermissionError:
            if not dirkey:
                raise                  # the bucket itself: AccessDenied
            return                     # a directory the user may not read: not listed
        keyed = []
        for e in entries:
            k = dirkey + e["name"] + ("/" if e["type"] == "dir" else "")
            keyed.append((k.encode("utf-8", "surrogatepass"), k, e))
        keyed.sort(key=lambda t: t[0])
        for _, k, e in keyed:
            if e["type"] != "dir":
                if k.startswith(prefix) and k > after:
                    yield k, e
                continue
            # k is "x/y/": every key under it starts with k
            if not (k.startswith(prefix) or prefix.startswith(k)):
                continue
            if after >= k and not after.startswith(k):
                continue                 # the whole directory sorts before `after`
            if rollup and k.startswith(prefix) and len(k) > len(prefix):
                if k > after:
                    yield k, None
                continue
            if k.startswith(prefix) and k > after:
                yield k, {"type": "marker"}      # a folder marker, if its sidecar says so
            yield from self._walk(base, k, prefix, after, rollup)

    def describe(self, bucket: str, items: list[tuple[str, dict]]) -> list[ObjectInfo]:
        """ObjectInfo for listed keys, their sidecars read in batches; folders without a
        marker record are dropped."""
        sides = self._read_many([naming.meta_path(bucket, k) for k, _ in items])
        out = []
        for (k, e), side in zip(items, sides):
            if e.get("type") == "marker":
                if side is not None:
                    out.append(ObjectInfo(k, 0, float(side.get("mtime", 0)), side["etag"]))
            else:
                out.append(_info(k, e, side))
        return out

    # -- multipart -----------------------------------------------------------------------

    def create_upload(self, bucket: str, key: str, user: str, content_type: str | None,
                      meta: dict[str, str]) -> str:
        naming.check_key(bucket, key)
        upload_id = secrets.token_hex(16)
        d = naming.upload_dir(upload_id)
        # the parts are the user's own files (written, composed as the user), in a
        # directory only the user (and the gateway) can enter, private from the start
        try:
            self.meta.mkdir(d, mode=naming.PRIVATE_MODE)
        except FileNotFoundError:              # no /.s3meta/.uploads yet
            self.secure_meta()
            self.meta.mkdir(d, mode=naming.PRIVATE_MODE)
        self.meta.write_bytes(d + "/upload.json", json.dumps({
            "bucket": bucket, "key": key, "owner": user, "initiated": time.time(),
            "content_type": content_type, "meta": meta}).encode(), parents=False)
        if self.owner:
            self.meta.chown(d, owner=self.owner, group=self.owner)
        return upload_id

    def upload(self, upload_id: str, bucket: str, key: str) -> dict:
        rec = self._read_json(naming.upload_dir(upload_id) + "/upload.json")
        if rec is None or rec["bucket"] != bucket or rec["key"] != key:
            raise S3Error("NoSuchUpload", resource=f"/{bucket}/{key}", UploadId=upload_id)
        if rec.get("owner") != self.user:
            raise S3Error("AccessDenied", "the upload belongs to another user",
                          f"/{bucket}/{key}")
        return rec

    def put_part(self, upload_id: str, number: int, chunks: Iterable[bytes],
                 finish: Callable[[], Any]) -> str:
        """Store a part as <upload>/<number>.<random>, then rename it to
        <number>-<md5>: the name carries the ETag, so a part costs no record file of its
        own (one rename instead of a second file write), and ls lists parts with ETags."""
        d = naming.upload_dir(upload_id)
        draft = f"{d}/{number:05d}.{secrets.token_hex(4)}"
        md5 = hashlib.md5()
        with self.fs.open(draft, "wb", parents=False) as f:   # an exception aborts it
            _write_hashed(f, chunks, md5)
            finish()
        return self._name_part(d, number, draft, md5.hexdigest())

    def put_part_copy(self, upload_id: str, number: int, sb: str, sk: str,
                      start: int, length: int) -> str:
        """UploadPartCopy. A range that starts and ends on block boundaries of the source
        becomes a part that shares those blocks (no byte moves; its ETag is derived from
        the blocks' ids and CRC32Cs, since no byte passes here to hash). Any other range
        is streamed through the gateway, that range only."""
        src = naming.object_path(sb, sk)
        span = None if naming.is_marker(sk) else _block_span(self.fs.stat(src), start, length)
        if span is None:
            return self.put_part(upload_id, number, self.chunks(sb, sk, start, length),
                                 lambda: None)
        first, count, blocks = span
        etag = hashlib.md5(b"".join(bytes.fromhex(b["id"]) + b["checksum"].to_bytes(4, "big")
                                    for b in blocks)).hexdigest()
        d = naming.upload_dir(upload_id)
        draft = f"{d}/{number:05d}.{secrets.token_hex(4)}"
        self.fs.compose(draft, [(src, first, count)])
        return self._name_part(d, number, draft, etag)

    def _name_part(self, d: str, number: int, draft: str, etag: str) -> str:
        old = [p["name"] for p in self._part_entries(d) if p["number"] == number]
        final = f"{d}/{number:05d}-{etag}"
        try:
            self.fs.mv(draft, final)
        except FileExistsError:        # the same bytes again: keep the one already there
            self.fs.rm(draft)
        for name in old:               # a part uploaded again replaces the earlier one
            if name != f"{number:05d}-{etag}":
                try:
                    self.fs.rm(f"{d}/{name}")
                except FileNotFoundError:
                    pass
        return etag

    def _part_entries(self, d: str) -> list[dict]:
        out = []
        for e in self.meta.ls(d, detail=True):
            number, dash, etag = e["name"].partition("-")
            if dash and number.isdigit() and len(etag) == 32:
                out.append({"name": e["name"], "number": int(number), "etag": etag,
                            "size": int(e["size"]), "mtime": float(e["mtime"])})
        return out

    def parts(self, upload_id: str) -> list[dict]:
        """[{name, number, etag, size, mtime}] of the parts stored, by number (the newest
        when one was uploaded twice at once)."""
        best: dict[int, dict] = {}
        for p in self._part_entries(naming.upload_dir(upload_id)):
            if p["number"] not in best or p["mtime"] > best[p["number"]]["mtime"]:
                best[p["number"]] = p
        return [best[n] for n in sorted(best)]

    def complete(self, upload_id: str, bucket: str, key: str,
                 wanted: list[tuple[int, str]]) -> ObjectInfo:
        rec = self.upload(upload_id, bucket, key)
        numbers = [n for n, _ in wanted]
        if numbers != sorted(numbers) or len(set(numbers)) != len(numbers):
            raise S3Error("InvalidPartOrder", resource=f"/{bucket}/{key}")
        have = {p["number"]: p for p in self.parts(upload_id)}
        for n, tag in wanted:
            if n not in have or have[n]["etag"] != tag:
                raise S3Error("InvalidPart", resource=f"/{bucket}/{key}", PartNumber=str(n))
        for i, (n, _) in enumerate(wanted):
            p = have[n]
            if i < len(wanted) - 1 and p["size"] < MIN_PART:
                raise S3Error("EntityTooSmall", resource=f"/{bucket}/{key}",
                              PartNumber=str(n), ProposedSize=str(p["size"]),
                              MinSizeAllowed=str(MIN_PART))
        d = naming.upload_dir(upload_id)
        parts = [f"{d}/{have[n]['name']}" for n, _ in wanted]
        digest = hashlib.md5(b"".join(bytes.fromhex(t) for _, t in wanted)).hexdigest()
        tag = f"{digest}-{len(wanted)}"
        started = time.monotonic()
        if naming.is_marker(key):   # a folder: nothing to compose (put refuses content)
            info = self.put(bucket, key, self._prefetched(parts), lambda: None,
                            rec.get("content_type"), rec.get("meta") or {}, etag=lambda: tag)
        else:
            # the parts' blocks become the object's block list in one commit: atomic,
            # and no byte is copied
            path = naming.object_path(bucket, key)
            self._shared(lambda: self.fs.compose(path, parts, parents=True), path,
                         f"/{bucket}/{key}")
            info = self._commit_sidecar(bucket, key, path, tag, rec.get("content_type"),
                                        rec.get("meta") or {})
        self.meta.rm(d, recursive=True)
        log.info("/%s/%s: %d parts, %d bytes composed in %.2f s", bucket, key, len(wanted),
                 info.size, time.monotonic() - started)
        return info

    def abort_upload(self, upload_id: str) -> None:
        try:
            self.meta.rm(naming.upload_dir(upload_id), recursive=True)
        except FileNotFoundError:
            raise S3Error("NoSuchUpload", UploadId=upload_id) from None

    def _uploads(self, bucket: str) -> list[dict]:
        try:
            ids = [n for n in self.meta.ls(naming.UPLOADS)]
        except FileNotFoundError:
            return []
        recs = self._read_many([f"{naming.UPLOADS}/{i}/upload.json" for i in ids])
        return [{**r, "id": i} for i, r in zip(ids, recs) if r and r["bucket"] == bucket]

    def uploads(self, bucket: str, prefix: str = "") -> list[dict]:
        ups = [u for u in self._uploads(bucket) if u["key"].startswith(prefix)
               and u.get("owner") == self.user]         # the user's own uploads only
        return sorted(ups, key=lambda u: (u["key"], u["initiated"]))


def _block_span(st: dict, start: int, length: int) -> tuple[int, int, list[dict]] | None:
    """(first block, block count, those blocks) when [start, start+length) is exactly a
    run of whole blocks of the file `st` describes; None otherwise (or without blocks)."""
    blocks = st.get("blocks")
    if not blocks or length <= 0:
        return None
    off, first = 0, None
    for i, b in enumerate(blocks):
        if off == start:
            first = i
        off += int(b["size"])
        if first is not None and off == start + length:
            return first, i - first + 1, blocks[first:i + 1]
        if off > start + length:
            break
    return None


def oserror(exc: OSError, bucket: str, key: str = "") -> S3Error:
    return from_oserror(exc, f"/{bucket}/{key}" if key else f"/{bucket}")


def _write_hashed(f: Any, chunks: Iterable[bytes], md5: Any) -> None:
    """Stream `chunks` into the open file `f`, feeding each to `md5` on the way."""
    for c in chunks:
        md5.update(c)
        f.write(c)

"""The gateway's storage layer: buckets, objects, sidecars and multipart uploads as
blocking AegisClient calls. Each method runs whole on one worker thread (AegisClient keeps
one broker socket per thread, and a stream must stay on the thread that opened it).
`Store` is the objects' part (head, put, copy, read, delete) and is made of the others:
buckets.py (buckets and listing), multipart.py (uploads), records.py (the JSON records
under /.s3meta); objinfo.py is what an object's ETag and sidecar are.

Copies and multipart completion move no byte: CopyObject is the MDS's server-side copy,
CompleteMultipartUpload commits the parts' blocks as the object's block list, and an
UploadPartCopy of whole source blocks shares them (other ranges stream, that range only).

Two identities: `fs` is the requesting user's own connection (identity.py), which does
every operation on objects, so the MDS checks that user's permissions; `meta` is the
gateway's own (admin) connection, which owns /.s3meta (sidecars, bucket records, multipart
uploads) and writes there only after the user's own operation succeeded.
"""
from __future__ import annotations

import concurrent.futures
import errno
import hashlib
import queue
import threading
import time
from typing import Any, Callable, Iterable, Iterator

from ..api import AegisClient
from . import naming
from .buckets import NATIVE_OWNER, BucketStore
from .errors import S3Error
from .multipart import MultipartStore
from .objinfo import DEFAULT_TYPE, ObjectInfo, Sidecars, object_info, write_hashed

READ_AHEAD = 3                     # 4 MiB pieces read ahead while composing


def readers() -> concurrent.futures.ThreadPoolExecutor:
    """A few long-lived read-ahead threads (each keeps one broker socket per client)."""
    return concurrent.futures.ThreadPoolExecutor(4, "s3-read-ahead")


class Store(BucketStore, MultipartStore):
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

    # -- objects -------------------------------------------------------------------------

    def head(self, bucket: str, key: str, reading: bool = False) -> ObjectInfo:
        """The object as the user may see it: one stat as the user, then the sidecar (from
        the cache when it describes this version of the object). `reading` (a GET): the
        stat is also what the GET reads from (`source`: the block list and its read
        capabilities); else (HEAD, a copy's source) the MDS builds and signs none."""
        path = naming.object_path(bucket, key)
        resource = f"/{bucket}/{key}"
        try:
            # the MDS refuses (EACCES) a file the user may not read: this refuses here,
            # before a GET has sent its 200 (as S3, HEAD needs read too)
            st = self.fs.read_info(path, blocks=reading)
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
        info = object_info(key, st, side)
        info.source = st if reading else None
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
                    write_hashed(f, chunks, md5)
                    finish()
                st = self.fs.stat(path, blocks=False)
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
        st = self.fs.stat(path, blocks=False)
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
                elif fs.stat(path, blocks=False)["type"] == "file":
                    fs.rm(path)
            except (FileNotFoundError, NotADirectoryError):
                pass
            depth = len(segs) - (0 if naming.is_marker(key) else 1)
            for i in range(depth, 0, -1):
                try:
                    fs.rm(root + "/" + "/".join(segs[:i]))
                except OSError:
                    break              # not empty (or gone): the ones above are not empty

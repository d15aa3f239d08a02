"""Multipart uploads. An upload is a private directory under /.s3meta/.uploads with its
record (upload.json) and its parts, the user's own files named by number and ETag;
CompleteMultipartUpload commits the parts' blocks as the object's block list (no byte
copied), and an UploadPartCopy of whole source blocks shares them. A part of
``client.s3.store.Store`` (a mixin).
"""
from __future__ import annotations

import hashlib
import json
import logging
import secrets
import time
from typing import TYPE_CHECKING, Any, Callable, Iterable, Iterator

from . import naming
from .errors import S3Error
from .objinfo import ObjectInfo, write_hashed
from .records import MetaRecords

log = logging.getLogger(__name__)

MIN_PART = 5 * 1024 * 1024          # every part but the last, as S3


class MultipartStore(MetaRecords):
    """Uploads and their parts, mixed into Store."""

    if TYPE_CHECKING:    # what this part calls in the others
        def put(self, bucket: str, key: str, chunks: Iterable[bytes],
                finish: Callable[[], Any], content_type: str | None,
                meta: dict[str, str], etag: Callable[[], str] | None = None
                ) -> ObjectInfo: ...
        def chunks(self, bucket: str, key: str, start: int = 0, length: int | None = None,
                   chunk: int = 1 << 20) -> Iterator[bytes]: ...
        def _prefetched(self, paths: Iterable[str], piece: int = 4 << 20
                        ) -> Iterator[bytes]: ...
        def _shared(self, make: Callable[[], Any], path: str, resource: str) -> None: ...
        def _commit_sidecar(self, bucket: str, key: str, path: str, tag: str,
                            content_type: str | None, meta: dict[str, str]
                            ) -> ObjectInfo: ...

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

    def put_part(self, upload_id: str, number: int, chunks: Iterable[bytes | memoryview],
                 finish: Callable[[], Any]) -> str:
        """Store a part as <upload>/<number>.<random>, then rename it to
        <number>-<md5>: the name carries the ETag, so a part costs no record file of its
        own (one rename instead of a second file write), and ls lists parts with ETags."""
        d = naming.upload_dir(upload_id)
        draft = f"{d}/{number:05d}.{secrets.token_hex(4)}"
        md5 = hashlib.md5()
        with self.fs.open(draft, "wb", parents=False) as f:   # an exception aborts it
            write_hashed(f, chunks, md5)
            finish()
        return self._name_part(d, number, draft, md5.hexdigest())

    def put_part_copy(self, upload_id: str, number: int, sb: str, sk: str,
                      start: int, length: int) -> str:
        """UploadPartCopy. A range that starts and ends on block boundaries of the source
        becomes a part that shares those blocks (no byte moves; its ETag is derived from
        the blocks' ids and CRC32Cs, since no byte passes here to hash). Any other range
        is streamed through the gateway, that range only, read from the same stat (its
        blocks with their read capabilities, fetched a window ahead)."""
        src = naming.object_path(sb, sk)
        info = None if naming.is_marker(sk) else self.fs.read_info(src)
        span = None if info is None else _block_span(info, start, length)
        if span is None:
            chunks: Iterable[bytes | memoryview] = () if info is None or length <= 0 else \
                self.fs.iter_range(info, start, length)
            return self.put_part(upload_id, number, chunks, lambda: None)
        first, count, blocks = span
        # read_info's ids are raw bytes
        etag = hashlib.md5(b"".join(bytes(b["id"]) + b["checksum"].to_bytes(4, "big")
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

"""Buckets and their listing. A bucket is a top-level directory, its owner in a record
under /.s3meta/.buckets (none: NATIVE_OWNER's, made natively); `walk` lists a bucket's
keys in S3 (UTF-8 byte) order from its directory tree, as the user. A part of
``client.s3.store.Store`` (a mixin).
"""
from __future__ import annotations

import errno
import json
import time
from typing import TYPE_CHECKING, Iterator

from . import naming
from .errors import S3Error
from .objinfo import ObjectInfo, object_info
from .records import MetaRecords

NATIVE_OWNER = "admin"              # owns top-level directories not created through S3


class BucketStore(MetaRecords):
    """Create, delete, list buckets; walk one's keys. Mixed into Store."""

    if TYPE_CHECKING:    # what this part calls in the others
        def abort_upload(self, upload_id: str) -> None: ...
        def _uploads(self, bucket: str) -> list[dict]: ...

    def bucket_owner(self, bucket: str) -> str:
        """The bucket's owner; NoSuchBucket when there is no such top-level directory."""
        path = naming.bucket_path(bucket)
        try:
            if self.meta.stat(path, blocks=False).get("type") != "dir":
                raise S3Error("NoSuchBucket", resource=bucket, BucketName=bucket)
        except (FileNotFoundError, NotADirectoryError):
            raise S3Error("NoSuchBucket", resource=bucket, BucketName=bucket) from None
        record = self._read_json(naming.bucket_record(bucket))
        return record["owner"] if record else NATIVE_OWNER

    def may_enter(self, bucket: str) -> None:
        """PermissionError unless the user may search the bucket's directory (a lookup
        of a name that cannot be a key: no listing of a big directory)."""
        try:
            self.fs.stat(naming.bucket_path(bucket) + "/\x01probe", blocks=False)
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
                out.append(object_info(k, e, side))
        return out

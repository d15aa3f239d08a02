"""Bucket names and object keys -> AegisFS paths: the one door for the names a request
carries. A bucket is a top-level directory, a key the path under it; the gateway's own
records (object metadata, bucket owners, multipart parts) live under /.s3meta.
"""
from __future__ import annotations

import re

from .errors import S3Error

META_ROOT = "/.s3meta"
BUCKETS = f"{META_ROOT}/.buckets"        # <bucket>.json: owner, created
UPLOADS = f"{META_ROOT}/.uploads"        # <upload id>/upload.json and the parts
MARKER = "\x01dir"                        # sidecar name of a "folder/" marker object
# who may enter what under /.s3meta (the gateway's identity owns it; Store.secure_meta):
# users pass through the root and .uploads to their own upload directory (0700, theirs)
# but can list neither; everything else (sidecar trees, bucket records) is the gateway's
META_MODE = 0o711
UPLOADS_MODE = 0o711
PRIVATE_MODE = 0o700
MAX_KEY_BYTES = 1024
MAX_SEGMENT_BYTES = 255                   # the MDS's limit on one path component

# S3's rules for new buckets: 3-63 of [a-z0-9.-], starting and ending with a letter or
# digit; this also keeps every bucket clear of /.s3meta (it starts with a dot)
_BUCKET = re.compile(r"[a-z0-9][a-z0-9.-]{1,61}[a-z0-9]")
_UPLOAD_ID = re.compile(r"[0-9a-f]{32}")


def is_bucket_name(name: str) -> bool:
    """Top-level directories with other names (and /.s3meta) are not buckets."""
    return bool(_BUCKET.fullmatch(name)) and ".." not in name


def bucket_path(bucket: str) -> str:
    if not is_bucket_name(bucket):
        raise S3Error("InvalidBucketName", resource=bucket)
    return "/" + bucket


def check_key(bucket: str, key: str) -> list[str]:
    """The path segments of a key, or InvalidArgument / KeyTooLongError. A key is refused
    when it could not be a path or could leave its bucket: ".", "..", empty segments (other
    than one trailing "/", a folder marker), control characters (NUL can never be a name;
    \\x01 names the gateway's own marker records), segments over 255 bytes."""
    resource = f"/{bucket}/{key}"
    raw = key.encode("utf-8", "surrogatepass")
    if len(raw) > MAX_KEY_BYTES:
        raise S3Error("KeyTooLongError", resource=resource)
    if not key:
        raise S3Error("InvalidArgument", "the object key is empty", resource)
    if any(ord(c) < 0x20 or 0xD800 <= ord(c) <= 0xDFFF for c in key):
        raise S3Error("InvalidArgument", "control characters are not allowed in keys",
                      resource)
    segments = key[:-1].split("/") if key.endswith("/") else key.split("/")
    for s in segments:
        if s in ("", ".", ".."):
            raise S3Error("InvalidArgument", f"the key {key!r} is not a valid path: it has "
                          "an empty, '.' or '..' segment", resource)
        if len(s.encode()) > MAX_SEGMENT_BYTES:
            raise S3Error("KeyTooLongError", f"a key segment is longer than "
                          f"{MAX_SEGMENT_BYTES} bytes", resource)
    return segments


def is_marker(key: str) -> bool:
    return key.endswith("/")


def object_path(bucket: str, key: str) -> str:
    """Where the object's bytes live (a folder marker is a directory)."""
    return bucket_path(bucket) + "/" + "/".join(check_key(bucket, key))


def meta_path(bucket: str, key: str) -> str:
    """Where the object's sidecar lives: the key mirrored under /.s3meta/<bucket>."""
    segs = check_key(bucket, key)
    tail = "/".join(segs) + ("/" + MARKER if is_marker(key) else "")
    return f"{META_ROOT}/{bucket}/{tail}"


def meta_bucket(bucket: str) -> str:
    """The root of a bucket's sidecar tree (PRIVATE_MODE, the gateway's)."""
    bucket_path(bucket)
    return f"{META_ROOT}/{bucket}"


def bucket_record(bucket: str) -> str:
    bucket_path(bucket)
    return f"{BUCKETS}/{bucket}.json"


def upload_dir(upload_id: str) -> str:
    if not _UPLOAD_ID.fullmatch(upload_id):
        raise S3Error("NoSuchUpload", resource=upload_id)
    return f"{UPLOADS}/{upload_id}"


def part_number(value: str | None) -> int:
    try:
        n = int(value or "")
    except ValueError:
        n = 0
    if not 1 <= n <= 10000:
        raise S3Error("InvalidArgument", "Part number must be an integer between 1 and "
                      "10000, inclusive", ArgumentName="partNumber")
    return n

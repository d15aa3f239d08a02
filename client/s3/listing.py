"""ListObjects V1 and V2: pages of keys and common prefixes from Store.walk, with
prefix, delimiter, max-keys, marker / start-after / continuation-token, encoding-type=url.
"""
from __future__ import annotations

import base64
import binascii
import itertools

from .errors import S3Error
from .objinfo import ObjectInfo
from .s3xml import doc, el, iso, key_text
from .store import Store

MAX_KEYS = 1000


def _token(last: str) -> str:
    return base64.urlsafe_b64encode(last.encode("utf-8", "surrogatepass")).decode()


def _untoken(token: str) -> str:
    try:
        return base64.urlsafe_b64decode(token.encode()).decode("utf-8", "surrogatepass")
    except (binascii.Error, ValueError):
        raise S3Error("InvalidArgument", "The continuation token provided is incorrect",
                      ArgumentName="continuation-token") from None


def _generic_rollup(items, prefix: str, delimiter: str):
    """A delimiter other than "/": keys rolled up by the delimiter after the prefix."""
    last = None
    for k, e in items:
        i = k.find(delimiter, len(prefix))
        if i >= 0:
            cp = k[:i + len(delimiter)]
            if cp != last:
                last = cp
                yield cp, None
        else:
            yield k, e


def list_objects(store: Store, bucket: str, q: dict[str, str]) -> bytes:
    v2 = q.get("list-type") == "2"
    prefix, delimiter = q.get("prefix", ""), q.get("delimiter", "")
    url = q.get("encoding-type") == "url"
    try:
        max_keys = max(0, min(MAX_KEYS, int(q.get("max-keys", MAX_KEYS))))
    except ValueError:
        raise S3Error("InvalidArgument", "max-keys must be a number",
                      ArgumentName="max-keys") from None
    if v2:
        token = q.get("continuation-token")
        after = _untoken(token) if token else q.get("start-after", "")
    else:
        after = q.get("marker", "")
    items = store.walk(bucket, prefix, after, rollup=delimiter == "/")
    if delimiter and delimiter != "/":
        items = _generic_rollup(store.walk(bucket, prefix, after, rollup=False),
                                prefix, delimiter)
    # markers (folders) may turn out not to be objects: read a little ahead to fill a page
    contents: list[ObjectInfo] = []
    prefixes: list[str] = []
    last, truncated = None, False
    source = iter(items)
    while len(contents) + len(prefixes) < max_keys:
        batch = list(itertools.islice(source, max_keys - len(contents) - len(prefixes)))
        if not batch:
            break
        keys = [(k, e) for k, e in batch if e is not None]
        described = {i.key: i for i in store.describe(bucket, keys)}
        for k, e in batch:
            last = k
            if e is None:
                prefixes.append(k)
            elif k in described:
                contents.append(described[k])
    if max_keys == 0 or len(contents) + len(prefixes) >= max_keys:
        for k, e in source:
            if e is None or e.get("type") != "marker" or store.describe(bucket, [(k, e)]):
                truncated = True
                break
    parts = [el("Name", bucket), el("Prefix", key_text(prefix, url))]
    if v2:
        if q.get("continuation-token"):
            parts.append(el("ContinuationToken", q["continuation-token"]))
        if q.get("start-after"):
            parts.append(el("StartAfter", key_text(q["start-after"], url)))
        parts.append(el("KeyCount", len(contents) + len(prefixes)))
        if truncated and last is not None:
            parts.append(el("NextContinuationToken", _token(last)))
    else:
        parts.append(el("Marker", key_text(after, url)))
        if truncated and last is not None and delimiter:
            parts.append(el("NextMarker", key_text(last, url)))
    parts.append(el("MaxKeys", max_keys))
    if delimiter:
        parts.append(el("Delimiter", key_text(delimiter, url)))
    if url:
        parts.append(el("EncodingType", "url"))
    parts.append(el("IsTruncated", truncated))
    for i in contents:
        parts.append(f"<Contents>{el('Key', key_text(i.key, url))}"
                     f"{el('LastModified', iso(i.mtime))}{el('ETag', chr(34) + i.etag + chr(34))}"
                     f"{el('Size', i.size)}{el('StorageClass', 'STANDARD')}</Contents>")
    for p in prefixes:
        parts.append(f"<CommonPrefixes>{el('Prefix', key_text(p, url))}</CommonPrefixes>")
    root = "ListBucketResult"
    return doc(root, "".join(parts))

"""Object requests: Put/Get/Head/Delete/Copy and the multipart verbs. Each handler checks
what it can before touching the body, then runs one blocking store call on a worker
thread (app.Gateway.run) that streams the body in or out.
"""
from __future__ import annotations

from typing import TYPE_CHECKING, Callable
from urllib.parse import unquote

from . import naming, s3xml
from .chunked import BodyDecoder
from .errors import S3Error
from .objinfo import ObjectInfo
from .s3xml import doc, el, iso, owner

if TYPE_CHECKING:
    from .app import Gateway, Request, Response


async def object_request(gw: "Gateway", req: "Request") -> "Response":
    m, q = req.method, req.query
    if m == "PUT" and "uploadId" in q:
        return await upload_part(gw, req)
    if m == "PUT" and "x-amz-copy-source" in req.headers:
        return await copy_object(gw, req)
    if m == "PUT":
        return await put_object(gw, req)
    if m == "GET" and "uploadId" in q:
        return await list_parts(gw, req)
    if m in ("GET", "HEAD"):
        return await get_object(gw, req)
    if m == "DELETE" and "uploadId" in q:
        await gw.run(_abort, gw, req)
        from .app import Response
        return Response(204)
    if m == "DELETE":
        await gw.run(req.store.delete, req.bucket, req.key)
        from .app import Response
        return Response(204)
    if m == "POST" and "uploads" in q:
        return await create_upload(gw, req)
    if m == "POST" and "uploadId" in q:
        return await complete_upload(gw, req)
    raise S3Error("NotImplemented")


def _abort(gw: "Gateway", req: "Request") -> None:
    req.store.upload(req.query["uploadId"], req.bucket, req.key)
    req.store.abort_upload(req.query["uploadId"])


def _check_length(req: "Request") -> None:
    if "content-length" not in req.headers and "x-amz-decoded-content-length" not in \
            req.headers:
        raise S3Error("MissingContentLength")


async def put_object(gw: "Gateway", req: "Request") -> "Response":
    from .app import Response, _user_meta
    _check_length(req)
    decoder = BodyDecoder(req.headers, req.auth)
    chunks = gw._body_chunks(req, decoder)
    info = await gw.run(req.store.put, req.bucket, req.key, chunks, decoder.end,
                        req.headers.get("content-type"), _user_meta(req.headers))
    return Response(200, {"etag": f'"{info.etag}"'})


def _preconditions(req: "Request", info: ObjectInfo, prefix: str = "") -> int | None:
    """304 / 412 per RFC 7232 as S3 applies them; None to go on."""
    from .app import parse_time
    h = req.headers
    etag = f'"{info.etag}"'
    mtime = int(info.mtime)

    def matches(value: str) -> bool:
        return any(v.strip() in ("*", etag, info.etag) for v in value.split(","))

    im, inm = h.get(prefix + "if-match"), h.get(prefix + "if-none-match")
    ims, ius = h.get(prefix + "if-modified-since"), h.get(prefix + "if-unmodified-since")
    if im is not None and not matches(im):
        return 412
    if im is None and ius is not None:
        t = parse_time(ius)
        if t is not None and mtime > t:
            return 412
    if inm is not None and matches(inm):
        return 304 if not prefix else 412
    if inm is None and ims is not None:
        t = parse_time(ims)
        if t is not None and mtime <= t:
            return 304 if not prefix else 412
    return None


RESPONSE_OVERRIDES = {"response-content-type": "content-type",
                      "response-content-disposition": "content-disposition",
                      "response-content-encoding": "content-encoding",
                      "response-content-language": "content-language",
                      "response-cache-control": "cache-control",
                      "response-expires": "expires"}


async def get_object(gw: "Gateway", req: "Request") -> "Response":
    from .app import Response, _object_headers, _range
    info = await gw.run(req.store.head, req.bucket, req.key, req.method == "GET")
    headers = _object_headers(info)
    cond = _preconditions(req, info)
    if cond == 412:
        raise S3Error("PreconditionFailed", resource=f"/{req.bucket}/{req.key}",
                      Condition="If-Match")
    if cond == 304:
        return Response(304, {k: v for k, v in headers.items()
                              if k in ("etag", "last-modified")})
    for param, header in RESPONSE_OVERRIDES.items():
        if param in req.query:
            headers[header] = req.query[param]
    rng = _range(req.headers.get("range"), info.size)
    status = 200
    start, length = 0, info.size
    if rng is not None:
        start, length = rng
        status = 206
        headers["content-range"] = f"bytes {start}-{start + length - 1}/{info.size}"
    headers["content-length"] = str(length)
    bucket, key, source = req.bucket, req.key, info.source

    def stream(emit: Callable[[memoryview], None]) -> None:
        req.store.read(bucket, key, start, length, emit, source=source)

    return Response(status, headers, stream=stream if length else None)


def _copy_source(req: "Request", header: str = "x-amz-copy-source") -> tuple[str, str]:
    src = unquote(req.headers[header]).lstrip("/")
    src = src.split("?versionId=", 1)[0]
    bucket, _, key = src.partition("/")
    if not bucket or not key:
        raise S3Error("InvalidArgument", "x-amz-copy-source must be bucket/key")
    naming.check_key(bucket, key)
    return bucket, key


async def _source(gw: "Gateway", req: "Request") -> tuple[str, str, ObjectInfo]:
    bucket, key = _copy_source(req)
    await gw.check_bucket(req, bucket, f"/{bucket}/{key}")
    info = await gw.run(req.store.head, bucket, key)      # as the user: read permission
    if _preconditions(req, info, "x-amz-copy-source-") is not None:
        raise S3Error("PreconditionFailed", resource=f"/{bucket}/{key}")
    return bucket, key, info


async def copy_object(gw: "Gateway", req: "Request") -> "Response":
    from .app import _user_meta, _xml
    sb, sk, info = await _source(gw, req)
    if req.headers.get("x-amz-metadata-directive", "COPY").upper() == "REPLACE":
        ctype, meta = req.headers.get("content-type"), _user_meta(req.headers)
    else:
        ctype, meta = info.content_type, info.meta
    if (sb, sk) == (req.bucket, req.key) and \
            req.headers.get("x-amz-metadata-directive", "COPY").upper() != "REPLACE":
        raise S3Error("InvalidRequest", "This copy request is illegal because it is trying "
                      "to copy an object to itself without changing the object's metadata")
    # server side: the copy shares the source's blocks
    new = await gw.run(req.store.copy, sb, sk, req.bucket, req.key, info, ctype, meta)
    return _xml(doc("CopyObjectResult", el("LastModified", iso(new.mtime)) +
                    el("ETag", f'"{new.etag}"')))


async def create_upload(gw: "Gateway", req: "Request") -> "Response":
    from .app import _user_meta, _xml
    upload_id = await gw.run(req.store.create_upload, req.bucket, req.key, req.user,
                             req.headers.get("content-type"), _user_meta(req.headers))
    return _xml(doc("InitiateMultipartUploadResult", el("Bucket", req.bucket) +
                    el("Key", req.key) + el("UploadId", upload_id)))


async def upload_part(gw: "Gateway", req: "Request") -> "Response":
    from .app import Response, _range, _xml
    number = naming.part_number(req.query.get("partNumber"))
    upload_id = req.query["uploadId"]
    await gw.run(req.store.upload, upload_id, req.bucket, req.key)
    if "x-amz-copy-source" in req.headers:
        sb, sk, info = await _source(gw, req)
        start, length = 0, info.size
        rng = req.headers.get("x-amz-copy-source-range")
        if rng:
            r = _range(rng, info.size)
            if r is None:
                raise S3Error("InvalidArgument", "bad x-amz-copy-source-range")
            start, length = r
        etag = await gw.run(req.store.put_part_copy, upload_id, number, sb, sk, start,
                            length)
        return _xml(doc("CopyPartResult", el("LastModified", iso(info.mtime)) +
                        el("ETag", f'"{etag}"')))
    _check_length(req)
    decoder = BodyDecoder(req.headers, req.auth)
    etag = await gw.run(req.store.put_part, upload_id, number,
                        gw._body_chunks(req, decoder), decoder.end)
    return Response(200, {"etag": f'"{etag}"'})


async def complete_upload(gw: "Gateway", req: "Request") -> "Response":
    from .app import _xml
    wanted = s3xml.parse_complete(await gw._small_body(req))
    info = await gw.run(req.store.complete, req.query["uploadId"], req.bucket, req.key,
                        wanted)
    return _xml(doc("CompleteMultipartUploadResult",
                    el("Location", f"/{req.bucket}/{req.key}") + el("Bucket", req.bucket) +
                    el("Key", req.key) + el("ETag", f'"{info.etag}"')))


async def list_parts(gw: "Gateway", req: "Request") -> "Response":
    from .app import _xml
    upload_id = req.query["uploadId"]
    rec = await gw.run(req.store.upload, upload_id, req.bucket, req.key)
    parts = await gw.run(req.store.parts, upload_id)
    try:
        marker = int(req.query.get("part-number-marker") or 0)
        max_parts = max(1, min(1000, int(req.query.get("max-parts") or 1000)))
    except ValueError:
        raise S3Error("InvalidArgument", "part-number-marker and max-parts are numbers")
    parts = [p for p in parts if p["number"] > marker]
    page, truncated = parts[:max_parts], len(parts) > max_parts
    body = "".join(f"<Part>{el('PartNumber', p['number'])}"
                   f"{el('LastModified', iso(p['mtime']))}{el('ETag', chr(34) + p['etag'] + chr(34))}"
                   f"{el('Size', p['size'])}</Part>" for p in page)
    nxt = el("NextPartNumberMarker", page[-1]["number"]) if page else ""
    return _xml(doc("ListPartsResult", el("Bucket", req.bucket) + el("Key", req.key) +
                    el("UploadId", upload_id) + owner(rec["owner"]).replace("Owner", "Initiator")
                    + owner(rec["owner"]) + el("StorageClass", "STANDARD") +
                    el("PartNumberMarker", marker) + nxt + el("MaxParts", max_parts) +
                    el("IsTruncated", truncated) + body))

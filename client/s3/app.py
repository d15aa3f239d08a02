"""The gateway's ASGI application: authenticate (sigv4.py), route an S3 request to one
handler, run the blocking store call on a worker thread, and send S3 XML or a streamed
body. Request bodies stream into the store as they arrive; object bodies stream out.
"""
from __future__ import annotations

import contextlib
import email.utils
import logging
import secrets
import threading
import time
from dataclasses import dataclass, field
from typing import Any, Awaitable, Callable, Iterator
from urllib.parse import unquote

import anyio
import anyio.from_thread
import anyio.to_thread

from ..api import AegisClient
from . import naming, s3xml, sigv4
from .chunked import BodyDecoder
from .credentials import Credentials
from .errors import S3Error, from_oserror
from .s3xml import doc, el, http_date, iso, owner
from .identity import UserClients
from .objinfo import ObjectInfo, Sidecars
from .store import Store, readers

log = logging.getLogger(__name__)

# sub-resources of S3 the gateway does not implement: answered NotImplemented (501)
UNSUPPORTED = {"acl", "tagging", "versioning", "policy", "cors", "lifecycle", "website",
               "logging", "notification", "replication", "encryption", "object-lock",
               "retention", "legal-hold", "torrent", "restore", "select", "versions",
               "versionId", "accelerate", "analytics", "inventory", "metrics",
               "ownershipControls", "publicAccessBlock", "requestPayment",
               "intelligent-tiering", "attributes", "policyStatus"}
MAX_KEYS = 1000
OWNER_TTL = 2.0
BODY_BATCH = 1 << 20


class Disconnected(Exception):
    """The client went away before the request body was complete."""


@dataclass
class Request:
    method: str
    raw_path: bytes
    query_string: bytes
    headers: dict[str, str]
    receive: Callable[[], Awaitable[dict]]
    query: dict[str, str] = field(default_factory=dict)
    bucket: str = ""
    key: str = ""
    user: str = ""
    auth: sigv4.Auth | None = None
    body_done: bool = False          # the whole request body has been received
    user_store: Store | None = None  # the user's view (its own cluster identity)
    # what lives as long as the request, response body included (the user's connection)
    stack: contextlib.ExitStack = field(default_factory=contextlib.ExitStack)

    @property
    def store(self) -> Store:
        if self.user_store is None:
            raise RuntimeError("no store before the request is authenticated")
        return self.user_store

    def has_body(self) -> bool:
        return self.headers.get("content-length", "0") != "0" or \
            "transfer-encoding" in self.headers


@dataclass
class Response:
    status: int = 200
    headers: dict[str, str] = field(default_factory=dict)
    body: bytes = b""
    # a streamed body: stream(emit) runs on a worker thread and calls emit(piece)
    stream: Callable[[Callable[[memoryview], None]], None] | None = None


def _xml(body: bytes, status: int = 200) -> Response:
    return Response(status, {"content-type": "application/xml"}, body)


def _http_time(value: str) -> float | None:
    parsed = email.utils.parsedate_tz(value)
    return email.utils.mktime_tz(parsed) if parsed else None


def _user_meta(headers: dict[str, str]) -> dict[str, str]:
    return {k[len("x-amz-meta-"):]: v for k, v in headers.items()
            if k.startswith("x-amz-meta-")}


def _object_headers(info: ObjectInfo) -> dict[str, str]:
    h = {"etag": f'"{info.etag}"', "last-modified": http_date(info.mtime),
         "content-type": info.content_type, "accept-ranges": "bytes"}
    h.update({f"x-amz-meta-{k}": v for k, v in info.meta.items()})
    return h


def _range(value: str | None, size: int) -> tuple[int, int] | None:
    """(start, length) of a single "bytes=" range; None for no range or one S3 ignores."""
    if not value or not value.startswith("bytes=") or "," in value:
        return None
    first, _, last = value[6:].strip().partition("-")
    try:
        if first == "":
            n = int(last)
            if n <= 0:
                raise S3Error("InvalidRange", ActualObjectSize=str(size))
            return max(0, size - n), min(n, size)
        start = int(first)
        end = int(last) if last else size - 1
    except ValueError:
        return None
    if start >= size:
        raise S3Error("InvalidRange", ActualObjectSize=str(size))
    if end < start:
        return None
    return start, min(end, size - 1) - start + 1


class Gateway:
    """The ASGI app. `now` is the clock SigV4 checks requests against. `fs` is the
    gateway's own identity (the owner of /.s3meta); with `users`, every request acts
    with its user's own connection, else everything acts as `fs` (one identity: a
    cluster without security) and the gateway checks bucket ownership itself."""

    def __init__(self, fs: AegisClient, credentials: Credentials, *, region: str = "us-east-1",
                 threads: int = 64, idle_timeout: float = 60.0,
                 users: UserClients | None = None,
                 now: Callable[[], float] = time.time) -> None:
        self.fs = fs
        self.users = users
        self._pool = readers()
        self._sidecars = Sidecars()                    # shared: see objinfo.Sidecars
        self.store = Store(fs, pool=self._pool, sidecars=self._sidecars)  # as the gateway
        self.credentials = credentials
        self.region = region
        self.threads = threads
        self.idle_timeout = idle_timeout
        self.now = now
        self.limiter: anyio.CapacityLimiter | None = None
        self._owners: dict[str, tuple[str, float]] = {}     # bucket -> (owner, until)
        self._meta_ready = False
        self._meta_lock = threading.Lock()

    def prepare_meta(self) -> None:
        """Store.secure_meta once per gateway: at start (server.py) or, if the cluster
        could not be reached then, before the first request is handled."""
        with self._meta_lock:
            if not self._meta_ready:
                self.store.secure_meta()
                self._meta_ready = True

    async def owner_of(self, bucket: str) -> str:
        """The bucket's owner (NoSuchBucket if none), cached for OWNER_TTL seconds: two
        MDS round trips saved on every object request. This gateway drops the entry when
        it deletes the bucket; another gateway's delete is seen within the TTL."""
        now = time.monotonic()
        hit = self._owners.get(bucket)
        if hit is not None and hit[1] > now:
            return hit[0]
        owner_ = await self.run(self.store.bucket_owner, bucket)
        if len(self._owners) > 10000:
            self._owners.clear()
        self._owners[bucket] = (owner_, now + OWNER_TTL)
        return owner_

    async def run(self, fn: Callable[..., Any], *args: Any) -> Any:
        if self.limiter is None:
            self.limiter = anyio.CapacityLimiter(self.threads)
        return await anyio.to_thread.run_sync(fn, *args, limiter=self.limiter)

    # -- ASGI ----------------------------------------------------------------------------

    async def __call__(self, scope: dict, receive: Callable, send: Callable) -> None:
        if scope["type"] == "lifespan":
            while True:
                msg = await receive()
                if msg["type"] == "lifespan.startup":
                    await send({"type": "lifespan.startup.complete"})
                elif msg["type"] == "lifespan.shutdown":
                    await send({"type": "lifespan.shutdown.complete"})
                    return
        if scope["type"] != "http":
            return
        headers: dict[str, str] = {}
        for k, v in scope["headers"]:
            name = k.decode("latin-1").lower()
            value = v.decode("latin-1")
            headers[name] = f"{headers[name]},{value}" if name in headers else value
        req = Request(scope["method"], scope.get("raw_path") or scope["path"].encode(),
                      scope.get("query_string", b""), headers, receive)
        request_id = secrets.token_hex(8).upper()
        with req.stack:
            try:
                resp = await self.handle(req)
            except S3Error as exc:
                resp = self._error(exc, req, request_id)
            except Disconnected:
                log.info("%s %s: the client went away; nothing stored", req.method,
                         req.raw_path)
                return
            except OSError as exc:
                resp = self._error(from_oserror(exc, f"/{req.bucket}/{req.key}"), req,
                                   request_id)
            except Exception as exc:         # a bug: answer 500, keep serving
                log.exception("%s %s failed", req.method, req.raw_path)
                resp = self._error(S3Error("InternalError", f"{exc.__class__.__name__}"),
                                   req, request_id)
            await self._send(resp, req, send, request_id)

    def _user_store(self, req: Request) -> Store:
        """The store acting as the request's user (see the class docstring)."""
        user = req.user
        if self.users is None:
            return Store(self.fs, user=user, pool=self._pool, sidecars=self._sidecars)
        client = req.stack.enter_context(self.users.lease(user))
        return Store(client, meta=self.fs, user=user, owner=user, pool=self._pool,
                     sidecars=self._sidecars)

    async def check_bucket(self, req: Request, bucket: str, resource: str) -> None:
        """NoSuchBucket, or AccessDenied unless the user may use the bucket: its owner
        (one identity), or whoever the MDS lets in (each user's own identity)."""
        owner_ = await self.owner_of(bucket)
        if self.users is None and owner_ != req.user:
            raise S3Error("AccessDenied", resource=resource)

    def _error(self, exc: S3Error, req: Request, request_id: str) -> Response:
        if exc.status >= 500:
            log.warning("%s %s: %s", req.method, req.raw_path, exc)
        resource = exc.resource or unquote(req.raw_path.decode("latin-1"))
        exc.resource = resource
        body = b"" if req.method == "HEAD" else exc.xml(request_id)
        return Response(exc.status, {"content-type": "application/xml"}, body)

    async def _send(self, resp: Response, req: Request, send: Callable,
                    request_id: str) -> None:
        headers = {"x-amz-request-id": request_id, "server": "AegisFS", **resp.headers}
        if not req.body_done and req.has_body():
            # a body we refused unread must not be taken for the next request on this
            # connection (and a 5 GiB one should not be read just to skip it): close it
            headers["connection"] = "close"
        if resp.stream is None and "content-length" not in headers:
            headers["content-length"] = str(len(resp.body))
        await send({"type": "http.response.start", "status": resp.status,
                    "headers": [(k.encode(), v.encode("latin-1", "replace"))
                                for k, v in headers.items()]})
        if resp.stream is None or req.method == "HEAD":
            await send({"type": "http.response.body",
                        "body": b"" if req.method == "HEAD" else resp.body})
            return

        def emit(data: memoryview) -> None:
            # from the worker thread: waits until the transport took it (flow control)
            anyio.from_thread.run(send, {"type": "http.response.body", "body": data,
                                         "more_body": True})

        try:
            await self.run(resp.stream, emit)
        except Exception as exc:
            # headers are gone already: all we can do is cut the connection short
            log.warning("%s %s: body failed mid-stream: %s", req.method, req.raw_path, exc)
            raise
        await send({"type": "http.response.body", "body": b""})

    # -- bodies --------------------------------------------------------------------------

    async def _next(self, req: Request) -> dict:
        with anyio.fail_after(self.idle_timeout):
            msg = await req.receive()
        if msg["type"] == "http.disconnect":
            raise Disconnected()
        if not msg.get("more_body"):
            req.body_done = True
        return msg

    async def _next_batch(self, req: Request) -> tuple[bytes, bool]:
        """Body messages gathered up to ~1 MiB: one hop to the worker thread per MiB
        rather than per 64 KiB message. Returns (bytes, more to come)."""
        parts, size = [], 0
        while True:
            try:
                msg = await self._next(req)
            except TimeoutError:
                raise S3Error("RequestTimeout") from None
            body = msg.get("body", b"")
            if body:
                parts.append(body)
                size += len(body)
            more = bool(msg.get("more_body"))
            if not more or size >= BODY_BATCH:
                return (parts[0] if len(parts) == 1 else b"".join(parts)), more

    def _body_chunks(self, req: Request, decoder: BodyDecoder) -> Iterator[bytes]:
        """A generator for a worker thread: the decoded body as it arrives."""
        def gen() -> Iterator[bytes]:
            while True:
                data, more = anyio.from_thread.run(self._next_batch, req)
                yield from decoder.feed(data)
                if not more:
                    return
        return gen()

    async def _small_body(self, req: Request, limit: int = s3xml.MAX_XML) -> bytes:
        decoder = BodyDecoder(req.headers, req.auth)
        out = bytearray()
        while True:
            try:
                msg = await self._next(req)
            except TimeoutError:
                raise S3Error("RequestTimeout") from None
            for piece in decoder.feed(msg.get("body", b"")):
                out += piece
                if len(out) > limit:
                    raise S3Error("MalformedXML", "the request body is too large")
            if not msg.get("more_body"):
                break
        decoder.end()
        return bytes(out)

    # -- dispatch ------------------------------------------------------------------------

    async def handle(self, req: Request) -> Response:
        path = unquote(req.raw_path.decode("latin-1"))
        bucket, _, key = path.lstrip("/").partition("/")
        req.bucket, req.key = bucket, key
        auth = sigv4.authenticate(req.method, req.raw_path, req.query_string, req.headers,
                                  self.credentials.lookup, self.now())
        req.auth, req.user = auth, auth.user
        if not self._meta_ready:
            await self.run(self.prepare_meta)
        req.user_store = self._user_store(req)
        req.query = dict(sigv4.parse_query(req.query_string))
        if set(req.query) & UNSUPPORTED:
            raise S3Error("NotImplemented", resource=path)
        m, q = req.method, req.query
        if not bucket:
            if m == "GET":
                return await self.list_buckets(req)
            raise S3Error("MethodNotAllowed")
        naming.bucket_path(bucket)
        if not key:
            if m == "PUT" and not q:
                return await self.create_bucket(req)
            if m == "DELETE" and not q:
                # S3's rule in both modes: only the bucket's owner deletes it
                if await self.owner_of(bucket) != req.user:
                    raise S3Error("AccessDenied", resource=f"/{bucket}")
                self._owners.pop(bucket, None)
                await self.run(req.store.delete_bucket, bucket)
                self._owners.pop(bucket, None)
                return Response(204)
            await self.check_bucket(req, bucket, f"/{bucket}")
            if m in ("HEAD", "GET") and ("location" in q or m == "HEAD"):
                await self.run(req.store.may_enter, bucket)
            if m == "HEAD":
                return Response(200, {"x-amz-bucket-region": self.region})
            if m == "GET" and "location" in q:
                return _xml(f'<?xml version="1.0" encoding="UTF-8"?>\n<LocationConstraint '
                            f'xmlns="{s3xml.NS}"></LocationConstraint>'.encode())
            if m == "GET" and "uploads" in q:
                return await self.list_uploads(req)
            if m == "GET":
                return await self.list_objects(req)
            if m == "POST" and "delete" in q:
                return await self.delete_objects(req)
            raise S3Error("NotImplemented")
        naming.check_key(bucket, key)
        await self.check_bucket(req, bucket, f"/{bucket}/{key}")
        from . import handlers
        return await handlers.object_request(self, req)

    # -- bucket handlers -----------------------------------------------------------------

    async def list_buckets(self, req: Request) -> Response:
        buckets = await self.run(req.store.list_buckets, req.user)
        body = "".join(f"<Bucket>{el('Name', n)}{el('CreationDate', iso(t))}</Bucket>"
                       for n, t in buckets)
        return _xml(doc("ListAllMyBucketsResult", f"{owner(req.user)}<Buckets>{body}</Buckets>"))

    async def create_bucket(self, req: Request) -> Response:
        await self._small_body(req)       # an optional CreateBucketConfiguration: ignored
        await self.run(req.store.create_bucket, req.bucket, req.user)
        return Response(200, {"location": f"/{req.bucket}"})

    async def delete_objects(self, req: Request) -> Response:
        keys, quiet = s3xml.parse_delete(await self._small_body(req))

        store = req.store

        def work() -> str:
            out = []
            for k in keys:
                try:
                    try:
                        store.delete(req.bucket, k)
                    except OSError as exc:
                        raise from_oserror(exc, f"/{req.bucket}/{k}") from None
                    if not quiet:
                        out.append(f"<Deleted>{el('Key', k)}</Deleted>")
                except S3Error as exc:
                    out.append(f"<Error>{el('Key', k)}{el('Code', exc.code)}"
                               f"{el('Message', exc.message)}</Error>")
            return "".join(out)

        return _xml(doc("DeleteResult", await self.run(work)))

    async def list_objects(self, req: Request) -> Response:
        from .listing import list_objects
        return _xml(await self.run(list_objects, req.store, req.bucket, req.query))

    async def list_uploads(self, req: Request) -> Response:
        prefix = req.query.get("prefix", "")
        ups = await self.run(req.store.uploads, req.bucket, prefix)
        body = "".join(f"<Upload>{el('Key', u['key'])}{el('UploadId', u['id'])}"
                       f"{owner(u['owner'])}{owner(u['owner']).replace('Owner', 'Initiator')}"
                       f"{el('StorageClass', 'STANDARD')}{el('Initiated', iso(u['initiated']))}"
                       f"</Upload>" for u in ups)
        return _xml(doc("ListMultipartUploadsResult",
                        f"{el('Bucket', req.bucket)}{el('Prefix', prefix)}"
                        f"{el('MaxUploads', 1000)}{el('IsTruncated', False)}{body}"))


def parse_time(value: str) -> float | None:
    return _http_time(value)



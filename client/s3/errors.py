"""S3 errors: one table from error code to HTTP status and message, and the one place an
OSError from AegisClient becomes an S3 error. Every refusal the gateway sends is built here.
"""
from __future__ import annotations

import errno
from xml.sax.saxutils import escape

# code -> (HTTP status, default message)
CODES: dict[str, tuple[int, str]] = {
    "AccessDenied": (403, "Access Denied"),
    "BadDigest": (400, "The Content-MD5 you specified did not match what we received."),
    "BucketAlreadyOwnedByYou": (409, "Your previous request to create the named bucket "
                                     "succeeded and you already own it."),
    "BucketAlreadyExists": (409, "The requested bucket name is not available."),
    "BucketNotEmpty": (409, "The bucket you tried to delete is not empty."),
    "EntityTooLarge": (400, "Your proposed upload exceeds the maximum allowed size."),
    "EntityTooSmall": (400, "Your proposed upload is smaller than the minimum allowed "
                            "object size."),
    "IncompleteBody": (400, "You did not provide the number of bytes specified by the "
                            "Content-Length HTTP header."),
    "InternalError": (500, "We encountered an internal error. Please try again."),
    "InvalidAccessKeyId": (403, "The AWS access key Id you provided does not exist in "
                                "our records."),
    "InvalidArgument": (400, "Invalid Argument"),
    "InvalidBucketName": (400, "The specified bucket is not valid."),
    "InvalidDigest": (400, "The Content-MD5 you specified is not valid."),
    "InvalidPart": (400, "One or more of the specified parts could not be found."),
    "InvalidPartOrder": (400, "The list of parts was not in ascending order."),
    "InvalidRange": (416, "The requested range is not satisfiable"),
    "InvalidRequest": (400, "Invalid Request"),
    "KeyTooLongError": (400, "Your key is too long"),
    "MalformedXML": (400, "The XML you provided was not well-formed or did not validate "
                          "against our published schema."),
    "MethodNotAllowed": (405, "The specified method is not allowed against this resource."),
    "MissingContentLength": (411, "You must provide the Content-Length HTTP header."),
    "NoSuchBucket": (404, "The specified bucket does not exist"),
    "NoSuchKey": (404, "The specified key does not exist."),
    "NoSuchUpload": (404, "The specified multipart upload does not exist."),
    "NotImplemented": (501, "A header or operation you provided implies functionality "
                            "that is not implemented."),
    "PreconditionFailed": (412, "At least one of the preconditions you specified did "
                                "not hold."),
    # not an AWS code (AWS has no quotas on writes); Ceph RGW's, which S3 clients treat as
    # a refusal, not as something to retry
    "QuotaExceeded": (403, "The write would exceed the quota of a directory tree."),
    "RequestTimeTooSkewed": (403, "The difference between the request time and the "
                                  "server's time is too large."),
    "RequestTimeout": (400, "Your socket connection to the server was not read from or "
                            "written to within the timeout period."),
    "ServiceUnavailable": (503, "Please reduce your request rate."),
    "SignatureDoesNotMatch": (403, "The request signature we calculated does not match "
                                   "the signature you provided."),
    "XAmzContentSHA256Mismatch": (400, "The provided 'x-amz-content-sha256' header does "
                                       "not match what was computed."),
}


class S3Error(Exception):
    """A refusal with an S3 error code; `resource` is the bucket/key it is about."""

    def __init__(self, code: str, message: str | None = None, resource: str = "",
                 **extra: str) -> None:
        self.status, default = CODES[code]
        self.code = code
        self.message = message or default
        self.resource = resource
        self.extra = extra
        super().__init__(f"{code}: {self.message}")

    def xml(self, request_id: str) -> bytes:
        extra = "".join(f"<{k}>{escape(str(v))}</{k}>" for k, v in self.extra.items())
        return (f'<?xml version="1.0" encoding="UTF-8"?>\n<Error><Code>{self.code}</Code>'
                f"<Message>{escape(self.message)}</Message>"
                f"<Resource>{escape(self.resource)}</Resource>{extra}"
                f"<RequestId>{request_id}</RequestId></Error>").encode()


def from_oserror(exc: OSError, resource: str, missing: str = "NoSuchKey") -> S3Error:
    """An AegisClient failure as an S3 error: a missing path is `missing`, a path that
    cannot be (file where a directory is needed) is InvalidArgument, a tree quota's limit
    is QuotaExceeded, a file past the largest the cluster holds EntityTooLarge, the
    cluster being unreachable is ServiceUnavailable, anything else
    InternalError."""
    if isinstance(exc, (FileNotFoundError, NotADirectoryError)):
        return S3Error(missing, resource=resource)
    if isinstance(exc, (IsADirectoryError, FileExistsError)) or exc.errno == errno.EINVAL:
        return S3Error("InvalidArgument", f"the key conflicts with an existing key or "
                       f"directory: {exc.strerror or exc}", resource)
    if isinstance(exc, PermissionError):
        return S3Error("AccessDenied", resource=resource)
    if exc.errno == errno.EDQUOT:
        return S3Error("QuotaExceeded", exc.strerror or str(exc), resource)
    if exc.errno == errno.EFBIG:
        return S3Error("EntityTooLarge", exc.strerror or str(exc), resource)
    if isinstance(exc, (ConnectionError, TimeoutError)) or exc.errno == errno.ENOSPC:
        return S3Error("ServiceUnavailable", f"the cluster is not available: {exc}", resource)
    return S3Error("InternalError", f"{exc.__class__.__name__}: {exc}", resource)

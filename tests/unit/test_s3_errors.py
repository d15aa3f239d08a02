"""How the gateway answers each client failure (client/s3/errors.py from_oserror): a
code S3 clients act on, never a 500 (which they retry) for what retrying cannot fix."""
from __future__ import annotations

import errno

import pytest

from client.s3.errors import from_oserror


@pytest.mark.parametrize("exc,code,status", [
    (FileNotFoundError(errno.ENOENT, "gone"), "NoSuchKey", 404),
    (NotADirectoryError(errno.ENOTDIR, "file on the way"), "NoSuchKey", 404),
    (IsADirectoryError(errno.EISDIR, "a directory"), "InvalidArgument", 400),
    (OSError(errno.EINVAL, "bad name"), "InvalidArgument", 400),
    (PermissionError(errno.EACCES, "not yours"), "AccessDenied", 403),
    (OSError(errno.EDQUOT, "tree quota of /t"), "QuotaExceeded", 403),
    (OSError(errno.EFBIG, "a file holds at most 100000 blocks"), "EntityTooLarge", 400),
    (ConnectionRefusedError(errno.ECONNREFUSED, "no broker"), "ServiceUnavailable", 503),
    (OSError(errno.ENOSPC, "only 0 live DataNodes"), "ServiceUnavailable", 503),
    (OSError(errno.EIO, "checksum"), "InternalError", 500),
])
def test_each_failure_has_its_s3_code(exc, code, status):
    err = from_oserror(exc, "/bucket/key")
    assert (err.code, err.status, err.resource) == (code, status, "/bucket/key")
    if code in ("QuotaExceeded", "EntityTooLarge"):
        assert exc.strerror in err.message         # the cluster's reason reaches the user

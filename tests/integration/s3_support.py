"""Shared fixtures of the S3 gateway tests: a cluster with its gateway, access keys for
two users, boto3 clients pointed at the gateway."""
from __future__ import annotations

import socket
import time

import pytest

from broker.keys import KeyStore
from client.s3.credentials import Credentials
from run_cluster import free_base_port
from tests.support.cluster import start_cluster


LEASE = 3.0


def free_port() -> int:
    return free_base_port(1)


def wait_port(port: int, proc, timeout: float = 20.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"the S3 gateway exited with {proc.returncode}")
        try:
            socket.create_connection(("127.0.0.1", port), timeout=0.5).close()
            return
        except OSError:
            time.sleep(0.05)
    raise TimeoutError(f"no S3 gateway on port {port}")


class Gateway:
    def __init__(self, cluster, port: int) -> None:
        self.cluster = cluster
        self.port = port
        self.endpoint = f"http://127.0.0.1:{port}"
        self.creds = Credentials(cluster.data_dir / "keys")
        self.keys = {u: self.creds.create(u) for u in ("alice", "bob")}
        # the AegisFS users the access keys map to: the gateway acts with their own keys
        store = KeyStore(cluster.data_dir / "keys")
        self.user_keys = {u: store.add_user(u) for u in ("alice", "bob")}

    def client(self, user: str = "alice", **config):
        import boto3
        from botocore.config import Config
        access, secret = self.keys[user]
        return boto3.client("s3", endpoint_url=self.endpoint, aws_access_key_id=access,
                            aws_secret_access_key=secret, region_name="us-east-1",
                            config=Config(s3={"addressing_style": "path"}, signature_version="s3v4",
                                          retries={"max_attempts": 1}, **config))


@pytest.fixture(scope="module")
def gateway(tmp_path_factory):
    port = free_port()
    # short draft leases: an abandoned upload's draft must be seen to expire in the tests
    cluster = start_cluster(tmp_path_factory.mktemp("s3"), s3_port=port,
                            extra={"mds": ["--lease", str(LEASE)]})
    try:
        wait_port(port, cluster.roles["s3"].proc)
        yield Gateway(cluster, port)
    finally:
        cluster.stop()


def sign(gw: Gateway, method: str, path: str, headers: dict, *, user: str = "alice",
         payload: str, body: bytes = b"") -> dict:
    """SigV4 headers for a request whose x-amz-content-sha256 is `payload` as given (also
    a wrong one, or a STREAMING-* mode), signed by botocore's own signer."""
    from botocore.auth import S3SigV4Auth
    from botocore.awsrequest import AWSRequest
    from botocore.credentials import Credentials as BotoCredentials

    class FixedPayload(S3SigV4Auth):
        def payload(self, request):
            return payload

    access, secret = gw.keys[user]
    req = AWSRequest(method=method, url=gw.endpoint + path, data=body, headers=headers)
    FixedPayload(BotoCredentials(access, secret), "s3", "us-east-1").add_auth(req)
    return {k: v.decode() if isinstance(v, bytes) else v for k, v in req.headers.items()}


def signed_request(gw: Gateway, method: str, path: str, body: bytes = b"", *,
                   user: str = "alice", headers: dict | None = None,
                   payload_hash: str | None = None):
    """A raw signed request: (status, headers, body bytes). For what boto3 itself would
    not send (malformed XML, '..' in a key, a payload hash that does not match)."""
    import hashlib
    import http.client

    h = sign(gw, method, path, dict(headers or {}), user=user, body=body,
             payload=payload_hash or hashlib.sha256(body).hexdigest())
    conn = http.client.HTTPConnection("127.0.0.1", gw.port, timeout=30)
    try:
        conn.request(method, path, body=body, headers=h)
        resp = conn.getresponse()
        return resp.status, dict(resp.getheaders()), resp.read()
    finally:
        conn.close()

"""Shared fixtures of the S3 gateway tests: a cluster with its gateway, access keys for
two users, boto3 clients pointed at the gateway."""
from __future__ import annotations

import socket
import time

import pytest

from client.s3.credentials import Credentials
from tests.support.cluster import start_cluster


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


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

    def client(self, user: str = "alice", **config):
        import boto3
        from botocore.config import Config
        access, secret = self.keys[user]
        return boto3.client("s3", endpoint_url=self.endpoint, aws_access_key_id=access,
                            aws_secret_access_key=secret, region_name="us-east-1",
                            config=Config(s3={"addressing_style": "path"},
                                          retries={"max_attempts": 1}, **config))


@pytest.fixture(scope="module")
def gateway(tmp_path_factory):
    port = free_port()
    cluster = start_cluster(tmp_path_factory.mktemp("s3"), s3_port=port)
    try:
        wait_port(port, cluster.roles["s3"].proc)
        yield Gateway(cluster, port)
    finally:
        cluster.stop()

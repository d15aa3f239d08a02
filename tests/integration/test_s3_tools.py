"""The S3 gateway driven by the tools people use: the aws CLI (`s3 cp`, `sync`, `ls`,
`rm --recursive`, `s3api`) and rclone (copy, sync, check); results byte-identical."""
from __future__ import annotations

import filecmp
import json
import os
import shutil
import subprocess
from pathlib import Path

import pytest

from tests.integration.s3_support import gateway  # noqa: F401  (fixture)

MiB = 1024 * 1024
AWS = shutil.which("aws")
RCLONE = shutil.which("rclone")


@pytest.fixture(scope="module")
def aws(gateway, tmp_path_factory):
    if AWS is None:
        pytest.skip("the aws CLI is not installed (.ci/run installs Debian's awscli)")
    home = tmp_path_factory.mktemp("aws")
    (home / "config").write_text("[default]\nregion = us-east-1\ns3 =\n"
                                 "    addressing_style = path\n")
    access, secret = gateway.keys["alice"]
    env = {"PATH": os.environ["PATH"], "HOME": str(home),
           "AWS_CONFIG_FILE": str(home / "config"),
           "AWS_SHARED_CREDENTIALS_FILE": str(home / "none"),
           "AWS_ACCESS_KEY_ID": access, "AWS_SECRET_ACCESS_KEY": secret}

    def run(*args: str) -> str:
        p = subprocess.run([AWS, "--endpoint-url", gateway.endpoint, *args], env=env,
                           capture_output=True, text=True, timeout=300)
        assert p.returncode == 0, f"aws {' '.join(args)}: {p.stderr}"
        return p.stdout
    return run


def tree(root: Path) -> dict[str, bytes]:
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*"))
            if p.is_file()}


def make_tree(root: Path) -> None:
    for rel, size in (("a.txt", 10), ("empty", 0), ("sub/b.bin", 300_000),
                      ("sub/deeper/c.bin", 2 * MiB + 7), ("sub 2/d e.txt", 5)):
        p = root / rel
        p.parent.mkdir(parents=True, exist_ok=True)
        p.write_bytes(os.urandom(size))


def test_aws_cp_single_and_multipart(aws, tmp_path):
    aws("s3", "mb", "s3://awscli")
    small, big = tmp_path / "small", tmp_path / "big"
    small.write_bytes(os.urandom(1000))
    big.write_bytes(os.urandom(20 * MiB + 3))     # > 8 MiB: the CLI uploads in parts
    aws("s3", "cp", str(small), "s3://awscli/one/small")
    aws("s3", "cp", str(big), "s3://awscli/one/big")
    head = json.loads(aws("s3api", "head-object", "--bucket", "awscli", "--key", "one/big"))
    assert head["ContentLength"] == big.stat().st_size
    assert head["ETag"].strip('"').endswith("-3")          # 8 + 8 + 4 MiB parts
    aws("s3", "cp", "s3://awscli/one/big", str(tmp_path / "big.back"))
    aws("s3", "cp", "s3://awscli/one/small", str(tmp_path / "small.back"))
    assert filecmp.cmp(big, tmp_path / "big.back", shallow=False)
    assert filecmp.cmp(small, tmp_path / "small.back", shallow=False)
    listed = json.loads(aws("s3api", "list-objects-v2", "--bucket", "awscli"))
    assert [o["Key"] for o in listed["Contents"]] == ["one/big", "one/small"]
    assert "small" in aws("s3", "ls", "s3://awscli/one/")


def test_aws_sync_both_ways_and_rm_recursive(aws, tmp_path):
    aws("s3", "mb", "s3://synced")
    src, back = tmp_path / "src", tmp_path / "back"
    make_tree(src)
    aws("s3", "sync", str(src), "s3://synced/tree")
    aws("s3", "sync", "s3://synced/tree", str(back))
    assert tree(back) == tree(src)
    # nothing changed: a second sync copies nothing
    assert "upload:" not in aws("s3", "sync", str(src), "s3://synced/tree")
    (src / "sub" / "b.bin").write_bytes(b"changed")
    assert "upload:" in aws("s3", "sync", str(src), "s3://synced/tree")
    aws("s3", "sync", "s3://synced/tree", str(back))
    assert tree(back) == tree(src)
    out = aws("s3", "ls", "--recursive", "s3://synced/")
    assert len(out.strip().splitlines()) == len(tree(src))
    aws("s3", "rm", "--recursive", "s3://synced/tree")
    assert aws("s3", "ls", "--recursive", "s3://synced/").strip() == ""
    aws("s3", "rb", "s3://synced")


@pytest.fixture(scope="module")
def rclone(gateway):
    if RCLONE is None:
        pytest.skip("rclone is not installed (.ci/run installs Debian's rclone)")
    access, secret = gateway.keys["alice"]
    env = {"PATH": os.environ["PATH"], "HOME": os.environ.get("HOME", "/tmp"),
           "RCLONE_CONFIG": "/dev/null",
           "RCLONE_CONFIG_AEG_TYPE": "s3", "RCLONE_CONFIG_AEG_PROVIDER": "Other",
           "RCLONE_CONFIG_AEG_ACCESS_KEY_ID": access,
           "RCLONE_CONFIG_AEG_SECRET_ACCESS_KEY": secret,
           "RCLONE_CONFIG_AEG_ENDPOINT": gateway.endpoint,
           "RCLONE_CONFIG_AEG_REGION": "us-east-1"}

    def run(*args: str) -> subprocess.CompletedProcess:
        return subprocess.run([RCLONE, "--s3-force-path-style", *args], env=env,
                              capture_output=True, text=True, timeout=300)
    return run


def test_rclone_copy_sync_check(rclone, tmp_path):
    src, back = tmp_path / "src", tmp_path / "back"
    make_tree(src)
    (src / "big").write_bytes(os.urandom(12 * MiB))
    assert rclone("mkdir", "aeg:rclone").returncode == 0
    p = rclone("copy", str(src), "aeg:rclone/t")
    assert p.returncode == 0, p.stderr
    p = rclone("check", str(src), "aeg:rclone/t")
    assert p.returncode == 0, p.stderr
    (src / "a.txt").unlink()
    p = rclone("sync", str(src), "aeg:rclone/t")
    assert p.returncode == 0, p.stderr
    p = rclone("sync", "aeg:rclone/t", str(back))
    assert p.returncode == 0, p.stderr
    assert tree(back) == tree(src)
    # a corrupted local copy is caught by check (the gateway's MD5 ETags are real)
    (back / "sub" / "b.bin").write_bytes(b"x" * 300_000)
    assert rclone("check", str(back), "aeg:rclone/t").returncode != 0

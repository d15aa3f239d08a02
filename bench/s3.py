"""The S3 gateway beside the native client, measured in the same run.

    python bench/s3.py                            # 1 GiB up/down, 2,000 4 KiB PUTs
    python bench/s3.py --size-mib 256 --small 500

Starts its own cluster with the gateway (run_cluster.Cluster, s3_port) on free ports in a
temporary directory. Large files: `aws s3 cp` up and down against `aegisfs put` / `get`
(both as child processes, so both pay their start-up). Small objects: 4 KiB PUTs from 16
concurrent boto3 clients against one put_many of the same objects. Prints a table.
"""
from __future__ import annotations

import argparse
import concurrent.futures
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from client.api import AegisClient                          # noqa: E402
from tests.integration.s3_support import Gateway, free_port, wait_port  # noqa: E402
from tests.support.cluster import start_cluster             # noqa: E402

MiB = 1024 * 1024


def timed(argv: list[str], env: dict | None = None) -> float:
    t = time.perf_counter()
    subprocess.run(argv, check=True, env=env, stdout=subprocess.DEVNULL)
    return time.perf_counter() - t


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--size-mib", type=int, default=1024)
    ap.add_argument("--small", type=int, default=2000, help="4 KiB objects to PUT")
    ap.add_argument("--clients", type=int, default=16)
    args = ap.parse_args()
    aws = shutil.which("aws")
    with tempfile.TemporaryDirectory(prefix="bench-s3-") as tmp:
        tmpd = Path(tmp)
        port = free_port()
        cluster = start_cluster(tmpd / "cluster", s3_port=port)
        try:
            wait_port(port, cluster.roles["s3"].proc)
            gw = Gateway(cluster, port)
            s3 = gw.client()
            s3.create_bucket(Bucket="bench")
            rows = []
            src = tmpd / "big"
            with open(src, "wb") as f:
                for _ in range(args.size_mib):
                    f.write(os.urandom(MiB))
            mib = args.size_mib
            # the native CLI as alice, the identity her S3 requests act with
            cli = [sys.executable, "-m", "client.cli", "--broker", cluster.broker,
                   "--key", str(gw.user_keys["alice"])]
            up = timed(cli + ["put", str(src), "/bench/native-big"])
            down = timed(cli + ["get", "/bench/native-big", str(tmpd / "native.back")])
            rows += [("aegisfs put", mib / up), ("aegisfs get", mib / down)]
            if aws:
                access, secret = gw.keys["alice"]
                (tmpd / "awsconfig").write_text("[default]\nregion = us-east-1\ns3 =\n"
                                                "    addressing_style = path\n")
                env = {**os.environ, "AWS_ACCESS_KEY_ID": access,
                       "AWS_SECRET_ACCESS_KEY": secret,
                       "AWS_CONFIG_FILE": str(tmpd / "awsconfig")}
                base = [aws, "--endpoint-url", gw.endpoint, "s3", "cp", "--only-show-errors"]
                s_up = timed(base + [str(src), "s3://bench/big"], env)
                s_down = timed(base + ["s3://bench/big", str(tmpd / "s3.back")], env)
                rows += [("aws s3 cp up", mib / s_up), ("aws s3 cp down", mib / s_down)]
            else:
                print("aws CLI not found: large-object S3 figures skipped")
            for name, rate in rows:
                print(f"{name:<18} {rate:8.1f} MiB/s")
            if aws:
                print(f"ratio up {(mib / s_up) / (mib / up):.2f}x, "
                      f"down {(mib / s_down) / (mib / down):.2f}x (target >= 0.6x)")

            body = os.urandom(4096)
            clients = [gw.client() for _ in range(args.clients)]
            t = time.perf_counter()
            with concurrent.futures.ThreadPoolExecutor(args.clients) as pool:
                list(pool.map(lambda i: clients[i % args.clients].put_object(
                    Bucket="bench", Key=f"small/{i:06d}", Body=body), range(args.small)))
            s3_rate = args.small / (time.perf_counter() - t)
            with AegisClient(cluster.broker, key=gw.user_keys["alice"]) as fs:
                t = time.perf_counter()
                fs.put_many([(body, f"/bench/native-small/{i:06d}") for i in range(args.small)])
                native_rate = args.small / (time.perf_counter() - t)
            print(f"4 KiB PUT, {args.clients} boto3 clients: {s3_rate:8.0f} objects/s")
            print(f"4 KiB put_many (native batched):   {native_rate:8.0f} objects/s")
        finally:
            cluster.stop()


if __name__ == "__main__":
    main()

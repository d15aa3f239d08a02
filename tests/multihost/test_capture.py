"""What crosses the wire: a raw capture on the client host's interface (client <-> broker
for the requests, client <-> DataNode data endpoints for the block payloads, both pass
there) must not show a file's content or its path once CURVE encrypts the sockets.
Without security the same capture must show both: that proves the capture sees the
traffic, so the encrypted case cannot pass by capturing nothing."""
from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from tests.multihost.harness import BROKER, CLIENT, curve_available

MARKER = bytes(range(0x40, 0x80))                  # 64 bytes, printable, unlikely by chance
PATH_MARKER = "/m/" + "p" * 30 + "q" * 31 + "x"    # a 64-character path name


def capture_a_put(mh, tmp_path: Path, hosts: tuple[str, ...] = (CLIENT,)
                  ) -> tuple[list[bytes], str]:
    """What the interface of each of `hosts` saw during a put and a read, and the put's
    log (-v: a data endpoint the client gave up on, sending through the broker instead,
    is logged)."""
    sniffs = []
    for host in hosts:
        cap = tmp_path / f"wire-{host}.bin"
        sniff = mh.net.spawn(host, [sys.executable, str(Path(__file__).with_name("sniff.py")),
                                    "eth0", str(cap), "5"], stdout=subprocess.PIPE)
        assert sniff.stdout.readline().strip() == b"READY"
        sniffs.append((sniff, cap))
    src = tmp_path / "secret.bin"
    src.write_bytes(MARKER * 4 + b"tail")
    put = mh.aegisfs("-v", "put", str(src), PATH_MARKER)
    log = put.stderr.decode(errors="replace")
    assert put.returncode == 0, log[-2000:]
    assert mh.ok("read", PATH_MARKER) == MARKER * 4 + b"tail"
    for sniff, _ in sniffs:
        sniff.wait(20)
    return [cap.read_bytes() for _, cap in sniffs], log


def test_plain_traffic_shows_content_and_path(multihost, tmp_path):
    mh = multihost(security=False)
    for attempt in range(2):
        (client, broker), log = capture_a_put(mh, tmp_path, (CLIENT, BROKER))
        assert MARKER in client and PATH_MARKER.encode() in client
        # the path is a request (through the broker)
        assert PATH_MARKER.encode() in broker
        # the content went to the DataNodes' data endpoints directly, across the
        # namespaces, never through the broker's host; unless a data endpoint did not
        # answer within the client's connect time on a loaded machine (client/direct.py:
        # then the broker relays, and the client logs it): then once more
        relayed = "not usable" in log
        assert (MARKER in broker) == relayed, (
            f"content {'seen' if MARKER in broker else 'not seen'} on the broker's host; "
            f"the client's log:\n{log[-2000:]}")
        if not relayed:
            return
        mh.ok("rm", PATH_MARKER)
    raise AssertionError(f"the client relayed through the broker twice:\n{log[-2000:]}")


@pytest.mark.xfail(not curve_available(), reason="needs CURVE", strict=False)
def test_curve_hides_content_and_path(multihost, tmp_path):
    mh = multihost(security=True)
    (wire,), _ = capture_a_put(mh, tmp_path)
    assert len(wire) > 10_000, "the capture saw almost nothing"
    assert MARKER not in wire
    assert PATH_MARKER.encode() not in wire

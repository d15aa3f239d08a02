"""Capture every frame on one interface with a raw AF_PACKET socket (no tcpdump needed)
for a number of seconds, appending the raw frames to a file. Run inside a namespace:
    sniff.py IFACE OUTFILE SECONDS
It writes READY on stdout once the socket is bound, so nothing sent after is missed."""
from __future__ import annotations

import socket
import sys
import time

ETH_P_ALL = 0x0003


def main() -> None:
    iface, out, seconds = sys.argv[1], sys.argv[2], float(sys.argv[3])
    sock = socket.socket(socket.AF_PACKET, socket.SOCK_RAW, socket.htons(ETH_P_ALL))
    sock.bind((iface, 0))
    sock.settimeout(0.2)
    print("READY", flush=True)
    deadline = time.monotonic() + seconds
    with open(out, "wb") as fh:
        while time.monotonic() < deadline:
            try:
                fh.write(sock.recv(1 << 16))
            except socket.timeout:
                continue


if __name__ == "__main__":
    main()

"""What every AegisFS process does the same way: logging set-up and signal handling.

Roles call `setup_logging` once in main() and `stop_on_signals(stop)` so SIGTERM and
Ctrl-C end their loop cleanly instead of killing it mid-write.
"""
from __future__ import annotations

import logging
import signal
import sys
from typing import Any, Callable

import click

FORMAT = "%(asctime)s %(levelname)s %(name)s[%(process)d]: %(message)s"


def setup_logging(level: str = "INFO", log_file: str | None = None) -> None:
    handlers: list[logging.Handler] = [logging.StreamHandler(sys.stderr)]
    if log_file:
        handlers = [logging.FileHandler(log_file)]
    logging.basicConfig(level=getattr(logging, level.upper(), logging.INFO), format=FORMAT,
                        handlers=handlers, force=True)


def stop_on_signals(stop: Callable[[], None]) -> None:
    def handler(signum, _frame):
        logging.getLogger(__name__).info("signal %d: stopping", signum)
        stop()
    signal.signal(signal.SIGTERM, handler)
    signal.signal(signal.SIGINT, handler)


def tune_malloc() -> None:
    """Keep freed block-sized buffers for reuse instead of returning them to the OS.

    libzmq mallocs every received frame; a 4 MiB frame is above glibc's mmap threshold, so
    each one came from fresh pages, and fresh memory is what this kind of machine charges
    most for (shared/PERFORMANCE.md). Serving 4 MiB allocations from the heap and trimming
    it only past 128 MiB measured ~10% less CPU per GiB in the broker and the DataNode.
    A no-op where glibc's mallopt is not available.
    """
    import ctypes
    import ctypes.util
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        mallopt = libc.mallopt
    except (OSError, AttributeError):
        return
    M_TRIM_THRESHOLD, M_MMAP_THRESHOLD = -1, -3
    mallopt(M_MMAP_THRESHOLD, 64 * 1024 * 1024)
    mallopt(M_TRIM_THRESHOLD, 128 * 1024 * 1024)


def security_options(member: bool) -> Callable[[Callable], Callable]:
    """The [security] flags every role takes: --security on|off and --keys DIR, and for
    the MDS and DataNodes --key FILE (their member secret key) and --broker-key FILE."""
    def wrap(fn: Callable) -> Callable:
        opts = [click.option("--security", type=click.Choice(["on", "off"]),
                             help="CURVE on every socket (default: [security] mode, on). "
                                  "off is for benchmarks only."),
                click.option("--keys", "keys_dir", type=click.Path(file_okay=False),
                             help="The cluster's keys directory (default: [security] keys, "
                                  "data/keys).")]
        if member:
            opts += [click.option("--key", "key_file", type=click.Path(dir_okay=False),
                                  help="This member's secret key file (default: its file "
                                       "in the keys directory)."),
                     click.option("--broker-key", type=click.Path(dir_okay=False),
                                  help="The broker's public key file (default: broker.key "
                                       "in the keys directory).")]
        for opt in reversed(opts):
            fn = opt(fn)
        return fn
    return wrap


def security_flags(security: str | None, keys_dir: str | None, key_file: str | None = None,
                   broker_key: str | None = None) -> dict[str, Any]:
    """The [security] overrides from those flags (None = not given). A member's --key is
    `member_key`: [security] key in the config is the client's user key."""
    return {"mode": security, "keys": keys_dir, "member_key": key_file,
            "broker_key": broker_key}


def metrics_option(fn: Callable) -> Callable:
    """--metrics-port: the role serves Prometheus metrics there (broker/metrics.py)."""
    return click.option("--metrics-port", type=click.IntRange(1, 65535), metavar="PORT",
                        help="Serve Prometheus metrics on http://127.0.0.1:PORT/metrics "
                             "(off when not given).")(fn)


def start_metrics(port: int | None, role: str, services: list,
                  figures: Callable[[], Any] | None = None) -> bool:
    """Serve metrics on `port` (None: off, nothing is imported): every request of
    `services` is counted and timed; `figures()` is read at each scrape as gauges."""
    if not port:
        return False
    from broker import metrics
    metrics.serve(port)
    for service in services:
        service.observe = metrics.observe
    if figures is not None:
        metrics.collect(role, figures)
    return True

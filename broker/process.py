"""What every AegisFS process does the same way: logging set-up and signal handling.

Roles call `setup_logging` once in main() and `stop_on_signals(stop)` so SIGTERM and
Ctrl-C end their loop cleanly instead of killing it mid-write.
"""
from __future__ import annotations

import logging
import signal
import sys
from typing import Callable

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

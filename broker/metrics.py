"""Prometheus metrics of a role (issue 18, point 6, first part): the series every role
has - requests, errors, latency and payload bytes by operation, recorded by the service
layer's `observe` hook - the role-specific ones below, and the HTTP endpoint.

Public API: `serve(port, host)`, `observe` (a broker.service.Observe), `set_state`,
`collect(role, figures)`, the metric objects (REQUESTS, ERRORS, LATENCY, BYTES_IN,
BYTES_OUT, WAL_FSYNC, WAL_BATCH, GAUGE). Names are listed in docs/architecture.md
(Metrics). One registry per process (prometheus_client's default), on loopback.
"""
from __future__ import annotations

import logging
import time
from typing import Any, Callable, Mapping

from prometheus_client import REGISTRY, Counter, Gauge, Histogram, start_http_server
from prometheus_client.core import GaugeMetricFamily

from broker.protocol import exception_to_error
from broker.service import Outcome

log = logging.getLogger(__name__)

_LAT_BUCKETS = (0.0001, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5,
                1.0, 2.5, 5.0, 10.0)

REQUESTS = Counter("aegisfs_requests", "Requests handled, by service and operation",
                   ["service", "op"])
ERRORS = Counter("aegisfs_request_errors", "Requests answered with an error, by errno name",
                 ["service", "op", "code"])
LATENCY = Histogram("aegisfs_request_seconds", "Handler time of a request (the MDS's "
                    "reply also waits for its batch's fsync: see aegisfs_mds_wal_fsync)",
                    ["service", "op"], buckets=_LAT_BUCKETS)
BYTES_IN = Counter("aegisfs_payload_in_bytes", "Payload frame bytes received",
                   ["service", "op"])
BYTES_OUT = Counter("aegisfs_payload_out_bytes", "Payload frame bytes sent",
                    ["service", "op"])
WAL_FSYNC = Histogram("aegisfs_mds_wal_fsync_seconds", "MDS group commit: one write and "
                      "fdatasync of a batch", buckets=_LAT_BUCKETS)
WAL_BATCH = Histogram("aegisfs_mds_wal_batch_requests", "Requests per MDS loop turn "
                      "(sharing one fsync)", buckets=(1, 2, 4, 8, 16, 32, 64, 128, 256, 512))
GAUGE = Gauge("aegisfs_state", "A role's current figures: MDS files/dirs/blocks/bytes/"
              "drafts, nodes_up, safe_mode, health counts; DataNode capacity/used/blocks",
              ["role", "name"])


def _size(frames: Any) -> int:
    total = 0
    for f in frames or ():
        try:
            total += memoryview(f).nbytes
        except TypeError:
            pass
    return total


def observe(service: str, op: str, payload: Any, run: Callable[[], Outcome]) -> Outcome:
    """The service layer's hook (broker.service.Service.observe): times one request's
    dispatch and counts it, its error and its payload bytes."""
    started = time.perf_counter()
    out = run()
    REQUESTS.labels(service, op).inc()
    LATENCY.labels(service, op).observe(time.perf_counter() - started)
    if out.error is not None:
        ERRORS.labels(service, op, exception_to_error(out.error)[0]).inc()
    n = _size(payload)
    if n:
        BYTES_IN.labels(service, op).inc(n)
    n = _size(out.payload)
    if n:
        BYTES_OUT.labels(service, op).inc(n)
    return out


def set_state(role: str, figures: dict[str, Any]) -> None:
    """Gauges of `role` from a map of numbers (others are skipped)."""
    for name, value in figures.items():
        if isinstance(value, bool):
            value = int(value)
        if isinstance(value, (int, float)):
            GAUGE.labels(role, name).set(value)


class _Figures:
    """Gauges read at scrape time from a role's own figures (numbers in a map)."""

    def __init__(self, role: str, figures: Callable[[], Mapping[str, Any]]) -> None:
        self.role, self.figures = role, figures

    def describe(self) -> list:
        return []            # no fixed names: nothing to check at registration

    def collect(self) -> Any:
        family = GaugeMetricFamily("aegisfs_figure", "A role's figures read at scrape "
                                   "time (broker routing counts, DataNode usage)",
                                   labels=["role", "name"])
        try:
            figures = dict(self.figures())
        except Exception:    # the role's loop changed them under us: next scrape
            log.debug("metrics: figures of %s not readable now", self.role, exc_info=True)
            figures = {}
        for name, value in sorted(figures.items()):
            if isinstance(value, (int, float)):
                family.add_metric([self.role, str(name)], float(value))
        yield family


def collect(role: str, figures: Callable[[], Mapping[str, Any]]) -> None:
    """Serve `figures()` as aegisfs_figure{role, name} gauges, read at each scrape."""
    REGISTRY.register(_Figures(role, figures))


def serve(port: int, host: str = "127.0.0.1") -> None:
    """Serve /metrics on host:port from a daemon thread."""
    start_http_server(port, addr=host)
    log.info("metrics on http://%s:%d/metrics", host, port)

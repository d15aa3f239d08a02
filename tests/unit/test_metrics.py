"""broker/metrics.py through the service layer's observe hook: a request, its error code
and its payload bytes are counted under the service and op, junk op names are not labels."""
from __future__ import annotations

import errno

from prometheus_client import REGISTRY

from broker import metrics
from broker.service import Context, Service, operation


class _Ops:
    @operation(callers={"client"}, frames=(0, 4))
    def echo(self, h: dict, payload: list, ctx: Context):
        """Echo the payload back."""
        return {}, payload

    @operation(callers={"client"})
    def fail(self, h: dict, payload: list, ctx: Context) -> dict:
        """Always ENOENT."""
        raise FileNotFoundError(errno.ENOENT, "nothing here")


def value(name: str, **labels: str) -> float:
    return REGISTRY.get_sample_value(name, labels) or 0.0


def test_requests_errors_and_bytes_are_counted():
    service = Service.collect("unit", _Ops())
    service.observe = metrics.observe
    ctx = Context(0.0, 0.0, "client", "admin")
    before = value("aegisfs_requests_total", service="unit", op="echo")
    out = service.run({"op": "echo"}, [memoryview(b"x" * 100)], ctx)
    assert out.error is None and bytes(out.payload[0]) == b"x" * 100
    assert value("aegisfs_requests_total", service="unit", op="echo") == before + 1
    assert value("aegisfs_payload_in_bytes_total", service="unit", op="echo") >= 100
    assert value("aegisfs_payload_out_bytes_total", service="unit", op="echo") >= 100
    assert value("aegisfs_request_seconds_count", service="unit", op="echo") >= 1
    service.run({"op": "fail"}, [], ctx)
    assert value("aegisfs_request_errors_total", service="unit", op="fail",
                 code="ENOENT") >= 1
    service.run({"op": "no_such_op"}, [], ctx)      # unknown: the "?" label, no new one
    assert value("aegisfs_request_errors_total", service="unit", op="?",
                 code=errno.errorcode[errno.EOPNOTSUPP]) >= 1

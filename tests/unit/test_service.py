"""The service layer without sockets: declaration, dispatch order, the schema checker's
bounds and errors, caller classes, the reply tail, handler bugs, the context clock."""
from __future__ import annotations

import errno
import logging

import pytest

from broker import protocol as P
from broker.service import (EVERYONE, Bool, Bytes, Context, Float, Int, List, Map, Nil,
                            OneOf, Outcome, Request, Service, Str, operation, validate)


def ctx(caller_class: str = "client", caller_id: str = "anonymous", events=None) -> Context:
    return Context(100.0, 1_700_000_000.0, caller_class, caller_id,
                   None if events is None else events.append)


class Toy:
    def __init__(self) -> None:
        self.calls = []

    @operation({"name": Str(8, 1), "n?": Int(0, 10)}, callers={"client"})
    def hello(self, h, payload, ctx):
        """Say hello -> {hi}."""
        self.calls.append(h)
        ctx.emit("hello", name=h["name"])
        return {"hi": h["name"], "n": h.get("n"), "now": ctx.now, "wall": ctx.wall}

    @operation(callers=EVERYONE, frames=(1, 2))
    def echo(self, h, payload, ctx):
        """Echo the payload frames -> {} + frames."""
        return {"frames": len(payload)}, list(payload)

    @operation({"node": Str(16)}, callers={"datanode"}, binds="node")
    def mine(self, h, payload, ctx):
        """Only a DataNode speaking for itself -> {}."""
        self.calls.append(h)
        return {}

    @operation(callers={"client"})
    def crash(self, h, payload, ctx):
        """A handler bug."""
        raise KeyError("oops")

    @operation({"ops": List(Request(), 4, 1)}, callers={"client"})
    def batch(self, h, payload, ctx):
        """Items dispatched like requests."""
        return {"results": [self.service.item(i, ctx, frozenset({"hello"})) for i in h["ops"]]}


@pytest.fixture
def toy() -> Toy:
    t = Toy()
    t.service = Service.collect("toy", t)
    return t


def run(toy, header, payload=(), c=None) -> Outcome:
    return toy.service.run(header, list(payload), c or ctx())


def code_of(out: Outcome) -> str:
    assert isinstance(out.error, OSError), out
    return errno.errorcode[out.error.errno].replace("ENOTSUP", "EOPNOTSUPP")  # same errno


def test_collect_declares_every_marked_method_with_its_docstring(toy):
    assert set(toy.service.ops) == {"hello", "echo", "mine", "crash", "batch"}
    assert toy.service.ops["hello"].doc == "Say hello -> {hi}."
    assert toy.service.ops["hello"].callers == {"client"}


def test_an_operation_without_a_docstring_or_with_unknown_callers_is_refused():
    with pytest.raises(TypeError):
        operation(callers={"client"})(lambda self, h, p, c: {})
    with pytest.raises(ValueError):
        operation(callers={"root"})


def test_dispatch_runs_the_handler_with_the_context(toy):
    events = []
    out = run(toy, {"op": "hello", "name": "bob"}, c=ctx(events=events))
    assert out.error is None
    assert out.result == {"hi": "bob", "n": None, "now": 100.0, "wall": 1_700_000_000.0}
    assert list(out.payload) == []
    assert events == [("hello", {"name": "bob"})]


def test_the_reply_tail_is_result_and_payload(toy):
    out = run(toy, {"op": "echo"}, [b"a", b"b"])
    assert (out.result, out.payload) == ({"frames": 2}, [b"a", b"b"])


@pytest.mark.parametrize("op", ["nope", "", 7, None, ["hello"], {"a": 1}, "x" * 10_000])
def test_unknown_op_is_eopnotsupp(toy, op):
    out = run(toy, {"op": op, "name": "bob"})
    assert code_of(out) == "EOPNOTSUPP"
    assert len(out.error.strerror) < 200        # hostile names are cut short
    assert run(toy, {"name": "bob"}).error.errno == errno.EOPNOTSUPP


@pytest.mark.parametrize("header,code,field", [
    ({"op": "hello"}, "EPROTO", "name"),                        # missing
    ({"op": "hello", "name": None}, "EPROTO", "name"),
    ({"op": "hello", "name": 5}, "EPROTO", "name"),             # wrong type
    ({"op": "hello", "name": b"bob"}, "EPROTO", "name"),
    ({"op": "hello", "name": "bob", "n": True}, "EPROTO", "n"),  # a bool is no count
    ({"op": "hello", "name": "bob", "n": 1.0}, "EPROTO", "n"),
    ({"op": "hello", "name": ""}, "EINVAL", "name"),            # too short
    ({"op": "hello", "name": "x" * 9}, "EINVAL", "name"),       # too long
    ({"op": "hello", "name": "bob", "n": 11}, "EINVAL", "n"),   # out of range
    ({"op": "hello", "name": "bob", "n": -1}, "EINVAL", "n"),
    ({"op": "hello", "name": "bob", "extra": 1}, "EINVAL", "extra"),   # unknown field
])
def test_schema_errors_name_the_field_and_reach_no_handler(toy, header, code, field):
    out = run(toy, header)
    assert code_of(out) == code
    assert repr(field) in out.error.strerror and "hello" in out.error.strerror
    assert isinstance(out.error, P.ProtocolError) == (code == "EPROTO")
    assert toy.calls == []


def test_optional_fields_may_be_absent_or_nil(toy):
    assert run(toy, {"op": "hello", "name": "a", "n": None}).result["n"] is None
    assert run(toy, {"op": "hello", "name": "a", "n": 3}).result["n"] == 3


def test_payload_frame_count_is_checked(toy):
    assert code_of(run(toy, {"op": "echo"})) == "EINVAL"
    assert code_of(run(toy, {"op": "echo"}, [b"1", b"2", b"3"])) == "EINVAL"
    assert code_of(run(toy, {"op": "hello", "name": "a"}, [b"x"])) == "EINVAL"


@pytest.mark.parametrize("caller", ["datanode", "mds", "broker"])
def test_a_caller_of_the_wrong_class_gets_eperm(toy, caller):
    out = run(toy, {"op": "hello", "name": "bob"}, c=ctx(caller, "dn1"))
    assert isinstance(out.error, PermissionError)
    assert out.error.strerror == f"operation hello is not allowed for a {caller} caller"
    assert toy.calls == []


def test_a_datanode_speaks_only_for_itself(toy):
    assert run(toy, {"op": "mine", "node": "dn1"}, c=ctx("datanode", "dn1")).error is None
    out = run(toy, {"op": "mine", "node": "dn2"}, c=ctx("datanode", "dn1"))
    assert isinstance(out.error, PermissionError) and "dn2" in out.error.strerror
    assert code_of(run(toy, {"op": "mine", "node": "dn1"})) == "EPERM"   # a client
    assert len(toy.calls) == 1


def test_schema_is_checked_before_the_caller(toy):
    # a malformed request is refused for what it is, whoever sends it
    assert code_of(run(toy, {"op": "mine", "node": 5})) == "EPROTO"


def test_a_handler_bug_is_an_internal_error_logged_not_raised(toy, caplog):
    with caplog.at_level(logging.ERROR, logger="broker.service"):
        out = run(toy, {"op": "crash"})
    assert isinstance(out.error, KeyError)
    assert P.exception_to_error(out.error) == ("EIO", "internal error (KeyError)")
    assert "crash" in caplog.text


def code(item: dict) -> str:
    return code_of(Outcome(error=P.error_to_exception(*item["err"])))


def test_batch_items_go_through_the_same_dispatch(toy):
    items = [{"op": "hello", "name": "a"}, {"op": ["hello"]}, "junk", {"op": "echo"},
             {"op": "hello", "name": 5}, {"op": "hello", "name": "b", "x": 1}, ]
    out = run(toy, {"op": "batch", "ops": items[:4]})
    results = [P.item_result(r) if "ok" in r else code(r) for r in out.result["results"]]
    assert results[0]["hi"] == "a"
    assert results[1:] == ["EOPNOTSUPP", "EOPNOTSUPP", "EOPNOTSUPP"]
    out = run(toy, {"op": "batch", "ops": items[4:]})
    assert [code(r) for r in out.result["results"]] == ["EPROTO", "EINVAL"]
    # the caller class holds for items too
    out = run(toy, {"op": "batch", "ops": [items[0]]}, c=ctx("datanode", "dn1"))
    assert code_of(out) == "EPERM"


def test_context_now_for_reads_both_clocks():
    c = Context.now_for("mds", "mds")
    assert c.now > 0 and c.wall > 1e9 and (c.caller_class, c.caller_id) == ("mds", "mds")
    c.emit("nowhere")          # no sink: events are dropped


# -- the schema checker on its own ---------------------------------------------------------

def test_schema_checks_required_optional_and_types():
    # (moved from test_protocol: the one checker is broker.service.validate)
    schema = Map({"op": Str(16), "count?": Int(0, 10)})
    validate(schema, {"op": "a"}, "t")
    for bad in ({}, {"op": 1}, {"op": "a", "count": "3"}, {"op": "a", "count": True}):
        with pytest.raises(P.ProtocolError):
            validate(schema, bad, "t")


def test_nested_errors_are_einval_with_their_path():
    block = Map({"id": Bytes(16, 16), "replicas": List(Str(8), 3)})
    schema = Map({"blocks": List(block, 10)})
    good = {"id": b"x" * 16, "replicas": ["dn1"]}
    validate(schema, {"blocks": [good]}, "commit")
    cases = {
        "blocks[1].replicas": [good, dict(good, replicas="dn1")],
        "blocks[0].id": [dict(good, id=b"short")],
        "blocks[0].replicas[1]": [dict(good, replicas=["dn1", 5])],
        "blocks[0].replicas": [dict(good, replicas=["a"] * 4)],
        "blocks[0].extra": [dict(good, extra=1)],
        "blocks[2]": [good, good, "x"],
    }
    for where, blocks in cases.items():
        with pytest.raises(OSError) as info:
            validate(schema, {"blocks": blocks}, "commit")
        assert info.value.errno == errno.EINVAL and not isinstance(info.value, P.ProtocolError)
        assert f"'{where}'" in info.value.strerror, (where, info.value.strerror)
    with pytest.raises(OSError) as info:
        validate(schema, {"blocks": [good] * 11}, "commit")
    assert info.value.errno == errno.EINVAL


def test_field_types():
    def ok(field, value) -> bool:
        try:
            validate(Map({"f": field}), {"f": value}, "t")
            return True
        except OSError:
            return False

    assert ok(Bytes(16, 16), b"x" * 16) and not ok(Bytes(16, 16), b"x" * 15)
    assert not ok(Bytes(4), bytearray(b"x"))
    assert ok(Float(0, 10), 2) and ok(Float(0, 10), 2.5)
    assert not ok(Float(0, 10), float("nan")) and not ok(Float(0, 10), float("inf"))
    assert not ok(Float(0, 10), True)
    assert ok(Bool(), False) and not ok(Bool(), 0)
    assert ok(List(Nil(), 2), [None]) and not ok(List(Nil(), 2), [0])
    either = OneOf(Str(3), Int(0, 5))
    assert ok(either, "abc") and ok(either, 5) and not ok(either, "abcd")
    assert not ok(either, 6) and not ok(either, [1])
    assert ok(Request(), object())

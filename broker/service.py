"""The service layer: every operation declared once (name, bounded fields, callers, handler,
docstring) and one dispatcher that all workers use. Pure: no sockets, no clock reads but
`Context.now_for`.

Public API: the field types `Str Bytes Int Float Bool Nil OneOf List Map Request`; the
declaration decorator `operation`; `Service` (`collect`, `run`, `dispatch`, `ops`, the
hooks `once` and `observe` with their types `Once`, `Observe`);
`Context`; `Outcome`; `validate` (the one schema checker, also for the broker's READY).

Theory of operation. `Service.run(header, payload, ctx)` never raises; in this order it
1. looks the op up - unknown -> EOPNOTSUPP (written here and nowhere else);
2. checks the fields against the op's schema - a missing or wrongly typed top-level field
   -> EPROTO (the header does not have the op's layout, like an undecodable header); a bad
   value (out of bounds, too long, an unknown field, anything wrong inside a nested item)
   -> EINVAL; both name the field, e.g. "commit: field 'blocks[3].replicas' ...";
3. checks the number of payload frames (-> EINVAL);
4. checks the caller class (-> EPERM "operation X is not allowed for a <class> caller")
   and, for ops declared with `binds="node"`, that a DataNode names itself (-> EPERM);
5. calls the handler `fn(fields, payload, ctx)`, which returns a result map or
   (result map, payload frames): that tail is turned into an `Outcome` here only. An op
   declared `mutating=True` also accepts `opid` (16 bytes, the client's id for one
   logical operation, the same on every retry); with one, the handler runs through the
   service's `once(opid, ctx, call)` hook, which applies it at most once and answers a
   retry with the first answer (the MDS: mds/opids.py). This is the only place op ids
   are looked at. A role serving metrics sets `observe`, which times and counts each
   run (broker/metrics.py); this module still reads no clock.
An OSError from a handler is the reply. Anything else is a bug: it is logged and answered
as an internal error (protocol.exception_to_error: EIO without internals), never raised.
Checks are a walk over the schema (no objects built per request but the Context); error
messages, with the field's path, are built only on failure.
"""
from __future__ import annotations

import errno
import logging
import math
import time
from dataclasses import dataclass
from typing import Any, Callable, Iterable, Mapping, TypeVar

from . import protocol as P

log = logging.getLogger(__name__)

EVERYONE = frozenset(P.CALLER_CLASSES)
MAX_FRAMES = 1024
OPID_LEN = 16


# ---------------------------------------------------------------------------------------
# Field types. `check(value)` returns nothing or raises _Bad; containers add the path.

class _Bad(Exception):
    """A field failed its check; `where` collects the path innermost first."""

    def __init__(self, message: str, wrong_type: bool = False) -> None:
        self.message, self.wrong_type = message, wrong_type
        self.where: list[str | int] = []


def _kind(value: Any) -> str:
    return "nil" if value is None else type(value).__name__


class Field:
    __slots__ = ()
    what = "a value"

    def check(self, value: Any) -> None:
        raise NotImplementedError

    def _wrong(self, value: Any) -> _Bad:
        return _Bad(f"must be {self.what}, not {_kind(value)}", wrong_type=True)


class Str(Field):
    __slots__ = ("max_len", "min_len")
    what = "a string"

    def __init__(self, max_len: int, min_len: int = 0) -> None:
        self.max_len, self.min_len = max_len, min_len

    def check(self, value: Any) -> None:
        if type(value) is not str:
            raise self._wrong(value)
        if not self.min_len <= len(value) <= self.max_len:
            raise _Bad(f"must be {self.min_len}..{self.max_len} characters, got {len(value)}")


class Bytes(Field):
    __slots__ = ("max_len", "min_len")
    what = "bytes"

    def __init__(self, max_len: int, min_len: int = 0) -> None:
        self.max_len, self.min_len = max_len, min_len

    def check(self, value: Any) -> None:
        if type(value) is not bytes:
            raise self._wrong(value)
        if not self.min_len <= len(value) <= self.max_len:
            size = (f"exactly {self.max_len}" if self.min_len == self.max_len
                    else f"{self.min_len}..{self.max_len}")
            raise _Bad(f"must be {size} bytes, got {len(value)}")


class Int(Field):
    __slots__ = ("lo", "hi")
    what = "an integer"

    def __init__(self, lo: int, hi: int) -> None:
        self.lo, self.hi = lo, hi

    def check(self, value: Any) -> None:
        if type(value) is not int:      # not isinstance: True is no count
            raise self._wrong(value)
        if not self.lo <= value <= self.hi:
            raise _Bad(f"must be in {self.lo}..{self.hi}, got {value}")


class Float(Field):
    __slots__ = ("lo", "hi")
    what = "a number"

    def __init__(self, lo: float, hi: float) -> None:
        self.lo, self.hi = lo, hi

    def check(self, value: Any) -> None:
        if type(value) is not float and type(value) is not int:
            raise self._wrong(value)
        if not (math.isfinite(value) and self.lo <= value <= self.hi):
            raise _Bad(f"must be in {self.lo}..{self.hi}, got {value}")


class Bool(Field):
    __slots__ = ()
    what = "a boolean"

    def check(self, value: Any) -> None:
        if type(value) is not bool:
            raise self._wrong(value)


class Nil(Field):
    __slots__ = ()
    what = "nil"

    def check(self, value: Any) -> None:
        if value is not None:
            raise self._wrong(value)


class Request(Field):
    """A nested request (a `batch` item): checked by the dispatcher when it runs, so that a
    bad item fails alone."""
    __slots__ = ()

    def check(self, value: Any) -> None:
        pass


class OneOf(Field):
    __slots__ = ("options",)

    def __init__(self, *options: Field) -> None:
        self.options = options

    @property
    def what(self) -> str:   # type: ignore[override]
        return " or ".join(o.what for o in self.options)

    def check(self, value: Any) -> None:
        for option in self.options:
            try:
                option.check(value)
                return
            except _Bad:
                continue
        raise _Bad(f"must be {self.what}, not {_kind(value)}")


class List(Field):
    __slots__ = ("item", "max_len", "min_len")
    what = "a list"

    def __init__(self, item: Field, max_len: int, min_len: int = 0) -> None:
        self.item, self.max_len, self.min_len = item, max_len, min_len

    def check(self, value: Any) -> None:
        if type(value) is not list:
            raise self._wrong(value)
        if not self.min_len <= len(value) <= self.max_len:
            raise _Bad(f"must hold {self.min_len}..{self.max_len} items, got {len(value)}")
        check = self.item.check
        i = 0
        try:
            for i, v in enumerate(value):
                check(v)
        except _Bad as bad:
            bad.where.append(i)
            bad.wrong_type = False     # inside an item: a bad value of this field
            raise


class Map(Field):
    """A map with declared keys; "name?" marks an optional key (absent or nil)."""
    __slots__ = ("fields", "known", "required")
    what = "a map"

    def __init__(self, fields: Mapping[str, Field]) -> None:
        self.fields = tuple((k.rstrip("?"), k.endswith("?"), f) for k, f in fields.items())
        self.known = frozenset(k for k, _, _ in self.fields)
        self.required = sum(1 for _, opt, _ in self.fields if not opt)

    def check(self, value: Any, extra: frozenset = frozenset()) -> None:
        if type(value) is not dict:
            raise self._wrong(value)
        present = 0
        key = ""   # set before anything can raise: a _Bad comes from inside the walk
        try:   # one try for the walk: the hot path sets up no handler per field
            for key, optional, spec in self.fields:
                v = value.get(key)
                if v is None:
                    if key in value:
                        present += 1
                    if optional:
                        continue
                    raise _Bad("is required" if key not in value else f"must be {spec.what}",
                               wrong_type=True)
                present += 1
                spec.check(v)
        except _Bad as bad:
            bad.where.append(key)
            raise
        if len(value) != present + len(extra):
            unknown = sorted(str(k) for k in value if k not in self.known and k not in extra)
            if unknown:
                stray = _Bad("is not a field of this operation")
                stray.where.append(unknown[0])
                raise stray


def _path(where: list) -> str:
    out = ""
    for part in reversed(where):
        out += f"[{part}]" if isinstance(part, int) else (f".{part}" if out else str(part))
    return out


_OP_KEY = frozenset({"op"})


def validate(schema: Map, value: Any, what: str, *, extra: frozenset = frozenset()) -> None:
    """The one schema checker: ProtocolError for a missing or mistyped top-level field,
    OSError(EINVAL) for any other bad value; `extra` keys are allowed unchecked."""
    try:
        schema.check(value, extra)
    except _Bad as bad:
        text = f"{what}: field {_path(bad.where)!r} {bad.message}"
        if bad.wrong_type and len(bad.where) == 1:
            raise P.ProtocolError(text) from None
        raise OSError(errno.EINVAL, text) from None


# ---------------------------------------------------------------------------------------
# Declarations

# (fields, payload frames, context): the fields are the request header, a dict once
# validated, given as a Mapping because handlers only read it
Handler = Callable[[Mapping[str, Any], list, "Context"], Any]


@dataclass(frozen=True, slots=True)
class Operation:
    name: str
    schema: Map
    callers: frozenset
    handler: Handler
    doc: str
    frames: tuple[int, int] = (0, 0)
    binds: str | None = None   # a field that must name the calling DataNode
    mutating: bool = False     # accepts `opid`: retried safely through Service.once


_Fn = TypeVar("_Fn", bound=Callable[..., Any])   # a handler function or method, kept as is


def operation(fields: Mapping[str, Field] | None = None, *, callers: Iterable[str],
              name: str | None = None, frames: tuple[int, int] = (0, 0),
              binds: str | None = None, mutating: bool = False) -> Callable[[_Fn], _Fn]:
    """Declare a handler method as an operation; its docstring is the protocol spec.
    `mutating`: it changes state, so it takes an optional `opid` (see the module doc)."""
    callers = frozenset(callers)
    fields = dict(fields or {})
    if mutating:
        fields["opid?"] = Bytes(OPID_LEN, OPID_LEN)
    if not callers <= EVERYONE:
        raise ValueError(f"unknown caller classes {sorted(callers - EVERYONE)}")

    def mark(fn: _Fn) -> _Fn:
        if not (fn.__doc__ or "").strip():
            raise TypeError(f"operation {fn.__name__} needs a docstring: it is its spec")
        fn.__aegis_op__ = dict(name=name or fn.__name__, schema=Map(fields),  # type: ignore[attr-defined]
                               callers=callers, frames=frames, binds=binds,
                               mutating=mutating)
        return fn
    return mark


@dataclass(slots=True)
class Context:
    """What a handler may know beyond its fields: the clocks (read once per request, so
    handlers are testable with fixed ones), who called, and where events go."""
    now: float                  # time.monotonic()
    wall: float                 # time.time()
    caller_class: str
    caller_id: str
    sink: Callable[[tuple[str, dict]], Any] | None = None

    def emit(self, topic: str, **fields: Any) -> None:
        if self.sink is not None:
            self.sink((topic, fields))

    @classmethod
    def now_for(cls, caller_class: str, caller_id: str,
                sink: Callable[[tuple[str, dict]], Any] | None = None) -> "Context":
        return cls(time.monotonic(), time.time(), caller_class, caller_id, sink)


@dataclass(slots=True)
class Outcome:
    """A handler's answer: result map and payload frames, or the exception."""
    result: dict | None = None
    payload: Any = ()
    error: BaseException | None = None


def _unsupported(what: str, name: Any) -> OSError:
    shown = repr(name)
    if len(shown) > 80:   # hostile input must not flood logs and replies
        shown = shown[:77] + "..."
    return OSError(errno.EOPNOTSUPP, f"{what} {shown}")


# once(opid, ctx, call) -> call()'s result, or the first answer to that opid
Once = Callable[[bytes, "Context", Callable[[], Any]], Any]
# observe(service name, op, payload, run) -> run()'s Outcome: metrics (broker/metrics.py);
# op is a declared operation's name or "?", so a caller cannot invent label values
Observe = Callable[[str, str, list, Callable[[], "Outcome"]], "Outcome"]


class Service:
    def __init__(self, name: str, ops: Iterable[Operation], once: Once | None = None) -> None:
        self.name = name
        self.once = once
        self.observe: Observe | None = None    # set by a role that serves metrics
        self.ops: dict[str, Operation] = {}
        for op in ops:
            if op.name in self.ops:
                raise ValueError(f"operation {op.name!r} declared twice")
            self.ops[op.name] = op

    @classmethod
    def collect(cls, name: str, obj: Any, once: Once | None = None) -> "Service":
        """A service of every method of `obj` declared with @operation; `once` runs
        the mutating ones that carry an `opid` (without it, `opid` is accepted and
        ignored)."""
        ops = []
        for klass in reversed(type(obj).__mro__):
            for attr, fn in vars(klass).items():
                spec = getattr(fn, "__aegis_op__", None)
                if spec is not None:
                    ops.append(Operation(handler=getattr(obj, attr),
                                         doc=" ".join(fn.__doc__.split()), **spec))
        return cls(name, ops, once)

    def dispatch(self, header: Mapping[str, Any], payload: list, ctx: Context) -> Any:
        """Steps 1-5 of the module docstring; returns what the handler returned."""
        name = header.get("op")
        op = self.ops.get(name) if type(name) is str else None
        if op is None:
            raise _unsupported(f"{self.name} has no operation", name)
        validate(op.schema, header, op.name, extra=_OP_KEY)
        lo, hi = op.frames
        if not lo <= len(payload) <= hi:
            raise OSError(errno.EINVAL, f"{name} takes {lo}..{hi} payload frames, "
                                        f"got {len(payload)}")
        if ctx.caller_class not in op.callers:
            raise PermissionError(errno.EPERM, f"operation {name} is not allowed for a "
                                               f"{ctx.caller_class} caller")
        if op.binds is not None and ctx.caller_class == P.CALLER_DATANODE \
                and header[op.binds] != ctx.caller_id:
            raise PermissionError(errno.EPERM, f"{name}: DataNode {ctx.caller_id} cannot "
                                               f"speak for node {header[op.binds]!r}")
        if op.mutating and self.once is not None:
            opid = header.get("opid")
            if opid is not None:
                return self.once(opid, ctx, lambda: op.handler(header, payload, ctx))
        return op.handler(header, payload, ctx)

    def run(self, header: Mapping[str, Any], payload: list, ctx: Context) -> Outcome:
        """`dispatch`, with the reply tail and every exception turned into an Outcome
        (timed and counted by `observe` when a role serves metrics)."""
        if self.observe is not None:
            name = header.get("op")
            op = name if type(name) is str and name in self.ops else "?"
            return self.observe(self.name, op, payload,
                                lambda: self._run(header, payload, ctx))
        return self._run(header, payload, ctx)

    def _run(self, header: Mapping[str, Any], payload: list, ctx: Context) -> Outcome:
        try:
            out = self.dispatch(header, payload, ctx)
        except OSError as exc:
            return Outcome(error=exc)
        except Exception as exc:   # a handler bug must not take the server down
            log.exception("%s: operation %r failed", self.name, header.get("op"))
            return Outcome(error=exc)
        if type(out) is tuple:
            return Outcome(out[0], out[1])
        return Outcome(out)

    def item(self, header: Any, ctx: Context, allowed: frozenset) -> dict:
        """One item of a batched request, as its {ok}/{err} entry: the same dispatch, with
        the item's own schema and caller checks; only `allowed` ops may be batched."""
        name = header.get("op") if type(header) is dict else None
        if type(name) is not str or name not in allowed:
            return P.item_error(_unsupported("cannot batch operation", name))
        out = self.run(header, [], ctx)
        if out.error is not None:
            return P.item_error(out.error)
        return P.item_ok(out.result)

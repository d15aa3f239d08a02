"""Hypothesis strategies read off a broker.service.Service's declarations: well-formed
requests for every op, and mutants of them (wrong types, oversize values, missing and
extra fields, nested junk, junk op names), for property tests of the dispatcher."""
from __future__ import annotations

from hypothesis import strategies as st

from broker import protocol as P
from broker.service import (Bool, Bytes, Field, Float, Int, List, Map, Nil, OneOf, Request,
                            Service, Str)

junk = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=6)
    | st.binary(max_size=6),
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=4), inner,
                                                                 max_size=3),
    max_leaves=6)

callers = st.sampled_from([(P.CALLER_CLIENT, "anonymous"), (P.CALLER_DATANODE, "dn1"),
                           (P.CALLER_DATANODE, "dn2"), (P.CALLER_MDS, "mds"),
                           (P.CALLER_BROKER, "broker")])
payloads = st.lists(st.binary(max_size=64), max_size=3)


def valid(field: Field, nested: st.SearchStrategy) -> st.SearchStrategy:
    """Values that pass `field`'s check (short ones, plus the longest allowed)."""
    if isinstance(field, Str):
        small = st.text(min_size=field.min_len,
                        max_size=min(field.max_len, max(12, field.min_len)))
        return small | st.just("n" * field.max_len) if field.max_len <= 4096 else small
    if isinstance(field, Bytes):
        return st.binary(min_size=field.min_len, max_size=min(field.max_len, 24)) \
            | st.just(b"\x01" * field.max_len)
    if isinstance(field, Int):
        return st.integers(field.lo, field.hi)
    if isinstance(field, Float):
        return st.floats(field.lo, field.hi)
    if isinstance(field, Bool):
        return st.booleans()
    if isinstance(field, Nil):
        return st.none()
    if isinstance(field, OneOf):
        return st.one_of([valid(o, nested) for o in field.options])
    if isinstance(field, List):
        return st.lists(valid(field.item, nested), min_size=field.min_len,
                        max_size=min(field.max_len, 4))
    if isinstance(field, Map):
        return st.fixed_dictionaries(
            {k: valid(f, nested) for k, opt, f in field.fields if not opt},
            optional={k: valid(f, nested) for k, opt, f in field.fields if opt})
    if isinstance(field, Request):
        return nested | junk
    raise TypeError(field)


def bad(field: Field, nested: st.SearchStrategy) -> st.SearchStrategy:
    """Values that break `field`: out of bounds, oversize, wrong type, or bad inside."""
    options = [junk]
    if isinstance(field, Str):
        options.append(st.just("x" * (field.max_len + 1)))
    elif isinstance(field, Bytes):
        options.append(st.just(b"\0" * (field.max_len + 1)))
        if field.min_len:
            options.append(st.just(b"\0" * (field.min_len - 1)))
    elif isinstance(field, Int):
        options += [st.just(field.hi + 1), st.just(field.lo - 1), st.just(True),
                    st.just(float(field.lo))]
    elif isinstance(field, List):
        options += [valid(field.item, nested).map(lambda v: [v] * (field.max_len + 1)),
                    bad(field.item, nested).map(lambda v: [v])]
    elif isinstance(field, Map):
        options.append(mutant(field, nested))
    return st.one_of(options)


def mutant(schema: Map, nested: st.SearchStrategy) -> st.SearchStrategy:
    """A well-formed map with one field broken, missing, or one extra field."""
    base = valid(schema, nested)
    options = [base.map(lambda d: {**d, "zz_extra": "x" * 100_000})]
    for key, _, f in schema.fields:
        options.append(st.tuples(base, bad(f, nested)).map(lambda t, k=key: {**t[0], k: t[1]}))
        options.append(base.map(lambda d, k=key: {x: v for x, v in d.items() if x != k}))
    return st.one_of(options)


def requests(service: Service) -> st.SearchStrategy:
    """Any request to `service`: well-formed ones, mutants, and junk op names."""
    def of(nested: st.SearchStrategy) -> st.SearchStrategy:
        out = []
        for name, op in sorted(service.ops.items()):
            out.append(valid(op.schema, nested).map(lambda d, n=name: {"op": n, **d}))
            out.append(mutant(op.schema, nested).map(lambda d, n=name: {"op": n, **d}))
        out.append(st.dictionaries(st.just("op"), junk, min_size=1))
        out.append(st.dictionaries(st.text(max_size=5), junk, max_size=3))
        return st.one_of(out)
    # batch items are requests themselves; one level of nesting is enough
    return of(of(st.nothing()))

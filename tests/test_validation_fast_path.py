"""``validate_request_encoded``'s fast path agrees with the encode-decode round trip.

Issue 14: a request whose fields have exactly the decoder's types is copied by the
struct constructors (the same ``__post_init__`` rules decoding runs) instead of being
encoded, decoded and compared. It must accept exactly what the round trip accepts, give
an equal copy with the same types and a byte-identical body, and, on anything else,
raise what the round trip raises. The inputs here are hostile on purpose: wrong types,
subclasses, ``force_setattr``, params mutated after the build, lone surrogates, control
characters, floats and integers at every edge.
"""

from __future__ import annotations

import math
from typing import Any

import msgspec
import pytest
from hypothesis import example, given
from hypothesis import strategies as st

from backtest_queue import protocol
from backtest_queue.errors import InvalidRequest
from backtest_queue.protocol import (
    BacktestRequest,
    Strategy,
    _validate_by_round_trip,
    decode_message,
    encode_message,
    validate_request,
    validate_request_encoded,
)
from backtest_queue.validation import GOOD_NAMES, KNOWN_GOOD_LIMIT
from lookalikes import Count, Number, Params, Text


class Touchy:
    """Refuses to be compared (a rule that compared it would raise ``RuntimeError``)."""

    def __eq__(self, other: object) -> bool:
        raise RuntimeError("compared")

    def __ne__(self, other: object) -> bool:
        raise RuntimeError("compared")

    __hash__ = object.__hash__


class LooseStrategy(Strategy):
    """A subclass: ``isinstance`` passes, the decoder gives the base class back."""


class LooseRequest(BacktestRequest):
    pass


EDGES = [0.0, -0.0, 5e-324, -5e-324, 1e-9, 0.1, math.nextafter(0.1, 0.0), 0.999, 1.0,
         math.nextafter(1.0, 0.0), 1e300, 1.7976931348623157e308, 2.0**53, 2.0**53 + 2,
         2**53, -(2**53), 2**53 + 1, -(2**53) - 1, 2**63, 10**30, 0, 1, -1]  # fmt: skip
numbers = st.one_of(
    st.sampled_from(EDGES),
    st.floats(),  # NaN, infinities, subnormals, -0.0
    st.floats(0.0, 0.1),  # commissions and fractions that pass
    st.integers(-(2**54), 2**54),
)
TEXTS = ["s", "sma_cross", "EURUSD-H1", "2017", "2017-12-31", "r1", "", " ", "\u00a0", "\x7f",
         "\x85", "a\x00b", "a\ud800b", "\udfff", "tab\t", "😀", "../x", "-x", "a" * 64, "a" * 65,
         "a" * 128, "a" * 129, "a" * 40, "a" * 41, "abc"]  # fmt: skip
texts = st.one_of(
    st.sampled_from(TEXTS),
    st.text(st.characters(exclude_categories=()), max_size=12),  # lone surrogates too
    st.text(alphabet="aZ9._-", max_size=140),
)


def _hostile(base: st.SearchStrategy[Any]) -> st.SearchStrategy[Any]:
    return st.one_of(
        st.none(),
        st.booleans(),
        st.builds(Text, texts),
        st.builds(Number, st.floats()),
        st.builds(Count, st.integers(-5, 5)),
        st.builds(Touchy),
        st.lists(base, max_size=2),
        st.tuples(st.just("fast"), st.integers()),
        st.binary(max_size=3),
    )


keys = st.one_of(texts, st.builds(Text, texts), st.integers(0, 3), st.none(), st.builds(Touchy))
param_values = st.one_of(numbers, _hostile(numbers))
params = st.one_of(
    st.dictionaries(keys, param_values, max_size=4),
    st.builds(Params, st.dictionaries(texts, numbers, max_size=2)),
    st.lists(st.tuples(st.just("fast"), st.integers(1, 5)), max_size=2),  # dict() would take it
    _hostile(numbers),
)
anything = st.one_of(texts, numbers, _hostile(st.one_of(texts, numbers)), params)

STRATEGY_FIELDS = ["name", "kind", "params", "sl", "tp"]
REQUEST_FIELDS = ["v", "request_id", "strategy", "data_id", "start", "end", "cash", "commission"]
edits = st.lists(
    st.one_of(
        st.tuples(st.sampled_from(STRATEGY_FIELDS), anything),
        st.tuples(st.sampled_from(["params"]), params),
        st.tuples(st.sampled_from(REQUEST_FIELDS), anything),
        st.tuples(st.just("v"), st.sampled_from([1, 1.0, True, 2, Count(1)])),
        st.tuples(st.just("strategy"), st.sampled_from(["loose", {"name": "s"}, None])),
    ),
    max_size=3,
)
mutations = st.lists(st.tuples(keys, param_values), max_size=3)


def _build(
    strategy_fields: dict[str, Any], request_fields: dict[str, Any], loose: bool
) -> BacktestRequest:
    """A request built from valid values, then changed with ``force_setattr``."""
    strategy = Strategy(name="s", kind="sma_cross", params={"fast": 10, "slow": 40.0})
    request = (LooseRequest if loose else BacktestRequest)(
        request_id="r1", strategy=strategy, data_id="EURUSD-H1"
    )
    for field, value in strategy_fields.items():
        msgspec.structs.force_setattr(strategy, field, value)
    for field, value in request_fields.items():
        if field == "strategy" and type(value) is str and value == "loose":
            value = LooseStrategy(**msgspec.structs.asdict(strategy))
        msgspec.structs.force_setattr(request, field, value)
    return request


def _leaves(value: object) -> object:
    """``value`` with the exact type of every leaf and the sign of every zero."""
    if isinstance(value, msgspec.Struct):
        return (type(value), tuple(_leaves(v) for v in msgspec.structs.astuple(value)))
    if type(value) is dict:
        return tuple((_leaves(k), _leaves(v)) for k, v in value.items())
    return (type(value), repr(value))


def _run(check: Any, request: object) -> tuple[str, Any]:
    try:
        copy, body = check(request)
    except Exception as exc:
        return "raised", (type(exc), getattr(exc, "field", None), str(exc))
    return "ok", (copy, body)


def assert_paths_agree(request: object, *, slow_first: bool = False) -> tuple[str, Any]:
    """Fast path and round trip on ``request``: the same error, or equal copies (same
    types, same -0.0) and one body; the copy shares nothing mutable with ``request``."""
    caller_params = getattr(getattr(request, "strategy", None), "params", None)
    if slow_first:
        slow = _run(_validate_by_round_trip, request)
        fast = _run(validate_request_encoded, request)
    else:
        fast = _run(validate_request_encoded, request)
        slow = _run(_validate_by_round_trip, request)
    assert fast[0] == slow[0], (fast, slow)
    if fast[0] == "raised":
        assert fast[1] == slow[1]
        assert fast[1][0] is InvalidRequest or fast[1][0] is RuntimeError  # Touchy's own
        with pytest.raises(fast[1][0]):
            validate_request(request)
        return fast
    (copy, body), (slow_copy, slow_body) = fast[1], slow[1]
    assert copy == slow_copy
    assert _leaves(copy) == _leaves(slow_copy)
    assert body == slow_body == encode_message(copy)
    assert decode_message(body) == copy
    assert copy is not request
    assert copy.strategy.params is not caller_params
    assert validate_request(request) == copy
    return fast


@example(strategy_fields={}, request_fields={}, mutated=[], loose=False, slow_first=False)
@example(strategy_fields={"params": Params(fast=1)}, request_fields={}, mutated=[], loose=False,
         slow_first=False)  # fmt: skip
@example(strategy_fields={"params": [("fast", 1)]}, request_fields={}, mutated=[], loose=False,
         slow_first=False)  # fmt: skip
@example(strategy_fields={}, request_fields={"cash": 5, "commission": 0}, mutated=[],
         loose=False, slow_first=False)  # fmt: skip
@example(strategy_fields={}, request_fields={"commission": -0.0}, mutated=[], loose=False,
         slow_first=False)  # fmt: skip
@example(strategy_fields={}, request_fields={"strategy": "loose"}, mutated=[], loose=False,
         slow_first=False)  # fmt: skip
@example(strategy_fields={}, request_fields={}, mutated=[("big", 2**53), ("x", -0.0)],
         loose=False, slow_first=True)  # fmt: skip
@example(strategy_fields={}, request_fields={}, mutated=[("big", 2**53 + 1)], loose=False,
         slow_first=False)  # fmt: skip
@example(strategy_fields={"kind": Text("sma_cross")}, request_fields={}, mutated=[],
         loose=False, slow_first=False)  # fmt: skip
@example(strategy_fields={}, request_fields={"v": Touchy()}, mutated=[], loose=False,
         slow_first=False)  # fmt: skip
@given(
    strategy_fields=st.dictionaries(st.sampled_from(STRATEGY_FIELDS), anything, max_size=3),
    request_fields=st.dictionaries(st.sampled_from(REQUEST_FIELDS), anything, max_size=3),
    mutated=mutations,
    loose=st.booleans(),
    slow_first=st.booleans(),
)
def test_fast_path_and_round_trip_agree_on_changed_requests(
    strategy_fields: dict[str, Any],
    request_fields: dict[str, Any],
    mutated: list[tuple[Any, Any]],
    loose: bool,
    slow_first: bool,
) -> None:
    request = _build(strategy_fields, request_fields, loose)
    caller_params = request.strategy.params if isinstance(request.strategy, Strategy) else None
    if type(caller_params) is dict:
        for key, value in mutated:  # the frozen struct's dict is still the caller's
            caller_params[key] = value
    assert_paths_agree(request, slow_first=slow_first)


printable = st.characters(exclude_categories=("Cc", "Cs"))  # NBSP, U+2028, emoji pass
names = st.text(printable, min_size=1, max_size=128)
finite = st.floats(allow_nan=False, allow_infinity=False) | st.integers(-(2**53), 2**53)
VALID: dict[str, st.SearchStrategy[Any]] = {
    "name": names,
    "kind": names,
    "params": st.dictionaries(names, finite, max_size=5),
    "sl": st.none() | st.floats(0.0, 1.0, exclude_min=True, exclude_max=True),
    "tp": st.none() | st.floats(0.0, 1.0, exclude_min=True, exclude_max=True),
    "request_id": st.text(printable, min_size=1, max_size=64),
    "data_id": st.from_regex(r"[A-Za-z0-9][A-Za-z0-9._-]{0,127}", fullmatch=True),
    "start": st.none() | st.text(printable, min_size=4, max_size=40),
    "end": st.none() | st.text(printable, min_size=4, max_size=40),
    "cash": st.floats(0.0, exclude_min=True, allow_infinity=False) | st.integers(1, 2**53),
    "commission": st.floats(0.0, 0.1, exclude_max=True) | st.sampled_from([0, -0.0]),
}


@given(
    fields=st.fixed_dictionaries(VALID),
    corrupt=st.dictionaries(st.sampled_from(sorted(VALID)), anything, max_size=2),
)
def test_fast_path_and_round_trip_agree_on_built_requests(
    fields: dict[str, Any], corrupt: dict[str, Any]
) -> None:
    """Every field drawn at once from values the rules accept (so the accepting side is
    exercised at every edge), then up to two set to anything with ``force_setattr``."""
    strategy = Strategy(**{f: fields.pop(f) for f in STRATEGY_FIELDS})
    request = BacktestRequest(strategy=strategy, **fields)
    for field, value in corrupt.items():
        target = strategy if field in STRATEGY_FIELDS else request
        msgspec.structs.force_setattr(target, field, value)
    assert_paths_agree(request)


@pytest.mark.parametrize(
    "request_",
    [None, {"strategy": {}, "data_id": "EURUSD-H1"}, Strategy(name="s", kind="k"), "BACKTEST"],
)
def test_what_is_not_a_request_is_refused_alike(request_: object) -> None:
    result = assert_paths_agree(request_)
    assert result[1][1] == ""  # field "" : not a request at all


@pytest.mark.parametrize("field", ["name", "kind", "request_id", "data_id", "start", "key"])
def test_huge_strings_agree(field: str) -> None:
    huge = "a" * 1_000_000
    strategy = Strategy(name="s", kind="k", params={"fast": 1})
    request = BacktestRequest(request_id="r1", strategy=strategy, data_id="d")
    if field == "key":
        strategy.params[huge] = 1
    elif field in ("name", "kind"):
        msgspec.structs.force_setattr(strategy, field, huge)
    else:
        msgspec.structs.force_setattr(request, field, huge)
    assert assert_paths_agree(request)[0] == "raised"


def test_an_enormous_params_dict_agrees_and_is_copied() -> None:
    """More parameter names than the known-good cache holds (it is cleared midway)."""
    many = {f"p{i}": (i if i % 2 else i + 0.5) for i in range(KNOWN_GOOD_LIMIT + 500)}
    request = BacktestRequest(
        request_id="r1", strategy=Strategy(name="s", kind="k", params=many), data_id="d"
    )
    assert_paths_agree(request)
    many["p7"] = math.inf
    assert assert_paths_agree(request)[1][1] == "strategy.params.p7"
    assert len(GOOD_NAMES) <= KNOWN_GOOD_LIMIT


def test_the_copy_does_not_follow_the_callers_params() -> None:
    params: dict[str, float | int] = {"fast": 10, "slow": 40}
    request = BacktestRequest(
        request_id="r1", strategy=Strategy(name="s", kind="k", params=params), data_id="d"
    )
    copy, body = validate_request_encoded(request)
    params["fast"] = math.nan
    assert copy.strategy.params == {"fast": 10, "slow": 40}
    assert decode_message(body) == copy


def test_a_plain_request_is_checked_without_decoding(monkeypatch: pytest.MonkeyPatch) -> None:
    """The fast path is taken (issue 14: 5.4 us per request was mostly the decode)."""

    decoded: list[bytes] = []
    real = protocol._request_decoder

    class CountingDecoder:
        def decode(self, body: bytes) -> object:
            decoded.append(body)
            return real.decode(body)

    monkeypatch.setattr(protocol, "_request_decoder", CountingDecoder())
    request = BacktestRequest(
        request_id="r1", strategy=Strategy(name="s", kind="k", params={"a": 1}), data_id="d"
    )
    copy, body = validate_request_encoded(request)
    assert copy == request
    assert body == encode_message(request)
    assert validate_request(request) == request
    assert decoded == []
    # What only the round trip may judge still goes there.
    copy, body = validate_request_encoded(msgspec.structs.replace(request, cash=5))
    assert len(decoded) == 1
    assert type(copy.cash) is float  # as decoding gives it
    assert body == encode_message(copy)  # the copy's own body: cash 5.0 (it was 5)


def test_the_body_is_the_copys_encoding_when_the_caller_gave_ints() -> None:
    request = BacktestRequest(request_id="r1", strategy=Strategy(name="s", kind="k"),
                              data_id="d", cash=5, commission=0)  # fmt: skip
    copy, body = validate_request_encoded(request)
    assert (copy.cash, type(copy.cash), type(copy.commission)) == (5.0, float, float)
    assert body == encode_message(copy)
    assert b'"cash":5.0,"commission":0.0' in body

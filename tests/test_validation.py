"""Bad values are refused when a message is built in Python, naming the field.

The same rules run when a message is decoded (``__post_init__`` runs on both paths), so a
requester cannot build a request a service would refuse for these reasons, and
:func:`validate_request` (what ``submit`` calls) catches what changed since.
"""

from __future__ import annotations

import math
from typing import Any

import msgspec
import pytest
from hypothesis import given
from hypothesis import strategies as st

from backtest_queue import BacktestRequest, Metrics, ProtocolError, Strategy, UsageError
from backtest_queue.errors import InvalidMessage, InvalidRequest
from backtest_queue.protocol import (
    MAX_COMMISSION,
    BacktestResult,
    ErrorReply,
    Ping,
    Pong,
    decode_message,
    encode_message,
    validate_request,
    validate_request_encoded,
)


def strategy(**fields: Any) -> Strategy:
    values: dict[str, Any] = {"name": "s", "kind": "sma_cross", "params": {"fast": 10, "slow": 40}}
    values.update(fields)
    return Strategy(**values)


def request(**fields: Any) -> BacktestRequest:
    values: dict[str, Any] = {"strategy": strategy(), "data_id": "EURUSD-H1", "request_id": "r1"}
    values.update(fields)
    return BacktestRequest(**values)


def refused(build: Any, field: str) -> InvalidRequest:
    """``build()`` raises InvalidRequest for ``field``, a UsageError and a ValueError."""
    with pytest.raises(InvalidRequest) as info:
        build()
    error = info.value
    assert isinstance(error, UsageError)
    assert isinstance(error, ValueError)
    assert error.field == field
    assert str(error).startswith(f"{field}: "), str(error)
    return error


# -- the inputs named in the issue ------------------------------------------------------


def test_a_nan_stop_loss_is_refused_naming_the_field() -> None:
    error = refused(lambda: strategy(sl=math.nan), "strategy.sl")
    assert str(error) == "strategy.sl: must be a finite fraction in (0, 1), got nan"


def test_an_infinite_take_profit_is_refused() -> None:
    error = refused(lambda: strategy(tp=math.inf), "strategy.tp")
    assert "got inf" in str(error)


@pytest.mark.parametrize("cash", [-5, -5.0, 0.0, math.nan, math.inf, -math.inf])
def test_cash_must_be_a_positive_finite_amount(cash: float) -> None:
    error = refused(lambda: request(cash=cash), "cash")
    assert str(error) == f"cash: must be a finite amount of cash in (0, inf), got {cash!r}"


def test_a_lone_surrogate_in_a_name_is_refused_before_it_can_fail_to_encode() -> None:
    error = refused(lambda: strategy(name="bad\udc80"), "strategy.name")
    assert "surrogate" in str(error)
    str(error).encode()  # the message itself is encodable (the value is shown escaped)


def test_a_request_id_over_64_characters_is_refused() -> None:
    error = refused(lambda: request(request_id="x" * 100), "request_id")
    assert "1-64" in str(error)
    assert request(request_id="x" * 64).request_id == "x" * 64


def test_validate_request_refuses_what_is_not_a_request() -> None:
    with pytest.raises(InvalidRequest, match=r"^submit takes a BacktestRequest, got dict$"):
        validate_request({"strategy": {}, "data_id": "EURUSD-H1"})
    with pytest.raises(InvalidRequest, match="got Strategy"):
        validate_request(strategy())


# -- the kind: every rule, on every struct ------------------------------------------------


@pytest.mark.parametrize(
    ("fields", "field"),
    [
        ({"name": ""}, "strategy.name"),
        ({"name": "n" * 129}, "strategy.name"),
        ({"name": 5}, "strategy.name"),
        ({"name": "line\nbreak"}, "strategy.name"),
        ({"name": "esc\x1b[2J"}, "strategy.name"),
        ({"kind": "k\x00"}, "strategy.kind"),
        ({"kind": None}, "strategy.kind"),
        ({"params": {"fast": math.nan}}, "strategy.params.fast"),
        ({"params": {"fast": math.inf}}, "strategy.params.fast"),
        ({"params": {"fast": True}}, "strategy.params.fast"),
        ({"params": {"fast": "10"}}, "strategy.params.fast"),
        ({"params": {"fast": 10**400}}, "strategy.params.fast"),
        ({"params": {"fast": 2**53 + 1}}, "strategy.params.fast"),
        ({"params": {"\udc80": 1}}, "strategy.params name"),
        ({"params": {"": 1}}, "strategy.params name"),
        ({"params": {1: 1}}, "strategy.params name"),
        ({"params": [("fast", 1)]}, "strategy.params"),
        ({"sl": 0.0}, "strategy.sl"),
        ({"sl": 1.0}, "strategy.sl"),
        ({"sl": -0.01}, "strategy.sl"),
        ({"sl": True}, "strategy.sl"),
        ({"tp": "0.02"}, "strategy.tp"),
    ],
)
def test_strategy_rules(fields: dict[str, Any], field: str) -> None:
    refused(lambda: strategy(**fields), field)


@pytest.mark.parametrize(
    ("fields", "field"),
    [
        ({"v": 2}, "v"),
        ({"v": True}, "v"),
        ({"request_id": ""}, "request_id"),
        ({"request_id": 7}, "request_id"),
        ({"request_id": "a\nb"}, "request_id"),
        ({"request_id": "\ud800"}, "request_id"),
        ({"strategy": {"name": "s", "kind": "k"}}, "strategy"),
        ({"data_id": "../etc/passwd"}, "data_id"),
        ({"data_id": ""}, "data_id"),
        ({"data_id": "x" * 129}, "data_id"),
        ({"start": "x"}, "start"),
        ({"end": "2017-01-01" * 5}, "end"),
        ({"start": 2017}, "start"),
        ({"cash": True}, "cash"),
        ({"cash": "10000"}, "cash"),
        ({"commission": -0.001}, "commission"),
        ({"commission": MAX_COMMISSION}, "commission"),
        ({"commission": 0.5}, "commission"),
        ({"commission": math.nan}, "commission"),
    ],
)
def test_request_rules(fields: dict[str, Any], field: str) -> None:
    refused(lambda: request(**fields), field)


def test_good_odd_values_pass() -> None:
    ok = strategy(
        name="ünïcode 😀 name", params={"fast": 1, "slow": 2.0, "x": -1e300}, sl=1e-9, tp=0.999
    )
    built = request(strategy=ok, commission=0.0, cash=1e300, start="2017", end="2017-12-31")
    checked = validate_request(built)
    assert checked == built
    assert checked is not built  # a private copy: later changes to `built` cannot reach it
    assert request(cash=5, commission=0).cash == 5  # ints are numbers too
    assert validate_request(request(cash=5, commission=0)).commission == 0


@pytest.mark.parametrize(
    ("build", "field"),
    [
        (lambda: Metrics(strategy_name="s", sharpe=math.nan), "result.sharpe"),
        (lambda: Metrics(strategy_name="s", profit_factor=math.inf), "result.profit_factor"),
        (lambda: Metrics(strategy_name="s", win_rate=1.5), "result.win_rate"),
        (lambda: Metrics(strategy_name="s", trades=-1), "result.trades"),
        (lambda: Metrics(strategy_name="s", trades=True), "result.trades"),
        (lambda: Metrics(strategy_name="s", bars=1.5), "result.bars"),
        (lambda: Metrics(strategy_name="s", elapsed_ms=-1.0), "result.elapsed_ms"),
        (lambda: Metrics(strategy_name="s", elapsed_ms=None), "result.elapsed_ms"),
        (lambda: Metrics(strategy_name="s\udc80"), "result.strategy_name"),
        (lambda: BacktestResult(request_id="r" * 65, result=Metrics(strategy_name="s")),
         "request_id"),
        (lambda: BacktestResult(request_id="r", result={"strategy_name": "s"}), "result"),
        (lambda: ErrorReply(code="nope", message="m"), "code"),  # type: ignore[arg-type]
        (lambda: ErrorReply(code="too_large", message="a\x00b"), "message"),
        (lambda: ErrorReply(request_id="", code="too_large", message="m"), "request_id"),
        (lambda: Ping(v=2), "v"),
        (lambda: Ping(request_id="x" * 65), "request_id"),
        (lambda: Pong(workers=-1), "workers"),
        (lambda: Pong(datasets=["ok", "../x"]), "datasets[1]"),
        (lambda: Pong(version="\udc80"), "version"),
    ],
)  # fmt: skip
def test_reply_rules(build: Any, field: str) -> None:
    with pytest.raises(InvalidMessage) as info:
        build()
    assert not isinstance(info.value, InvalidRequest)  # a reply is not a request
    assert info.value.field == field
    assert str(info.value).startswith(f"{field}: ")


# -- what construction cannot catch: validate_request at submit ---------------------------


def test_a_params_dict_mutated_after_construction_is_caught_at_submit() -> None:
    built = request()
    built.strategy.params["fast"] = math.nan  # the struct is frozen, its dict is not
    error = refused(lambda: validate_request(built), "strategy.params.fast")
    assert "finite" in str(error)


def test_force_setattr_bypasses_construction_but_not_validate_request() -> None:
    built = request()
    msgspec.structs.force_setattr(built, "cash", -5.0)
    refused(lambda: validate_request(built), "cash")
    named = strategy()
    msgspec.structs.force_setattr(named, "name", "bad\udc80")
    refused(lambda: validate_request(request(strategy=named)), "strategy.name")
    msgspec.structs.force_setattr(named, "name", "fine")
    msgspec.structs.force_setattr(named, "sl", math.nan)
    refused(lambda: validate_request(request(strategy=named)), "strategy.sl")


def test_structs_replace_runs_the_rules() -> None:
    refused(lambda: msgspec.structs.replace(request(), cash=math.nan), "cash")


# -- one validation at both ends ----------------------------------------------------------

numbers = st.floats(allow_nan=True, allow_infinity=True) | st.integers(-(2**60), 2**60)
values = numbers | st.booleans() | st.none() | st.text(max_size=70)
FIELDS = ["name", "kind", "params", "sl", "tp", "request_id", "data_id", "start", "cash",
          "commission"]  # fmt: skip


@given(
    field=st.sampled_from(FIELDS),
    value=values | st.dictionaries(st.text(max_size=4), values, max_size=2),
)
def test_one_validation_at_both_ends(field: str, value: Any) -> None:
    """A request with one field set to an arbitrary value: what Python builds, the wire
    carries unchanged; what Python refuses, the decoder refuses for the same field."""
    fields: dict[str, Any] = {"name": "s", "kind": "sma_cross", "params": {"fast": 10}}
    top: dict[str, Any] = {"request_id": "r1", "data_id": "EURUSD-H1"}
    (fields if field in ("name", "kind", "params", "sl", "tp") else top)[field] = value
    refusal: InvalidRequest | None = None
    try:
        built = BacktestRequest(strategy=Strategy(**fields), **top)
    except InvalidRequest as exc:
        refusal = exc
    if refusal is not None:
        try:
            raw = msgspec.json.encode({"type": "BACKTEST", "v": 1, "strategy": fields, **top})
        except UnicodeEncodeError:
            return  # a lone surrogate: not even JSON, the decoder never sees it
        if "nan" in repr(value) or "inf" in repr(value):
            return  # msgspec writes NaN and infinities as null: another value on the wire
        big = type(value) is int and abs(value) > 2**53
        if big and field in ("sl", "tp", "cash", "commission"):
            return  # a float field reads a big integer literal as the nearest float
        with pytest.raises(ProtocolError) as info:
            decode_message(raw)
        assert info.value.code == "invalid_request"
        assert info.value.field is not None
        assert refusal.field.startswith(info.value.field), (info.value, refusal)
        return
    checked = validate_request(built)
    assert checked == built
    assert checked is not built  # a private copy: later changes to `built` cannot reach it
    assert decode_message(encode_message(built)) == built


@given(
    fast=st.integers(1, 10_000),
    slow=st.floats(1.0, 1e6, allow_nan=False),
    sl=st.none() | st.floats(0.001, 0.999),
    cash=st.floats(1.0, 1e12),
)
def test_validate_request_encoded_returns_the_copy_and_exactly_its_encoding(
    fast: int, slow: float, sl: float | None, cash: float
) -> None:
    """The body kept for the send (issue 14: no second encoding) is the copy's encoding,
    and the copy equals the original."""
    built = request(strategy=strategy(params={"fast": fast, "slow": slow}, sl=sl), cash=cash)
    copy, body = validate_request_encoded(built)
    assert copy == built
    assert copy is not built
    assert body == encode_message(copy) == encode_message(built)
    assert decode_message(body) == built


def test_validate_request_encoded_refuses_what_validate_request_refuses() -> None:
    built = request()
    built.strategy.params["fast"] = math.nan
    error = refused(lambda: validate_request_encoded(built), "strategy.params.fast")
    assert "finite" in str(error)

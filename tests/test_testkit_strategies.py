"""The test kit's hypothesis strategies: valid means the service accepts it, invalid means
refused naming the field."""

from __future__ import annotations

import contextlib

import pytest
from hypothesis import given
from hypothesis import strategies as st

from backtest_queue.errors import ProtocolError
from backtest_queue.protocol import BacktestRequest, decode_message, encode_message
from backtest_queue.service.strategies import KINDS, MAX_PERIOD, MIN_BRACKET, check_strategy
from backtest_queue.testing import Faults
from backtest_queue.testing import strategies as bqs


def test_the_kit_knows_the_services_kinds_and_bounds() -> None:
    assert {name: kind.params for name, kind in KINDS.items()} == bqs.KIND_PARAMS
    assert bqs._MAX_PERIOD == MAX_PERIOD
    assert bqs._MIN_BRACKET == MIN_BRACKET


@given(bqs.requests())
def test_a_valid_request_passes_the_wire_and_the_service(request: BacktestRequest) -> None:
    decoded = decode_message(encode_message(request))
    assert decoded == request
    check_strategy(request.strategy)  # raises if the service would refuse it


@pytest.mark.parametrize("kind", sorted(bqs.KIND_PARAMS))
@given(data=st.data())
def test_each_kind_keeps_its_rules(kind: str, data: st.DataObject) -> None:
    strategy = data.draw(bqs.strategies(kind, max_period=MAX_PERIOD))
    assert strategy.kind == kind
    assert check_strategy(strategy).kind == kind


@given(bqs.messages())
def test_every_valid_message_decodes(body: bytes) -> None:
    assert encode_message(decode_message(body)) == body


@given(bqs.invalid_requests())
def test_an_invalid_request_is_refused_naming_its_field(bad: bqs.InvalidBody) -> None:
    if bad.caught_by == "protocol":
        with pytest.raises(ProtocolError) as caught:
            decode_message(bad.body)
    else:
        message = decode_message(bad.body)
        assert isinstance(message, BacktestRequest)
        with pytest.raises(ProtocolError) as caught:
            check_strategy(message.strategy)
    assert caught.value.field == bad.field, (bad, caught.value)
    if bad.field != "v":  # v: "protocol version 2 is not supported" (unsupported_version)
        assert str(caught.value).startswith(f"{bad.field}: "), (bad, caught.value)


@given(bqs.invalid_requests("cash"))
def test_invalid_requests_can_target_one_field(bad: bqs.InvalidBody) -> None:
    assert bad.field == "cash"


@given(bqs.mutated_messages("reply") | bqs.hostile_bodies())
def test_hostile_bodies_never_crash_the_decoder(body: bytes) -> None:
    with contextlib.suppress(ProtocolError):
        decode_message(body.replace(b"@RID@", b"r1"))


@given(bqs.fault_plans(["a", "b"], refuse=True))
def test_fault_plans_never_refuse_on_the_first_endpoint(plan: dict[str, Faults]) -> None:
    assert set(plan) == {"a", "b"}
    assert not plan["a"].refuse

"""The command line's numeric option types take any text: a value in range, or
argparse's own error (exit 2 with the message), never another exception."""

from __future__ import annotations

import argparse
import math
from collections.abc import Callable

import pytest
from hypothesis import given
from hypothesis import strategies as st

from backtest_queue.cli import build_parser, main
from backtest_queue.cli_types import endpoint, integer, number

TEXT = st.one_of(
    st.text(max_size=30),
    st.integers(min_value=-(2**70), max_value=2**70).map(str),
    st.floats(allow_nan=True, allow_infinity=True).map(repr),
    st.sampled_from(["nan", "-inf", "inf", "1e400", " 7 ", "0x10", "1_000", "", "-0", "٣"]),
)


def outcome(parse: Callable[[str], float], text: str) -> float | str:
    """The parsed value, or the message of argparse's error (any other exception fails)."""
    try:
        return parse(text)
    except argparse.ArgumentTypeError as exc:
        return str(exc)


@given(TEXT, st.integers(-5, 5), st.integers(0, 10))
def test_integer_accepts_only_whole_numbers_in_range(text: str, low: int, span: int) -> None:
    parse = integer(low, low + span, also=(-100,))
    value = outcome(parse, text)
    if isinstance(value, str):
        assert repr(text) in value
        assert f"from {low} to {low + span} or -100" in value
        return
    assert isinstance(value, int)
    assert value == -100 or low <= value <= low + span


@given(TEXT, st.floats(-10, 10), st.floats(0, 10), st.booleans())
def test_number_accepts_only_finite_numbers_in_range(
    text: str, low: float, span: float, exclusive: bool
) -> None:
    parse = number(low, low + span, exclusive=exclusive, unit="seconds")
    value = outcome(parse, text)
    if isinstance(value, str):
        assert repr(text) in value
        assert "(seconds)" in value
        return
    assert math.isfinite(value)
    if exclusive:
        assert low < value < low + span
    else:
        assert low <= value <= low + span


@pytest.mark.parametrize("text", ["4294967295", "0", "7"])
def test_every_numpy_seed_is_accepted(text: str) -> None:
    assert integer(0, 2**32 - 1)(text) == int(text)


@given(TEXT)
def test_endpoint_accepts_transport_and_address_or_refuses_with_the_text(text: str) -> None:
    value = outcome(endpoint, text)  # type: ignore[arg-type]
    if value == text:
        transport, _, address = text.partition("://")
        assert transport
        assert address
    else:
        assert isinstance(value, str)
        assert repr(text) in value
        assert "tcp://HOST:PORT" in value


# Each was accepted by the parser and failed only after the run had started (exit 1, a
# libzmq "Invalid argument" or a library message about None), instead of exit 2 at once.
BAD_OPTIONS = [
    (["status", "localhost:5580"], "argument ENDPOINT", "did you mean tcp://localhost:5580?"),
    (["evolve", "--connect", "localhost:5580"], "argument --connect", "tcp://localhost:5580?"),
    (["demo", "--connect", "nonsense"], "argument --connect", "got 'nonsense'"),
    (["service", "--bind", "127.0.0.1:*"], "argument --bind", "did you mean tcp://127.0.0.1:*?"),
    (["demo", "--metrics-port", "99999"], "argument --metrics-port", "from 0 to 65535"),
    (["service", "--metrics-port", "-1"], "argument --metrics-port", "from 0 to 65535"),
]


@pytest.mark.parametrize(("argv", "option", "fix"), BAD_OPTIONS)
def test_a_malformed_endpoint_or_port_is_refused_by_the_parser(
    argv: list[str], option: str, fix: str, capsys: pytest.CaptureFixture[str]
) -> None:
    with pytest.raises(SystemExit) as exited:
        build_parser().parse_args(argv)
    assert exited.value.code == 2
    err = capsys.readouterr().err
    assert option in err
    assert fix in err


def test_endpoints_of_every_transport_pass() -> None:
    for text in ("tcp://127.0.0.1:5580", "tcp://[::1]:*", "ipc:///tmp/bq", "inproc://x"):
        assert endpoint(text) == text


# A typo was reported by the top-level parser ("backtest-queue: error: unrecognized
# arguments: --populaton 2", the top-level usage), naming neither the command nor the fix.
TYPOS = [
    (["demo", "--populaton", "2"], "demo", "--populaton: did you mean --population?"),
    (["status", "tcp://x:1", "--jsn"], "status", "--jsn: did you mean --json?"),
    (["demo", "--seeed=4"], "demo", "--seeed: did you mean --seed?"),
    (["service", "--datas", "d"], "service", "--datas: did you mean --data?"),
    (["demo", "extra"], "demo", "unrecognized arguments: extra"),
]


@pytest.mark.parametrize(("argv", "command", "fix"), TYPOS)
def test_an_unknown_option_is_refused_by_its_command_with_the_nearest_option(
    argv: list[str], command: str, fix: str, capsys: pytest.CaptureFixture[str]
) -> None:
    with pytest.raises(SystemExit) as exited:
        main(argv)
    assert exited.value.code == 2
    err = capsys.readouterr().err
    assert f"usage: backtest-queue {command} " in err
    assert f"backtest-queue {command}: error: unrecognized arguments: " in err
    assert fix in err


def test_an_unknown_option_far_from_any_gets_no_guess(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit):
        main(["demo", "--bogus"])
    assert "did you mean" not in capsys.readouterr().err

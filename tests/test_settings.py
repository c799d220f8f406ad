"""Every setting is checked for type, finiteness and range, with a message that helps.

Issue 10 section 2: ``open_dispatcher(max_pending="8")`` gave a ``TypeError`` from a
comparison deep inside. Now each setting of :class:`BacktestQueue` (which
``open_dispatcher`` builds from its own arguments) and :class:`TokenBucket` raises
:class:`UsageError` naming the setting, the value given and what is accepted; hypothesis
generates the wrong types and values.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from fractions import Fraction
from typing import Any

import anyio
import pytest
from hypothesis import given
from hypothesis import strategies as st

from backtest_queue import BacktestQueueError, UsageError, open_dispatcher
from backtest_queue.policy import BacktestQueue
from backtest_queue.ratelimit import TokenBucket
from backtest_queue.settings import check_choice, check_count, check_number
from backtest_queue.testing import MemoryNetwork


@dataclass(frozen=True)
class Setting:
    """A setting: what it accepts (a strategy) and which values of the right type it
    refuses (a strategy)."""

    good: st.SearchStrategy[Any]
    bad_values: st.SearchStrategy[Any]
    none_ok: bool = False


def finite(lo: float, hi: float = 1e9) -> st.SearchStrategy[float]:
    return st.floats(min_value=lo, max_value=hi, allow_nan=False, allow_infinity=False)


NOT_FINITE = st.sampled_from([math.nan, math.inf, -math.inf])


def count_setting(none_ok: bool = False) -> Setting:
    return Setting(
        good=st.integers(1, 10**6),
        bad_values=st.integers(max_value=0) | finite(-1e6, 1e6) | NOT_FINITE,  # floats too
        none_ok=none_ok,
    )


def number_setting(lo: float, *, exclusive: bool, none_ok: bool = False) -> Setting:
    below = st.floats(max_value=lo, exclude_max=not exclusive, allow_nan=False)
    good = finite(lo, 1e6).filter(lambda x: x > lo if exclusive else True) | st.integers(
        math.ceil(lo) + (1 if exclusive and lo == math.ceil(lo) else 0), 10**6
    )
    return Setting(good=good, bad_values=below | NOT_FINITE, none_ok=none_ok)


QUEUE_SETTINGS: dict[str, Setting] = {
    "capacity": count_setting(),
    "max_pending": count_setting(none_ok=True),
    "max_attempts": count_setting(),
    "rate": number_setting(0.0, exclusive=True, none_ok=True),
    "flush_interval": number_setting(0.0, exclusive=False),
    "result_timeout": number_setting(0.0, exclusive=True),
    "retry_backoff": number_setting(1.0, exclusive=False),
}
BUCKET_SETTINGS: dict[str, Setting] = {
    "rate": number_setting(0.0, exclusive=True),
    "burst": number_setting(1.0, exclusive=False),
}
VALID_BUCKET = {"rate": 2.0, "burst": 3.0, "now": 0.0}

# Values of the wrong type for any number: a bool (an int in Python), a number as text,
# containers, complex, bytes, and None where None is not accepted.
wrong_types = st.one_of(
    st.booleans(),
    st.integers(1, 100).map(str),
    st.floats(allow_nan=False, allow_infinity=False).map(repr),
    st.sampled_from([[8], {"n": 8}, (8,), 8j, b"8", object()]),
)


def bad_values_for(setting: Setting) -> st.SearchStrategy[Any]:
    out = wrong_types | setting.bad_values
    return out if setting.none_ok else out | st.none()


def assert_names(error: UsageError, name: str, value: Any) -> None:
    message = str(error)
    assert message.startswith(f"{name} must be "), message
    assert repr(value) in message, message


@pytest.mark.parametrize("name", sorted(QUEUE_SETTINGS))
@given(data=st.data())
def test_a_bad_queue_setting_is_a_usage_error_naming_it(name: str, data: st.DataObject) -> None:
    value = data.draw(bad_values_for(QUEUE_SETTINGS[name]), label=name)
    with pytest.raises(UsageError) as info:
        BacktestQueue(**{name: value})
    assert_names(info.value, name, value)


@pytest.mark.parametrize("name", sorted(QUEUE_SETTINGS))
@given(data=st.data())
def test_a_good_queue_setting_is_accepted_and_stored_plain(name: str, data: st.DataObject) -> None:
    value = data.draw(QUEUE_SETTINGS[name].good, label=name)
    q: BacktestQueue[Any] = BacktestQueue(**{name: value})
    stored = getattr(q, name)
    assert stored == value
    assert type(stored) in (int, float)


@given(value=bad_values_for(number_setting(1.0, exclusive=False, none_ok=True)))
def test_a_bad_burst_is_a_usage_error_naming_it(value: Any) -> None:
    with pytest.raises(UsageError) as info:
        BacktestQueue(rate=5.0, burst=value)
    assert_names(info.value, "burst", value)


def test_burst_without_rate_says_what_to_do() -> None:
    with pytest.raises(UsageError, match=r"burst=2\.0 needs a rate"):
        BacktestQueue(burst=2.0)


@pytest.mark.parametrize("clock", [0.0, "time.monotonic", None])
def test_a_clock_that_is_not_callable_is_refused(clock: Any) -> None:
    with pytest.raises(UsageError, match="clock must be a callable"):
        BacktestQueue(clock=clock)


@pytest.mark.parametrize("name", sorted(BUCKET_SETTINGS))
@given(data=st.data())
def test_a_bad_bucket_setting_is_a_usage_error_naming_it(name: str, data: st.DataObject) -> None:
    value = data.draw(bad_values_for(BUCKET_SETTINGS[name]), label=name)
    with pytest.raises(UsageError) as info:
        TokenBucket(**{**VALID_BUCKET, name: value})
    assert_names(info.value, name, value)


@given(now=wrong_types | st.none() | st.just(math.nan))
def test_a_bad_bucket_start_time_is_refused(now: Any) -> None:
    with pytest.raises(UsageError) as info:
        TokenBucket(rate=1.0, burst=1.0, now=now)
    assert_names(info.value, "now", now)


def test_minus_infinity_is_a_valid_bucket_start_time() -> None:
    assert TokenBucket(rate=1.0, burst=1.0, now=-math.inf).tokens(0.0) == 1.0


def test_exact_values_of_other_number_types_are_accepted() -> None:
    q: BacktestQueue[Any] = BacktestQueue(rate=Fraction(1, 2), flush_interval=Fraction(3, 4))
    assert (q.rate, q.flush_interval) == (0.5, 0.75)


def test_an_int_too_large_for_a_float_is_out_of_range_not_an_overflow() -> None:
    with pytest.raises(UsageError, match="rate must be a finite number"):
        BacktestQueue(rate=10**400)
    assert BacktestQueue(capacity=10**400).capacity == 10**400  # a count has no float limit


def test_the_messages_say_what_is_accepted() -> None:
    with pytest.raises(UsageError) as info:
        BacktestQueue(max_pending="8")  # type: ignore[arg-type]
    assert str(info.value) == "max_pending must be an int >= 1, or None for no limit; got '8'"
    with pytest.raises(UsageError) as info:
        BacktestQueue(result_timeout=math.nan)
    assert str(info.value) == ("result_timeout must be a finite number of seconds > 0; got nan")
    with pytest.raises(UsageError) as info:
        BacktestQueue(capacity=True)
    assert str(info.value) == "capacity must be an int >= 1; got True"


def test_check_choice() -> None:
    check_choice("on_full", "wait", ("wait", "error"))
    for value in ("WAIT", None, 1, ["wait"]):
        with pytest.raises(UsageError, match=r"on_full must be one of 'wait', 'error'"):
            check_choice("on_full", value, ("wait", "error"))


def test_checks_accept_what_they_say() -> None:
    check_count("n", 0, minimum=0)
    check_count("n", None, allow_none=True)
    check_number("x", math.inf, unit="s", minimum=0.0, allow_inf=True)
    check_number("x", 0, unit="s", minimum=0.0)
    with pytest.raises(UsageError):
        check_number("x", 0, unit="s", minimum=0.0, exclusive=True)
    with pytest.raises(UsageError):
        check_number("x", math.nan, unit="s", minimum=-math.inf, allow_inf=True)


def test_upper_bounds_and_no_limit_values() -> None:
    check_count("n", 10, maximum=10)
    check_count("n", math.inf, minimum=0, allow_inf=True)
    with pytest.raises(UsageError, match=r"^n must be an int >= 1 and <= 10; got 11$"):
        check_count("n", 11, maximum=10)
    with pytest.raises(UsageError, match=r"or math\.inf for no limit; got nan"):
        check_count("n", math.nan, allow_inf=True)
    with pytest.raises(UsageError, match="; got -inf"):
        check_count("n", -math.inf, allow_inf=True)
    check_number("x", 5.0, unit="s", minimum=0.0, maximum=5.0)
    with pytest.raises(
        UsageError, match=r"^x must be a finite number of s > 0 and <= 5; got 5\.5$"
    ):
        check_number("x", 5.5, unit="s", minimum=0.0, exclusive=True, maximum=5.0)


# -- through open_dispatcher: the error comes out at once, before anything is opened ----


@pytest.mark.anyio
@pytest.mark.parametrize(
    ("settings", "name"),
    [
        ({"max_pending": "8"}, "max_pending"),
        ({"max_pending": True}, "max_pending"),
        ({"capacity": 2.5}, "capacity"),
        ({"rate": "10"}, "rate"),
        ({"flush_interval": math.nan}, "flush_interval"),
        ({"result_timeout": math.inf}, "result_timeout"),
        ({"max_attempts": 0}, "max_attempts"),
        ({"retry_backoff": None}, "retry_backoff"),
        ({"rate": 1.0, "burst": "2"}, "burst"),
    ],
)
async def test_open_dispatcher_refuses_a_bad_setting_by_name(
    settings: dict[str, Any], name: str
) -> None:
    with anyio.fail_after(10), pytest.raises(UsageError, match=f"^{name} must be"):
        async with open_dispatcher(["tcp://fake:1"], network=MemoryNetwork(), **settings):
            pytest.fail("opened with a bad setting")


def test_usage_error_is_in_the_root() -> None:
    assert issubclass(UsageError, BacktestQueueError)

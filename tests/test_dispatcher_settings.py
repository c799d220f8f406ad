"""open_dispatcher's own settings are checked like the policy's (issue 10 section 2).

``max_pending``, ``rate`` and the other policy settings are checked by
:class:`BacktestQueue` (``tests/test_settings.py``). The settings that only the
dispatcher uses are checked in ``open_dispatcher`` with the same helpers from
:mod:`backtest_queue.settings`, before anything is opened.

``open_dispatcher`` calls, before building the queue::

    check_choice("on_full", on_full, ("wait", "error"))
    check_count("outcome_buffer", outcome_buffer, minimum=1, allow_inf=True)
    check_number("drain_timeout", drain_timeout, unit="seconds", minimum=0.0,
                 allow_inf=True)
    check_number("heartbeat_ivl", heartbeat_ivl, unit="seconds", minimum=0.0,
                 exclusive=True, maximum=MAX_HEARTBEAT_IVL)
    check_number("reconnect_ivl", reconnect_ivl, unit="seconds", minimum=0.0,
                 exclusive=True, maximum=MAX_RECONNECT_IVL)
    check_count("send_hwm", send_hwm, minimum=0, maximum=INT32_MAX)
    check_count("max_message_bytes", max_message_bytes, minimum=1)

"""

from __future__ import annotations

import math
from typing import Any

import anyio
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from backtest_queue import UsageError, open_dispatcher
from backtest_queue.settings import INT32_MAX, MAX_HEARTBEAT_IVL, MAX_RECONNECT_IVL
from backtest_queue.testing import MemoryNetwork

wrong_types = st.one_of(
    st.booleans(),
    st.integers(1, 100).map(str),
    st.sampled_from([[8], {"n": 8}, 8j, b"8", None]),
)
seconds_out_of_range = st.floats(max_value=0.0) | st.just(math.nan)

BAD: dict[str, st.SearchStrategy[Any]] = {
    "on_full": wrong_types | st.text().filter(lambda s: s not in ("wait", "error")),
    "outcome_buffer": wrong_types | st.integers(max_value=0) | st.floats(0.5, 1e6)
    | st.sampled_from([math.nan, -math.inf]),
    "drain_timeout": wrong_types | st.floats(max_value=-1e-9) | st.just(math.nan),
    "heartbeat_ivl": wrong_types | seconds_out_of_range
    | st.floats(min_value=MAX_HEARTBEAT_IVL, exclude_min=True),
    "reconnect_ivl": wrong_types | seconds_out_of_range
    | st.floats(min_value=MAX_RECONNECT_IVL, exclude_min=True),
    "send_hwm": wrong_types | st.integers(max_value=-1) | st.integers(min_value=INT32_MAX + 1)
    | st.just(10.0),
    "max_message_bytes": wrong_types | st.integers(max_value=0) | st.just(1e6),
}  # fmt: skip


async def refused(name: str, value: Any) -> UsageError:
    with pytest.raises(UsageError) as info:
        async with open_dispatcher(["tcp://fake:1"], network=MemoryNetwork(), **{name: value}):
            pytest.fail(f"opened with {name}={value!r}")
    return info.value


@pytest.mark.parametrize("name", sorted(BAD))
@settings(max_examples=40, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(data=st.data())
def test_a_bad_dispatcher_setting_is_a_usage_error_naming_it(
    name: str, data: st.DataObject
) -> None:
    value = data.draw(BAD[name], label=name)
    for backend in ("trio", "asyncio"):
        error = anyio.run(refused, name, value, backend=backend)
        assert str(error).startswith(f"{name} must be "), str(error)
        assert repr(value) in str(error)


@pytest.mark.parametrize(
    ("name", "value"),
    [("outcome_buffer", 1), ("outcome_buffer", math.inf), ("drain_timeout", math.inf),
     ("heartbeat_ivl", MAX_HEARTBEAT_IVL), ("reconnect_ivl", 0.001), ("send_hwm", 0),
     ("max_message_bytes", 1), ("on_full", "error")],
)  # fmt: skip
def test_the_edges_of_each_range_are_accepted(name: str, value: Any) -> None:
    async def main() -> None:
        async with open_dispatcher(["tcp://fake:1"], network=MemoryNetwork(), **{name: value}):
            pass

    for backend in ("trio", "asyncio"):
        anyio.run(main, backend=backend)

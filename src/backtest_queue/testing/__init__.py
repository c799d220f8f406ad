"""The test kit: fakes, faults, checks and strategies for suites built on the dispatcher.

* :class:`MemoryNetwork` - fake services with no sockets (``open_dispatcher(...,
  network=MemoryNetwork())``), with seeded :class:`Faults` per service;
* :class:`ServiceProcess` / :func:`service_process` - the real ``backtest-queue service``
  in a child process group, for crash tests;
* :mod:`backtest_queue.testing.strategies` - hypothesis strategies (needs hypothesis);
* :func:`dispatcher_machine` - a hypothesis state machine that drives your own loop
  against faulty fakes and checks the dispatcher's guarantees (needs hypothesis);
* :mod:`backtest_queue.testing.plugin` - the pytest plugin (fixtures ``memory_network``,
  ``backtest_service``, ``dispatcher``; marker ``virtual_time``).

Only the fakes, faults and trace checks are imported here; the hypothesis parts load on
first use, so importing this package needs neither hypothesis nor pytest.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from .faults import Answer, Faults, Latency, exponential, uniform
from .network import (
    ECHO_FINGERPRINT,
    MemoryNetwork,
    NetworkObserver,
    Received,
    Reply,
    echo_result,
    silent,
)
from .service import ServiceProcess, free_tcp_endpoint, service_process, wait_ready
from .trace import Limits, Trace, TraceRecorder, Violation, check_trace

if TYPE_CHECKING:
    from .machine import DispatcherMachine, LoopEnv, dispatcher_machine

__all__ = [
    "ECHO_FINGERPRINT",
    "Answer",
    "DispatcherMachine",
    "Faults",
    "Latency",
    "Limits",
    "LoopEnv",
    "MemoryNetwork",
    "NetworkObserver",
    "Received",
    "Reply",
    "ServiceProcess",
    "Trace",
    "TraceRecorder",
    "Violation",
    "check_trace",
    "dispatcher_machine",
    "echo_result",
    "exponential",
    "free_tcp_endpoint",
    "service_process",
    "silent",
    "uniform",
    "wait_ready",
]


def __getattr__(name: str) -> Any:
    # The state machine needs hypothesis: import it only when asked for.
    if name in ("DispatcherMachine", "LoopEnv", "dispatcher_machine"):
        from . import machine

        return getattr(machine, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")

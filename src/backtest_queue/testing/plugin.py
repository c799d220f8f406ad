"""The pytest plugin of the test kit (loaded through the ``pytest11`` entry point when
backtest-queue is installed; ``-p backtest_queue.testing.plugin`` loads it by hand).

Fixtures (each is overridden by a fixture of the same name in your ``conftest.py``):

``memory_network``
    a fresh :class:`~backtest_queue.testing.MemoryNetwork` with nothing bound.
``backtest_service``
    the real ``backtest-queue service`` on a free loopback port, one worker, started in
    its own process group: a :class:`~backtest_queue.testing.ServiceProcess` (its
    ``endpoint``; ``kill()``, ``stop()``, ``restart()`` for crash tests). Stopped, with
    its workers, at teardown. Needs the ``service`` extra.
``dispatcher``
    an open :class:`~backtest_queue.Dispatcher` on ``memory_network``, with an echo
    service bound to ``"memory://backtest"`` unless the test bound services itself
    (bind them in a fixture that ``dispatcher`` comes after, or override
    ``dispatcher_settings``). An async fixture: the test runs once on trio and once on
    asyncio (the plugin parametrizes ``anyio_backend`` unless your own fixture already
    is).
``dispatcher_settings``
    the keyword arguments ``dispatcher`` passes to ``open_dispatcher`` (default none);
    override it to change ``max_pending``, ``rate``...

Marker:

``@pytest.mark.virtual_time``
    run the (anyio) test on trio under ``MockClock(autojump_threshold=0)`` - sleeps,
    timeouts and the rate limit cost no real time - and on asyncio with the real clock
    (``@pytest.mark.virtual_time(asyncio=False)``: trio only).

Importing it needs pytest, anyio and trio, not hypothesis.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterator
from typing import Any

import pytest

from ..dispatcher import Dispatcher
from ..lifecycle import open_dispatcher
from .network import MemoryNetwork, echo_result
from .service import ServiceProcess

__all__ = [
    "MEMORY_ENDPOINT",
    "backtest_service",
    "dispatcher",
    "dispatcher_settings",
    "memory_network",
]

#: Where the ``dispatcher`` fixture binds its echo service when the test bound none.
MEMORY_ENDPOINT = "memory://backtest"

_MARKER = (
    "virtual_time(asyncio=True): run this anyio test on trio under "
    "MockClock(autojump_threshold=0) (and on asyncio with the real clock unless "
    "asyncio=False)"
)


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line("markers", _MARKER)


def _parametrized_by_mark(metafunc: pytest.Metafunc, name: str) -> bool:
    for mark in metafunc.definition.iter_markers("parametrize"):
        names = mark.args[0] if mark.args else mark.kwargs.get("argnames", "")
        if isinstance(names, str):
            names = [n.strip() for n in names.split(",")]
        if name in names:
            return True
    return False


@pytest.hookimpl(tryfirst=True)
def pytest_generate_tests(metafunc: pytest.Metafunc) -> None:
    """Parametrize ``anyio_backend`` for tests using our ``dispatcher`` or the marker."""
    if "anyio_backend" not in metafunc.fixturenames:
        return
    if _parametrized_by_mark(metafunc, "anyio_backend"):
        return  # the test chose its backends itself
    marker = metafunc.definition.get_closest_marker("virtual_time")
    defs = metafunc._arg2fixturedefs  # (as pytest-asyncio reads it too)
    ours = any(getattr(d.func, "__module__", None) == __name__
               for d in defs.get("dispatcher", ())[-1:])  # fmt: skip
    backend_defs = defs.get("anyio_backend", ())
    already = bool(backend_defs) and backend_defs[-1].params is not None
    if marker is None and (not ours or already):
        return
    values: list[Any] = []
    if marker is not None:
        from trio.testing import MockClock

        values.append(pytest.param(("trio", {"clock": MockClock(autojump_threshold=0)}), id="trio"))
        if marker.kwargs.get("asyncio", True):
            values.append(pytest.param("asyncio", id="asyncio"))
    else:
        values = [pytest.param("trio", id="trio"), pytest.param("asyncio", id="asyncio")]
    metafunc.definition.add_marker(pytest.mark.parametrize("anyio_backend", values))


@pytest.fixture
def memory_network() -> MemoryNetwork:
    """A fresh in-memory network with no service bound."""
    return MemoryNetwork()


@pytest.fixture
def backtest_service() -> Iterator[ServiceProcess]:
    """The real service on a free port; stopped with its workers at teardown."""
    service = ServiceProcess()
    service.start()
    try:
        yield service
    finally:
        service.stop()


@pytest.fixture
def dispatcher_settings() -> dict[str, Any]:
    """Keyword arguments for the ``dispatcher`` fixture's ``open_dispatcher`` call."""
    return {}


@pytest.fixture
async def dispatcher(
    memory_network: MemoryNetwork, dispatcher_settings: dict[str, Any], anyio_backend: Any
) -> AsyncIterator[Dispatcher]:
    """An open dispatcher on ``memory_network`` (an echo service if none is bound)."""
    if not memory_network.services:
        memory_network.bind(MEMORY_ENDPOINT, echo_result)
    settings = {"network": memory_network, **dispatcher_settings}
    endpoints = settings.pop("endpoints", list(memory_network.services))
    async with open_dispatcher(endpoints, **settings) as d:
        yield d

"""Fixtures for the backtest service tests (helpers live in ``service_helpers``).

* ``zmq_context`` / ``client_factory`` - blocking pyzmq DEALER clients, closed after a test.
* ``shared_service`` - one in-process service per anyio backend (trio, asyncio), run in a
  blocking portal's thread and shared by the tests, so a worker is spawned once.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import zmq
from anyio.from_thread import start_blocking_portal

from backtest_queue.service import open_service

from service_helpers import (
    SHARED_MAX_MESSAGE_BYTES,
    PortalService,
    RawClient,
    eurusd_lines,
    write_csv,
)


@pytest.fixture(scope="session")
def zmq_context() -> Iterator[zmq.Context[Any]]:
    context: zmq.Context[Any] = zmq.Context()
    yield context
    context.destroy(linger=0)


@pytest.fixture
def client_factory(zmq_context: zmq.Context[Any]) -> Iterator[Callable[..., RawClient]]:
    """Make RawClients that are closed after the test."""
    clients: list[RawClient] = []

    def make(endpoint: str, **options: Any) -> RawClient:
        client = RawClient(zmq_context, endpoint, **options)
        clients.append(client)
        return client

    yield make
    for client in clients:
        client.close()


# -- in-process service --------------------------------------------------------------


@pytest.fixture(scope="session")
def service_data_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A data directory with one good CSV (``EURUSD-small``, 300 real bars) and a bad one."""
    directory = tmp_path_factory.mktemp("data")
    lines = eurusd_lines()
    write_csv(
        directory, "EURUSD-small.csv", ["timestamp,open,high,low,close,volume", *lines[1:301]]
    )
    write_csv(directory, "broken.csv", ["timestamp,open,high,low", *lines[1:20]])
    return directory


@pytest.fixture(scope="session", params=["trio", "asyncio"])
def shared_service(
    request: pytest.FixtureRequest, service_data_dir: Path
) -> Iterator[PortalService]:
    """One in-process service per backend for the session (1 worker, 16 KiB cap)."""
    backend = str(request.param)
    with start_blocking_portal(backend=backend) as portal:
        manager = open_service(
            bind="tcp://127.0.0.1:*",
            workers=1,
            data_dir=service_data_dir,
            max_message_bytes=SHARED_MAX_MESSAGE_BYTES,
            reply_timeout=2.0,
            shutdown_grace=5.0,
        )
        with portal.wrap_async_context_manager(manager) as service:
            yield PortalService(portal, service, backend)

"""``tests/procs/late_service.py`` as a real child process, driven from async tests."""

from __future__ import annotations

import sys
from collections import Counter
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import anyio
import anyio.abc
from anyio.streams.buffered import BufferedByteReceiveStream

from backtest_queue import BacktestRequest, Dispatcher, Outcome, Strategy

from service_process import PROCS

READY_TIMEOUT = 30.0
STOP_TIMEOUT = 20.0


class LateService:
    """A stub service process: the first receipt of an id is answered ``first`` after
    ``first_delay`` seconds, a re-send ``again`` after ``again_delay`` (see the script).

    :meth:`start` and :meth:`stop` may be called again and again (a restart on the same
    endpoint); :meth:`stop` is SIGTERM: the stub answers what it holds with
    ``unavailable``, as a real service does when it stops, and exits.
    """

    def __init__(
        self, endpoint: str, first: str, first_delay: float, again: str, again_delay: float
    ) -> None:
        self.endpoint = endpoint
        self.args = [first, str(first_delay), again, str(again_delay)]
        self.process: anyio.abc.Process | None = None
        self._lines: BufferedByteReceiveStream | None = None
        self.starts = 0

    async def start(self) -> None:
        """Start the process and wait until it has bound its endpoint."""
        cmd = [sys.executable, str(PROCS / "late_service.py"), self.endpoint, *self.args]
        self.process = await anyio.open_process(cmd, stderr=None)
        assert self.process.stdout is not None
        self._lines = BufferedByteReceiveStream(self.process.stdout)
        self.starts += 1
        with anyio.fail_after(READY_TIMEOUT):
            await self.wait_line("ready")

    async def wait_line(self, text: str) -> None:
        """Wait for the next stdout line ``text`` (``handshake``: a requester connected)."""
        assert self._lines is not None
        while (await self._lines.receive_until(b"\n", 1024)).decode() != text:
            pass

    async def stop(self) -> None:
        """SIGTERM, then wait for the exit (kill after ``STOP_TIMEOUT``); never cancelled."""
        process, self.process = self.process, None
        if process is None:
            return
        with anyio.CancelScope(shield=True):
            if process.returncode is None:
                process.terminate()
            with anyio.move_on_after(STOP_TIMEOUT):
                await process.wait()
            if process.returncode is None:
                process.kill()
            await process.aclose()


@asynccontextmanager
async def late_service(
    endpoint: str, first: str, first_delay: float, again: str, again_delay: float
) -> AsyncIterator[LateService]:
    """A started :class:`LateService`, stopped at the end whatever happens."""
    service = LateService(endpoint, first, first_delay, again, again_delay)
    try:
        await service.start()
        yield service
    finally:
        await service.stop()


def make_request(i: int, prefix: str = "late") -> BacktestRequest:
    strategy = Strategy(name=f"s-{i}", kind="sma_cross", params={"fast": 5, "slow": 20 + i})
    return BacktestRequest(strategy=strategy, data_id="GOOG-D1", request_id=f"{prefix}-{i:03d}")


def exactly_one_result_each(ids: list[str], outcomes: list[Outcome]) -> None:
    """Assert one outcome per id, none for others, and every one a result."""
    counts = Counter(o.request_id for o in outcomes)
    assert sorted(counts) == sorted(ids), "an outcome for every request, none for others"
    assert max(counts.values()) == 1, "never two outcomes for one request"
    failed = [(o.request_id, o.reason, o.detail) for o in outcomes if not o.ok]
    assert failed == [], "a reply decided an attempt it did not answer"


async def wait_until_up(dispatcher: Dispatcher, endpoints: set[str]) -> None:
    """Wait until the dispatcher has seen a handshake with each of ``endpoints``
    (bound it with ``fail_after``)."""
    for endpoint in sorted(endpoints):
        await dispatcher.wait_connected(endpoint)

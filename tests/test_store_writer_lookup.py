"""A result handed to the store writer is a cache hit at once (found while testing issue 13).

``StoreWriter.cached_results`` read the database while results the dispatcher had just
delivered still waited in the writer's list for their commit: a ``submit`` right after
an outcome could miss the cache (``test_requests_left_at_close_are_resent_after_reopening``
failed now and then once the connect flush sent one request before the PONG).
"""

from __future__ import annotations

from pathlib import Path

import pytest

from backtest_queue import BacktestRequest, Strategy
from backtest_queue.protocol import Metrics
from backtest_queue.store import SqliteStore, StoreOp
from backtest_queue.store_writer import StoreWriter

pytestmark = pytest.mark.anyio


def request(rid: str) -> BacktestRequest:
    strategy = Strategy(name="s", kind="sma_cross", params={"fast": 5, "slow": 20})
    return BacktestRequest(strategy=strategy, data_id="EURUSD-H1", request_id=rid)


async def test_a_result_not_yet_committed_is_found_by_a_lookup(tmp_path: Path) -> None:
    writer = StoreWriter(SqliteStore(tmp_path / "q.db"))  # its run task is not started
    try:
        metrics = Metrics(strategy_name="s", sharpe=1.5, trades=3, bars=100)
        writer.write_nowait([StoreOp("result", request("a"), result=metrics, fingerprint="fp")])
        hits = await writer.cached_results([request("b")], {"EURUSD-H1": "fp"})
        assert hits == {"b": metrics}  # same content, another id: a hit
        assert await writer.cached_results([request("c")], {"EURUSD-H1": "other"}) == {}
    finally:
        writer.close()

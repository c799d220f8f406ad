"""``open_dispatcher(fingerprints=...)``: the store's cache answers before any service is
up, when the caller knows the data the services will hold (the demo's own service)."""

from __future__ import annotations

from pathlib import Path

import anyio
import pytest

from backtest_queue import BacktestRequest, Strategy, UsageError, open_dispatcher

from stubs import STUB_FINGERPRINT, echo, free_tcp_endpoint, stub_service

pytestmark = pytest.mark.anyio


def request(rid: str) -> BacktestRequest:
    strategy = Strategy(name="s", kind="sma_cross", params={"fast": 5, "slow": 20})
    return BacktestRequest(strategy=strategy, data_id="EURUSD-H1", request_id=rid)


async def test_known_fingerprints_answer_from_the_cache_with_no_service(tmp_path: Path) -> None:
    db = tmp_path / "q.db"
    endpoint = free_tcp_endpoint()
    async with stub_service(endpoint, echo), open_dispatcher([endpoint], store=db) as d:
        with anyio.fail_after(10):
            first = await d.wait((await d.submit(request("first"))).request_id)
        assert first.ok
        assert not first.cached  # a backtest ran: handed to the service once
        assert first.attempts == 1
    # No service now. Without fingerprints the same content waits in the queue ...
    async with open_dispatcher([endpoint], store=db) as d:
        state = await d.submit(request("unknown-data"))
        assert state.state == "queued"
        assert state.reason == "not_connected"
    # ... with them it is answered from the cache at once.
    known = {"EURUSD-H1": STUB_FINGERPRINT}
    async with open_dispatcher([endpoint], store=db, fingerprints=known) as d:
        state = await d.submit(request("known-data"))
        assert state.state == "cached"
        with anyio.fail_after(10):
            outcome = await d.wait("known-data")
        assert outcome.cached
        assert outcome.result == first.result
        # Other data (another fingerprint) is not served from the cache.
        other = BacktestRequest(strategy=request("x").strategy, data_id="GOOG-D1",
                                request_id="other-data")  # fmt: skip
        assert (await d.submit(other)).state == "queued"


async def test_fingerprints_must_map_ids_to_strings() -> None:
    with pytest.raises(UsageError, match="fingerprints must map data ids"):
        open_dispatcher(["tcp://127.0.0.1:1"], fingerprints={"EURUSD-H1": 7})  # type: ignore[dict-item]

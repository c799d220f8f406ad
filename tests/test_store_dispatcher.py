"""The dispatcher with a durable store: resent after reopening, cached, under a real kill -9.

The store alone is tested in test_store.py.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from collections import Counter
from pathlib import Path

import anyio
import pytest

from backtest_queue import BacktestRequest, Strategy, open_dispatcher
from backtest_queue.store import Restored, SqliteStore

from lifelines import tied
from stubs import echo, free_tcp_endpoint, stub_service

PROCS = Path(__file__).parent / "procs"


def make_request(i: int, *, rid: str | None = None, name: str | None = None) -> BacktestRequest:
    strategy = Strategy(name=name or f"s{i}", kind="sma_cross", params={"fast": 5, "slow": 20 + i})
    return BacktestRequest(strategy=strategy, data_id="EURUSD-H1", request_id=rid or f"req-{i}")


@pytest.mark.anyio
async def test_requests_left_at_close_are_resent_after_reopening(tmp_path: Path) -> None:
    db = tmp_path / "q.db"
    endpoint = free_tcp_endpoint()
    async with open_dispatcher([endpoint], store=db) as d:
        for i in range(5):
            await d.submit(make_request(i))
    with d.outcomes:
        assert Counter([o.reason async for o in d.outcomes]) == {"shutdown": 5}
    async with stub_service(endpoint, echo), open_dispatcher([endpoint], store=db) as d:
        assert d.restored_ids == {f"req-{i}" for i in range(5)}
        with anyio.fail_after(5):
            outcomes = [await d.outcomes.receive() for _ in range(5)]
            await d.wait_idle()
        assert sorted(o.request_id for o in outcomes) == [f"req-{i}" for i in range(5)]
        # The same content again: answered from the cache, not sent.
        state = await d.submit(make_request(3, rid="again"))
        assert state.state == "cached"
        cached = await d.wait("again")
        assert cached.ok
        assert cached.detail == "cached result"
        assert d.stats().queue.sent == 5
    with SqliteStore(db) as store:  # every outcome was read: nothing to send or deliver
        assert store.restore() == Restored(requests=[], outcomes=[], quarantined=[])


@pytest.mark.slow
def test_requester_killed_mid_run_resumes_from_its_store(tmp_path: Path) -> None:
    """kill -9 the requester mid-run; a restart with the same store finishes the work:
    every accepted request gets an outcome, none twice within a run."""
    endpoint = free_tcp_endpoint()
    db = str(tmp_path / "q.db")
    n = 120
    kwargs = tied({**os.environ, "PYTHONUNBUFFERED": "1"})  # children die with the test run
    with subprocess.Popen(
        [sys.executable, str(PROCS / "echo_service.py"), endpoint, "0.01"],
        stdout=subprocess.PIPE, text=True, **kwargs,
    ) as service:  # fmt: skip
        try:
            assert service.stdout is not None
            assert service.stdout.readline().strip() == "ready"
            cmd = [sys.executable, str(PROCS / "requester.py"), endpoint, db, str(n)]
            lines: list[list[str]] = []
            with subprocess.Popen(cmd, stdout=subprocess.PIPE, text=True, **kwargs) as first:
                assert first.stdout is not None
                for line in first.stdout:  # kill it once a few outcomes are in: mid-run
                    lines.append(line.split())
                    if sum(1 for w in lines if w[0] == "outcome") >= 10:
                        first.send_signal(signal.SIGKILL)
                        break
                first.wait(timeout=10)
            assert first.returncode == -signal.SIGKILL
            accepted = {w[1] for w in lines if w[0] == "accepted"}
            before = Counter(w[1] for w in lines if w[0] == "outcome")
            second = subprocess.run(cmd, capture_output=True, text=True, timeout=60, **kwargs)
            assert second.returncode == 0, second.stderr
            words = [line.split() for line in second.stdout.splitlines()]
            after = Counter(w[1] for w in words if w[0] == "outcome")
            accepted |= {w[1] for w in words if w[0] == "accepted"}
        finally:
            service.terminate()
    print(f"accepted={len(accepted)} outcomes before kill={sum(before.values())} "
          f"after restart={sum(after.values())}")  # fmt: skip
    assert accepted == {f"req-{i}" for i in range(n)}
    assert max(before.values()) == 1
    assert max(after.values()) == 1
    assert set(before) | set(after) == accepted  # nothing lost
    assert words[-1] == ["done"]
    # Whatever was answered before the kill is not backtested again after it: it is
    # answered from the result cache once its read was acknowledged in the store, or,
    # if the kill came before that ack committed, its stored outcome is delivered again.
    restored = set(words[0][1:])
    cached = {w[1] for w in words if w[0] == "accepted" and w[2] == "cached"}
    assert words[0][0] == "restored"
    assert set(before) <= cached | restored
    assert not (cached & restored)


@pytest.mark.anyio
async def test_submit_many_commits_a_batch_in_one_transaction(tmp_path: Path) -> None:
    db = tmp_path / "q.db"
    endpoint = free_tcp_endpoint()
    async with stub_service(endpoint, echo), open_dispatcher([endpoint], store=db) as d:
        states = await d.submit_many([make_request(i) for i in range(50)])
        assert len(states) == 50
        assert d._writer is not None
        assert d._writer.commits == 1  # fifty requests, one commit
        with anyio.fail_after(5):
            outcomes = [await d.outcomes.receive() for _ in range(50)]
            await d.wait_idle()
        assert all(o.ok for o in outcomes)
        again = await d.submit_many([make_request(i, rid=f"again-{i}") for i in range(3)])
        assert [s.state for s in again] == ["cached"] * 3
        with anyio.fail_after(5):
            assert [(await d.outcomes.receive()).detail for _ in range(3)] == ["cached result"] * 3

"""Where a retry goes (found by the multi-host tests, issue 13).

A request whose reply did not come by its deadline is put back and handed over again.
With several connections up, the attempt after a timeout should go to another one: the
connection that stayed silent may be a half-open peer the heartbeat has not caught yet
(``result_timeout`` shorter than ``3 * heartbeat_ivl``) or a service whose event loop is
stuck while libzmq still answers heartbeats. The core used to route every hand-over to
the least-loaded connection, and the silent one, whose requests just expired, is exactly
that: retries went back to it until ``max_attempts`` and failed with ``timeout``.
"""

from __future__ import annotations

from dataclasses import dataclass

from backtest_queue import BacktestQueue


@dataclass(frozen=True)
class Req:
    request_id: str


def test_a_retry_after_a_timeout_goes_to_another_connection() -> None:
    q: BacktestQueue[Req] = BacktestQueue(max_pending=None, result_timeout=3.0, max_attempts=3)
    q.on_connected(0.0, "silent")
    q.on_connected(0.0, "busy")
    ids = ["r0", "r1", "r2", "r3"]
    for rid in ids:
        q.enqueue(Req(rid))
    assert [r.request_id for r in q.flush(0.0)] == ids
    on_silent = [r for r in ids if q.connection_of(r) == "silent"]
    on_busy = [r for r in ids if q.connection_of(r) == "busy"]
    assert len(on_silent) == len(on_busy) == 2  # least-loaded routing: two each
    for rid in on_busy:
        q.on_result(rid, 1.0, connection="busy")
    # "busy" answers both and takes two more at t=1 (silent holds two: busy is the
    # least loaded); "silent" never answers: its two expire at t=3 and go out again.
    q.enqueue(Req("r4"))
    q.enqueue(Req("r5"))
    assert [r.request_id for r in q.flush(1.0)] == ["r4", "r5"]
    assert q.connection_of("r4") == q.connection_of("r5") == "busy"
    assert q.expire(3.0) == []
    retried = [r.request_id for r in q.flush(3.0)]
    assert sorted(retried) == sorted(on_silent)
    assert {r: q.connection_of(r) for r in retried} == dict.fromkeys(retried, "busy")

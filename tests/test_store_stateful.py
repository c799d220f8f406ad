"""The store against a model: any sequence of batches, reopened at any point, restores
exactly what the model says (to send, to deliver again) and its cache never lies."""

from __future__ import annotations

import shutil
import tempfile
from pathlib import Path

from hypothesis import settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, invariant, rule

from backtest_queue import BacktestRequest, Metrics, Strategy
from backtest_queue.store import SqliteStore, StoredOutcome, StoreOp, content_key

IDS = [f"req-{i}" for i in range(5)]
FINGERPRINTS = ["f1", "f2"]


def make_request(rid: str, variant: int) -> BacktestRequest:
    strategy = Strategy(name=f"v{variant}", kind="sma_cross", params={"slow": variant})
    return BacktestRequest(strategy=strategy, data_id="EURUSD-H1", request_id=rid)


requests = st.builds(make_request, st.sampled_from(IDS), st.integers(0, 2))
outcomes = st.builds(
    StoredOutcome,
    result=st.one_of(st.none(), st.builds(Metrics, strategy_name=st.just("s"),
                                          trades=st.integers(0, 9))),
    reason=st.sampled_from([None, "timeout", "disconnected", "service_error"]),
    detail=st.text(max_size=10),
    attempts=st.integers(0, 5),
)  # fmt: skip
ops = st.one_of(
    st.builds(StoreOp, st.just("add"), requests),
    st.builds(StoreOp, st.just("ack"), requests),
    st.builds(lambda r, o: StoreOp("outcome", r, outcome=o), requests, outcomes),
    st.builds(
        lambda r, fp, trades: StoreOp(
            "result", r, result=Metrics(strategy_name="s", trades=trades), fingerprint=fp
        ),
        requests,
        st.sampled_from([None, *FINGERPRINTS]),
        st.integers(0, 9),
    ),
)


class StoreMachine(RuleBasedStateMachine):
    def __init__(self) -> None:
        super().__init__()
        self.dir = tempfile.mkdtemp()
        self.path = Path(self.dir) / "q.db"
        self.store = SqliteStore(self.path)
        #: request id -> [request, outcome or None], in submit order
        self.rows: dict[str, list[object]] = {}
        self.cache: dict[tuple[str, str], Metrics] = {}

    def teardown(self) -> None:
        self.store.close()
        shutil.rmtree(self.dir, ignore_errors=True)

    @rule(batch=st.lists(ops, max_size=8))
    def apply(self, batch: list[StoreOp]) -> None:
        written = self.store.apply(batch)
        assert written == sum(1 for op in batch if op.kind != "result" or op.fingerprint)
        for op in batch:
            rid = op.request.request_id
            if op.kind == "add":
                self.rows.setdefault(rid, [op.request, None])
            elif op.kind == "ack":
                self.rows.pop(rid, None)
            elif op.kind == "outcome" and rid in self.rows:
                self.rows[rid][1] = op.outcome
            elif op.kind == "result" and op.fingerprint is not None:
                assert op.result is not None
                self.cache[(content_key(op.request), op.fingerprint)] = op.result

    @rule()
    def reopen(self) -> None:
        self.store.close()
        self.store = SqliteStore(self.path)
        restored = self.store.restore()
        assert restored.quarantined == []
        assert restored.requests == [r for r, o in self.rows.values() if o is None]
        assert restored.outcomes == [(r, o) for r, o in self.rows.values() if o is not None]

    @invariant()
    def the_cache_answers_only_for_the_same_data(self) -> None:
        every = [make_request(f"lookup-{v}", v) for v in range(3)]  # every content there is
        for fp in FINGERPRINTS:
            expected = {}
            for r in every:
                hit = self.cache.get((content_key(r), fp))
                if hit is not None:
                    expected[r.request_id] = hit
            got = self.store.cached_results(every, {"EURUSD-H1": fp})
            assert got == expected


StoreMachine.TestCase.settings = settings(max_examples=40, stateful_step_count=15, deadline=None)
test_store_against_its_model = StoreMachine.TestCase

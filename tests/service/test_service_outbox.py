"""The sans-IO outbox: plain numbers for time, no sockets."""

from __future__ import annotations

import math

from hypothesis import given
from hypothesis import strategies as st

from backtest_queue.service.outbox import Dropped, Outbox

A, B = b"\x00a", b"\x00b"


def test_replies_leave_in_order_per_requester() -> None:
    outbox = Outbox(reply_timeout=5.0)
    for body in (b"1", b"2"):
        assert outbox.put(A, body, now=0.0)
    outbox.put(B, b"x", now=0.0)
    assert outbox.due(0.0) == [A, B]
    assert outbox.head(A) == b"1"
    outbox.sent(A)
    assert outbox.head(A) == b"2"
    outbox.sent(A)
    assert outbox.head(A) is None
    assert len(outbox) == 1
    assert repr(outbox) == "<Outbox held=1 peers=1 blocked=0>"


def test_a_blocked_requester_backs_off_and_does_not_hold_up_others() -> None:
    outbox = Outbox(reply_timeout=5.0, retry_first=0.01, retry_max=0.04)
    outbox.put(A, b"1", now=0.0)
    outbox.put(B, b"x", now=0.0)
    assert outbox.blocked(A, gone=False, now=0.0) is True  # a new episode: log once
    assert outbox.due(0.0) == [B]
    assert outbox.next_deadline_at() == 0.0  # B is due now
    outbox.sent(B)
    assert outbox.next_deadline_at() == 0.01
    delays = []
    now = 0.01
    for _ in range(4):
        assert outbox.due(now) == [A]
        assert outbox.blocked(A, gone=False, now=now) is False
        delays.append(round(outbox.next_deadline_at() - now, 6))
        now = outbox.next_deadline_at()
    assert delays == [0.02, 0.04, 0.04, 0.04]
    outbox.sent(A)
    assert outbox.next_deadline_at() == math.inf


def test_replies_expire_after_the_timeout_with_the_reason() -> None:
    outbox = Outbox(reply_timeout=1.0)
    outbox.put(A, b"1", now=0.0)
    outbox.put(A, b"2", now=0.5)
    outbox.blocked(A, gone=True, now=0.0)
    assert outbox.expire(0.99) == []
    assert outbox.expire(1.0) == [Dropped(A, 1, "gone")]
    assert outbox.head(A) == b"2"
    assert outbox.next_deadline_at() <= 1.5
    assert outbox.expire(1.5) == [Dropped(A, 1, "gone")]
    assert len(outbox) == 0
    assert outbox.due(2.0) == []


def test_replies_left_after_a_successful_send_expire_as_the_service_behind() -> None:
    # The requester took the head reply (it is connected, its pipe has room): the ones
    # after it that expire before their own try waited on the service, not on it.
    outbox = Outbox(reply_timeout=1.0)
    for body in (b"1", b"2", b"3"):
        outbox.put(A, body, now=0.0)
    outbox.blocked(A, gone=False, now=0.0)
    outbox.sent(A)
    dropped = outbox.expire(1.0)
    assert dropped == [Dropped(A, 2, "behind")]
    assert dropped[0].describe().startswith("the service fell behind")
    assert "full" not in dropped[0].describe()
    assert "could not be reached" not in dropped[0].describe()


def test_every_reason_is_described() -> None:
    described = {
        reason: Dropped(A, 1, reason).describe()
        for reason in ("full", "gone", "behind", "new", "overflow")
    }
    assert described["full"].startswith("its pipe stayed full")
    assert described["gone"] == "it is not connected"
    assert len(set(described.values())) == len(described)  # each says something else


def test_max_held_refuses_more() -> None:
    outbox = Outbox(reply_timeout=1.0, max_held=2)
    assert outbox.put(A, b"1", now=0.0)
    assert outbox.put(B, b"2", now=0.0)
    assert not outbox.put(A, b"3", now=0.0)
    outbox.failed(A)
    assert outbox.put(A, b"3", now=0.0)
    assert sorted(d.count for d in outbox.drop_all()) == [1, 1]
    assert len(outbox) == 0


@given(
    st.lists(
        st.tuples(
            st.sampled_from(["put", "send", "block", "gone", "expire"]),
            st.sampled_from([A, B, b"c"]),
            st.floats(0.0, 0.5),
        ),
        max_size=60,
    )
)
def test_every_reply_is_sent_or_dropped_exactly_once(ops: list[tuple[str, bytes, float]]) -> None:
    outbox = Outbox(reply_timeout=1.0, max_held=20)
    now = 0.0
    put = sent = dropped = 0
    for op, peer, step in ops:
        now += step
        if op == "put":
            if outbox.put(peer, b"r", now=now):
                put += 1
            else:
                assert len(outbox) == outbox.max_held
        elif op == "expire":
            dropped += sum(d.count for d in outbox.expire(now))
        elif peer in outbox.due(now):
            if op == "send":
                outbox.sent(peer)
                sent += 1
            else:
                outbox.blocked(peer, gone=op == "gone", now=now)
        assert len(outbox) == put - sent - dropped
    dropped += sum(d.count for d in outbox.drop_all())
    assert put == sent + dropped


def test_drop_gone_keeps_replies_to_slow_readers() -> None:
    outbox = Outbox(reply_timeout=5.0)
    outbox.put(A, b"1", now=0.0)
    outbox.put(A, b"2", now=0.0)
    outbox.put(B, b"x", now=0.0)
    outbox.blocked(A, gone=True, now=0.0)
    outbox.blocked(B, gone=False, now=0.0)
    assert outbox.drop_gone() == [Dropped(A, 2, "gone")]
    assert len(outbox) == 1
    assert outbox.head(B) == b"x"

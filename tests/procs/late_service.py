"""A stub backtest service process whose replies come late, or not at all.

Usage: python late_service.py ENDPOINT FIRST FIRST_DELAY AGAIN AGAIN_DELAY

Real process, real ROUTER socket, real wire protocol, no backtest work. The first time
it receives a request_id it answers FIRST after FIRST_DELAY seconds; each later time (a
re-send to this same process) AGAIN after AGAIN_DELAY seconds. A reply is ``result``,
``unavailable``, ``engine_error`` or ``none`` (stay silent). Replies are scheduled, not
slept on: many requests are held at once, each answered at its own time.

It prints ``ready`` once bound and ``handshake`` each time a requester completes a ZMTP
handshake (from a socket monitor), so a test can wait for those lines instead of
sleeping. On SIGTERM it does what a real service does when it stops: it answers every
request it still holds with ``unavailable`` ("not run"), then exits.
"""

from __future__ import annotations

import heapq
import signal
import sys
import time

import zmq
from zmq.utils.monitor import parse_monitor_message

from backtest_queue.protocol import (
    BacktestRequest,
    BacktestResult,
    ErrorReply,
    Metrics,
    Ping,
    Pong,
    decode_message,
    encode_message,
)

stopping = False


def reply_body(kind: str, request: BacktestRequest) -> bytes | None:
    rid = request.request_id
    if kind == "result":
        metrics = Metrics(strategy_name=request.strategy.name, sharpe=1.0, trades=1)
        return encode_message(BacktestResult(request_id=rid, result=metrics))
    if kind in ("unavailable", "engine_error"):
        return encode_message(ErrorReply(request_id=rid, code=kind, message=f"stub: {kind}"))
    assert kind == "none", kind
    return None


def main() -> None:
    global stopping
    endpoint, first, first_delay, again, again_delay = sys.argv[1:6]
    delays = {True: float(first_delay), False: float(again_delay)}
    kinds = {True: first, False: again}

    def stop(*_: object) -> None:
        global stopping
        stopping = True

    signal.signal(signal.SIGTERM, stop)
    ctx = zmq.Context()
    router = ctx.socket(zmq.ROUTER)
    router.linger = 1000  # the unavailable replies at stop go out before the socket closes
    monitor = router.get_monitor_socket(zmq.EVENT_HANDSHAKE_SUCCEEDED)
    router.bind(endpoint)
    print("ready", flush=True)
    seen: set[str] = set()
    # (due_at, seq, identity, request, kind): replies not sent yet.
    held: list[tuple[float, int, bytes, BacktestRequest, str]] = []
    seq = 0
    poller = zmq.Poller()
    poller.register(router, zmq.POLLIN)
    poller.register(monitor, zmq.POLLIN)
    while not stopping:
        wait_ms = 200 if not held else max(0, int((held[0][0] - time.monotonic()) * 1000))
        try:
            events = dict(poller.poll(min(wait_ms, 200)))
        except zmq.ZMQError:  # EINTR from the signal
            continue
        if monitor in events:
            parse_monitor_message(monitor.recv_multipart())
            print("handshake", flush=True)
        if router in events:
            identity, _, body = router.recv_multipart()
            message = decode_message(body)
            if isinstance(message, Ping):
                router.send_multipart([identity, b"", encode_message(Pong(workers=1))])
            else:
                assert isinstance(message, BacktestRequest)
                fresh = message.request_id not in seen
                seen.add(message.request_id)
                seq += 1
                due = time.monotonic() + delays[fresh]
                heapq.heappush(held, (due, seq, identity, message, kinds[fresh]))
        while held and held[0][0] <= time.monotonic():
            _, _, identity, request, kind = heapq.heappop(held)
            body = reply_body(kind, request)
            if body is not None:
                router.send_multipart([identity, b"", body])
    for _, _, identity, request, _kind in held:  # stopping: "not run"
        body = reply_body("unavailable", request)
        assert body is not None
        router.send_multipart([identity, b"", body])
    monitor.close(0)
    router.close()
    ctx.term()


if __name__ == "__main__":
    main()

"""A stub backtest service process: answers every BACKTEST with a fake result.

Usage: python echo_service.py ENDPOINT [DELAY_SECONDS]

Real process, real ROUTER socket, real wire protocol, no backtest work: answers PING
with PONG and each BACKTEST, after DELAY_SECONDS, with a fake result. Prints "ready" once
bound. Stops on SIGTERM/SIGINT.
"""

from __future__ import annotations

import signal
import sys
import time

import zmq

from backtest_queue.lifeline import watch_parent_from_environment
from backtest_queue.protocol import (
    BacktestRequest,
    BacktestResult,
    Metrics,
    Ping,
    Pong,
    decode_message,
    encode_message,
)


def main() -> None:
    endpoint = sys.argv[1]
    delay = float(sys.argv[2]) if len(sys.argv) > 2 else 0.0
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))
    ctx = zmq.Context()
    router = ctx.socket(zmq.ROUTER)
    router.linger = 0
    router.bind(endpoint)
    print("ready", flush=True)
    try:
        while True:
            identity, _, body = router.recv_multipart()
            message = decode_message(body)
            if isinstance(message, Ping):
                pong = Pong(
                    request_id=message.request_id, workers=1, fingerprints={"EURUSD-H1": "echo"}
                )
                router.send_multipart([identity, b"", encode_message(pong)])
                continue
            assert isinstance(message, BacktestRequest)
            if delay:
                time.sleep(delay)
            metrics = Metrics(strategy_name=message.strategy.name, sharpe=1.0, trades=1)
            reply = BacktestResult(
                request_id=message.request_id, result=metrics, data_fingerprint="echo"
            )
            router.send_multipart([identity, b"", encode_message(reply)])
    except KeyboardInterrupt:
        pass
    finally:
        router.close(0)
        ctx.term()


if __name__ == "__main__":
    watch_parent_from_environment()  # stop when the test that started us is gone
    main()

"""A hostile stub backtest service process: answers each request with a script of replies.

Usage: python hostile_service.py ENDPOINT CONTROL_ENDPOINT

A real process with a real ROUTER socket bound on ENDPOINT. The test pushes scripts to
a PULL socket bound on CONTROL_ENDPOINT, one JSON object each:
``{"request_id": "...", "replies": [["<hex frame>", ...], ...]}``. Every time the
request with that id arrives (each attempt), the stub sends each reply's frames after
the requester's routing id, in order, with ``@RID@`` replaced by the request id: nested,
mutated, mis-framed garbage, then maybe a valid result or error. A request that arrives
before its script waits for it. PING is answered with PONG. Prints "ready" once bound;
stops on SIGTERM.
"""

from __future__ import annotations

import json
import signal
import sys

import zmq

from backtest_queue.protocol import BacktestRequest, Ping, Pong, decode_message, encode_message


def main() -> None:
    endpoint, control_endpoint = sys.argv[1], sys.argv[2]
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))
    ctx = zmq.Context()
    router = ctx.socket(zmq.ROUTER)
    router.linger = 0
    router.bind(endpoint)
    control = ctx.socket(zmq.PULL)
    control.linger = 0
    control.bind(control_endpoint)
    scripts: dict[str, list[list[bytes]]] = {}
    waiting: dict[str, list[bytes]] = {}  # request id -> routing ids of unanswered attempts
    poller = zmq.Poller()
    poller.register(router, zmq.POLLIN)
    poller.register(control, zmq.POLLIN)
    print("ready", flush=True)

    def answer(identity: bytes, request_id: str) -> None:
        rid = request_id.encode()
        for frames in scripts[request_id]:
            router.send_multipart([identity, *(f.replace(b"@RID@", rid) for f in frames)])

    try:
        while True:
            events = dict(poller.poll())
            if control in events:
                script = json.loads(control.recv())
                rid = script["request_id"]
                scripts[rid] = [[bytes.fromhex(f) for f in reply] for reply in script["replies"]]
                for identity in waiting.pop(rid, []):
                    answer(identity, rid)
            if router in events:
                identity, _, body = router.recv_multipart()
                message = decode_message(body)  # the requester under test sends valid ones
                if isinstance(message, Ping):
                    pong = Pong(request_id=message.request_id, workers=1)
                    router.send_multipart([identity, b"", encode_message(pong)])
                    continue
                assert isinstance(message, BacktestRequest)
                if message.request_id in scripts:
                    answer(identity, message.request_id)
                else:
                    waiting.setdefault(message.request_id, []).append(identity)
    except KeyboardInterrupt:
        pass
    finally:
        router.close(0)
        control.close(0)
        ctx.term()


if __name__ == "__main__":
    main()

"""A long dispatcher run to attach a profiler to (the harness's row 4 loop, longer).

``python -m benchmarks.profile_target --backend trio --messages 100000 [--mode bulk]``

Starts the echo service in a child process, then runs the chosen dispatcher loop in
this process and prints the rate. Profile only this process, e.g.::

    py-spy record --format speedscope -o /tmp/trio.json -- \\
        python -m benchmarks.profile_target --backend trio
    pyinstrument -m benchmarks.profile_target --backend asyncio
"""

from __future__ import annotations

import argparse
from collections.abc import Sequence

from .payloads import ResultTemplate, make_requests, request_bodies
from .services import EchoService
from .throughput import NOWAIT_VARIANTS, VARIANTS, Target

__all__ = ["main"]


def main(argv: Sequence[str] | None = None) -> None:
    """Run one variant once and print its rate."""
    parser = argparse.ArgumentParser(prog="python -m benchmarks.profile_target")
    parser.add_argument("--backend", choices=("trio", "asyncio"), default="trio")
    parser.add_argument(
        "--mode",
        choices=("window", "bulk", "hwm", "nowait", "naive", "zmq_asyncio", "raw"),
        default="window",
        help="window, bulk, hwm, nowait: the dispatcher (rows 4, 4b, 4c, 4d); naive: "
        "zmq-anyio (row 3); zmq_asyncio, raw: the baselines (rows 2, 1; no --backend)",
    )
    parser.add_argument("--messages", type=int, default=100_000)
    parser.add_argument("--window", type=int, default=128)
    args = parser.parse_args(argv)
    key = {
        "window": f"dispatcher_{args.backend}",
        "bulk": f"dispatcher_bulk_{args.backend}",
        "hwm": f"dispatcher_bulk_hwm_{args.backend}",
        "nowait": f"dispatcher_nowait_{args.backend}",
        "naive": f"zmq_anyio_{args.backend}",
        "zmq_asyncio": "zmq_asyncio",
        "raw": "raw_pyzmq",
    }[args.mode]
    variant = next(v for v in VARIANTS + NOWAIT_VARIANTS if v.key == key)
    requests = make_requests(args.messages + 1)
    bodies = request_bodies(requests[:-1])
    template = ResultTemplate()
    replies = [template.reply_to(b) for b in bodies]
    with EchoService() as service:
        target = Target(service.endpoint, requests, bodies, replies, args.window, None)
        timing = variant.run(target)
    print(
        f"{variant.label}: {timing.rate:,.0f} msg/s, {timing.cpu_s / timing.messages * 1e6:.1f}"
        f" us CPU/msg over {timing.messages:,} messages"
    )


if __name__ == "__main__":
    main()

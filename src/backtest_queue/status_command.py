"""``backtest-queue status ENDPOINT``: is the service there, and what does it have?

One PING (:func:`~backtest_queue.status.ping_service`); prints the service's version,
protocol, workers, credit, backtests running and queued, uptime and datasets (bars, range,
fingerprint), for people or, with ``--json``, for scripts. Fields an older service does
not report are shown as ``?`` (``null`` in JSON).

Exit status: 0 the service answered; 1 no answer within ``--timeout`` seconds; 2 bad
usage (a malformed endpoint, unreadable key files); 3 the service refused the handshake
(CURVE keys that do not fit). Whatever the failure, one line on stderr says why.
"""

from __future__ import annotations

import argparse
import json
import sys
from functools import partial
from typing import Any

from .cli_types import endpoint
from .curve_options import add_curve_arguments, curve_from_args
from .errors import HandshakeRefused, NoAnswer, TransportError, UsageError
from .protocol import Pong

__all__ = ["add_arguments", "describe", "run", "status_document"]

EXIT_NO_ANSWER = 1
EXIT_USAGE = 2
EXIT_REFUSED = 3


def _timeout(text: str) -> float:
    value = float(text)
    if not 0.0 < value < float("inf"):
        raise argparse.ArgumentTypeError(f"must be a number of seconds > 0, got {text}")
    return value


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Add the options of ``status``."""
    parser.add_argument(
        "endpoint", metavar="ENDPOINT", type=endpoint, help="e.g. tcp://127.0.0.1:5580"
    )
    parser.add_argument(
        "--timeout",
        type=_timeout,
        default=5.0,
        metavar="SECONDS",
        help="how long to wait for the answer, connecting included (default: %(default)s)",
    )
    parser.add_argument("--json", action="store_true", help="print one JSON object (for scripts)")
    add_curve_arguments(parser)


def status_document(endpoint: str, pong: Pong) -> dict[str, Any]:
    """The PONG as a JSON-ready dict (what ``--json`` prints)."""
    datasets = []
    for data_id in pong.datasets:
        span = pong.ranges.get(data_id)
        datasets.append({
            "data_id": data_id,
            "bars": None if span is None else span.bars,
            "first": None if span is None else span.first,
            "last": None if span is None else span.last,
            "fingerprint": pong.fingerprints.get(data_id),
        })  # fmt: skip
    return {
        "endpoint": endpoint,
        "ok": True,
        "version": pong.version,
        "protocol": pong.v,
        "workers": pong.workers,
        "credit": pong.credit,
        "running": pong.running,
        "queued": pong.queued,
        "uptime_s": pong.uptime_s,
        "datasets": datasets,
    }


def _uptime(seconds: float | None) -> str:
    if seconds is None:
        return "?"
    whole = int(seconds)
    days, rest = divmod(whole, 86400)
    hours, rest = divmod(rest, 3600)
    minutes, secs = divmod(rest, 60)
    if days:
        return f"{days}d {hours}h {minutes:02d}m"
    if hours:
        return f"{hours}h {minutes:02d}m"
    return f"{minutes}m {secs:02d}s" if minutes else f"{seconds:.1f} s"


def describe(endpoint: str, pong: Pong) -> str:
    """The PONG for people: a few lines, one per dataset."""

    def shown(value: object) -> str:
        return "?" if value is None else str(value)

    lines = [
        f"{endpoint}: backtest service {pong.version or '?'}, protocol v{pong.v}, "
        f"up {_uptime(pong.uptime_s)}",
        f"workers {pong.workers}, credit {shown(pong.credit)}; backtests running "
        f"{shown(pong.running)}, "
        f"queued {shown(pong.queued)}",
        f"datasets ({len(pong.datasets)}):",
    ]
    width = max((len(d) for d in pong.datasets), default=0)
    for data_id in pong.datasets:
        span = pong.ranges.get(data_id)
        where = "? bars" if span is None else f"{span.bars} bars  {span.first} .. {span.last}"
        fingerprint = pong.fingerprints.get(data_id, "?")
        lines.append(f"  {data_id:<{width}}  {where}  fingerprint {fingerprint}")
    return "\n".join(lines)


def run(args: argparse.Namespace) -> int:
    """Run ``status``; returns the exit status (see the module docstring)."""
    import anyio

    from .status import ping_service

    def fail(status: int, why: str) -> int:
        if args.json:
            print(json.dumps({"endpoint": args.endpoint, "ok": False, "error": why}))
        print(f"backtest-queue status: {why}", file=sys.stderr)
        return status

    try:
        curve = curve_from_args(args)
        pong = anyio.run(
            partial(ping_service, args.endpoint, timeout=args.timeout, curve=curve),
            backend="trio",
        )
    except UsageError as exc:
        return fail(EXIT_USAGE, str(exc))
    except HandshakeRefused as exc:
        return fail(EXIT_REFUSED, str(exc))
    except NoAnswer as exc:
        return fail(EXIT_NO_ANSWER, str(exc))
    except TransportError as exc:  # a malformed endpoint
        return fail(EXIT_USAGE, f"{exc} (an endpoint looks like tcp://HOST:PORT)")
    if args.json:
        print(json.dumps(status_document(args.endpoint, pong)))
    else:
        print(describe(args.endpoint, pong))
    return 0

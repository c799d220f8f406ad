"""``backtest-queue evolve``: the demo's search against backtest services you run.

Start one or more services (``backtest-queue service --bind ENDPOINT``), then point
``evolve`` at them with ``--connect`` (repeat it for several). It first asks them
(PING) which datasets they have - ``--dataset`` must be one of them, and no local copy
of the data is needed - and waits for one to answer, so the order you start things in
does not matter. A service with ``--curve-secret`` needs the CURVE options; keys that do
not fit end the run with an error at once.
"""

from __future__ import annotations

import argparse
from functools import partial

from ..cli_types import endpoint, number
from ..curve_options import add_curve_arguments
from .command_common import add_search_arguments, positive_int, run_command, search_and_report

__all__ = ["add_arguments", "run"]


_positive_float = number(0.0, exclusive=True)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Add the options of ``evolve``."""
    parser.add_argument(
        "--connect",
        action="append",
        type=endpoint,
        required=True,
        metavar="ENDPOINT",
        help="a backtest service's endpoint, e.g. tcp://127.0.0.1:5580 "
        "(repeat for several services)",
    )
    add_search_arguments(parser, generations=12, population=24)
    parser.add_argument(
        "--max-pending",
        type=positive_int,
        default=16,
        metavar="N",
        help="most requests in flight at once (default: %(default)s)",
    )
    parser.add_argument(
        "--rate",
        type=_positive_float,
        default=None,
        metavar="PER_SECOND",
        help="most requests handed to services per second (default: no limit)",
    )
    parser.add_argument(
        "--result-timeout",
        type=_positive_float,
        default=60.0,
        metavar="SECONDS",
        help="seconds to wait for a result before retrying (default: %(default)s)",
    )
    parser.add_argument(
        "--flush-interval",
        type=_positive_float,
        default=0.5,
        metavar="SECONDS",
        help="seconds between periodic flushes (default: %(default)s)",
    )
    add_curve_arguments(parser)


def run(args: argparse.Namespace) -> int:
    """Run ``evolve``; returns the exit status."""
    return run_command(args, partial(_main, args))


async def _main(args: argparse.Namespace) -> int:
    from ..curve_options import curve_from_args
    from .dataset_source import dataset_from_service, resolve_data_arguments

    resolve_data_arguments(args)
    curve = curve_from_args(args)
    # The services say what they have: no local copy of the data is needed.
    data = await dataset_from_service(args.dataset, args.connect, fraction=args.in_sample,
                                      data_dir=args.data_dir, curve=curve)  # fmt: skip
    options = {
        "flush_interval": args.flush_interval,
        "max_pending": args.max_pending,
        "rate": args.rate,
        "result_timeout": args.result_timeout,
        "max_attempts": 2,
        "store": args.store,
        "store_shared": args.store_shared,
        "cache": args.cache,
        "curve": curve,
    }
    return await search_and_report(args, args.connect, options, data=data)

"""``backtest-queue demo``: a strategy search end to end, on this machine, in one command.

It starts evolving at once with no service running, so the first generation queues;
a couple of seconds later it starts a real backtest service as a child process on a
free loopback port; the dispatcher logs the connect and the flush right after it
(``flushed N queued requests X ms after connect``). When the search is done the service
is stopped (``SIGTERM``, then ``SIGKILL``), also on Ctrl-C or an error.

With ``--store``, results the store's cache holds are not run again, and when it holds
every one the service is never started.

Needs no arguments, no configuration and no network. With ``--connect`` it uses a
service you already run instead of starting one.
"""

from __future__ import annotations

import argparse
import logging
from functools import partial
from pathlib import Path
from typing import TYPE_CHECKING

from ..cli_types import endpoint
from ..curve_options import add_curve_arguments
from ..errors import UsageError
from .command_common import (
    add_search_arguments,
    non_negative_float,
    positive_int,
    run_command,
    search_and_report,
)

if TYPE_CHECKING:
    import anyio

__all__ = ["add_arguments", "run"]

log = logging.getLogger("backtest_queue.evolution")


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Add the demo's options (all optional)."""
    add_search_arguments(parser, generations=12, population=24)
    parser.add_argument(
        "--connect",
        default=None,
        type=endpoint,
        metavar="ENDPOINT",
        help="use the service already running at ENDPOINT instead of starting one",
    )
    parser.add_argument(
        "--workers",
        type=positive_int,
        default=2,
        metavar="N",
        help="the started service's worker processes (default: %(default)s)",
    )
    add_curve_arguments(parser)
    parser.add_argument(
        "--service-delay",
        type=non_negative_float,
        default=2.0,
        metavar="SECONDS",
        help="start the service this long after the first requests were "
        "submitted, to show them queueing (default: %(default)s)",
    )


def run(args: argparse.Namespace) -> int:
    """Run the demo; returns the exit status."""
    return run_command(args, partial(_main, args))


async def _main(args: argparse.Namespace) -> int:
    from ..curve_options import curve_from_args
    from .dataset_source import dataset_from_service, local_dataset, resolve_data_arguments
    from .service_process import free_tcp_endpoint

    resolve_data_arguments(args)
    curve = curve_from_args(args)
    if args.connect is None:
        if curve is not None:
            raise UsageError("--curve-keys/--curve-secret/--curve-server-key need --connect "
                             "ENDPOINT: the demo's own service runs without CURVE")  # fmt: skip
        # The service the demo starts reads the same files: the bars are known here.
        data = local_dataset(args.dataset, args.data_dir, fraction=args.in_sample)
    else:
        data = await dataset_from_service(args.dataset, [args.connect], fraction=args.in_sample,
                                          data_dir=args.data_dir, curve=curve)  # fmt: skip
    endpoint = args.connect or free_tcp_endpoint()
    # Requests wait in the send queue until the service is up; its results come back
    # well within a minute even when the service is still warming up its workers.
    options = {
        "flush_interval": 0.5,
        "max_pending": max(4, 4 * args.workers),
        "result_timeout": 60.0,
        "max_attempts": 2,
        "store": args.store,
        "store_shared": args.store_shared,
        "cache": args.cache,
        "curve": curve,
    }
    companion = None
    if args.connect is None:
        args.out.mkdir(parents=True, exist_ok=True)
        companion = partial(
            _service_after,
            endpoint=endpoint,
            workers=args.workers,
            data_dir=args.data_dir,
            log_path=args.out / "service.log",
            delay=args.service_delay,
        )
    return await search_and_report(
        args,
        [endpoint],
        options,
        data=data,
        companion=companion,
        own_data=companion is not None,
    )


async def _service_after(
    submitting: anyio.Event,
    *,
    endpoint: str,
    workers: int,
    data_dir: Path | None,
    log_path: Path,
    delay: float,
) -> None:
    """Start the service ``delay`` seconds after a request first waits for one (never,
    when the store's cache has every result); keep it until cancelled.

    Raises:
        ServiceExited: the service ended on its own.
    """
    import anyio

    from .service_process import ServiceExited, open_service_process, tail

    await submitting.wait()
    log.info(
        "requests are queueing and no service is up; starting one on %s in %g s", endpoint, delay
    )
    await anyio.sleep(delay)  # on purpose: the queue holds the requests meanwhile
    async with open_service_process(
        endpoint, workers=workers, data_dir=data_dir, log_path=log_path
    ) as process:
        returncode = await process.wait()
    raise ServiceExited(returncode, tail(log_path))

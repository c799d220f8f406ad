"""What ``backtest-queue demo`` and ``evolve`` share: options, the run, the report.

Importing this module is cheap (the CLI imports every command to list it); Optuna,
pandas, matplotlib and rich are imported when a command runs.
"""

from __future__ import annotations

import argparse
import logging
import sys
from collections.abc import Awaitable, Callable, Coroutine, Iterator, Sequence
from contextlib import contextmanager
from contextvars import ContextVar
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ..cli_types import integer, number
from ..metrics import add_metrics_arguments
from .command_report import counts_line, print_report
from .dataset_source import add_data_arguments

if TYPE_CHECKING:
    import anyio
    import anyio.abc

    from .command_report import FinishedGenerations
    from .dataset_source import SearchData
    from .search import SearchConfig
    from .split import SampleSplit

__all__ = [
    "add_search_arguments",
    "counts_line",
    "non_negative_float",
    "non_negative_int",
    "positive_int",
    "print_report",
    "run_command",
    "search_and_report",
]

log = logging.getLogger("backtest_queue.evolution")

#: The signals received by the running command (set by ``_until_terminated``).
_STOP_SIGNAL: ContextVar[list[int]] = ContextVar("backtest_queue_stop_signal")

#: Launches helpers next to the search (the demo's delayed service): it gets an event
#: that is set once a request waits for a service (not served by the store's cache).
Companion = Callable[["anyio.Event"], Coroutine[Any, Any, None]]


#: argparse type: an integer >= 1.
positive_int = integer(1)
#: argparse type: an integer >= 0.
non_negative_int = integer(0)
#: argparse type: a finite float >= 0.
non_negative_float = number(0.0)
_fraction = number(0.0, 1.0, exclusive=True)
#: Optuna's samplers seed numpy's generator, which takes 0 .. 2**32 - 1.
_seed = integer(0, 2**32 - 1)


def add_search_arguments(
    parser: argparse.ArgumentParser, *, generations: int, population: int
) -> None:
    """Add the options every search command has."""
    parser.add_argument(
        "--generations",
        type=positive_int,
        default=generations,
        metavar="N",
        help="evolution generations (default: %(default)s)",
    )
    parser.add_argument(
        "--population",
        type=positive_int,
        default=population,
        metavar="N",
        help="candidates per generation (default: %(default)s)",
    )
    add_data_arguments(parser, default_dataset="EURUSD-H1")  # --dataset ID, --data DIR
    parser.add_argument(
        "--sampler",
        choices=("tpe", "nsga2", "random"),
        default="tpe",
        help="the optimizer: Optuna's TPE, NSGA-II or random search (default: %(default)s; "
        "benchmarks/README.md compares them out of sample)",
    )
    parser.add_argument(
        "--walk-forward",
        type=integer(2, also=(0,)),
        default=0,
        metavar="K",
        help="score each candidate on K windows of the in-sample bars by mean minus "
        "standard deviation of their Sharpe ratios (K >= 2; default: 0, one in-sample run)",
    )
    parser.add_argument(
        "--wf-mode",
        choices=("rolling", "anchored"),
        default="rolling",
        help="walk-forward windows: disjoint (rolling) or expanding from the first bar "
        "(anchored) (default: %(default)s)",
    )
    parser.add_argument(
        "--seed",
        type=_seed,
        default=7,
        help="optimizer seed: same seed, same search (default: %(default)s)",
    )
    parser.add_argument(
        "--in-sample",
        type=_fraction,
        default=0.7,
        metavar="FRACTION",
        help="share of the bars to evolve on; the rest is the "
        "out-of-sample check (default: %(default)s)",
    )
    parser.add_argument(
        "--top",
        type=positive_int,
        default=10,
        metavar="N",
        help="candidates to re-run out-of-sample and rank (default: %(default)s)",
    )
    parser.add_argument(
        "--min-trades",
        type=non_negative_int,
        default=20,
        metavar="N",
        help="fewest in-sample trades a strategy needs to rank; fewer is an infeasible "
        "solution for the optimizer (default: %(default)s; 0: no minimum)",
    )
    parser.add_argument(
        "--store",
        type=Path,
        default=None,
        metavar="PATH",
        help="SQLite file that keeps the send queue durable and caches results by "
        "content and data fingerprint, so a rerun or a restart after a crash does not "
        "run finished backtests again (default: none)",
    )
    parser.add_argument(
        "--store-shared",
        action="store_true",
        help="let other runs use the same --store at the same time (they share its result "
        "cache); without it a second run on a store in use stops with an error naming "
        "the run that holds it",
    )
    parser.add_argument(
        "--no-cache",
        dest="cache",
        action="store_false",
        help="with --store, run every backtest even when the store has its result",
    )
    parser.add_argument(
        "--out",
        type=Path,
        default=Path("backtest-queue-output"),
        metavar="DIR",
        help="output directory (default: ./%(default)s)",
    )
    parser.add_argument(
        "--backend",
        choices=("trio", "asyncio"),
        default="trio",
        help="async backend (default: %(default)s)",
    )
    parser.add_argument(
        "--json",
        action="store_true",
        help="print the leaderboard and the summary as one JSON document on stdout "
        "instead of tables (logs stay on stderr)",
    )
    add_metrics_arguments(parser, what="requester")


def run_command(args: argparse.Namespace, main: Callable[[], Awaitable[int]]) -> int:
    """Run a search command's async ``main`` on ``args.backend``; report our errors.

    Returns:
        ``main``'s status (128 + the signal after SIGINT, SIGTERM or SIGHUP); 1 when it
        failed (each error logged on one line, also out of task groups' exception
        groups), 2 when an optional dependency is missing.
    """
    try:
        import anyio
        import matplotlib
        import optuna  # noqa: F401
        import pandas  # noqa: F401
        import rich  # noqa: F401
    except ModuleNotFoundError as exc:
        print(
            f"backtest-queue {args.command} needs {exc.name!r}, which is not installed.\n"
            "Install the extras: pip install 'backtest-queue[all]'",
            file=sys.stderr,
        )
        return 2
    matplotlib.use("Agg")
    from ..cli_output import broken_pipe
    from ..errors import BacktestQueueError
    from ..exception_groups import leaves

    try:
        return anyio.run(_until_terminated, main, backend=args.backend)
    except BaseException as exc:
        errors = leaves(exc)
        if any(isinstance(e, KeyboardInterrupt) for e in errors):
            raise KeyboardInterrupt from exc  # the CLI's exit status 130
        if broken_pipe(exc):
            raise  # the CLI ends quietly (141)
        # One line per error, never an exception group's traceback: ours say what to do;
        # anything else is a bug, whose traceback -v shows.
        for error in errors:
            if isinstance(error, (BacktestQueueError, OSError)):
                log.error("%s", error)
            else:
                log.error("unexpected %s: %s (run with -v for the traceback)",
                          type(error).__name__, error)  # fmt: skip
                log.debug("traceback of the unexpected error", exc_info=error)
        return 1


async def _until_terminated(main: Callable[[], Awaitable[int]]) -> int:
    """Run ``main``; on SIGINT (Ctrl-C), SIGTERM or SIGHUP cancel it, so its ``finally``
    blocks (stopping the demo's service process) and its partial report run. Returns
    128 + the signal then (130 for Ctrl-C, 143 for SIGTERM)."""
    import signal

    import anyio

    status = 0
    received: list[int] = []
    _STOP_SIGNAL.set(received)
    async with anyio.create_task_group() as tg:

        async def watch(*, task_status: anyio.abc.TaskStatus[None]) -> None:
            with anyio.open_signal_receiver(signal.SIGINT, signal.SIGTERM, signal.SIGHUP) as sigs:
                task_status.started()  # from here a Ctrl-C cancels main, not raises in it
                async for signum in sigs:
                    log.warning("received %s; stopping", signal.Signals(signum).name)
                    received.append(signum)
                    tg.cancel_scope.cancel()
                    return

        await tg.start(watch)
        status = await main()
        tg.cancel_scope.cancel()
    return 128 + received[0] if received else status


def _stop_reason(exc: BaseException) -> str:
    """Why a search stopped early, for its partial report."""
    import signal

    import anyio

    from ..exception_groups import leaves

    received = _STOP_SIGNAL.get([])
    if received:
        return f"interrupted by {signal.Signals(received[0]).name}"
    errors = [e for e in leaves(exc) if not isinstance(e, anyio.get_cancelled_exc_class())]
    if not errors or any(isinstance(e, KeyboardInterrupt) for e in errors):
        return "interrupted"
    return f"stopped by an error: {errors[0]}"


async def search_and_report(
    args: argparse.Namespace,
    endpoints: Sequence[str],
    dispatcher_options: dict[str, Any],
    *,
    data: SearchData,
    companion: Companion | None = None,
    own_data: bool = False,
) -> int:
    """Open a dispatcher, run the search, write the outputs and print the leaderboard.

    Args:
        args: parsed options of :func:`add_search_arguments`.
        endpoints: the services' endpoints.
        dispatcher_options: keyword arguments for :func:`open_dispatcher`.
        data: the dataset's split, and its bars when this process has them
            (:mod:`.dataset_source`).
        companion: started next to the search in the dispatcher's block, and cancelled
            when the search is done (the demo's service launcher); its event is set
            once a request waits for a service (never, when the store's cache had every
            result).
        own_data: the services hold exactly the data loaded here (the demo's own
            service): with a store, its cache answers before any service is up.

    Returns:
        0.

    Raises:
        BaseException: whatever stopped the search (cancellation by a signal
            included), after writing the partial report of the generations finished
            into ``args.out`` and printing it.
    """
    import anyio
    import rich
    import rich.console

    from ..cli_output import log_console
    from ..dispatcher import Dispatcher, open_dispatcher
    from ..metrics import metrics_from_args
    from .command_report import FinishedGenerations, report_warnings
    from .progress import make_observer
    from .records import Progress
    from .search import SearchConfig, run_search, write_outputs

    dispatcher_options = {**dispatcher_options, "metrics": metrics_from_args(args)}
    split, bars = data.split, data.bars
    config = SearchConfig(
        generations=args.generations,
        population=args.population,
        sampler=args.sampler,
        seed=args.seed,
        data_id=args.dataset,
        in_sample_fraction=args.in_sample,
        top=args.top,
        min_trades=args.min_trades,
        walk_forward=args.walk_forward,
        wf_mode=args.wf_mode,
    )
    windows: list[tuple[str, str]] = []
    if args.walk_forward:
        from .walkforward import windows as wf_windows

        windows = wf_windows(data.in_sample_stamps, args.walk_forward, args.wf_mode)
        log.info("walk-forward: %d %s windows, %s", len(windows), args.wf_mode,
                 ", ".join(f"{a[:10]}..{b[:10]}" for a, b in windows))  # fmt: skip
    log.info(
        "evolving on %s with %s: %d generations x %d candidates; in-sample %s .. %s (%d bars), "
        "out-of-sample %s .. %s (%d bars)",
        config.data_id,
        config.sampler,
        config.generations,
        config.population,
        *split.in_sample,
        split.in_sample_bars,
        *split.out_of_sample,
        split.out_of_sample_bars,
    )
    console = rich.get_console()  # stdout: the results
    if not console.is_terminal:  # a pipe or a file: room for the leaderboard's columns
        console = rich.console.Console(width=max(console.width, 132))
    if own_data and bars is not None and dispatcher_options.get("store") is not None:
        # The service will hold the data loaded here: the store's cache can answer at
        # once, and a service is started only for what it does not hold.
        from ..service.fingerprint import fingerprint_bars

        dispatcher_options = {**dispatcher_options,
                              "fingerprints": {args.dataset: fingerprint_bars(bars)}}  # fmt: skip
    needed = anyio.Event()

    async def on_cycle(progress: Progress) -> None:
        if progress.queued or progress.pending:  # not everything came from the cache
            needed.set()

    async def watch(dispatcher: Dispatcher) -> None:
        # Raises HandshakeRefused when the keys do not fit, which ends the search; a
        # service that is not there yet is the dispatcher's warning (unconnected_warning).
        await dispatcher.wait_connected()

    observer = make_observer(log_console())  # progress goes with the logs, on stderr
    finished = FinishedGenerations(observer)
    # The companion (the demo's service) outlives the dispatcher: the dispatcher closes
    # first, so stopping the service at the end is not reported as a lost connection.
    with _partial_report_on_stop(finished, args, config, split, console), observer:
        async with anyio.create_task_group() as outer:
            if companion is not None:
                outer.start_soon(companion, needed)
            opened: list[Dispatcher] = []
            try:
                async with (
                    open_dispatcher(list(endpoints), **dispatcher_options) as dispatcher,
                    anyio.create_task_group() as tg,
                ):
                    opened.append(dispatcher)
                    tg.start_soon(watch, dispatcher)
                    report = await run_search(
                        dispatcher, config, split, observer=finished, cycle_hook=on_cycle,
                        windows=windows,
                    )  # fmt: skip
                    tg.cancel_scope.cancel()
            finally:
                for d in opened:  # on an error, 'shutdown' outcomes are left unread
                    d.outcomes.close()
            outer.cancel_scope.cancel()
    assessment = None
    if report.leaderboard and bars is not None:  # re-runs the top strategies here
        from .cycle import RunSettings
        from .robustness import assess

        log.info("computing the Deflated Sharpe Ratio and the PBO from daily returns")
        assessment = assess(
            report.in_sample,
            [row.candidate for row in report.leaderboard],
            bars.iloc[: split.in_sample_bars],
            RunSettings(cash=config.cash, commission=config.commission),
            min_trades=report.min_trades,
        )
    files = write_outputs(report, args.out, bars=bars, assessment=assessment)
    for warning in report_warnings(report):
        log.warning("%s", warning)
    print_report(console, report, files, assessment, as_json=args.json)
    return 0


@contextmanager
def _partial_report_on_stop(
    finished: FinishedGenerations,
    args: argparse.Namespace,
    config: SearchConfig,
    split: SampleSplit,
    console: Any,
) -> Iterator[None]:
    """Keep the work done when the block is left by an exception (a signal's
    cancellation included): write the generations that finished into ``args.out`` as a
    partial report, print it, say where it is; then let the exception go on."""
    try:
        yield
    except BaseException as exc:
        from .command_report import partial_report
        from .search import resume_hint, write_outputs

        partial = partial_report(finished, config, split, _stop_reason(exc))
        if partial is None:
            log.warning("stopped before a generation finished with a result: no report written")
        else:
            resumable = getattr(args, "store", None) is not None
            files = write_outputs(partial, args.out, resumable=resumable)
            log.warning("%s after %d of %d generations: partial report in %s (%s)",
                        partial.stopped, partial.generations_done, config.generations,
                        args.out, resume_hint(resumable))  # fmt: skip
            print_report(console, partial, files, None, as_json=args.json)
        raise

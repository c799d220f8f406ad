"""What ``backtest-queue demo`` and ``evolve`` share: options, the run, the report.

Importing this module is cheap (the CLI imports every command to list it); Optuna,
pandas, matplotlib and rich are imported when a command runs.
"""

from __future__ import annotations

import argparse
import logging
import sys
from collections.abc import Awaitable, Callable, Coroutine, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ..cli_types import integer, number

if TYPE_CHECKING:
    import anyio

    from .robustness import Assessment
    from .search import SearchReport

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

#: Launches helpers next to the search (the demo's delayed service): it gets an event
#: that is set once the first generation has been submitted.
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
    parser.add_argument(
        "--data",
        default="EURUSD-H1",
        metavar="DATA_ID",
        help="dataset to search on (default: %(default)s)",
    )
    parser.add_argument(
        "--data-dir",
        type=Path,
        default=None,
        metavar="DIR",
        help="directory of <data_id>.csv datasets (the service's --data); "
        "read here too, to split the bars",
    )
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


def run_command(args: argparse.Namespace, main: Callable[[], Awaitable[int]]) -> int:
    """Run a search command's async ``main`` on ``args.backend``; report our errors.

    Returns:
        ``main``'s status; 1 when it failed with one of this package's errors (logged),
        2 when an optional dependency is missing.
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
    from ..errors import BacktestQueueError

    try:
        return anyio.run(_until_terminated, main, backend=args.backend)
    except BaseException as exc:
        leaves = _leaves(exc)
        if any(isinstance(e, KeyboardInterrupt) for e in leaves):
            raise KeyboardInterrupt from exc  # the CLI's exit status 130
        ours = [e for e in leaves if isinstance(e, (BacktestQueueError, OSError))]
        if not ours or len(ours) != len(leaves):
            raise
        for error in ours:
            log.error("%s", error)
        return 1


async def _until_terminated(main: Callable[[], Awaitable[int]]) -> int:
    """Run ``main``; on SIGTERM or SIGHUP cancel it as Ctrl-C would, so its ``finally``
    blocks (stopping the demo's service process) run. Returns 128 + the signal then."""
    import signal

    import anyio

    status = 0
    received: list[int] = []
    async with anyio.create_task_group() as tg:

        async def watch() -> None:
            with anyio.open_signal_receiver(signal.SIGTERM, signal.SIGHUP) as signals:
                async for signum in signals:
                    log.warning("received %s; stopping", signal.Signals(signum).name)
                    received.append(signum)
                    tg.cancel_scope.cancel()
                    return

        tg.start_soon(watch)
        status = await main()
        tg.cancel_scope.cancel()
    return 128 + received[0] if received else status


def _leaves(exc: BaseException) -> list[BaseException]:
    if isinstance(exc, BaseExceptionGroup):
        return [leaf for sub in exc.exceptions for leaf in _leaves(sub)]
    return [exc]


async def search_and_report(
    args: argparse.Namespace,
    endpoints: Sequence[str],
    dispatcher_options: dict[str, Any],
    *,
    companion: Companion | None = None,
) -> int:
    """Open a dispatcher, run the search, write the outputs and print the leaderboard.

    Args:
        args: parsed options of :func:`add_search_arguments`.
        endpoints: the services' endpoints.
        dispatcher_options: keyword arguments for :func:`open_dispatcher`.
        companion: started next to the search in the dispatcher's block, and cancelled
            when the search is done (the demo's service launcher).

    Returns:
        0.
    """
    import anyio
    import rich
    import rich.console

    from ..dispatcher import Dispatcher, open_dispatcher
    from .progress import make_observer
    from .search import SearchConfig, run_search, write_outputs
    from .split import load_bars, split_bars

    bars = load_bars(args.data, args.data_dir)
    split = split_bars(bars.index, args.data, fraction=args.in_sample)
    config = SearchConfig(
        generations=args.generations,
        population=args.population,
        sampler=args.sampler,
        seed=args.seed,
        data_id=args.data,
        in_sample_fraction=args.in_sample,
        top=args.top,
        min_trades=args.min_trades,
        walk_forward=args.walk_forward,
        wf_mode=args.wf_mode,
    )
    windows: list[tuple[str, str]] = []
    if args.walk_forward:
        from .walkforward import windows as wf_windows

        windows = wf_windows(bars.index[: split.in_sample_bars], args.walk_forward, args.wf_mode)
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
    console = rich.get_console()
    if not console.is_terminal:  # a pipe or a file: room for the leaderboard's columns
        console = rich.console.Console(width=max(console.width, 132))
    submitting = anyio.Event()

    async def on_cycle(_: object) -> None:
        submitting.set()

    async def watch(dispatcher: Dispatcher) -> None:
        with anyio.move_on_after(10.0):
            await dispatcher.wait_connected()
            return
        log.warning(
            "no backtest service reachable at %s yet; requests stay queued (Ctrl-C to stop)",
            ", ".join(endpoints),
        )

    # The companion (the demo's service) outlives the dispatcher: the dispatcher closes
    # first, so stopping the service at the end is not reported as a lost connection.
    with make_observer(console) as observer:
        async with anyio.create_task_group() as outer:
            if companion is not None:
                outer.start_soon(companion, submitting)
            opened: list[Dispatcher] = []
            try:
                async with (
                    open_dispatcher(list(endpoints), **dispatcher_options) as dispatcher,
                    anyio.create_task_group() as tg,
                ):
                    opened.append(dispatcher)
                    tg.start_soon(watch, dispatcher)
                    report = await run_search(
                        dispatcher, config, split, observer=observer, cycle_hook=on_cycle,
                        windows=windows,
                    )  # fmt: skip
                    tg.cancel_scope.cancel()
            finally:
                for d in opened:  # on an error, 'shutdown' outcomes are left unread
                    d.outcomes.close()
            outer.cancel_scope.cancel()
    assessment = None
    if report.leaderboard:
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
    print_report(console, report, files, assessment)
    return 0


def print_report(
    console: Any, report: SearchReport, files: dict[str, Path], assessment: Assessment | None
) -> None:
    """Print the leaderboard, the counts, the overfitting measures and the files."""
    from .report import leaderboard_table
    from .robustness import describe

    split = report.split
    title = (
        f"Top {len(report.leaderboard)} on {report.config.data_id}: in-sample "
        f"{split.in_sample[0][:10]}..{split.in_sample[1][:10]}, out-of-sample "
        f"{split.out_of_sample[0][:10]}..{split.out_of_sample[1][:10]}"
    )
    note = ""
    if report.config.min_trades:
        note = f"ranked: strategies with at least {report.config.min_trades} in-sample trades"
    if report.config.walk_forward >= 2:
        note += (
            f"{'; ' if note else ''}Sharpe IS: mean - sd of the Sharpe ratios over "
            f"{report.config.walk_forward} {report.config.wf_mode} in-sample windows"
        )
    dsr = None if assessment is None else {c: d.dsr for c, d in assessment.dsr.items()}
    console.print(leaderboard_table(report.leaderboard, title=title, note=note, dsr=dsr))
    console.print(counts_line(report), highlight=False)
    if assessment is not None:
        console.print(describe(assessment), highlight=False)
    for path in files.values():
        console.print(f"  wrote {path}", highlight=False)


def counts_line(report: SearchReport) -> str:
    """The in-sample evaluations by cause, for people: e.g. ``288 in-sample evaluations
    (281 run, 7 clones reused; 2 failed: 2 timeout; 31 infeasible: fewer than 20
    trades) and 10 out-of-sample re-runs in 37.6 s``."""
    counts = report.counts()
    causes = [f"{n} {key.removeprefix('failed:')}" for key, n in sorted(counts.items())
              if key.startswith("failed:")]  # fmt: skip
    failed = f"{counts['failed']} failed" + (f": {', '.join(causes)}" if causes else "")
    minimum = max(report.config.min_trades, 1)
    return (
        f"{counts['evaluations']} in-sample evaluations ({counts['ok']} run, {counts['clone']} "
        f"clones reused; {failed} (no result); {counts['infeasible']} infeasible (fewer than "
        f"{minimum} trades or no Sharpe ratio)) and {len(report.out_of_sample)} "
        f"out-of-sample re-runs in {report.elapsed:.1f} s; {report.repeats} repeats "
        f"re-asked, {report.real_generations or '?'} real generations"
    )

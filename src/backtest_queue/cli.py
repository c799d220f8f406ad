"""``backtest-queue``: the command line. The only module that configures logging.

Subcommands register themselves through small ``add_arguments`` / ``run`` pairs that
live next to what they run, so this module stays a table of contents.
"""

from __future__ import annotations

import argparse
import logging
import sys
from collections.abc import Callable, Sequence
from importlib import import_module

from . import __version__
from .errors import UsageError
from .lifeline import watch_parent_from_environment

__all__ = ["main"]

# name -> (module holding add_arguments(parser) and run(args) -> int, one-line help)
_COMMANDS: dict[str, tuple[str, str]] = {
    "service": (
        "backtest_queue.service.command",
        "run a backtest service (ROUTER) on real OHLCV data",
    ),
    "demo": (
        "backtest_queue.evolution.command_demo",
        "evolve strategies against a local service, end to end",
    ),
    "evolve": (
        "backtest_queue.evolution.command_evolve",
        "evolve strategies against services you run",
    ),
    "data": (
        "backtest_queue.data_command",
        "check your own OHLCV CSV files: how a service reads them, or why not",
    ),
    "keys": (
        "backtest_queue.security_command",
        "generate CURVE key pairs for services and requesters",
    ),
    "status": (
        "backtest_queue.status_command",
        "ask a running service what it has and how busy it is (exit 0 if it answers)",
    ),
}


def _setup_logging(verbosity: int, quiet: bool) -> None:
    level = logging.WARNING if quiet else (logging.DEBUG if verbosity > 0 else logging.INFO)
    handler: logging.Handler
    try:
        from rich.logging import RichHandler
    except ImportError:  # the core install has no rich; plain lines are fine
        handler = logging.StreamHandler()
        handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
    else:
        handler = RichHandler(show_path=False, rich_tracebacks=False)
        handler.setFormatter(logging.Formatter("%(name)s: %(message)s"))
    logging.basicConfig(level=level, handlers=[handler], force=True)


def build_parser() -> argparse.ArgumentParser:
    """Return the argument parser with every subcommand whose dependencies import."""
    parser = argparse.ArgumentParser(
        prog="backtest-queue",
        description="Queue backtest requests from a strategy-evolution loop to ZeroMQ services.",
    )
    parser.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    parser.add_argument("-v", "--verbose", action="count", default=0, help="debug logging")
    parser.add_argument("-q", "--quiet", action="store_true", help="warnings and errors only")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for name, (module_name, help_text) in _COMMANDS.items():
        try:
            module = import_module(module_name)
        except ModuleNotFoundError as exc:
            if exc.name is not None and exc.name.startswith("backtest_queue"):
                continue  # not built yet
            missing = exc.name
            p = sub.add_parser(name, help=f"{help_text} (needs: pip install 'backtest-queue[all]')")
            p.set_defaults(_run=_missing_extra(name, str(missing)))
            continue
        p = sub.add_parser(name, help=help_text, description=help_text)
        module.add_arguments(p)
        p.set_defaults(_run=module.run)
    return parser


def _missing_extra(command: str, missing: str) -> Callable[[argparse.Namespace], int]:
    def run(args: argparse.Namespace) -> int:
        print(
            f"backtest-queue {command} needs the package {missing!r}, which is not installed.\n"
            "Install the extras: pip install 'backtest-queue[all]'",
            file=sys.stderr,
        )
        return 2

    return run


def main(argv: Sequence[str] | None = None) -> int:
    """Run the command line; returns the process exit status.

    A process started with a :class:`~backtest_queue.lifeline.Lifeline` (the variable
    ``BACKTEST_QUEUE_LIFELINE_FD`` set) stops when the process that started it is gone.
    """
    try:
        watch_parent_from_environment()  # first: a parent may die while we import
    except UsageError as exc:
        print(f"backtest-queue: {exc}", file=sys.stderr)
        return 2
    parser = build_parser()
    args = parser.parse_args(argv)
    _setup_logging(args.verbose, args.quiet)
    run: Callable[[argparse.Namespace], int] = args._run
    try:
        return run(args)
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    sys.exit(main())

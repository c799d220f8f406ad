"""``backtest-queue``: the command line. The only module that configures logging.

Subcommands register themselves through small ``add_arguments`` / ``run`` pairs that
live next to what they run, so this module stays a table of contents.
"""

from __future__ import annotations

import argparse
import difflib
import sys
from collections.abc import Callable, Sequence
from importlib import import_module

from . import __version__
from .cli_output import EXIT_BROKEN_PIPE, broken_pipe, setup_logging, silence_stdout
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


def build_parser() -> argparse.ArgumentParser:
    """Return the argument parser with every subcommand whose dependencies import."""
    parser = argparse.ArgumentParser(
        prog="backtest-queue",
        description="Queue backtest requests from a strategy-evolution loop to ZeroMQ services.",
    )
    parser.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    _add_verbosity(parser, default=0)
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for name, (module_name, help_text) in _COMMANDS.items():
        try:
            module = import_module(module_name)
        except ModuleNotFoundError as exc:
            if exc.name is not None and exc.name.startswith("backtest_queue"):
                continue  # not built yet
            missing = exc.name
            p = sub.add_parser(name, help=f"{help_text} (needs: pip install 'backtest-queue[all]')")
            p.set_defaults(_run=_missing_extra(name, str(missing)), _parser=p)
            _add_verbosity(p, default=argparse.SUPPRESS)
            continue
        p = sub.add_parser(name, help=help_text, description=help_text)
        module.add_arguments(p)
        _add_verbosity(p, default=argparse.SUPPRESS)
        p.set_defaults(_run=module.run, _parser=p)
    return parser


def _refuse_unknown(args: argparse.Namespace, extra: list[str]) -> None:
    """Exit 2 naming the unknown options, in the subcommand's own usage, with the
    nearest option it has (``--populaton``: did you mean --population?)."""
    parser: argparse.ArgumentParser = args._parser
    known = [o for action in parser._actions for o in action.option_strings]
    hints = []
    for word in extra:
        option = word.split("=", 1)[0]
        near = difflib.get_close_matches(option, known, n=1, cutoff=0.75)
        if option.startswith("-") and near:
            hints.append(f"{option}: did you mean {near[0]}?")
    message = f"unrecognized arguments: {' '.join(extra)}"
    parser.error(message + (f" ({'; '.join(hints)})" if hints else ""))


def _add_verbosity(parser: argparse.ArgumentParser, *, default: object) -> None:
    """-v / -q, accepted before the subcommand (``default=0``) and after it (``default``
    SUPPRESS, so a subcommand that is not given them keeps the values given before)."""
    parser.add_argument(
        "-v",
        "--verbose",
        action="count",
        default=default,
        help="debug logging of backtest-queue (-vv: of every library too); logs go to stderr",
    )
    parser.add_argument(
        "-q",
        "--quiet",
        action="store_true",
        default=False if default == 0 else default,
        help="warnings and errors only",
    )


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
    Logs go to stderr, results to stdout (see :mod:`.cli_output`); a closed stdout ends
    the command quietly with status 141.
    """
    try:
        watch_parent_from_environment()  # first: a parent may die while we import
    except UsageError as exc:
        print(f"backtest-queue: {exc}", file=sys.stderr)
        return 2
    parser = build_parser()
    args, extra = parser.parse_known_args(argv)
    if extra:
        if not hasattr(args, "_parser"):
            parser.error(f"unrecognized arguments: {' '.join(extra)}")
        _refuse_unknown(args, extra)
    setup_logging(args.verbose, args.quiet)
    run: Callable[[argparse.Namespace], int] = args._run
    try:
        status = run(args)
        sys.stdout.flush()  # here, so a reader that went away is noticed here
    except KeyboardInterrupt:
        return 130
    except BaseException as exc:  # a closed stdout, also inside exception groups
        if not broken_pipe(exc):
            raise
        silence_stdout()
        return EXIT_BROKEN_PIPE
    return status


if __name__ == "__main__":
    sys.exit(main())

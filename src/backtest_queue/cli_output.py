"""Where the command line's output goes: logs to stderr, results to stdout.

* **Logs** go to stderr, one line per record. On a terminal they are rich's coloured
  lines; anywhere else (a pipe, a file, a service's log) they are plain
  ``time LEVEL logger: message`` lines that are never wrapped, and a message that spans
  several lines is joined with `` | `` so ``grep`` finds every record whole.
* ``-v`` / ``-q`` set the level of this package's loggers (``backtest_queue.*``) only;
  other libraries stay at WARNING (``-vv`` opens them up to DEBUG too).
* A closed stdout (``backtest-queue demo | head -2``) ends the command quietly with exit
  status :data:`EXIT_BROKEN_PIPE` (141 = 128 + SIGPIPE, what a shell reports for a
  program killed by SIGPIPE), wherever the ``BrokenPipeError`` was raised, also inside
  the exception groups of task groups.

Only the CLI calls :func:`setup_logging`; a library user configures logging their way.
"""

from __future__ import annotations

import errno
import logging
import os
import sys
from typing import IO, TYPE_CHECKING, Final

from .exception_groups import leaves

if TYPE_CHECKING:
    from rich.console import Console

__all__ = [
    "EXIT_BROKEN_PIPE",
    "OneLineFormatter",
    "broken_pipe",
    "log_console",
    "setup_logging",
    "silence_stdout",
]

#: Exit status after the reader of stdout went away: 128 + SIGPIPE.
EXIT_BROKEN_PIPE: Final = 141
#: The package logger whose level -v / -q set.
PACKAGE_LOGGER: Final = "backtest_queue"

_console: Console | None = None


class OneLineFormatter(logging.Formatter):
    """``time LEVEL logger: message`` on one line: newlines in the message become `` | ``.

    A traceback (``exc_info``, logged at DEBUG by the CLI) keeps its lines: it is for
    the developer reading the file, not for ``grep``.
    """

    def __init__(self) -> None:
        super().__init__("%(asctime)s %(levelname)s %(name)s: %(message)s")

    def formatMessage(self, record: logging.LogRecord) -> str:
        text = super().formatMessage(record)
        return " | ".join(line for line in text.splitlines() if line.strip()) or text


def setup_logging(verbosity: int, quiet: bool, *, stream: IO[str] | None = None) -> None:
    """Send log records to stderr, one line each; set our loggers' level.

    Args:
        verbosity: 0 = INFO for ``backtest_queue.*``; 1 = DEBUG for them; 2 or more =
            DEBUG for every library.
        quiet: WARNING and above only (wins over ``verbosity``).
        stream: where to write (default ``sys.stderr``); rich's handler is used only
            when it is a terminal.
    """
    global _console
    stream = sys.stderr if stream is None else stream
    ours = logging.WARNING if quiet else (logging.DEBUG if verbosity > 0 else logging.INFO)
    others = logging.DEBUG if verbosity > 1 and not quiet else logging.WARNING
    handler: logging.Handler
    _console = None
    if _isatty(stream):
        try:
            from rich.console import Console
            from rich.logging import RichHandler
        except ImportError:  # the core install has no rich; plain lines are fine
            pass
        else:
            _console = Console(file=stream)
            handler = RichHandler(console=_console, show_path=False, rich_tracebacks=False)
            handler.setFormatter(logging.Formatter("%(name)s: %(message)s"))
    if _console is None:
        handler = logging.StreamHandler(stream)
        handler.setFormatter(OneLineFormatter())
    logging.basicConfig(level=others, handlers=[handler], force=True)
    logging.getLogger(PACKAGE_LOGGER).setLevel(ours)


def log_console() -> Console:
    """The rich console the logs are written to (a terminal), for a progress bar that
    must share it; off a terminal, a console on stderr that is not a terminal."""
    if _console is not None:
        return _console
    from rich.console import Console

    return Console(stderr=True)


def broken_pipe(exc: BaseException) -> bool:
    """Whether ``exc`` is, or a group holds, a write to a closed pipe (EPIPE), also
    when it was turned into another exception: rich's console raises ``SystemExit(1)``
    while handling the ``BrokenPipeError``."""
    for leaf in leaves(exc):
        seen: BaseException | None = leaf
        while seen is not None:
            if isinstance(seen, OSError) and seen.errno == errno.EPIPE:
                return True
            seen = seen.__context__
    return False


def silence_stdout() -> None:
    """Point stdout at /dev/null, so the interpreter's final flush of what is still
    buffered for the closed pipe does not print ``Exception ignored ... BrokenPipeError``."""
    try:
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        os.close(devnull)
    except (OSError, ValueError):  # no real stdout (a test's capture): nothing to flush
        pass


def _isatty(stream: IO[str]) -> bool:
    try:
        return stream.isatty()
    except (AttributeError, ValueError):
        return False

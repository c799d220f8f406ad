"""Child processes that end with their parent, however the parent ends.

The parent opens a :class:`Lifeline` - a pipe - before starting a child, hands the
child the pipe's read end (``pass_fds``) and its number in the environment variable
:data:`LIFELINE_ENV`, and keeps the write end open for as long as the child should run.
Nothing is ever written. When the parent process ends - normally, by an exception, by
``SIGKILL``, out of memory - the kernel closes the write end and the child's read
returns end-of-file; the child's watch thread (:func:`exit_with_parent`, started by
``backtest-queue`` for every command, and by any script that calls
:func:`watch_parent_from_environment`) then stops the child: ``SIGTERM`` to itself, so it
shuts down the way it does on a ``kill`` (a service answers and closes, removes its
files, stops its workers), and ``os._exit`` if it is still there :data:`EXIT_GRACE`
seconds later.

Why a pipe and not Linux's parent-death signal (``prctl(PR_SET_PDEATHSIG)``): that
signal is sent when the *thread* that forked the child exits, not the process. trio
starts processes from a worker thread (``trio.to_thread``) that exits after ten idle
seconds, and the service's process pool starts workers from anyio worker threads: a
parent-death signal would kill healthy children there. The pipe follows the process, on
Linux and on every other POSIX system, with nothing polled; a parent that died before
the child started watching is noticed as well (end-of-file stays readable).

The service's pool workers watch their service the same way, through the pipe
``multiprocessing`` keeps to each spawned worker (see ``service/worker.py``).
"""

from __future__ import annotations

import contextlib
import logging
import os
import signal
import threading
from collections.abc import Mapping
from typing import Final

from .errors import UsageError

__all__ = [
    "EXIT_GRACE",
    "EXIT_PARENT_GONE",
    "LIFELINE_ENV",
    "Lifeline",
    "exit_with_parent",
    "watch_parent_from_environment",
]

log = logging.getLogger("backtest_queue.lifeline")

#: The environment variable naming the read end of the lifeline in a child process.
LIFELINE_ENV: Final = "BACKTEST_QUEUE_LIFELINE_FD"
#: Seconds between the ``SIGTERM`` a child sends itself and its ``os._exit``.
EXIT_GRACE: Final = 15.0
#: The exit status of a child that had to be ended with ``os._exit`` (``EX_SOFTWARE``).
EXIT_PARENT_GONE: Final = 70


class Lifeline:
    """The parent's side: a pipe whose write end lives as long as this process.

    Use it around the start of one child::

        with Lifeline() as lifeline:
            child = subprocess.Popen(command, env={**os.environ, **lifeline.env},
                                     pass_fds=lifeline.pass_fds)
            lifeline.child_started()
            ...  # the child runs; leaving the block also tells it to stop

    Both ends are created non-inheritable: only the child given ``pass_fds`` gets the
    read end, and no child gets the write end (a child that did would keep the line up).
    """

    def __init__(self) -> None:
        self._read_fd: int | None
        self._read_fd, self._write_fd = os.pipe()

    def __repr__(self) -> str:
        state = "closed" if self._write_fd < 0 else f"fd={self._read_fd}"
        return f"<Lifeline {state}>"

    def __enter__(self) -> Lifeline:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    @property
    def child_fd(self) -> int:
        """The read end, for the child.

        Raises:
            UsageError: :meth:`child_started` or :meth:`close` was already called.
        """
        if self._read_fd is None:
            raise UsageError("this lifeline's read end was already handed to a child")
        return self._read_fd

    @property
    def pass_fds(self) -> tuple[int]:
        """``pass_fds`` for ``subprocess.Popen`` / ``anyio.open_process``."""
        return (self.child_fd,)

    @property
    def env(self) -> Mapping[str, str]:
        """The environment entries to add to the child's: ``{LIFELINE_ENV: "<fd>"}``."""
        return {LIFELINE_ENV: str(self.child_fd)}

    def child_started(self) -> None:
        """Close our copy of the read end once the child has its own (idempotent)."""
        if self._read_fd is not None:
            os.close(self._read_fd)
            self._read_fd = None

    def close(self) -> None:
        """Cut the line: the child sees end-of-file and stops (idempotent)."""
        self.child_started()
        if self._write_fd >= 0:
            os.close(self._write_fd)
            self._write_fd = -1


def exit_with_parent(fd: int, *, grace: float = EXIT_GRACE) -> threading.Thread:
    """In a child: stop this process when ``fd`` (a lifeline's read end) reaches end-of-file.

    Starts a daemon thread that blocks reading ``fd``. At end-of-file (the parent is
    gone, or it cut the line) it logs a warning, sends ``SIGTERM`` to this process and,
    if the process is still running ``grace`` seconds later, ends it with
    ``os._exit(EXIT_PARENT_GONE)``.

    Args:
        fd: the inherited read end of the parent's :class:`Lifeline`.
        grace: seconds between the ``SIGTERM`` and ``os._exit``.

    Returns:
        The started watch thread.

    Raises:
        UsageError: ``fd`` is not an open file descriptor.
    """
    try:
        os.fstat(fd)
    except OSError as exc:
        raise UsageError(
            f"{LIFELINE_ENV}={fd}: not an open file descriptor ({exc.strerror}); the "
            "parent must pass it with pass_fds"
        ) from None
    os.set_inheritable(fd, False)  # our own children must not inherit it
    parent = os.getppid()

    def watch() -> None:
        try:
            while os.read(fd, 512):
                pass  # nothing is written; only end-of-file counts
        except OSError:
            pass  # an error reading it is as final as end-of-file
        _log_anyway(logging.WARNING, "the parent process (pid %d) is gone; stopping", parent)
        os.kill(os.getpid(), signal.SIGTERM)
        threading.Event().wait(grace)
        _log_anyway(logging.ERROR, "still running %g s after SIGTERM; exiting now", grace)
        os._exit(EXIT_PARENT_GONE)

    thread = threading.Thread(target=watch, name="exit-with-parent", daemon=True)
    thread.start()
    return thread


def _log_anyway(level: int, message: str, *args: object) -> None:
    """Log from the watch thread; a failing handler must not end the thread.

    The log often goes to a pipe whose reader was the parent, now gone: writing fails,
    and a handler may raise (rich's raises ``SystemExit`` on a broken pipe), which would
    end the thread before it stopped the process.
    """
    with contextlib.suppress(BaseException):  # nothing to report it to; stopping matters
        log.log(level, message, *args)


def watch_parent_from_environment(*, grace: float = EXIT_GRACE) -> threading.Thread | None:
    """Start :func:`exit_with_parent` on the descriptor named by :data:`LIFELINE_ENV`.

    The variable is removed from ``os.environ`` first, so this process's own children
    do not take a descriptor number that means nothing to them.

    Returns:
        The watch thread, or ``None`` when the variable is not set.

    Raises:
        UsageError: the variable is not a number, or not an open file descriptor.
    """
    value = os.environ.pop(LIFELINE_ENV, None)
    if value is None:
        return None
    try:
        fd = int(value)
    except ValueError:
        raise UsageError(f"{LIFELINE_ENV}={value!r}: expected a file descriptor number") from None
    return exit_with_parent(fd, grace=grace)

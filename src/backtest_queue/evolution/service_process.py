"""A backtest service run as a child process, stopped for sure when its block ends.

:func:`open_service_process` starts ``python -m backtest_queue service --bind ...`` with
the interpreter running this code, and on leaving the block - normally, on an error, on
cancellation, on Ctrl-C - stops it: ``SIGTERM``, then ``SIGKILL`` after ``stop_timeout``
seconds, and waits for it to be reaped, shielded from cancellation. The child stays in
our process group, so a Ctrl-C in the terminal reaches it too.

If this process dies without leaving the block (``kill -9``, out of memory), the child
stops by itself: it holds the read end of a :class:`~backtest_queue.lifeline.Lifeline`
whose write end dies with us, and stops on end-of-file; its pool workers follow it.
"""

from __future__ import annotations

import logging
import os
import socket
import subprocess
import sys
from collections.abc import AsyncIterator, Sequence
from contextlib import asynccontextmanager, suppress
from pathlib import Path
from typing import IO, Any

import anyio
import anyio.abc

from ..errors import BacktestQueueError
from ..lifeline import Lifeline

__all__ = ["ServiceExited", "free_tcp_endpoint", "open_service_process", "service_command"]

log = logging.getLogger("backtest_queue.evolution")


class ServiceExited(BacktestQueueError):
    """The backtest service process ended while it was still needed.

    Attributes:
        returncode: its exit status (negative: killed by that signal).
        log_tail: the last lines of its output, when it was captured to a file.
    """

    def __init__(self, returncode: int, log_tail: str) -> None:
        where = f"; its last output:\n{log_tail}" if log_tail else ""
        super().__init__(f"the backtest service exited with status {returncode}{where}")
        self.returncode = returncode
        self.log_tail = log_tail


def free_tcp_endpoint(host: str = "127.0.0.1") -> str:
    """Return ``tcp://host:port`` with a port that was free a moment ago (loopback).

    An IPv6 ``host`` (``"::1"``) gives ``tcp://[::1]:port``.
    """
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    with socket.socket(family) as s:
        s.bind((host, 0))
        port = s.getsockname()[1]
    return f"tcp://[{host}]:{port}" if family == socket.AF_INET6 else f"tcp://{host}:{port}"


def service_command(
    bind: str, *, workers: int, data_dir: Path | str | None = None, extra: Sequence[str] = ()
) -> list[str]:
    """The command line that runs a service bound to ``bind`` with this interpreter."""
    command = [sys.executable, "-m", "backtest_queue", "service", "--bind", bind]
    command += ["--workers", str(workers)]
    if data_dir is not None:
        command += ["--data", str(data_dir)]
    return [*command, *extra]


@asynccontextmanager
async def open_service_process(
    bind: str,
    *,
    workers: int = 2,
    data_dir: Path | str | None = None,
    log_path: Path | None = None,
    stop_timeout: float = 5.0,
    extra_args: Sequence[str] = (),
) -> AsyncIterator[anyio.abc.Process]:
    """Run a backtest service as a child process for the duration of the block.

    Args:
        bind: the endpoint it binds, e.g. ``"tcp://127.0.0.1:5580"``.
        workers: its process-pool size.
        data_dir: a directory of CSV datasets to pass as ``--data``.
        log_path: a file for its stdout and stderr, truncated first (default: inherit ours).
        stop_timeout: seconds between ``SIGTERM`` and ``SIGKILL`` when stopping it.
        extra_args: more command-line arguments for ``backtest-queue service``.

    Yields:
        The process (``await process.wait()`` to notice it ending early).

    Raises:
        OSError: it could not be started.
    """
    command = service_command(bind, workers=workers, data_dir=data_dir, extra=extra_args)
    output: IO[Any] | None = None
    if log_path is not None:
        output = log_path.open("wb")
    lifeline = Lifeline()
    env = {**os.environ, "PYTHONUNBUFFERED": "1", "TQDM_DISABLE": "1", **lifeline.env}
    try:
        log.info("starting a backtest service: %s", " ".join(command[1:]))
        process = await anyio.open_process(
            command,
            stdin=subprocess.DEVNULL,
            stdout=output,
            stderr=subprocess.STDOUT if output is not None else None,
            env=env,
            pass_fds=lifeline.pass_fds,
        )
        lifeline.child_started()
        log.info("backtest service started (pid %d)", process.pid)
        try:
            yield process
        finally:
            with anyio.CancelScope(shield=True):
                await stop_process(process, stop_timeout)
    finally:
        lifeline.close()
        if output is not None:
            output.close()


async def stop_process(process: anyio.abc.Process, grace: float) -> int:
    """Terminate ``process`` (``SIGTERM``), kill it after ``grace`` seconds, reap it.

    Returns:
        Its exit status.
    """
    if process.returncode is None:
        with suppress(ProcessLookupError):
            process.terminate()
        with anyio.move_on_after(grace):
            await process.wait()
        if process.returncode is None:
            log.warning("the backtest service did not stop within %g s of SIGTERM; killing it",
                        grace)  # fmt: skip
            with suppress(ProcessLookupError):
                process.kill()
    returncode = await process.wait()
    log.info("the backtest service stopped (exit status %d)", returncode)
    return returncode


def tail(path: Path | None, lines: int = 15) -> str:
    """The last ``lines`` lines of a text file, or ``""`` if there is none."""
    if path is None or not path.exists():
        return ""
    text = path.read_text(encoding="utf-8", errors="replace")
    return "\n".join(text.splitlines()[-lines:])

"""The datasets file the worker processes load: never left behind for long.

The service pickles its datasets once into a temporary file that each worker process
(including the ones that replace a dead worker) loads when it starts. A service that is
stopped removes the file; one that is killed (``kill -9``, out of memory) cannot, so:

* the file is named ``backtest-queue-datasets-<pid>-<random>.pickle`` (the pid is for
  people; nothing relies on it), and
* the service holds an exclusive ``flock`` on it for as long as it runs - the kernel
  releases the lock when the process dies, however it dies;
* every service, when it writes its own file, first removes the files of this name in
  the same directory whose lock it can take: their owner is dead.

So at most one stale file per killed service exists, until the next service starts. Files
of the older name ``backtest-queue-datasets-<random>.pickle`` (before locks) are left
alone: their owners cannot be told from live ones. Without ``fcntl`` (Windows) no lock is
taken and nothing is swept.
"""

from __future__ import annotations

import logging
import os
import pickle
import re
import tempfile
from collections.abc import Mapping
from types import ModuleType
from typing import Final

import pandas as pd

fcntl: ModuleType | None
try:
    import fcntl
except ImportError:  # pragma: no cover - Windows
    fcntl = None

__all__ = ["DatasetsFile", "sweep_stale_files", "write_datasets_file"]

log = logging.getLogger("backtest_queue.service")

PREFIX: Final = "backtest-queue-datasets-"
_NAME: Final = re.compile(rf"^{re.escape(PREFIX)}\d+-[A-Za-z0-9_]+\.pickle$")


class DatasetsFile:
    """A written datasets file, locked until :meth:`close` (which removes it).

    Attributes:
        path: the file, for the workers to load.
    """

    def __init__(self, path: str, fd: int) -> None:
        self.path = path
        self._fd = fd

    def __repr__(self) -> str:
        return f"<DatasetsFile {self.path} {'closed' if self._fd < 0 else 'locked'}>"

    def close(self) -> None:
        """Remove the file and release the lock (idempotent)."""
        if self._fd < 0:
            return
        try:
            os.unlink(self.path)
        except FileNotFoundError:
            pass
        finally:
            os.close(self._fd)  # releases the lock
            self._fd = -1


def _lock(fd: int) -> bool | None:
    """Take an exclusive lock on ``fd`` without waiting.

    Returns:
        True when locked, False when another holder has it, None when this file system
        (or platform) has no locks.
    """
    if fcntl is None:  # pragma: no cover - Windows
        return None
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        return False
    except OSError:  # ENOLCK, EOPNOTSUPP, ...: a file system without flock
        return None
    return True


def _same_file(path: str, fd: int) -> bool:
    try:
        return os.path.samestat(os.stat(path), os.fstat(fd))
    except OSError:
        return False


def sweep_stale_files(directory: str | None = None) -> list[str]:
    """Remove the datasets files whose service is dead (nobody holds their lock).

    Args:
        directory: where to look (default: the temporary directory).

    Returns:
        The paths removed.
    """
    if fcntl is None:  # pragma: no cover - Windows
        return []
    directory = tempfile.gettempdir() if directory is None else directory
    removed: list[str] = []
    try:
        entries = [entry.path for entry in os.scandir(directory) if _NAME.match(entry.name)]
    except OSError as exc:
        log.debug("cannot look for stale datasets files in %s: %s", directory, exc)
        return removed
    for path in entries:
        try:
            fd = os.open(path, os.O_RDONLY)
        except OSError:
            continue  # gone already, or another user's
        try:
            if _lock(fd) is True and _same_file(path, fd):
                os.unlink(path)
                removed.append(path)
        except OSError:
            pass
        finally:
            os.close(fd)
    if removed:
        log.info(
            "removed %d datasets file(s) left by services that were killed: %s",
            len(removed),
            ", ".join(removed),
        )
    return removed


def write_datasets_file(
    bars: Mapping[str, pd.DataFrame], directory: str | None = None
) -> DatasetsFile:
    """Sweep stale files, then pickle ``bars`` to a new private file, locked while we live.

    Args:
        bars: data_id -> OHLCV frame.
        directory: where to write it (default: the temporary directory).

    Returns:
        The file; :meth:`DatasetsFile.close` removes it.

    Raises:
        OSError: the file cannot be written.
    """
    sweep_stale_files(directory)
    for _ in range(100):
        prefix = f"{PREFIX}{os.getpid()}-"
        fd, path = tempfile.mkstemp(prefix=prefix, suffix=".pickle", dir=directory)
        # Another service's sweep may have removed the file between its creation and our
        # lock (it was unlocked then); if so, make another one. Without locks (None), a
        # killed service's file is not swept, and that is all.
        if _lock(fd) is not False and _same_file(path, fd):
            break
        os.close(fd)
    else:  # pragma: no cover - would take 100 sweeps racing us in a row
        raise OSError(f"could not create a datasets file in {directory or tempfile.gettempdir()}")
    file = DatasetsFile(path, fd)
    try:
        with os.fdopen(os.dup(fd), "wb") as stream:
            pickle.dump(dict(bars), stream, protocol=pickle.HIGHEST_PROTOCOL)
    except BaseException:
        file.close()
        raise
    return file

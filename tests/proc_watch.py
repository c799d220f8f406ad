"""Watching processes that are not our children, through /proc and pidfds (Linux)."""

from __future__ import annotations

import os
import select
import time
from pathlib import Path

import pytest

#: For tests that need them: skip elsewhere, saying why.
needs_proc = pytest.mark.skipif(
    not Path("/proc/self/stat").exists() or not hasattr(os, "pidfd_open"),
    reason="watches other processes through /proc and pidfd_open (Linux)",
)


def _stat(pid: int) -> tuple[int, str] | None:
    """(parent pid, state letter) of ``pid``, or None when it is gone."""
    try:
        text = Path(f"/proc/{pid}/stat").read_text()
    except (FileNotFoundError, ProcessLookupError):
        return None
    fields = text.rsplit(")", 1)[1].split()  # the command name may hold spaces
    return int(fields[1]), fields[0]


def alive(pid: int) -> bool:
    """Whether ``pid`` runs (a zombie does not count)."""
    stat = _stat(pid)
    return stat is not None and stat[1] not in ("Z", "X")


def descendants(pid: int) -> set[int]:
    """The live processes below ``pid`` (children, grandchildren, ...)."""
    parents: dict[int, int] = {}
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit() and (stat := _stat(int(entry.name))) is not None:
            parents[int(entry.name)] = stat[0]
    found: set[int] = set()
    frontier = {pid}
    while frontier:
        frontier = {child for child, parent in parents.items() if parent in frontier} - found
        found |= frontier
    return {p for p in found if alive(p)}


def wait_gone(pid: int, timeout: float) -> bool:
    """Wait until ``pid`` has exited (zombies count as exited); False on timeout.

    Waits on a pidfd, which becomes readable when the process exits: no polling.
    """
    try:
        fd = os.pidfd_open(pid)
    except ProcessLookupError:
        return True
    try:
        poller = select.poll()
        poller.register(fd, select.POLLIN)
        deadline = time.monotonic() + timeout
        while (left := deadline - time.monotonic()) > 0:
            if poller.poll(left * 1000):
                return True
        return not alive(pid)
    finally:
        os.close(fd)

"""The running backend's checkpoint and clock, looked up once per dispatcher.

anyio finds the running backend (through sniffio) on every call of
:func:`anyio.lowlevel.checkpoint` and :func:`anyio.current_time`; the dispatcher calls
both several times per message, where that lookup was about 6 % of the requester's CPU
(issue 14, row 4 of the benchmarks). These return the same functions anyio would end up
calling, once: the same schedule point and cancellation check, the same clock (trio's
run clock, a ``MockClock`` included; asyncio's loop time).

Call them inside the event loop that will use the result.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable

import anyio
import anyio.lowlevel
import trio
import trio.lowlevel

__all__ = ["backend_checkpoint", "backend_checkpoint_if_cancelled", "backend_clock"]


def backend_checkpoint() -> Callable[[], Awaitable[None]]:
    """The running backend's checkpoint: what :func:`anyio.lowlevel.checkpoint` awaits
    there (on trio ``trio.lowlevel.checkpoint``; on asyncio ``asyncio.sleep(0)``, where
    anyio's cancel scopes deliver a pending cancellation); elsewhere anyio's own."""
    if trio.lowlevel.in_trio_run():
        return trio.lowlevel.checkpoint
    try:
        asyncio.get_running_loop()
    except RuntimeError:  # not in an asyncio loop: anyio's own says what is wrong
        return anyio.lowlevel.checkpoint
    return _asyncio_checkpoint


async def _asyncio_checkpoint() -> None:
    # anyio's AsyncIOBackend.checkpoint is exactly this (anyio 4).
    await asyncio.sleep(0)


def backend_checkpoint_if_cancelled() -> Callable[[], Awaitable[None]]:
    """The running backend's cancellation check without a schedule point: on trio
    ``trio.lowlevel.checkpoint_if_cancelled`` (what anyio's calls there); elsewhere
    :func:`anyio.lowlevel.checkpoint_if_cancelled`."""
    if trio.lowlevel.in_trio_run():
        return trio.lowlevel.checkpoint_if_cancelled
    return anyio.lowlevel.checkpoint_if_cancelled


def backend_clock() -> Callable[[], float]:
    """The running backend's clock, in seconds: what :func:`anyio.current_time` returns
    (``trio.current_time``; on asyncio the running loop's ``time``).

    On trio, the run's clock's own ``current_time`` (``trio.current_time`` calls it
    through two more frames): the clock is fixed for the run (``trio.run(clock=...)``,
    e.g. a ``MockClock``), and the dispatcher reads it a few times per request.
    """
    if trio.lowlevel.in_trio_run():
        return trio.lowlevel.current_clock().current_time
    try:
        return asyncio.get_running_loop().time
    except RuntimeError:  # not in an event loop: anyio's own says so when called
        return anyio.current_time

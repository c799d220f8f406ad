"""A warning when requests wait in the send queue and no service has connected.

Requests queue until a service is up, by design (start things in any order). But a
caller whose service never comes - a wrong endpoint, a service that is not running, keys
that do not fit - would otherwise hear nothing until its own timeout. This task, run by
the dispatcher, logs one WARNING per **episode**: once requests have been queued for
``after`` seconds with no service up. It says nothing again until a service has been up
(seen up, or a request handed over since the last look; a new episode starts when the
connection is lost and requests queue again).

It looks at the dispatcher every ``min(1, after / 4)`` seconds, so the warning comes
within a quarter of ``after`` (at most a second) of being due.
"""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING

import anyio
import anyio.abc

if TYPE_CHECKING:
    from .dispatcher import Dispatcher

__all__ = ["warn_while_unconnected"]

log = logging.getLogger("backtest_queue")


async def warn_while_unconnected(
    dispatcher: Dispatcher,
    after: float,
    *,
    task_status: anyio.abc.TaskStatus[None] = anyio.TASK_STATUS_IGNORED,
) -> None:
    """Log a warning, once per episode, when requests stay queued ``after`` seconds with
    no service up. Runs until cancelled.

    Args:
        dispatcher: the dispatcher to watch (its queue and its connections).
        after: seconds requests may wait queued with no service up (> 0).
    """
    step = min(1.0, after / 4)
    since: float | None = None  # when requests were first seen queued, nothing up
    warned = False
    sent = 0
    task_status.started()
    while True:
        now = anyio.current_time()
        queued = dispatcher.queue.queued
        # A request handed over since the last look: a service was up, maybe briefly.
        sent, sent_before = dispatcher.queue.stats().sent, sent
        if dispatcher.connected or sent != sent_before:
            since, warned = None, False
        elif not queued:
            since = None
        elif since is None:
            since = now
        elif not warned and now - since >= after:
            warned = True
            _warn(dispatcher, queued, now - since)
        await anyio.sleep(step)


def _warn(dispatcher: Dispatcher, queued: int, waited: float) -> None:
    refused = dispatcher.stats().handshakes_refused
    hint = (
        f"{refused} handshake(s) were refused: check the CURVE keys"
        if refused
        else "is a service running there? 'backtest-queue status ENDPOINT' asks one"
    )
    log.warning(
        "%d request(s) have been queued for %.0f s and no service has connected (%s); "
        "they wait until one does: %s",
        queued,
        waited,
        ", ".join(dispatcher.endpoints),
        hint,
    )

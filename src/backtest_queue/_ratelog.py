"""Rate-limited log lines: a hostile or broken peer cannot flood the log.

A peer can send thousands of bad messages a second; each is counted (statistics) and
answered, but logging each one would bury everything else and cost more than the
answer. :class:`RateLimitedLog` logs the first ``burst`` lines of each *kind* (a key you
choose, e.g. the error code) per ``interval`` seconds and counts the rest; the next line
of that kind after the interval, or :meth:`RateLimitedLog.flush`, first logs
``"suppressed K similar <kind> line(s) in the last N s"``.

Usage (the service's receiver, the dispatcher's receiver)::

    self._bad_input_log = RateLimitedLog(log, burst=10, interval=60.0)
    ...
    self._bad_input_log.log("invalid_reply", logging.WARNING,
                            "invalid reply from %s: %s", endpoint, exc.message)
    ...
    self._bad_input_log.flush()   # at shutdown: report what is still suppressed
"""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Callable
from dataclasses import dataclass

__all__ = ["RateLimitedLog"]


@dataclass(slots=True)
class _Window:
    started_at: float
    logged: int = 0
    suppressed: int = 0
    level: int = logging.INFO


class RateLimitedLog:
    """Log at most ``burst`` lines per kind per ``interval``; summarise the suppressed rest.

    Not thread-safe; use one per task or event loop. Windows are fixed, per kind: the
    first line of a kind opens a window of ``interval`` seconds.

    Args:
        logger: where the lines go.
        burst: lines of one kind logged per window (>= 1).
        interval: window length, in seconds (> 0).
        clock: monotonic time in seconds (default :func:`time.monotonic`).

    Raises:
        ValueError: ``burst`` < 1 or ``interval`` not a positive finite number.
    """

    def __init__(
        self,
        logger: logging.Logger,
        *,
        burst: int = 10,
        interval: float = 60.0,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        if burst < 1:
            raise ValueError(f"burst must be at least 1 line, got {burst!r}")
        if not (interval > 0 and math.isfinite(interval)):
            raise ValueError(f"interval must be a positive number of seconds, got {interval!r}")
        self.logger = logger
        self.burst = burst
        self.interval = interval
        self._clock = clock
        self._windows: dict[str, _Window] = {}

    def __repr__(self) -> str:
        return (
            f"<RateLimitedLog {self.logger.name} burst={self.burst} interval={self.interval:g}s "
            f"suppressed={self.suppressed()}>"
        )

    def log(self, kind: str, level: int, msg: str, *args: object) -> bool:
        """Log ``msg % args`` at ``level`` unless ``kind`` used up its burst.

        Args:
            kind: the key lines are limited by (e.g. ``"invalid_request"``).
            level: a :mod:`logging` level.
            msg: the format string, with ``args`` as for :meth:`logging.Logger.log`.

        Returns:
            Whether the line was logged (``False``: counted as suppressed).
        """
        now = self._clock()
        window = self._windows.get(kind)
        if window is None or now - window.started_at >= self.interval:
            if window is not None:
                self._summarise(kind, window, now)
            window = self._windows[kind] = _Window(now)
        if window.logged >= self.burst:
            window.suppressed += 1
            window.level = max(window.level, level)
            return False
        window.logged += 1
        self.logger.log(level, msg, *args, stacklevel=2)  # the caller's line, not ours
        return True

    def suppressed(self, kind: str | None = None) -> int:
        """Lines suppressed and not yet summarised, of ``kind`` (``None``: all kinds)."""
        if kind is not None:
            window = self._windows.get(kind)
            return 0 if window is None else window.suppressed
        return sum(w.suppressed for w in self._windows.values())

    def flush(self) -> int:
        """Log the "suppressed" summary of every kind now (call it at shutdown, or on a
        timer for a periodic summary); start fresh windows.

        Returns:
            The number of suppressed lines summarised.
        """
        now = self._clock()
        total = 0
        for kind, window in self._windows.items():
            total += window.suppressed
            self._summarise(kind, window, now)
        self._windows.clear()
        return total

    def _summarise(self, kind: str, window: _Window, now: float) -> None:
        if window.suppressed:
            self.logger.log(
                window.level,
                "suppressed %d similar %s line(s) in the last %.0f s",
                window.suppressed,
                kind,
                now - window.started_at,
            )

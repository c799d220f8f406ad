"""The hostile-peer strategies now ship in the test kit; re-exported for the old imports."""

from __future__ import annotations

from backtest_queue.testing.hostile import (
    REPLIES,
    REQUESTS,
    dump,
    error_message,
    hostile_bodies,
    hostile_replies,
    json_values,
    mutated,
    result_message,
)

__all__ = [
    "REPLIES",
    "REQUESTS",
    "dump",
    "error_message",
    "hostile_bodies",
    "hostile_replies",
    "json_values",
    "mutated",
    "result_message",
]

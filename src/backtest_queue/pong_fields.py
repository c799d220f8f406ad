"""The optional status fields of a ``PONG``: dataset ranges, running, queued, uptime.

They let a requester learn from the service what it would otherwise need a local copy
of the data for (how many bars a dataset has and their first and last stamps, to cut an
in-sample / out-of-sample split), and let ``backtest-queue status`` show how busy a
service is. All are **additive**: a service that does not send them is still a valid
v1 peer (the defaults mean "not reported"), and a requester that does not know them
ignores them. Checked by :class:`~backtest_queue.protocol.Pong` on decoding and when
built, like every other field (see ``docs/protocol.md``).
"""

from __future__ import annotations

import math
from datetime import datetime

import msgspec

from .errors import InvalidMessage
from .validation import check_data_id, check_int, check_text, problem

__all__ = ["DatasetRange", "check_status_fields"]

#: Most characters of a ``first`` / ``last`` stamp (as for a request's ``start``/``end``).
_MAX_STAMP = 40


class DatasetRange(msgspec.Struct, frozen=True, kw_only=True, gc=False):
    """What a service's copy of one dataset spans (``PONG.ranges[data_id]``).

    Attributes:
        bars: how many bars it has (>= 1).
        first: the first bar's timestamp, ISO-8601 (UTC, no offset), e.g.
            ``"2017-04-19T09:00:00"``.
        last: the last bar's timestamp, in the same form; not before ``first``.

    Raises:
        InvalidMessage: ``bars`` is not an integer >= 1, a stamp is not ISO-8601 text
            of 4-40 characters, or ``last`` is before ``first``.
    """

    bars: int
    first: str
    last: str

    def __post_init__(self) -> None:
        check_int(self.bars, "ranges.bars", low=1)
        stamps = [_stamp(self.first, "ranges.first"), _stamp(self.last, "ranges.last")]
        if stamps[1] < stamps[0]:
            raise problem("ranges.last", f"must not be before first ({self.first})", self.last,
                          InvalidMessage)  # fmt: skip


def _stamp(value: object, field: str) -> datetime:
    check_text(value, field, min_length=4, max_length=_MAX_STAMP, error=InvalidMessage)
    assert isinstance(value, str)
    try:
        moment = datetime.fromisoformat(value)
    except ValueError:
        raise problem(field, "must be an ISO-8601 date-time", value, InvalidMessage) from None
    if moment.tzinfo is not None:
        raise problem(field, "must be UTC without an offset", value, InvalidMessage)
    return moment


def check_status_fields(ranges: object, running: object, queued: object, uptime_s: object) -> None:
    """Check the optional status fields of a PONG (see the module docstring).

    Args:
        ranges: data_id -> :class:`DatasetRange` (may be empty).
        running: backtests running now, an integer >= 0, or ``None`` (not reported).
        queued: validated backtests waiting for a worker, likewise.
        uptime_s: seconds since the service became ready, a finite number >= 0, or ``None``.

    Raises:
        InvalidMessage: a field breaks its rule (the message names it).
    """
    if not isinstance(ranges, dict):
        raise problem("ranges", "must be an object", ranges, InvalidMessage)
    for data_id, span in ranges.items():
        check_data_id(data_id, "ranges key", InvalidMessage)
        if not isinstance(span, DatasetRange):
            raise problem(f"ranges.{data_id}", "must be a DatasetRange", span, InvalidMessage)
    for name, count in (("running", running), ("queued", queued)):
        if count is not None:
            check_int(count, name)
    if uptime_s is not None and not (
        type(uptime_s) in (int, float) and math.isfinite(uptime_s) and uptime_s >= 0  # type: ignore[arg-type, operator]
    ):
        raise problem("uptime_s", "must be a finite number of seconds >= 0", uptime_s,
                      InvalidMessage)  # fmt: skip

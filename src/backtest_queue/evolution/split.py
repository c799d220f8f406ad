"""In-sample / out-of-sample split of a dataset's bars, as ISO-8601 request bounds.

The bars come from the same loader the backtest service uses
(:func:`backtest_queue.service.datasets.load_catalog`), so the bounds cut exactly where
the service will cut: the built-in datasets ship inside backtesting.py, and a dataset of
a data directory is the same CSV file the service reads.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ..errors import UsageError

if TYPE_CHECKING:
    import pandas as pd

__all__ = ["SampleSplit", "load_bars", "split_bars"]


@dataclass(frozen=True, slots=True, kw_only=True)
class SampleSplit:
    """Where a dataset is cut into an in-sample and an out-of-sample part.

    Bounds are inclusive ISO-8601 timestamps of actual bars (UTC, no offset), ready for
    :class:`~backtest_queue.BacktestRequest` ``start`` / ``end``.

    Attributes:
        data_id: the dataset.
        bars: how many bars it has.
        in_sample_bars: how many bars the in-sample part has (the first ones).
        in_sample: ``(start, end)`` of the in-sample part.
        out_of_sample: ``(start, end)`` of the rest.
    """

    data_id: str
    bars: int
    in_sample_bars: int
    in_sample: tuple[str, str]
    out_of_sample: tuple[str, str]

    @property
    def out_of_sample_bars(self) -> int:
        """How many bars the out-of-sample part has."""
        return self.bars - self.in_sample_bars


def split_bars(
    timestamps: Sequence[datetime] | pd.Index[Any], data_id: str, *, fraction: float = 0.7
) -> SampleSplit:
    """Cut bars at ``fraction`` of their count.

    Args:
        timestamps: the bars' timestamps, increasing (tz-naive UTC).
        data_id: the dataset's id, for the record.
        fraction: the in-sample share of the bars, in (0, 1).

    Returns:
        The split; the in-sample part has ``int(len(timestamps) * fraction)`` bars.

    Raises:
        UsageError: ``fraction`` is not in (0, 1), or a part would have no bars.
    """
    if not 0.0 < fraction < 1.0:
        raise UsageError(f"the in-sample fraction must be in (0, 1), got {fraction!r}")
    count = len(timestamps)
    cut = int(count * fraction)
    if not 0 < cut < count:
        raise UsageError(f"{data_id} has {count} bars: too few to split at {fraction:g}")
    stamps = [_iso(t) for t in (timestamps[0], timestamps[cut - 1], timestamps[cut])]
    return SampleSplit(
        data_id=data_id,
        bars=count,
        in_sample_bars=cut,
        in_sample=(stamps[0], stamps[1]),
        out_of_sample=(stamps[2], _iso(timestamps[count - 1])),
    )


def load_bars(data_id: str, data_dir: Path | str | None = None) -> pd.DataFrame:
    """Load a dataset's OHLCV bars the way the backtest service does.

    Args:
        data_id: a built-in id (``EURUSD-H1``, ``GOOG-D1``, ...) or the stem of a CSV file
            in ``data_dir``.
        data_dir: the directory the service is given with ``--data``, if any.

    Returns:
        The bars (see :mod:`backtest_queue.service.datasets` for the frame's shape).

    Raises:
        UsageError: the dataset is not found (the message lists the ids there are).
        NotADirectoryError: ``data_dir`` is not a directory.
    """
    from ..errors import ProtocolError
    from ..service.datasets import load_catalog

    catalog = load_catalog(data_dir)
    try:
        return catalog.get(data_id).bars
    except ProtocolError:  # its message is the service's, about "this service"
        where = "the built-in datasets" + ("" if data_dir is None else f" and {data_dir}")
        raise UsageError(f"{data_id!r} is not among {where}; there are "
                         f"{', '.join(catalog.ids)}") from None  # fmt: skip


def _iso(moment: datetime) -> str:
    return moment.isoformat()

"""OHLCV datasets: the built-in ones, CSV files from a data directory, and bar ranges.

A dataset is a pandas DataFrame indexed by a tz-naive UTC ``DatetimeIndex`` (strictly
increasing), with float columns ``Open``, ``High``, ``Low``, ``Close``, ``Volume``
(``Volume`` is NaN when the source has none) - the shape backtesting.py wants.

Built-in dataset ids (real data shipped inside backtesting.py, loaded with the same
checks as user files):

``EURUSD-H1`` - EUR/USD hourly bars, 2017-04-19 .. 2018-02-07 (5000 bars).
``GOOG-D1`` - NASDAQ:GOOG daily bars, 2004-08-19 .. 2013-03-01 (2148 bars).
``BTCUSD-MN1`` - BTC/USD monthly bars, 2012 .. 2024 (156 bars; prices reach 100000, so
    send a ``cash`` large enough to buy one unit, or orders are cancelled).

User datasets are ``*.csv`` files directly inside the data directory; the file stem is the
``data_id`` (it must match ``[A-Za-z0-9][A-Za-z0-9._-]*``). The common export formats are
understood - separator and decimal comma, MetaTrader's ``<DATE>``/``<TIME>`` columns,
epoch times, no header - and ambiguous ones refused with the fix: see :mod:`.csvfile`.
Prices must be positive finite numbers with ``high >= low``; a volume, when present, a
finite number >= 0. ``backtest-queue data check DIR`` shows how each file is read.

A bad file is **logged and skipped** at load time (the service starts with the rest);
the warning names the file, the line and the problem. A data directory whose files are
*all* refused, or that has no ``*.csv`` file, is an error (:class:`NoUsableData`): the
user asked for their data and would otherwise get only the built-ins. A file whose stem
is a built-in id replaces the built-in dataset (with a warning).
"""

from __future__ import annotations

import logging
import os
import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from datetime import UTC, date, datetime, timedelta
from importlib.util import find_spec
from pathlib import Path
from typing import Final

import pandas as pd

from ..errors import ProtocolError, UsageError
from .csvfile import MIN_DATASET_BARS, CsvBars, DatasetError, read_bars_csv

__all__ = [
    "BUILTIN_DATASETS",
    "Catalog",
    "Dataset",
    "DataFileCheck",
    "DatasetError",
    "MIN_DATASET_BARS",
    "NoUsableData",
    "check_data_dir",
    "check_data_file",
    "load_catalog",
    "load_csv",
    "parse_bound",
]

log = logging.getLogger("backtest_queue.service")

#: data_id -> file name inside the ``backtesting.test`` package.
BUILTIN_DATASETS: Final[Mapping[str, str]] = {
    "EURUSD-H1": "EURUSD.csv",
    "GOOG-D1": "GOOG.csv",
    "BTCUSD-MN1": "BTCUSD.csv",
}
#: (data_id, start, end) ranges a catalog remembers (a search sends the same few).
_RANGES_KEPT: Final = 4096
_DATA_ID: Final = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,127}$")


class NoUsableData(UsageError):
    """A data directory was given, but none of its files can be used.

    ``str()`` names the directory, each refused file with its problem, and the fix.
    """


@dataclass(frozen=True, slots=True, eq=False)
class Dataset:
    """One loaded dataset.

    Attributes:
        data_id: the id requests use, e.g. ``"EURUSD-H1"``.
        source: where it came from: ``"built-in"`` or the CSV file path.
        bars: the OHLCV frame (see the module docstring for its shape).
    """

    data_id: str
    source: str
    bars: pd.DataFrame

    def __repr__(self) -> str:
        index = self.bars.index
        return (
            f"<Dataset {self.data_id} {len(index)} bars {index[0].isoformat()}"
            f"..{index[-1].isoformat()} from {self.source}>"
        )


def load_csv(path: Path | str, *, source: str | None = None) -> pd.DataFrame:
    """Read and check one OHLCV CSV file (formats in :mod:`.csvfile`).

    Args:
        path: the file.
        source: the name used in error messages (default: the path).

    Returns:
        The OHLCV frame.

    Raises:
        DatasetError: the file cannot be read, is ambiguous or breaks a rule; the message
            names the file, the line (1-based, header = line 1) and what to change.
    """
    return read_bars_csv(path, source=source).bars


def _builtin(data_id: str) -> Dataset:
    name = BUILTIN_DATASETS[data_id]
    # find_spec locates the package without importing it (importing backtesting.py takes
    # about a second and pulls in bokeh and tqdm, which the service process never needs).
    spec = find_spec("backtesting")
    if spec is None or not spec.submodule_search_locations:
        raise DatasetError(f"backtesting.test/{name}", "backtesting.py is not installed")
    path = Path(next(iter(spec.submodule_search_locations))) / "test" / name
    bars = load_csv(path, source=f"backtesting.test/{name}")
    return Dataset(data_id=data_id, source="built-in", bars=bars)


def _csv_files(data_dir: Path) -> Iterable[Path]:
    return sorted(p for p in data_dir.iterdir() if p.is_file() and p.suffix.lower() == ".csv")


@dataclass(frozen=True, slots=True)
class Catalog:
    """The datasets a service can backtest on.

    Attributes:
        datasets: data_id -> dataset.
        skipped: one message per data file that was not loaded, naming file and problem.
    """

    datasets: Mapping[str, Dataset]
    skipped: tuple[str, ...] = ()
    # (data_id, start, end) -> (first, stop), for valid bounds only (see select()).
    _ranges: dict[tuple[str, str | None, str | None], tuple[int, int]] = field(
        default_factory=dict, init=False, repr=False, compare=False
    )

    @property
    def ids(self) -> list[str]:
        """The dataset ids, sorted."""
        return sorted(self.datasets)

    def bars(self) -> dict[str, pd.DataFrame]:
        """data_id -> OHLCV frame, e.g. to hand to worker processes."""
        return {data_id: dataset.bars for data_id, dataset in self.datasets.items()}

    def get(self, data_id: str) -> Dataset:
        """Return the dataset ``data_id``.

        Raises:
            ProtocolError: ``unknown_data`` when the catalog has no such dataset.
        """
        dataset = self.datasets.get(data_id)
        if dataset is None:
            listed = ", ".join(self.ids[:20]) + (", ..." if len(self.datasets) > 20 else "")
            raise ProtocolError(
                "unknown_data",
                f"data_id: {data_id!r} is not a dataset of this service; it has "
                f"{listed or 'none'} (a PING lists them)",
            )
        return dataset

    def select(
        self, data_id: str, start: str | None, end: str | None, *, min_bars: int
    ) -> tuple[int, int]:
        """Find the bars a request may use.

        Args:
            data_id: the request's dataset id.
            start: optional inclusive ISO-8601 lower bound (see :func:`parse_bound`).
            end: optional inclusive ISO-8601 upper bound; a bare date includes that day.
            min_bars: the fewest bars the strategy needs.

        Returns:
            ``(first, stop)``: positional slice of the dataset's bars to use.

        Raises:
            ProtocolError: ``unknown_data`` when the id is not in the catalog;
                ``invalid_request`` naming ``start`` / ``end`` when a bound cannot be
                parsed, ``end`` is before ``start``, or fewer than ``min_bars`` bars
                fall inside the bounds.

        The slice of bounds that parsed is remembered (the last 4096 distinct ones), so
        the same bounds are not parsed and searched again; ``min_bars`` is checked on
        every call, and bounds that failed are never remembered.
        """
        key = (data_id, start, end)
        found = self._ranges.get(key)
        if found is None:
            found = self._slice(data_id, start, end)
            if len(self._ranges) >= _RANGES_KEPT:
                self._ranges.clear()
            self._ranges[key] = found
        first, stop = found
        count = max(0, stop - first)
        if count < min_bars:
            index = self.datasets[data_id].bars.index
            span = f"{index[0].isoformat()} .. {index[-1].isoformat()}"
            named = "start/end" if (start or end) else "data_id"
            raise ProtocolError(
                "invalid_request",
                f"{named}: {count} bars of {data_id} fall in the requested range "
                f"(it spans {span}); this strategy needs at least {min_bars}",
            )
        return first, stop

    def _slice(self, data_id: str, start: str | None, end: str | None) -> tuple[int, int]:
        """:meth:`select` without the ``min_bars`` check, nor memory."""
        index = self.get(data_id).bars.index
        lower = parse_bound("start", start, upper=False)
        upper = parse_bound("end", end, upper=True)
        if (
            lower is not None
            and upper is not None
            and (upper[0] < lower[0] or (upper[1] and upper[0] <= lower[0]))
        ):
            raise ProtocolError("invalid_request", f"end: {end!r} is before start {start!r}")
        first = 0 if lower is None else int(index.searchsorted(lower[0], side="left"))
        if upper is None:
            stop = len(index)
        else:
            stop = int(index.searchsorted(upper[0], side="left" if upper[1] else "right"))
        return first, stop


def parse_bound(field: str, text: str | None, *, upper: bool) -> tuple[pd.Timestamp, bool] | None:
    """Parse an ISO-8601 ``start`` / ``end`` bound into a tz-naive UTC timestamp.

    Dates (``2017-05-01``) and date-times (``2017-05-01T09:00``, ``...Z``, ``...+02:00``)
    are accepted; ones with an offset are converted to UTC, ones without are UTC. A bare
    date as an upper bound includes that whole day.

    Args:
        field: ``"start"`` or ``"end"``, for the error message.
        text: the bound, or ``None``.
        upper: whether it is the upper bound.

    Returns:
        ``None`` for no bound, else ``(timestamp, exclusive)``: ``exclusive`` is true when
        the timestamp itself is outside the range (the midnight after a bare end date).

    Raises:
        ProtocolError: ``invalid_request`` naming ``field`` when ``text`` is not ISO-8601.
    """
    if text is None:
        return None
    stripped = text.strip()
    try:
        day = date.fromisoformat(stripped)
    except ValueError:
        pass
    else:
        moment = datetime(day.year, day.month, day.day)
        if upper:
            return pd.Timestamp(moment + timedelta(days=1)), True
        return pd.Timestamp(moment), False
    try:
        moment = datetime.fromisoformat(stripped)
    except ValueError:
        raise ProtocolError(
            "invalid_request",
            f"{field}: {text!r} is not an ISO-8601 date or date-time "
            "(e.g. 2017-05-01 or 2017-05-01T09:00:00Z)",
        ) from None
    if moment.tzinfo is not None:
        moment = moment.astimezone(UTC).replace(tzinfo=None)
    return pd.Timestamp(moment), False


@dataclass(frozen=True, slots=True)
class DataFileCheck:
    """What became of one file of a data directory.

    Attributes:
        path: the file.
        data_id: the id it would serve (its stem).
        read: the bars and how they were read, or ``None`` when refused.
        problem: why it was refused (names file, line and fix), or ``None``.
    """

    path: Path
    data_id: str
    read: CsvBars | None
    problem: str | None


def check_data_dir(data_dir: str | os.PathLike[str]) -> list[DataFileCheck]:
    """Read every ``*.csv`` file of ``data_dir`` (sorted by name), refusing bad ones.

    Args:
        data_dir: the directory.

    Returns:
        One check per file; empty when the directory has no ``*.csv`` file.

    Raises:
        NotADirectoryError: ``data_dir`` is not a directory.
    """
    directory = Path(data_dir)
    if not directory.is_dir():
        raise NotADirectoryError(f"data directory {str(directory)!r} is not a directory")
    checks: list[DataFileCheck] = []
    seen: set[str] = set()
    for path in _csv_files(directory):
        if path.stem in seen:
            problem = f"{path}: another file already provides {path.stem!r}; rename one"
            checks.append(DataFileCheck(path=path, data_id=path.stem, read=None, problem=problem))
            continue
        seen.add(path.stem)
        checks.append(check_data_file(path))
    return checks


def check_data_file(path: Path) -> DataFileCheck:
    """Read one data file as the service would, refusing it when bad.

    Args:
        path: a ``<data_id>.csv`` file.

    Returns:
        The check: the bars and how they were read, or the problem (never raises for a
        bad file).
    """
    data_id = path.stem
    if not _DATA_ID.match(data_id):
        problem = (
            f"{path}: the file name {data_id!r} is not a valid data_id (letters, digits, "
            "'.', '_', '-'; starting with a letter or digit); rename the file"
        )
        return DataFileCheck(path=path, data_id=data_id, read=None, problem=problem)
    try:
        read = read_bars_csv(path)
    except DatasetError as exc:
        return DataFileCheck(path=path, data_id=data_id, read=None, problem=str(exc))
    return DataFileCheck(path=path, data_id=data_id, read=read, problem=None)


def load_catalog(data_dir: str | os.PathLike[str] | None = None) -> Catalog:
    """Load the built-in datasets and the CSV files of ``data_dir``.

    Bad files are logged (a warning naming file, line and problem) and skipped; each
    loaded file is logged (info) with how it was read.

    Args:
        data_dir: a directory of ``<data_id>.csv`` files, or ``None`` for built-ins only.

    Returns:
        The catalog.

    Raises:
        NotADirectoryError: ``data_dir`` is given but is not a directory.
        NoUsableData: ``data_dir`` has no ``*.csv`` file, or every one was refused.
    """
    datasets: dict[str, Dataset] = {}
    skipped: list[str] = []
    for data_id in BUILTIN_DATASETS:
        try:
            datasets[data_id] = _builtin(data_id)
        except DatasetError as exc:
            log.warning("skipping built-in dataset %s: %s", data_id, exc)
            skipped.append(str(exc))
    if data_dir is None:
        return Catalog(datasets=datasets, skipped=tuple(skipped))
    checks = check_data_dir(data_dir)
    refused = [check.problem for check in checks if check.problem is not None]
    if len(refused) == len(checks):
        raise NoUsableData(_no_usable_data(Path(data_dir), refused))
    for check in checks:
        if check.problem is not None or check.read is None:
            log.warning("skipping dataset file %s", check.problem)
            skipped.append(str(check.problem))
            continue
        if check.data_id in datasets:
            log.warning(
                "dataset file %s replaces the built-in dataset %s", check.path, check.data_id
            )
        bars = check.read.bars
        log.info(
            "dataset %s: %d bars %s .. %s from %s (%s)",
            check.data_id,
            len(bars),
            bars.index[0].isoformat(),
            bars.index[-1].isoformat(),
            check.path,
            check.read.time_zone,
        )
        datasets[check.data_id] = Dataset(data_id=check.data_id, source=str(check.path), bars=bars)
    if refused:
        log.warning(
            "%d of %d data file(s) in %s refused (see above; 'backtest-queue data check %s' "
            "explains each)",
            len(refused),
            len(checks),
            data_dir,
            data_dir,
        )
    return Catalog(datasets=datasets, skipped=tuple(skipped))


def _no_usable_data(directory: Path, refused: list[str]) -> str:
    fix = f"run 'backtest-queue data check {directory}' to see how each file is read"
    if not refused:
        others = sorted(p.name for p in directory.iterdir())
        listed = ", ".join(others[:10]) + (", ..." if len(others) > 10 else "")
        return (
            f"data directory {str(directory)!r} has no *.csv file"
            f"{f' (it has {listed})' if others else ' (it is empty)'}; put <data_id>.csv "
            "files there, or leave the data directory out to serve only the built-in datasets"
        )
    shown = " | ".join(refused[:5]) + (
        f" | and {len(refused) - 5} more" if len(refused) > 5 else ""
    )
    return (
        f"none of the {len(refused)} CSV file(s) in data directory {str(directory)!r} "
        f"can be used: {shown}; fix them ({fix})"
    )

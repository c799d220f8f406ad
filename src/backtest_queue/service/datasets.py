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
``data_id`` (it must match ``[A-Za-z0-9][A-Za-z0-9._-]*``). The header names the columns,
case-insensitively: ``timestamp`` (or ``time``, ``date``, ``datetime``, or an unnamed
first column), ``open``, ``high``, ``low``, ``close`` and optionally ``volume``; other
columns are ignored. Timestamps are ISO-8601; ones with a UTC offset are converted to
UTC, ones without are taken as UTC. Rows must be sorted by timestamp without
duplicates; prices must be positive finite numbers with ``high >= low``; a volume, when
present, a finite number >= 0. Blank lines inside the file are errors.

A bad file is **logged and skipped** at load time (the service starts with the rest);
the warning names the file, the line and the problem. A file whose stem is a built-in id
replaces the built-in dataset (with a warning).
"""

from __future__ import annotations

import logging
import os
import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from datetime import UTC, date, datetime, timedelta
from importlib.util import find_spec
from pathlib import Path
from typing import Final

import numpy as np
import pandas as pd

from ..errors import ProtocolError

__all__ = [
    "BUILTIN_DATASETS",
    "Catalog",
    "Dataset",
    "DatasetError",
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
_DATA_ID: Final = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,127}$")
_TIME_NAMES: Final = ("timestamp", "time", "date", "datetime")
_PRICE_COLUMNS: Final = ("open", "high", "low", "close")
#: A dataset must have at least this many bars to be loaded at all.
MIN_DATASET_BARS: Final = 2


class DatasetError(ValueError):
    """A dataset file cannot be used. ``str()`` names the file, the line and the problem."""

    def __init__(self, source: str, problem: str, *, line: int | None = None) -> None:
        where = f"{source}, line {line}" if line is not None else source
        super().__init__(f"{where}: {problem}")
        self.source = source
        self.line = line
        self.problem = problem


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
    """Read and check one OHLCV CSV file (format in the module docstring).

    Args:
        path: the file.
        source: the name used in error messages (default: the path).

    Returns:
        The OHLCV frame.

    Raises:
        DatasetError: the file cannot be read or breaks a rule; the message names the
            file, the line (1-based, header = line 1) and the problem.
    """
    where = source or str(path)
    try:
        raw = pd.read_csv(
            path, dtype=str, keep_default_na=False, skip_blank_lines=False, encoding="utf-8-sig"
        )
    except pd.errors.EmptyDataError:
        raise DatasetError(where, "the file is empty") from None
    except (pd.errors.ParserError, UnicodeDecodeError, OSError) as exc:
        problem = str(exc).replace("\n", " ").strip()
        raise DatasetError(where, f"not a readable CSV file: {problem}") from None
    if not isinstance(raw.index, pd.RangeIndex):
        raise DatasetError(where, "the rows have one more field than the header", line=2)
    columns = _map_columns(where, list(raw.columns))
    # Trailing empty lines are harmless; blank lines between bars are not.
    filled = (raw != "").any(axis=1).to_numpy()
    last = int(np.flatnonzero(filled)[-1]) + 1 if filled.any() else 0
    raw = raw.iloc[:last]
    if len(raw) < MIN_DATASET_BARS:
        raise DatasetError(where, f"has {len(raw)} bars; at least {MIN_DATASET_BARS} are needed")

    text = raw[columns["timestamp"]].str.strip()
    stamps = pd.to_datetime(text, utc=True, format="ISO8601", errors="coerce")
    bad = np.flatnonzero(stamps.isna().to_numpy())
    if bad.size:
        row = int(bad[0])
        raise DatasetError(
            where, f"timestamp {text.iloc[row]!r} is not an ISO-8601 date-time", line=row + 2
        )
    index = pd.DatetimeIndex(stamps).tz_convert(UTC).tz_localize(None)
    steps = np.diff(index.asi8)
    bad = np.flatnonzero(steps <= 0)
    if bad.size:
        row = int(bad[0]) + 1
        problem = (
            f"duplicate timestamp {index[row].isoformat()}"
            if steps[row - 1] == 0
            else f"timestamp {index[row].isoformat()} is earlier than the previous row's "
            f"{index[row - 1].isoformat()}; rows must be sorted by time"
        )
        raise DatasetError(where, problem, line=row + 2)

    frame = pd.DataFrame(index=pd.Index(index, name="timestamp"))
    for name in (*_PRICE_COLUMNS, "volume"):
        if name not in columns:
            frame[name.capitalize()] = np.nan
            continue
        text = raw[columns[name]].str.strip()
        values = pd.to_numeric(text, errors="coerce").to_numpy(dtype=float)
        invalid = ~np.isfinite(values)
        invalid |= values < 0 if name == "volume" else values <= 0
        bad = np.flatnonzero(invalid)
        if bad.size:
            row = int(bad[0])
            shown = text.iloc[row]
            rule = "a finite number >= 0" if name == "volume" else "a positive finite number"
            problem = f"{name} is missing" if shown == "" else f"{name} {shown!r} is not {rule}"
            raise DatasetError(where, problem, line=row + 2)
        frame[name.capitalize()] = values
    bad = np.flatnonzero((frame["High"] < frame["Low"]).to_numpy())
    if bad.size:
        row = int(bad[0])
        raise DatasetError(
            where,
            f"high {frame['High'].iloc[row]} is below low {frame['Low'].iloc[row]}",
            line=row + 2,
        )
    return frame


def _map_columns(where: str, header: list[str]) -> dict[str, str]:
    """Map canonical names (timestamp, open, ...) to the file's column names."""
    found: dict[str, str] = {}
    for position, column in enumerate(header):
        name = str(column).strip().lower()
        if name in _TIME_NAMES or (position == 0 and (name == "" or name.startswith("unnamed:"))):
            name = "timestamp"
        if name not in ("timestamp", *_PRICE_COLUMNS, "volume"):
            continue
        if name in found:
            raise DatasetError(
                where, f"two columns name the {name} ({found[name]!r} and {column!r})", line=1
            )
        found[name] = column
    missing = [n for n in ("timestamp", *_PRICE_COLUMNS) if n not in found]
    if missing:
        raise DatasetError(
            where,
            f"missing column(s) {', '.join(missing)}; the header must name timestamp, open, "
            f"high, low, close (and optionally volume), got {', '.join(map(str, header))}",
            line=1,
        )
    return found


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
        """
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
        count = max(0, stop - first)
        if count < min_bars:
            span = f"{index[0].isoformat()} .. {index[-1].isoformat()}"
            field = "start/end" if (start or end) else "data_id"
            raise ProtocolError(
                "invalid_request",
                f"{field}: {count} bars of {data_id} fall in the requested range "
                f"(it spans {span}); this strategy needs at least {min_bars}",
            )
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


def load_catalog(data_dir: str | os.PathLike[str] | None = None) -> Catalog:
    """Load the built-in datasets and the CSV files of ``data_dir``.

    Bad files are logged (a warning naming file, line and problem) and skipped.

    Args:
        data_dir: a directory of ``<data_id>.csv`` files, or ``None`` for built-ins only.

    Returns:
        The catalog.

    Raises:
        NotADirectoryError: ``data_dir`` is given but is not a directory.
    """
    datasets: dict[str, Dataset] = {}
    skipped: list[str] = []
    for data_id in BUILTIN_DATASETS:
        try:
            datasets[data_id] = _builtin(data_id)
        except DatasetError as exc:
            log.warning("skipping built-in dataset %s: %s", data_id, exc)
            skipped.append(str(exc))
    if data_dir is not None:
        directory = Path(data_dir)
        if not directory.is_dir():
            raise NotADirectoryError(f"data directory {str(directory)!r} is not a directory")
        for path in _csv_files(directory):
            data_id = path.stem
            if not _DATA_ID.match(data_id):
                problem = (
                    f"{path}: the file name {data_id!r} is not a valid data_id "
                    "(letters, digits, '.', '_', '-'; starting with a letter or digit)"
                )
                log.warning("skipping dataset file %s", problem)
                skipped.append(problem)
                continue
            try:
                bars = load_csv(path)
            except DatasetError as exc:
                log.warning("skipping dataset file %s", exc)
                skipped.append(str(exc))
                continue
            if data_id in datasets:
                if datasets[data_id].source != "built-in":
                    problem = f"{path}: another file already provides {data_id!r}"
                    log.warning("skipping dataset file %s", problem)
                    skipped.append(problem)
                    continue
                log.warning("dataset file %s replaces the built-in dataset %s", path, data_id)
            datasets[data_id] = Dataset(data_id=data_id, source=str(path), bars=bars)
    return Catalog(datasets=datasets, skipped=tuple(skipped))

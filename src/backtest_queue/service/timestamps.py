"""Time stamps of OHLCV CSV files: one format per file, refused when ambiguous.

Accepted (picked from the first bar, then required of every bar): ISO-8601 (a UTC offset
is converted to UTC, a stamp without one is taken as UTC - a file must not mix the two);
year-first dates ``2023.01.02``, ``2023/01/02``, ``20230102`` with an optional
``HH:MM[:SS[.fff]]`` or ``HHMMSS`` time (taken as UTC); epoch seconds, milliseconds,
microseconds or nanoseconds, told apart by magnitude (a date in 1971..2099);
``DD/MM/YYYY`` or ``MM/DD/YYYY`` (also with ``.`` or ``-``) only when a day above 12 in
the file shows which it is. pandas parses, with an explicit format or unit.
"""

from __future__ import annotations

import re
from typing import Final, Literal

import numpy as np
import pandas as pd

__all__ = ["RowProblem", "parse_stamps"]

_DAY_MONTH: Final = re.compile(r"^(\d{1,2})([./-])(\d{1,2})\2(\d{4})(?:[ T](.+))?$")
#: a UTC offset after a time of day (not the ``-02`` ending a bare date)
_OFFSET: Final = r"\d:\d{2}(?::\d{2}(?:\.\d+)?)?\s*(?:[zZ]|[+-]\d{2}(?::?\d{2})?)$"
_UTC: Final = "UTC"
_TIMES: Final = (" %H:%M:%S.%f", " %H:%M:%S", " %H:%M", " %H%M%S", "")
_YEAR_FIRST: Final = tuple(f"{d}{t}" for d in ("%Y.%m.%d", "%Y/%m/%d", "%Y%m%d") for t in _TIMES)
#: epoch unit -> values per second; a stamp must fall in [1971-01-01, 2100-01-01).
_EPOCH_UNITS: Final[dict[Literal["s", "ms", "us", "ns"], int]] = {
    "s": 1,
    "ms": 10**3,
    "us": 10**6,
    "ns": 10**9,
}
_EPOCH_NAMES: Final = {
    "s": "seconds",
    "ms": "milliseconds",
    "us": "microseconds",
    "ns": "nanoseconds",
}
_EPOCH_LOW, _EPOCH_HIGH = 31_536_000, 4_102_444_800
_ISO_FIX: Final = "write time stamps as ISO-8601, e.g. 2023-01-02T00:00:00Z or 2023-01-02 00:00"


class RowProblem(Exception):
    """A problem at a file line (1-based), turned into a ``DatasetError`` by the caller."""

    def __init__(self, problem: str, line: int | None = None) -> None:
        super().__init__(problem)
        self.problem = problem
        self.line = line


def parse_stamps(text: pd.Series) -> tuple[pd.DatetimeIndex, str, str]:
    """Parse time stamps (formats in the module docstring) into naive UTC.

    Args:
        text: the stamps as text (stripped; a date and a time joined by a space),
            indexed by file line number.

    Returns:
        ``(index, format, time_zone)``: the tz-naive UTC stamps, how they were read and
        how they became UTC, both as short phrases.

    Raises:
        RowProblem: a stamp cannot be read, or the format is ambiguous; names the line
            and the fix.
    """
    index, described, zone = _parse(text)
    # pandas may keep stamps outside its nanosecond range at a coarser unit; the engine
    # and the fingerprint work in nanoseconds: refuse them here, naming the line.
    seconds = index.as_unit("s")  # every stamp pandas read fits at this unit
    outside = np.flatnonzero((seconds < _FIRST_STAMP) | (seconds > _LAST_STAMP))
    if outside.size:
        row = int(outside[0])
        raise RowProblem(
            f"time stamp {text.iloc[row]!r} is outside the range pandas can hold in "
            f"nanoseconds ({_FIRST_STAMP.date()} .. {_LAST_STAMP.date()}); check the year",
            int(text.index[row]),
        )
    return index, described, zone


_FIRST_STAMP = pd.Timestamp.min.ceil("D").tz_localize(None)
_LAST_STAMP = pd.Timestamp.max.floor("D").tz_localize(None)


def _parse(text: pd.Series) -> tuple[pd.DatetimeIndex, str, str]:
    sample = str(text.iloc[0])
    if re.fullmatch(r"\d+(\.\d+)?", sample) and not (
        len(sample) == 8 and _first_format(sample, ("%Y%m%d",))
    ):
        return _epoch(text)
    day_month = _DAY_MONTH.match(sample)
    if day_month is not None:
        fmt = _day_month_format(text, day_month)
    else:
        fmt = _first_format(sample, _YEAR_FIRST) or "ISO8601"
    if fmt == "ISO8601":
        try:
            stamps = pd.to_datetime(text, format="ISO8601", errors="coerce")
        except ValueError:  # "Mixed timezones": offsets that change (DST), or some missing
            _offsets_everywhere(text)
            stamps = pd.to_datetime(text, utc=True, format="ISO8601", errors="coerce")
        described = "ISO-8601"
        if stamps.dt.tz is None:
            stamps = stamps.dt.tz_localize(_UTC)
            zone = "no time zone in the file: taken as UTC"
        else:
            zone = "converted to UTC from the offsets in the stamps"
    else:
        stamps = pd.to_datetime(text, format=fmt, errors="coerce").dt.tz_localize(_UTC)
        described = _readable(fmt)
        zone = "no time zone in the file: taken as UTC"
    bad = np.flatnonzero(stamps.isna().to_numpy())
    if bad.size:
        row = int(bad[0])
        like = f"read as {_readable(fmt)} like line {text.index[0]}'s {sample!r}"
        if fmt == "ISO8601":
            like = "an ISO-8601 date-time" if row == 0 else f"an ISO-8601 date-time like {sample!r}"
            raise RowProblem(
                f"time stamp {text.iloc[row]!r} is not {like}; {_ISO_FIX}", int(text.index[row])
            )
        raise RowProblem(
            f"time stamp {text.iloc[row]!r} cannot be {like}; use one format in the file",
            int(text.index[row]),
        )
    return pd.DatetimeIndex(stamps).tz_convert(_UTC).tz_localize(None), described, zone


def _offsets_everywhere(text: pd.Series) -> None:
    """Refuse stamps of which some have a UTC offset and some not."""
    offset = text.str.contains(_OFFSET, regex=True).to_numpy()
    if offset.any() and not offset.all():
        with_, without = int(np.flatnonzero(offset)[0]), int(np.flatnonzero(~offset)[0])
        raise RowProblem(
            f"time stamp {text.iloc[without]!r} has no UTC offset, but line "
            f"{text.index[with_]}'s {text.iloc[with_]!r} has one; give every stamp "
            "an offset (or Z), or none (then they are taken as UTC)",
            int(text.index[without]),
        )


def _readable(fmt: str) -> str:
    """``%Y.%m.%d %H:%M`` -> ``YYYY.MM.DD hh:mm``."""
    for code, shown in (("%Y", "YYYY"), ("%m", "MM"), ("%d", "DD"), ("%H", "hh"), ("%M", "mm")):
        fmt = fmt.replace(code, shown)
    return fmt.replace("%S", "ss").replace("%f", "fff")


def _first_format(sample: str, formats: tuple[str, ...]) -> str | None:
    for fmt in formats:
        if not pd.isna(pd.to_datetime(sample, format=fmt, errors="coerce")):
            return fmt
    return None


def _day_month_format(text: pd.Series, sample: re.Match[str]) -> str:
    """``%d/%m/%Y...`` or ``%m/%d/%Y...`` when the file shows which, else refuse."""
    parts = text.str.extract(_DAY_MONTH)
    first = pd.to_numeric(parts[0], errors="coerce").to_numpy()
    second = pd.to_numeric(parts[2], errors="coerce").to_numpy()
    day_first, month_first = np.flatnonzero(first > 12), np.flatnonzero(second > 12)
    separator = sample.group(2)
    iso = f"{sample.group(4)}-{int(sample.group(3)):02d}-{int(sample.group(1)):02d}"
    iso_us = f"{sample.group(4)}-{int(sample.group(1)):02d}-{int(sample.group(3)):02d}"
    if day_first.size and month_first.size:
        a, b = int(day_first[0]), int(month_first[0])
        raise RowProblem(
            f"date {text.iloc[b]!r} is month-first, but line {text.index[a]}'s "
            f"{text.iloc[a]!r} is day-first; {_ISO_FIX}",
            int(text.index[b]),
        )
    if not day_first.size and not month_first.size:
        raise RowProblem(
            f"date {sample.group(0)!r} is ambiguous: day first ({iso}) or month first "
            f"({iso_us})? No date in the file has a day above 12 to tell; {_ISO_FIX} "
            "(a spreadsheet: format the column as yyyy-mm-dd hh:mm:ss before saving)",
            int(text.index[0]),
        )
    order = ("%d", "%m") if day_first.size else ("%m", "%d")
    date = f"{order[0]}{separator}{order[1]}{separator}%Y"
    times = tuple(t.replace(" ", "T") for t in _TIMES[:-1]) + _TIMES
    suffix = _first_format(sample.group(0), tuple(date + t for t in times))
    return suffix or date


def _epoch(text: pd.Series) -> tuple[pd.DatetimeIndex, str, str]:
    values = pd.to_numeric(text, errors="coerce")
    bad = np.flatnonzero(values.isna().to_numpy())
    if bad.size:
        row = int(bad[0])
        raise RowProblem(
            f"time stamp {text.iloc[row]!r} is not a number like line {text.index[0]}'s "
            f"epoch time {text.iloc[0]!r}; use one format in the file",
            int(text.index[row]),
        )
    numbers = values.to_numpy()
    units = np.full(len(numbers), "", dtype=object)
    for name, scale in _EPOCH_UNITS.items():
        units[(numbers >= _EPOCH_LOW * scale) & (numbers < _EPOCH_HIGH * scale)] = name
    unknown = np.flatnonzero(units == "")
    if unknown.size:
        row = int(unknown[0])
        raise RowProblem(
            f"time stamp {text.iloc[row]!r} is a number, but not epoch seconds, "
            "milliseconds, microseconds or nanoseconds of a date in 1971..2099, so its "
            f"unit is a guess; {_ISO_FIX}",
            int(text.index[row]),
        )
    found = pd.unique(units)
    if len(found) > 1:
        other = int(np.flatnonzero(units != units[0])[0])
        raise RowProblem(
            f"time stamp {text.iloc[other]!r} is epoch {_EPOCH_NAMES[units[other]]}, but "
            f"line {text.index[0]}'s {text.iloc[0]!r} is epoch "
            f"{_EPOCH_NAMES[units[0]]}; use one unit in the file",
            int(text.index[other]),
        )
    unit = next(u for u in _EPOCH_UNITS if u == units[0])
    stamps = pd.to_datetime(values, unit=unit, utc=True)
    index = pd.DatetimeIndex(stamps).tz_localize(None)
    return index, f"epoch {_EPOCH_NAMES[unit]}", "epoch time is UTC"

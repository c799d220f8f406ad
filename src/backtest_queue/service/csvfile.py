"""Read one OHLCV CSV file the way people export them, or refuse it with the fix.

What is accepted (pandas does the parsing; this module only decides *how* to call it):

* **Encoding**: UTF-8 (with or without a byte-order mark), or UTF-16 with one (MetaTrader
  5 can write that).
* **Separator**: tab, semicolon or comma - the first of these found in the file's first
  line. (``csv.Sniffer`` is not used: on a header-less file with decimal commas,
  ``1,07;1,08``, it prefers the comma.)
* **Decimal mark**: ``.``, or ``,`` when numbers use a comma and none a point. A file
  whose numbers use both is refused (one of them would be a thousands separator).
* **Header**: names matched case-insensitively, ignoring ``<>``, spaces, ``_`` and
  ``-``: ``timestamp`` / ``datetime`` / ``open time`` / ``gmt time`` / ``local time`` /
  ``unix`` (or an unnamed first column), or ``date`` and ``time`` (joined when both are
  there); ``open``, ``high``, ``low``, ``close``; ``volume`` / ``vol`` and
  ``tickvol`` / ``tick_volume`` (the tick volume is used when there is no real volume or
  it is all zero, as in MetaTrader forex exports). Other columns are ignored.
* **No header**: ``timestamp,open,high,low,close[,volume]`` or
  ``date,time,open,high,low,close[,volume]`` (MetaTrader 4's export), told apart by the
  values; any other width is refused (which column would be which?).
* **Time stamps** (:mod:`.timestamps`), one format per file, picked from the first bar
  and then required of every bar: ISO-8601 (``2023-01-02T00:00:00Z``,
  ``2023-01-02 00:00``; a UTC offset is converted to UTC, a stamp without one is taken
  as UTC - a file must not mix the two); year-first dates ``2023.01.02``,
  ``2023/01/02``, ``20230102`` with an optional ``HH:MM[:SS[.fff]]`` or ``HHMMSS`` time
  (taken as UTC); epoch seconds, milliseconds, microseconds or nanoseconds, told apart
  by magnitude (a date between 1971 and 2099); ``DD/MM/YYYY`` or ``MM/DD/YYYY`` (also
  with ``.`` or ``-``) only when a day above 12 in the file shows which it is - else
  refused as ambiguous.
* **Order**: oldest first, or newest first (the bars are then reversed). Rows repeating
  an earlier bar exactly are dropped and counted; a repeated time stamp with other
  prices is refused.

Every refusal is a :class:`DatasetError` naming the file, the line and what to change.
"""

from __future__ import annotations

import codecs
import re
from dataclasses import dataclass
from io import StringIO
from pathlib import Path
from typing import Final

import numpy as np
import pandas as pd

from .timestamps import RowProblem as _Refused
from .timestamps import parse_stamps

__all__ = ["MIN_DATASET_BARS", "CsvBars", "DatasetError", "read_bars_csv"]

#: A dataset must have at least this many bars to be loaded at all.
MIN_DATASET_BARS: Final = 2

_PRICES: Final = ("open", "high", "low", "close")
#: canonical header name (lower case, letters and digits only) -> role
_ALIASES: Final[dict[str, str]] = {
    **dict.fromkeys(
        ("timestamp", "datetime", "opentime", "gmttime", "localtime", "unix", "unixtime"),
        "stamp",
    ),
    "date": "date",
    "time": "time",
    **{name: name for name in _PRICES},
    **dict.fromkeys(("volume", "vol", "realvolume"), "volume"),
    **dict.fromkeys(("tickvol", "tickvolume"), "tickvol"),
}
_TIME_OF_DAY: Final = re.compile(r"^\d{1,2}:\d{2}(:\d{2}(\.\d+)?)?$")


class DatasetError(ValueError):
    """A dataset file cannot be used. ``str()`` names the file, the line and the problem."""

    def __init__(self, source: str, problem: str, *, line: int | None = None) -> None:
        where = f"{source}, line {line}" if line is not None else source
        super().__init__(f"{where}: {problem}")
        self.source = source
        self.line = line
        self.problem = problem


@dataclass(frozen=True, slots=True, eq=False)
class CsvBars:
    """One CSV file read into bars, and how it was read (what ``data check`` prints).

    Attributes:
        bars: the OHLCV frame (shape in :mod:`backtest_queue.service.datasets`).
        separator: the field separator, e.g. ``";"``.
        decimal: the decimal mark, ``"."`` or ``","``.
        header: whether the first line names the columns.
        time_columns: the column(s) the stamps came from, e.g. ``("<DATE>", "<TIME>")``.
        time_format: how the stamps were read, e.g. ``"epoch milliseconds"``.
        time_zone: how they became UTC, e.g. ``"no time zone in the file: taken as UTC"``.
        volume_column: the column the volume came from, or ``None``.
        duplicates: rows dropped because they repeat an earlier bar exactly.
        reversed: the file was newest first and the bars were reversed.
        notes: other things worth knowing, one sentence each.
    """

    bars: pd.DataFrame
    separator: str
    decimal: str
    header: bool
    time_columns: tuple[str, ...]
    time_format: str
    time_zone: str
    volume_column: str | None
    duplicates: int
    reversed: bool
    notes: tuple[str, ...]


def read_bars_csv(path: Path | str, *, source: str | None = None) -> CsvBars:
    """Read and check one OHLCV CSV file (formats in the module docstring).

    Args:
        path: the file.
        source: the name used in error messages (default: the path).

    Returns:
        The bars and how the file was read.

    Raises:
        DatasetError: the file cannot be read, is ambiguous or breaks a rule; the message
            names the file, the line (1-based; the header is line 1) and what to change.
    """
    where = source or str(path)
    try:
        return _read(Path(path))
    except _Refused as exc:
        raise DatasetError(where, exc.problem, line=exc.line) from None


def _read(path: Path) -> CsvBars:
    try:
        data = path.read_bytes()
    except OSError as exc:
        raise _Refused(f"cannot be read: {exc.strerror or exc}") from None
    try:
        if data.startswith((codecs.BOM_UTF16_LE, codecs.BOM_UTF16_BE)):
            text = data.decode("utf-16")  # MetaTrader 5 can export UTF-16
        else:
            text = data.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        raise _Refused(
            f"is not UTF-8 text ({exc.reason} at byte {exc.start}); save it as UTF-8"
        ) from None
    first_line = next((line for line in text.splitlines() if line.strip()), None)
    if first_line is None:
        raise _Refused("the file is empty")
    separator = next(s for s in ("\t", ";", ",") if s in first_line or s == ",")
    try:
        raw = pd.read_csv(
            StringIO(text),
            sep=separator,
            header=None,
            dtype=str,
            keep_default_na=False,
            skip_blank_lines=False,
            skipinitialspace=True,
        )
    except (pd.errors.ParserError, pd.errors.EmptyDataError) as exc:
        raise _parser_refusal(str(exc), first_line) from None
    raw = raw.fillna("")
    raw.index = pd.RangeIndex(1, len(raw) + 1)  # the file's line numbers
    # Trailing blank lines are harmless; blank lines between bars are not.
    filled = (raw != "").any(axis=1).to_numpy()
    if not filled.any():
        raise _Refused("the file is empty")
    raw = raw.iloc[: int(np.flatnonzero(filled)[-1]) + 1]
    blank = np.flatnonzero(~filled[: len(raw)])
    if blank.size:
        raise _Refused(
            "the line is blank; remove blank lines between bars", int(raw.index[blank[0]])
        )
    roles, header = _columns(raw, separator)
    body = raw.iloc[1:] if header else raw
    if len(body) < MIN_DATASET_BARS:
        raise _Refused(f"has {len(body)} bars; at least {MIN_DATASET_BARS} are needed")
    notes: list[str] = []
    names = [
        (str(raw.iloc[0, i]).strip() or "(unnamed)") if header else f"field {i + 1}"
        for i in range(raw.shape[1])
    ]

    stamp_columns = roles["stamp"]
    stamp_text = body[stamp_columns[0]].str.strip()
    for column in stamp_columns[1:]:
        stamp_text = stamp_text + " " + body[column].str.strip()
    stamps, time_format, time_zone = parse_stamps(stamp_text)

    numeric: tuple[str, ...] = (*_PRICES, "volume", "tickvol")
    columns = {role: roles[role][0] for role in numeric if role in roles}
    parsed: dict[str, np.ndarray] = {
        role: pd.to_numeric(body[c], errors="coerce").to_numpy(dtype=float)
        for role, c in columns.items()
    }
    decimal = _decimal_mark(body, columns, parsed, names)
    values = {
        role: _numbers(body[c], parsed[role], role, decimal, names[c])
        for role, c in columns.items()
    }
    volume_column: str | None = None
    if "volume" in values and not ("tickvol" in values and not values["volume"].any()):
        volume_column = names[roles["volume"][0]]
        volume = values["volume"]
    elif "tickvol" in values:
        volume_column = names[roles["tickvol"][0]]
        volume = values["tickvol"]
        if "volume" in values:
            notes.append(f"{names[roles['volume'][0]]} is all 0; the volume is {volume_column}")
    else:
        volume = np.full(len(body), np.nan)

    lines = body.index.to_numpy()
    frame = pd.DataFrame(
        {role.capitalize(): values[role] for role in _PRICES} | {"Volume": volume},
        index=pd.Index(stamps, name="timestamp"),
    )
    bad = np.flatnonzero((frame["High"] < frame["Low"]).to_numpy())
    if bad.size:
        row = int(bad[0])
        raise _Refused(
            f"high {frame['High'].iloc[row]} is below low {frame['Low'].iloc[row]}",
            int(lines[row]),
        )
    reversed_ = len(frame) > 1 and frame.index[-1] < frame.index[0]
    if reversed_:
        frame, lines = frame.iloc[::-1], lines[::-1]
        notes.append("the file is newest first; the bars were reversed")
    frame, duplicates = _ordered(frame, lines)
    outside = (
        (frame[["Open", "Close"]].max(axis=1) > frame["High"])
        | (frame[["Open", "Close"]].min(axis=1) < frame["Low"])
    ).to_numpy()
    if outside.any():
        notes.append(
            f"{int(outside.sum())} bar(s) have open or close outside low..high "
            f"(first at {frame.index[int(np.flatnonzero(outside)[0])].isoformat()})"
        )
    return CsvBars(
        bars=frame,
        separator=separator,
        decimal=decimal,
        header=header,
        time_columns=tuple(names[c] for c in stamp_columns),
        time_format=time_format,
        time_zone=time_zone,
        volume_column=volume_column,
        duplicates=duplicates,
        reversed=bool(reversed_),
        notes=tuple(notes),
    )


def _parser_refusal(message: str, first_line: str) -> _Refused:
    found = re.search(r"Expected (\d+) fields in line (\d+), saw (\d+)", message)
    if found is None:
        return _Refused(f"not a readable CSV file: {' '.join(message.split())}")
    expected, line, saw = (int(g) for g in found.groups())
    if expected == 1:  # a title line above the header, e.g. a download site's URL
        return _Refused(
            f"the first line {first_line.strip()[:60]!r} has no ',', ';' or tab, but line "
            f"{line} has {saw} fields; remove the lines above the header",
            1,
        )
    return _Refused(
        f"has {saw} fields, but the first line has {expected}; every line needs the same "
        "number of fields (a decimal comma in a comma-separated file? quote the value or "
        "separate fields with ';')",
        line,
    )


def _columns(raw: pd.DataFrame, separator: str) -> tuple[dict[str, list[int]], bool]:
    """role -> column positions (``stamp``: one column, or date and time), and header?"""
    first = [str(v).strip() for v in raw.iloc[0]]
    roles: dict[str, list[int]] = {}
    for position, name in enumerate(first):
        key = re.sub(r"[^a-z0-9]", "", name.lower())
        role = _ALIASES.get(key)
        if role is None and position == 0 and (key == "" or key.startswith("unnamed")):
            role = "stamp"
        if role is not None:
            roles.setdefault(role, []).append(position)
    if not any(role in roles for role in (*_PRICES, "date", "time")) and first[0][:1].isdigit():
        return _headerless(raw, first, separator), False
    for role, positions in roles.items():
        if len(positions) > 1:
            shown = " and ".join(repr(first[p]) for p in positions)
            raise _Refused(f"two columns name the {role} ({shown}); rename or remove one", 1)
    given = [r for r in ("stamp", "date", "time") if r in roles]
    stamp = [roles.pop(r)[0] for r in given]
    if len(stamp) > 1 and given != ["date", "time"]:
        shown = " and ".join(repr(first[p]) for p in stamp)
        raise _Refused(
            f"{len(stamp)} columns give the time ({shown}); keep one (or a date and a "
            "time column), or rename the others",
            1,
        )
    missing = (["timestamp"] if not stamp else []) + [p for p in _PRICES if p not in roles]
    if missing:
        raise _Refused(
            f"missing column(s) {', '.join(missing)}; the header must name timestamp (or "
            "date and time), open, high, low, close (and optionally volume), got "
            f"{separator.join(first)}",
            1,
        )
    roles["stamp"] = stamp
    return roles, True


def _headerless(raw: pd.DataFrame, first: list[str], separator: str) -> dict[str, list[int]]:
    width = raw.shape[1]
    while width > 1 and (raw[width - 1] == "").all():  # a separator ending every line
        width -= 1
    split = width > 1 and bool(_TIME_OF_DAY.match(first[1]))
    stamp = [0, 1] if split else [0]
    rest = width - len(stamp)
    if rest not in (4, 5):
        names = ["date", "time"] if split else ["timestamp"]
        names += ["open", "high", "low", "close", "volume"][:rest]
        names += [f"extra{i}" for i in range(len(names) + 1, width + 1)]
        raise _Refused(
            f"has no header line and {width} fields per row, so which column is which is a "
            f"guess; add a header line naming them, e.g. {separator.join(names)!r} "
            "(columns with other names are ignored)",
            1,
        )
    roles = {"stamp": stamp}
    for offset, role in enumerate(["open", "high", "low", "close", "volume"][:rest]):
        roles[role] = [len(stamp) + offset]
    return roles


def _decimal_mark(
    body: pd.DataFrame, roles: dict[str, int], parsed: dict[str, np.ndarray], names: list[str]
) -> str:
    """``"."`` or ``","``; refuses a file whose numbers use both.

    ``parsed`` holds the columns read with a decimal point: only the cells that did not
    parse need a closer look (fast for big files).
    """
    unreadable = (body[c][np.isnan(parsed[role])] for role, c in roles.items())
    if not any(cells.str.contains(",", regex=False).any() for cells in unreadable):
        return "."
    columns = list(roles.values())
    cells = body[columns]
    comma = cells.apply(lambda c: c.str.contains(",", regex=False)).to_numpy()
    if not comma.any():
        return "."
    point = cells.apply(lambda c: c.str.contains(".", regex=False)).to_numpy()
    if (comma & point).any():  # '1.234,50': not two marks in two cells, but one number
        row, col = np.argwhere(comma & point)[0]
        raise _Refused(
            f"{names[columns[col]]} {cells.iat[row, col]!r} has both '.' and ',' (a "
            "thousands separator?); write numbers with one decimal mark and no thousands "
            "separators, e.g. 1234.50",
            int(body.index[row]),
        )
    if point.any():
        (row_c, col_c), (row_p, col_p) = np.argwhere(comma)[0], np.argwhere(point)[0]
        raise _Refused(
            f"{names[columns[col_c]]} {cells.iat[row_c, col_c]!r} has a decimal comma, but "
            f"line {body.index[row_p]}'s {names[columns[col_p]]} {cells.iat[row_p, col_p]!r} "
            "a decimal point (or are they thousands separators?); write numbers with one "
            "decimal mark and no thousands separators",
            int(body.index[row_c]),
        )
    return ","


def _numbers(text: pd.Series, values: np.ndarray, role: str, decimal: str, name: str) -> np.ndarray:
    """Check a number column (``values``: read with a decimal point) and return it."""
    if decimal == ",":
        text = text.str.replace(",", ".", regex=False)
        values = pd.to_numeric(text, errors="coerce").to_numpy(dtype=float)
    invalid = ~np.isfinite(values)
    invalid |= values < 0 if role in ("volume", "tickvol") else values <= 0
    bad = np.flatnonzero(invalid)
    if bad.size:
        row = int(bad[0])
        shown = text.iloc[row].strip().replace(".", decimal)
        label = role if name.strip("<>").lower() == role else f"{role} ({name})"
        rule = (
            "a finite number >= 0" if role in ("volume", "tickvol") else "a positive finite number"
        )
        problem = f"{label} is missing" if shown == "" else f"{label} {shown!r} is not {rule}"
        raise _Refused(problem, int(text.index[row]))
    return values


def _ordered(frame: pd.DataFrame, lines: np.ndarray) -> tuple[pd.DataFrame, int]:
    """Check the bars are sorted; drop exact repeats; refuse conflicting ones."""
    steps = np.diff(pd.DatetimeIndex(frame.index).asi8)
    back = np.flatnonzero(steps < 0)
    if back.size:
        row = int(back[0]) + 1
        raise _Refused(
            f"timestamp {frame.index[row].isoformat()} is earlier than the previous row's "
            f"{frame.index[row - 1].isoformat()}; rows must be sorted by time",
            int(lines[row]),
        )
    same = np.flatnonzero(steps == 0) + 1
    if not same.size:
        return frame, 0
    values = frame.to_numpy()
    repeats = set(same.tolist())
    for row in same.tolist():
        earlier = row - 1
        while earlier in repeats:  # compare with the first of a run of repeats
            earlier -= 1
        if not np.array_equal(values[row], values[earlier], equal_nan=True):
            raise _Refused(
                f"duplicate timestamp {frame.index[row].isoformat()} with other prices than "
                f"line {lines[earlier]}; remove one of the two rows",
                int(lines[row]),
            )
    keep = np.ones(len(frame), dtype=bool)
    keep[same] = False
    return frame.iloc[keep], int(same.size)

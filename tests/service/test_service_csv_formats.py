"""CSV files written the way real exporters write them: accepted, or refused with the fix.

Each format named in issue 11 section 2 has a test here; on the original loader (main at
2ccd574) every "accepted" test failed with a confusing refusal.
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta, timezone
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from backtest_queue.service.csvfile import CsvBars, DatasetError, read_bars_csv
from backtest_queue.service.datasets import load_csv

START = datetime(2023, 1, 2)
#: (open, high, low, close, volume) of three hourly EUR/USD-like bars
BARS = [
    (1.07010, 1.07120, 1.06900, 1.07050, 1234),
    (1.07050, 1.07200, 1.07000, 1.07100, 1100),
    (1.07100, 1.07150, 1.06980, 1.07000, 987),
]


def write(tmp_path: Path, name: str, text: str, encoding: str = "utf-8") -> Path:
    path = tmp_path / name
    path.write_bytes(text.encode(encoding))
    return path


def expected(volume: bool = True, step: timedelta = timedelta(hours=1)) -> pd.DataFrame:
    index = pd.DatetimeIndex([START + i * step for i in range(len(BARS))], name="timestamp")
    frame = pd.DataFrame(
        [b if volume else (*b[:4], np.nan) for b in BARS],
        columns=["Open", "High", "Low", "Close", "Volume"],
        index=index,
        dtype=float,
    )
    return frame


def same_bars(read: CsvBars, want: pd.DataFrame) -> None:
    pd.testing.assert_frame_equal(read.bars, want, check_index_type=False, check_freq=False)
    assert read.bars.index.is_monotonic_increasing
    assert read.bars.index.tz is None


def stamps(fmt: str) -> list[str]:
    return [(START + timedelta(hours=i)).strftime(fmt) for i in range(len(BARS))]


# -- accepted ---------------------------------------------------------------------------


def test_semicolon_separated(tmp_path: Path) -> None:
    rows = [
        f"{t};{o};{h};{lo};{c};{v}"
        for t, (o, h, lo, c, v) in zip(stamps("%Y-%m-%d %H:%M"), BARS, strict=True)
    ]
    path = write(tmp_path, "semi.csv", "\n".join(["timestamp;open;high;low;close;volume", *rows]))
    read = read_bars_csv(path)
    same_bars(read, expected())
    assert (read.separator, read.decimal, read.header) == (";", ".", True)


def test_semicolon_with_decimal_commas(tmp_path: Path) -> None:
    """A European spreadsheet export: ';' between fields, ',' as the decimal mark."""
    rows = [
        ";".join([t, *(str(x).replace(".", ",") for x in bar)])
        for t, bar in zip(stamps("%Y-%m-%d %H:%M:%S"), BARS, strict=True)
    ]
    path = write(tmp_path, "eu.csv", "\r\n".join(["timestamp;open;high;low;close;volume", *rows]))
    read = read_bars_csv(path)
    same_bars(read, expected())
    assert (read.separator, read.decimal) == (";", ",")


def test_european_export_with_day_first_dates_proven_by_the_file(tmp_path: Path) -> None:
    """``Datum;Zeit;...`` style, day-first dates: a day above 12 shows the order."""
    days = [START + timedelta(days=i) for i in range(15)]  # 02.01. .. 16.01.2023
    rows = [f"{d:%d.%m.%Y};09:00;1,07;1,08;1,06;1,075;{i}" for i, d in enumerate(days)]
    path = write(tmp_path, "eu-d1.csv", "\n".join(["Date;Time;Open;High;Low;Close;Volume", *rows]))
    read = read_bars_csv(path)
    assert list(read.bars.index) == [pd.Timestamp(d + timedelta(hours=9)) for d in days]
    assert read.time_columns == ("Date", "Time")
    assert read.time_format == "DD.MM.YYYY hh:mm"


def test_metatrader4_history_export_without_header(tmp_path: Path) -> None:
    """MT4 History Center export: no header, date and time fields, CRLF lines."""
    rows = [
        f"{d},{t},{o:.5f},{h:.5f},{lo:.5f},{c:.5f},{v}"
        for (d, t), (o, h, lo, c, v) in zip(
            (s.split() for s in stamps("%Y.%m.%d %H:%M")), BARS, strict=True
        )
    ]
    path = write(tmp_path, "EURUSD60.csv", "\r\n".join(rows) + "\r\n")
    read = read_bars_csv(path)
    same_bars(read, expected())
    assert not read.header
    assert read.time_format == "YYYY.MM.DD hh:mm"
    assert read.time_zone == "no time zone in the file: taken as UTC"


def test_separate_date_and_time_columns(tmp_path: Path) -> None:
    """The issue's MetaTrader-style file: ``date`` ``2023.01.02`` and ``time`` ``00:00``."""
    rows = [
        f"{d},{t},{o},{h},{lo},{c},{v}"
        for (d, t), (o, h, lo, c, v) in zip(
            (s.split() for s in stamps("%Y.%m.%d %H:%M")), BARS, strict=True
        )
    ]
    path = write(tmp_path, "mt.csv", "\n".join(["date,time,open,high,low,close,volume", *rows]))
    read = read_bars_csv(path)
    same_bars(read, expected())
    assert read.time_columns == ("date", "time")


@pytest.mark.parametrize(
    ("separator", "encoding"), [("\t", "utf-8"), ("\t", "utf-16"), (",", "utf-8")]
)
def test_metatrader5_export_with_bracketed_headers(
    tmp_path: Path, separator: str, encoding: str
) -> None:
    """MT5 'Export Bars': <DATE> <TIME> ... <TICKVOL> <VOL> <SPREAD>; VOL is 0 for forex."""
    header = "<DATE>,<TIME>,<OPEN>,<HIGH>,<LOW>,<CLOSE>,<TICKVOL>,<VOL>,<SPREAD>"
    rows = [
        f"{d},{t},{o:.5f},{h:.5f},{lo:.5f},{c:.5f},{v},0,12"
        for (d, t), (o, h, lo, c, v) in zip(
            (s.split() for s in stamps("%Y.%m.%d %H:%M:%S")), BARS, strict=True
        )
    ]
    text = "\r\n".join([header, *rows]).replace(",", separator) + "\r\n"
    read = read_bars_csv(write(tmp_path, "EURUSD_H1.csv", text, encoding))
    same_bars(read, expected())
    assert read.time_columns == ("<DATE>", "<TIME>")
    assert read.volume_column == "<TICKVOL>"
    assert any("<VOL> is all 0" in note for note in read.notes)


def test_case_variant_headers_and_yahoo_columns(tmp_path: Path) -> None:
    """Yahoo Finance: Date,Open,High,Low,Close,Adj Close,Volume (Adj Close ignored)."""
    rows = [
        f"{t},{o},{h},{lo},{c},{c * 0.9},{v}"
        for t, (o, h, lo, c, v) in zip(
            ["2023-01-02", "2023-01-03", "2023-01-04"], BARS, strict=True
        )
    ]
    path = write(
        tmp_path, "yahoo.csv", "\n".join(["Date,Open,High,Low,Close,Adj Close,Volume", *rows])
    )
    same_bars(read_bars_csv(path), expected(step=timedelta(days=1)))
    rows = [
        f"{t},{o},{h},{lo},{c},{v}"
        for t, (o, h, lo, c, v) in zip(stamps("%Y-%m-%d %H:%M"), BARS, strict=True)
    ]
    upper = "\n".join(["DATETIME,OPEN,HIGH,LOW,CLOSE,tickvol", *rows])
    read = read_bars_csv(write(tmp_path, "upper.csv", upper))
    same_bars(read, expected())
    assert read.volume_column == "tickvol"


@pytest.mark.parametrize(
    ("unit", "scale"), [("seconds", 1), ("milliseconds", 1000), ("microseconds", 10**6)]
)
def test_epoch_stamps_by_magnitude(tmp_path: Path, unit: str, scale: int) -> None:
    """A crypto exchange's klines (Binance: open_time in ms, later µs) with its header."""
    header = "open_time,open,high,low,close,volume,close_time,quote_volume,count,taker_buy_volume,taker_buy_quote_volume,ignore"  # noqa: E501
    rows = []
    for i, (o, h, lo, c, v) in enumerate(BARS):
        opened = int((START + timedelta(hours=i)).replace(tzinfo=UTC).timestamp())
        closed = (opened + 3600) * scale - 1
        rows.append(
            f"{opened * scale},{o},{h},{lo},{c},{v},{closed},{v * c},42,{v / 2},{v * c / 2},0"
        )
    read = read_bars_csv(write(tmp_path, "BTCUSDT-1h.csv", "\n".join([header, *rows])))
    same_bars(read, expected())
    assert read.time_format == f"epoch {unit}"


def test_headerless_epoch_seconds_ohlcv(tmp_path: Path) -> None:
    rows = [
        f"{int((START + timedelta(hours=i)).replace(tzinfo=UTC).timestamp())},{o},{h},{lo},{c},{v}"
        for i, (o, h, lo, c, v) in enumerate(BARS)
    ]
    read = read_bars_csv(write(tmp_path, "kraken.csv", "\n".join(rows)))
    same_bars(read, expected())
    assert not read.header
    assert read.time_format == "epoch seconds"


def test_headerless_iso_ohlc_without_volume(tmp_path: Path) -> None:
    rows = [
        f"{t},{o},{h},{lo},{c}"
        for t, (o, h, lo, c, _v) in zip(stamps("%Y-%m-%dT%H:%M:%S"), BARS, strict=True)
    ]
    same_bars(read_bars_csv(write(tmp_path, "plain.csv", "\n".join(rows))), expected(volume=False))


def test_offsets_are_converted_to_utc_and_naive_stamps_said_to_be_utc(tmp_path: Path) -> None:
    berlin = timezone(timedelta(hours=1))
    rows = [
        f"{(START + timedelta(hours=i + 1)).replace(tzinfo=berlin).isoformat()},{bar}"
        for i, bar in enumerate(",".join(map(str, b)) for b in BARS)
    ]
    read = read_bars_csv(
        write(tmp_path, "tz.csv", "\n".join(["time,open,high,low,close,volume", *rows]))
    )
    same_bars(read, expected())
    assert read.time_zone == "converted to UTC from the offsets in the stamps"


def test_newest_first_is_reversed_and_exact_repeats_dropped(tmp_path: Path) -> None:
    rows = [
        f"{t},{o},{h},{lo},{c},{v}"
        for t, (o, h, lo, c, v) in zip(stamps("%Y-%m-%d %H:%M"), BARS, strict=True)
    ]
    text = "\n".join(["timestamp,open,high,low,close,volume", rows[2], rows[1], rows[1], rows[0]])
    read = read_bars_csv(write(tmp_path, "desc.csv", text))
    same_bars(read, expected())
    assert read.reversed
    assert read.duplicates == 1


# -- refused, with the line and the fix ---------------------------------------------------

HEADER = "timestamp,open,high,low,close,volume"


@pytest.mark.parametrize(
    ("lines", "line", "words"),
    [
        (  # the example: day-first or month-first?
            ["Date,Open,High,Low,Close", "01/02/2023,1,2,1,1.5", "01/03/2023,1,2,1,1.5"],
            2,
            ["'01/02/2023' is ambiguous", "2023-02-01", "2023-01-02", "ISO-8601"],
        ),
        (
            ["Date,Open,High,Low,Close", "13/01/2023,1,2,1,1.5", "01/14/2023,1,2,1,1.5"],
            3,
            ["'01/14/2023' is month-first", "line 2's '13/01/2023' is day-first"],
        ),
        (  # 11 digits: between epoch seconds and milliseconds
            [HEADER, "16725312000,1,2,1,1.5,1", "16725348000,1,2,1,1.5,1"],
            2,
            ["'16725312000' is a number", "unit is a guess", "ISO-8601"],
        ),
        (
            [HEADER, "1672531200,1,2,1,1.5,1", "1672534800000,1,2,1,1.5,1"],
            3,
            ["is epoch milliseconds", "'1672531200' is epoch seconds", "one unit"],
        ),
        (  # Binance klines as downloaded, without their header
            ["1672531200000,1,2,1,1.5,1,1672534799999,1,1,1,1,0"] * 2,
            1,
            [
                "no header line and 12 fields",
                "add a header line",
                "timestamp,open,high,low,close,volume,extra7",
            ],
        ),
        (
            [HEADER, "2023-01-02T00:00:00+01:00,1,2,1,1.5,1", "2023-01-02T01:00:00,1,2,1,1.5,1"],
            3,
            ["has no UTC offset", "line 2's"],
        ),
        (
            ["timestamp;open;high;low;close", "2023-01-02;1,5;2;1;1.5", "2023-01-03;1;2;1;1.5"],
            2,
            [
                "'1,5' has a decimal comma",
                "line 2's close '1.5' a decimal point",
                "one decimal mark",
            ],
        ),
        (  # thousands separators: was "'1.234,50' has a decimal comma, but '1.234,50' a point"
            [
                "Date;Open;High;Low;Close",
                "2023-01-02;1.234,50;1.240,00;1.230,00;1.235,00",
                "2023-01-03;1.235,00;1.241,00;1.231,00;1.236,00",
            ],
            2,
            ["Open '1.234,50' has both '.' and ','", "thousands separator", "1234.50"],
        ),
        (
            [HEADER, "2023-01-02 00:00,1,2,1,1.5,1", "2023-01-02 00:00,1,2,1,1.6,1"],
            3,
            ["duplicate timestamp 2023-01-02T00:00:00 with other prices than line 2"],
        ),
        (
            [HEADER, "2023-01-02,1,2,1,1.5,1", "2023-01-04,1,2,1,1.5,1", "2023-01-03,1,2,1,1.5,1"],
            4,
            ["earlier than the previous row"],
        ),
        ([HEADER, "2023-01-02,1,2,1,1.5,1", "2023-01-03,1,NaN,1,1.5,1"], 3, ["high 'NaN' is not"]),
        (
            [HEADER, "2023-01-02,1,2,1,1.5,1", "2023-01-03,1,1,2,1.5,1"],
            3,
            ["high 1.0 is below low 2.0"],
        ),
        (
            [HEADER, "2023.01.02 00:00,1,2,1,1.5,1", "2023-01-02 01:00,1,2,1,1.5,1"],
            3,
            ["cannot be read as YYYY.MM.DD hh:mm like line 2's", "one format"],
        ),
        (["timestamp,date,open,high,low,close", "x"], 1, ["2 columns give the time"]),
        (  # CryptoDataDownload puts its URL above the header
            ["https://www.CryptoDataDownload.com", "unix,open,high,low,close", "1,2,3,4,5"],
            1,
            ["the first line 'https://www.CryptoDataDownload.com' has no", "remove the lines"],
        ),
        (
            ["Date;Open;High;Low;Close;Volume", "2023-01-02;1;2;1;1.5;1;7"],
            2,
            ["has 7 fields, but the first line has 6"],
        ),
    ],
)
def test_refused_with_file_line_and_fix(
    tmp_path: Path, lines: list[str], line: int, words: list[str]
) -> None:
    path = write(tmp_path, "bad.csv", "\n".join(lines) + "\n")
    with pytest.raises(DatasetError) as caught:
        read_bars_csv(path)
    message = str(caught.value)
    assert message.startswith(f"{path}, line {line}: "), message
    assert caught.value.line == line
    for word in words:
        assert word in message, message


def test_open_or_close_outside_the_range_is_reported_not_refused(tmp_path: Path) -> None:
    text = "\n".join([HEADER, "2023-01-02,1,2,1,1.5,1", "2023-01-03,3,2,1,1.5,1"])
    read = read_bars_csv(write(tmp_path, "odd.csv", text))
    assert read.notes == (
        "1 bar(s) have open or close outside low..high (first at 2023-01-03T00:00:00)",
    )


# -- properties ---------------------------------------------------------------------------


@st.composite
def bar_files(draw: st.DrawFn) -> tuple[str, pd.DataFrame]:
    """Random bars written in a random accepted format, and the frame they must read as."""
    count = draw(st.integers(2, 25))
    steps = draw(st.lists(st.integers(1, 60 * 24 * 3), min_size=count, max_size=count))
    start = datetime(1990, 1, 1) + timedelta(minutes=draw(st.integers(0, 60 * 24 * 365 * 40)))
    times = [start + timedelta(minutes=sum(steps[:i])) for i in range(count)]
    price = st.integers(1, 10**7)
    rows = []
    for _ in range(count):
        a, b, c, d = sorted(draw(st.lists(price, min_size=4, max_size=4)))
        o, cl = (b, c) if draw(st.booleans()) else (c, b)
        rows.append((o / 1e4, d / 1e4, a / 1e4, cl / 1e4, float(draw(st.integers(0, 10**6)))))
    frame = pd.DataFrame(rows, columns=["Open", "High", "Low", "Close", "Volume"])
    frame.index = pd.DatetimeIndex(times, name="timestamp")
    separator = draw(st.sampled_from([",", ";", "\t"]))
    decimal = "," if separator != "," and draw(st.booleans()) else "."
    style = draw(st.sampled_from(["iso", "offset", "mt", "epoch-s", "epoch-ms"]))
    header = draw(st.booleans())
    offset = timedelta(minutes=15 * draw(st.integers(-48, 56)))
    lines = []
    for moment, values in zip(times, rows, strict=True):
        if style == "iso":
            stamp = [moment.isoformat(sep=" ")]
        elif style == "offset":
            stamp = [(moment + offset).replace(tzinfo=timezone(offset)).isoformat()]
        elif style == "mt":
            stamp = [moment.strftime("%Y.%m.%d"), moment.strftime("%H:%M")]
        else:
            seconds = int(moment.replace(tzinfo=UTC).timestamp())
            stamp = [str(seconds if style == "epoch-s" else seconds * 1000)]
        numbers = [f"{x:.4f}".replace(".", decimal) for x in values[:4]] + [f"{values[4]:.0f}"]
        lines.append(separator.join(stamp + numbers))
    if header:
        names = ["date", "time"] if style == "mt" else ["Timestamp"]
        lines.insert(0, separator.join([*names, "Open", "HIGH", "low", "Close", "Volume"]))
    return "\n".join(lines) + "\n", frame


@settings(
    max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(bar_files())
def test_every_accepted_format_reads_back_the_same_bars(
    tmp_path: Path, case: tuple[str, pd.DataFrame]
) -> None:
    text, frame = case
    path = write(tmp_path, "random.csv", text)
    pd.testing.assert_frame_equal(load_csv(path), frame, check_index_type=False, check_freq=False)


@settings(
    max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(
    st.text(
        alphabet="0123456789.,;:\t\n -/TZ+<>DATEOPENHIGHLOWCLSVdateopenhighlowclsv", max_size=300
    )
)
def test_any_text_is_read_or_refused_never_crashes(tmp_path: Path, text: str) -> None:
    path = write(tmp_path, "fuzz.csv", text)
    try:
        read = read_bars_csv(path)
    except DatasetError as exc:
        message = str(exc)
    else:
        message = str(path)
        assert read.bars.index.is_monotonic_increasing
        assert read.bars.index.is_unique
        assert (read.bars["High"] >= read.bars["Low"]).all()
    assert message.startswith(str(path))


@pytest.mark.parametrize("year", ["1600", "9999"])
def test_stamps_outside_the_nanosecond_range_are_refused_naming_the_line(
    tmp_path: Path, year: str
) -> None:
    """A fresh-eyes trial: such a file passed ``data check`` and then stopped the service
    at start-up (OutOfBoundsDatetime while fingerprinting)."""
    rows = [f"{year}-01-02 0{i}:00,1,1.1,0.9,1,10" for i in range(3)]
    path = write(tmp_path, "OLD-H1.csv", "timestamp,open,high,low,close,volume\n"
                 + "\n".join(rows) + "\n")  # fmt: skip
    with pytest.raises(DatasetError, match=r"line 2: time stamp .* outside the range"):
        read_bars_csv(path)

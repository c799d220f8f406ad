"""Datasets: built-ins, CSV files made from the real EURUSD data, bad files, bar ranges."""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from backtest_queue.errors import ProtocolError
from backtest_queue.service.datasets import (
    BUILTIN_DATASETS,
    Catalog,
    DatasetError,
    NoUsableData,
    load_catalog,
    load_csv,
    parse_bound,
)

from service_helpers import eurusd_lines, write_csv

HEADER = "timestamp,open,high,low,close,volume"


@pytest.fixture(scope="module")
def catalog() -> Catalog:
    return load_catalog()


@pytest.fixture(scope="module")
def rows() -> list[str]:
    """EURUSD data rows (no header)."""
    return eurusd_lines()[1:]


def test_builtin_datasets_are_real_ohlcv(catalog: Catalog) -> None:
    assert catalog.ids == sorted(BUILTIN_DATASETS)
    sizes = {data_id: len(catalog.get(data_id).bars) for data_id in catalog.ids}
    assert sizes["EURUSD-H1"] == 5000
    assert sizes["GOOG-D1"] == 2148
    for data_id in catalog.ids:
        bars = catalog.get(data_id).bars
        assert list(bars.columns) == ["Open", "High", "Low", "Close", "Volume"]
        assert isinstance(bars.index, pd.DatetimeIndex)
        assert bars.index.tz is None
        assert bars.index.is_monotonic_increasing
        assert bars.index.is_unique
        assert np.isfinite(bars.to_numpy()).all()
    assert catalog.skipped == ()
    assert "EURUSD-H1 5000 bars 2017-04-19T09:00:00" in repr(catalog.get("EURUSD-H1"))


def test_a_csv_made_from_eurusd_loads_like_the_builtin(
    tmp_path: Path, rows: list[str], catalog: Catalog
) -> None:
    path = write_csv(
        tmp_path, "EURUSD-part.csv", ["Timestamp,OPEN,High,low,Close,Volume", *rows[:100]]
    )
    bars = load_csv(path)
    pd.testing.assert_frame_equal(
        bars, catalog.get("EURUSD-H1").bars.iloc[:100], check_names=False, check_freq=False
    )


def test_header_variants_are_accepted(tmp_path: Path, rows: list[str]) -> None:
    ohlc_only = [",".join(r.split(",")[:5]) for r in rows[:10]]
    path = write_csv(tmp_path, "a.csv", ["Date,Open,High,Low,Close", *ohlc_only])
    assert load_csv(path)["Volume"].isna().all()
    extra = [f"{r},x" for r in rows[:10]]
    path = write_csv(tmp_path, "b.csv", [f"{HEADER},comment", *extra])
    assert len(load_csv(path)) == 10
    path = tmp_path / "c.csv"
    path.write_bytes(("\ufeff" + "\n".join([HEADER, *rows[:10]]) + "\n\n\n").encode())
    assert len(load_csv(path)) == 10  # byte-order mark and trailing blank lines


def test_timestamps_with_offsets_become_utc(tmp_path: Path) -> None:
    path = write_csv(
        tmp_path,
        "tz.csv",
        [HEADER, "2020-01-01T10:00:00+02:00,1,2,1,1.5,10", "2020-01-01T09:00:00Z,1,2,1,1.5,10"],
    )
    assert [t.isoformat() for t in load_csv(path).index] == [
        "2020-01-01T08:00:00",
        "2020-01-01T09:00:00",
    ]


def _drop(rows: list[str], field: int) -> list[str]:
    return [",".join(f for i, f in enumerate(r.split(",")) if i != field) for r in rows[:20]]


def _bad(rows: list[str], row: int, replace: str) -> list[str]:
    changed = list(rows[:20])
    changed[row] = replace
    return [HEADER, *changed]


@pytest.mark.parametrize(
    ("make", "line", "words"),
    [
        (lambda r: ["timestamp,open,high,low,volume", *_drop(r, 4)], 1, "missing column(s) close"),
        (lambda r: ["open,high,low,close,volume", *_drop(r, 0)], 1, "missing column(s) timestamp"),
        (lambda r: ["timestamp,open,high,low,close,Close", *r[:20]], 1, "two columns"),
        (lambda r: [HEADER, *r[:5], r[3], *r[6:20]], 7, "earlier than the previous row"),
        (
            lambda r: [HEADER, *r[:5], r[4].replace(",", ",9", 1), *r[6:20]],
            7,
            "duplicate timestamp",
        ),
        (lambda r: _bad(r, 7, "2017-04-19 16:00:00,1.07,1.08,1.06,nan,100"), 9, "close 'nan'"),
        (lambda r: _bad(r, 7, "2017-04-19 16:00:00,1.07,1.08,1.06,,100"), 9, "close is missing"),
        (lambda r: _bad(r, 7, "2017-04-19 16:00:00,1.07,1.08,1.06,abc,100"), 9, "'abc'"),
        (lambda r: _bad(r, 7, "2017-04-19 16:00:00,-1,1.08,1.06,1.07,100"), 9, "open '-1'"),
        (lambda r: _bad(r, 7, "2017-04-19 16:00:00,1.07,1.08,1.06,1.07,-5"), 9, "volume '-5'"),
        (lambda r: _bad(r, 7, "2017-04-19 16:00:00,1.07,1.05,1.06,1.07,1"), 9, "below low"),
        (lambda r: _bad(r, 7, "yesterday,1.07,1.08,1.06,1.07,1"), 9, "'yesterday' is not"),
        (lambda r: _bad(r, 7, ""), 9, "the line is blank"),
        (lambda r: _bad(r, 7, "2017-04-19 16:00:00,1.07"), 9, "high is missing"),
        (lambda r: [HEADER, r[0]], None, "at least 2"),
        (lambda r: [], None, "empty"),
    ],
)
def test_bad_files_name_file_and_line(
    tmp_path: Path, rows: list[str], make: object, line: int | None, words: str
) -> None:
    assert callable(make)
    path = write_csv(tmp_path, "bad.csv", make(rows))
    with pytest.raises(DatasetError) as caught:
        load_csv(path)
    assert caught.value.line == line
    message = str(caught.value)
    assert message.startswith(str(path))
    assert words in message
    if line is not None:
        assert f"line {line}:" in message


def test_extra_fields_in_every_row_are_an_error(tmp_path: Path, rows: list[str]) -> None:
    path = write_csv(tmp_path, "wide.csv", [HEADER, *(f"{r},1" for r in rows[:5])])
    with pytest.raises(DatasetError, match="line 2: has 7 fields, but the first line has 6"):
        load_csv(path)


def test_catalog_logs_and_skips_bad_files(
    tmp_path: Path, rows: list[str], caplog: pytest.LogCaptureFixture
) -> None:
    write_csv(tmp_path, "GOOD-H1.csv", [HEADER, *rows[:50]])
    write_csv(tmp_path, "unsorted.csv", [HEADER, rows[1], rows[0], *rows[2:10]])
    write_csv(tmp_path, "bad name.csv", [HEADER, *rows[:10]])
    write_csv(tmp_path, "GOOG-D1.csv", [HEADER, *rows[:30]])  # replaces the built-in
    (tmp_path / "notes.txt").write_text("not data")
    with caplog.at_level(logging.WARNING, logger="backtest_queue.service"):
        catalog = load_catalog(tmp_path)
    assert catalog.ids == ["BTCUSD-MN1", "EURUSD-H1", "GOOD-H1", "GOOG-D1"]
    assert len(catalog.get("GOOD-H1").bars) == 50
    assert len(catalog.get("GOOG-D1").bars) == 30
    assert catalog.get("GOOG-D1").source == str(tmp_path / "GOOG-D1.csv")
    assert len(catalog.skipped) == 2
    logged = caplog.text
    assert "unsorted.csv, line 3: timestamp" in logged
    assert "bad name.csv" in logged
    assert "not a valid data_id" in logged
    assert "replaces the built-in dataset GOOG-D1" in logged
    assert f"2 of 4 data file(s) in {tmp_path} refused" in logged
    assert f"'backtest-queue data check {tmp_path}' explains each" in logged


def test_an_exact_repeat_of_a_bar_is_dropped(tmp_path: Path, rows: list[str]) -> None:
    path = write_csv(tmp_path, "dup.csv", [HEADER, *rows[:5], rows[4], *rows[5:20]])
    assert len(load_csv(path)) == 20


def test_catalog_refuses_a_directory_whose_files_are_all_refused(
    tmp_path: Path, rows: list[str]
) -> None:
    write_csv(tmp_path, "unsorted.csv", [HEADER, rows[1], rows[0], *rows[2:10]])
    write_csv(tmp_path, "bad name.csv", [HEADER, *rows[:10]])
    with pytest.raises(NoUsableData) as caught:
        load_catalog(tmp_path)
    message = str(caught.value)
    assert f"none of the 2 CSV file(s) in data directory {str(tmp_path)!r}" in message
    assert "unsorted.csv, line 3: timestamp" in message
    assert "not a valid data_id" in message
    assert f"backtest-queue data check {tmp_path}" in message


def test_catalog_refuses_a_directory_without_csv_files(tmp_path: Path) -> None:
    with pytest.raises(NoUsableData, match=r"has no \*\.csv file \(it is empty\)"):
        load_catalog(tmp_path)
    (tmp_path / "EURUSD.txt").write_text("x")
    with pytest.raises(NoUsableData, match=r"no \*\.csv file \(it has EURUSD.txt\)"):
        load_catalog(tmp_path)


def test_catalog_refuses_a_missing_directory(tmp_path: Path) -> None:
    with pytest.raises(NotADirectoryError):
        load_catalog(tmp_path / "nope")


def test_select_ranges(catalog: Catalog) -> None:
    index = catalog.get("EURUSD-H1").bars.index
    assert catalog.select("EURUSD-H1", None, None, min_bars=42) == (0, 5000)
    first, stop = catalog.select("EURUSD-H1", "2017-05-01", "2017-05-01", min_bars=2)
    assert index[first] == pd.Timestamp("2017-05-01 00:00")
    assert index[stop - 1] == pd.Timestamp("2017-05-01 23:00")  # a bare end date: whole day
    first, stop = catalog.select(
        "EURUSD-H1", "2017-05-01T02:00:00+02:00", "2017-05-01T05:00:00Z", min_bars=2
    )
    assert (index[first], index[stop - 1]) == (
        pd.Timestamp("2017-05-01 00:00"),
        pd.Timestamp("2017-05-01 05:00"),  # end is inclusive
    )


@pytest.mark.parametrize(
    ("data_id", "start", "end", "code", "field"),
    [
        ("NOPE", None, None, "unknown_data", "data_id: 'NOPE'"),
        ("EURUSD-H1", "2017-13-01", None, "invalid_request", "start: '2017-13-01'"),
        ("EURUSD-H1", None, "soon", "invalid_request", "end: 'soon'"),
        ("EURUSD-H1", "2017-05-02", "2017-05-01", "invalid_request", "end: '2017-05-01' is before"),
        ("EURUSD-H1", "2017-05-01", "2017-05-02", "invalid_request", "start/end: 48 bars"),
        ("EURUSD-H1", "2030-01-01", None, "invalid_request", "start/end: 0 bars"),
        ("BTCUSD-MN1", None, None, "invalid_request", "data_id: 156 bars"),
    ],
)
def test_select_errors_name_the_field(
    catalog: Catalog, data_id: str, start: str | None, end: str | None, code: str, field: str
) -> None:
    with pytest.raises(ProtocolError) as caught:
        catalog.select(data_id, start, end, min_bars=202)
    assert caught.value.code == code
    assert caught.value.message.startswith(field)


def _answer(catalog: Catalog, data_id: str, start: str | None, end: str | None, n: int) -> object:
    try:
        return catalog.select(data_id, start, end, min_bars=n)
    except ProtocolError as exc:
        return (exc.code, exc.message)


_BOUNDS = st.sampled_from(
    [None, "2017-05-01", "2017-05-02", "2017-05-01T05:00:00Z", "2030-01-01", "soon", " 2004-08-19 "]
)


@settings(max_examples=60)
@given(
    calls=st.lists(
        st.tuples(
            st.sampled_from(["EURUSD-H1", "GOOG-D1", "BTCUSD-MN1", "NOPE"]),
            _BOUNDS,
            _BOUNDS,
            st.integers(0, 6000),
        ),
        min_size=1,
        max_size=12,
    )
)
def test_select_answers_repeated_bounds_as_the_first_time(
    catalog: Catalog, calls: list[tuple[str, str | None, str | None, int]]
) -> None:
    """select() remembers the slices of bounds it parsed: the same bounds with any
    ``min_bars``, again and again, get the answer (slice or error) a catalog that never
    saw them gives."""
    for call in calls + calls:
        assert _answer(catalog, *call) == _answer(Catalog(datasets=catalog.datasets), *call)


def test_parse_bound_far_dates_do_not_overflow(catalog: Catalog) -> None:
    assert catalog.select("GOOG-D1", "0001-01-01", "9999-12-31T23:59:59", min_bars=2) == (0, 2148)
    assert parse_bound("start", None, upper=False) is None

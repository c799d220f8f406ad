"""Dataset content fingerprints: stable for equal data, different for changed data, and
reported by a real service process in PONG and in every result (issue 10, section 3)."""

from __future__ import annotations

import math
import re
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pytest
import zmq
from hypothesis import given, settings
from hypothesis import strategies as st

from backtest_queue.protocol import BacktestResult, Metrics, Pong, decode_message, encode_message
from backtest_queue.service.datasets import load_catalog, load_csv
from backtest_queue.service.fingerprint import (
    FINGERPRINT_LENGTH,
    fingerprint_bars,
    fingerprint_datasets,
)

from service_helpers import RawClient, backtest, eurusd_lines, run_service_process, write_csv

HEADER = "timestamp,open,high,low,close,volume"
HEX = re.compile(rf"^[0-9a-f]{{{FINGERPRINT_LENGTH}}}$")

prices = st.floats(min_value=1e-6, max_value=1e9, allow_nan=False, allow_infinity=False)


@st.composite
def frames(draw: st.DrawFn) -> pd.DataFrame:
    """Small OHLCV frames with increasing timestamps (Volume may be NaN)."""
    n = draw(st.integers(min_value=1, max_value=30))
    start = draw(st.integers(min_value=0, max_value=2_000_000_000))
    steps = draw(st.lists(st.integers(1, 10**6), min_size=n, max_size=n))
    index = pd.DatetimeIndex(pd.to_datetime(np.cumsum(steps) + start, unit="s"))
    columns = {name: draw(st.lists(prices, min_size=n, max_size=n)) for name in "OHLC"}
    volume = draw(st.lists(st.one_of(st.just(math.nan), prices), min_size=n, max_size=n))
    return pd.DataFrame(
        {"Open": columns["O"], "High": columns["H"], "Low": columns["L"],
         "Close": columns["C"], "Volume": volume},
        index=index,
    )  # fmt: skip


@settings(max_examples=60, deadline=None)
@given(frames(), st.sampled_from(["s", "ms", "us", "ns"]))
def test_equal_data_gives_the_same_fingerprint(bars: pd.DataFrame, unit: str) -> None:
    """However the frame is held: a copy, another time resolution, other column order,
    an extra column the engine ignores, a different NaN bit pattern."""
    fingerprint = fingerprint_bars(bars)
    assert HEX.match(fingerprint)
    same = bars.copy()
    same.index = same.index.as_unit(unit)
    same = same[["Volume", "Close", "Low", "High", "Open"]]
    same["Note"] = "ignored"
    payload_nan = np.frombuffer(np.uint64(0x7FF8_0000_0000_0001).tobytes(), dtype=np.float64)[0]
    same["Volume"] = same["Volume"].where(same["Volume"].notna(), payload_nan)
    assert fingerprint_bars(same) == fingerprint


@settings(max_examples=60, deadline=None)
@given(frames(), st.data())
def test_any_changed_bar_changes_the_fingerprint(bars: pd.DataFrame, data: st.DataObject) -> None:
    row = data.draw(st.integers(0, len(bars) - 1))
    column = data.draw(st.sampled_from(["Open", "High", "Low", "Close", "Volume", "time"]))
    changed = bars.copy()
    if column == "time":
        index = changed.index.to_numpy().copy()
        index[row] = index[row] - np.timedelta64(1, "ms")  # still increasing
        changed.index = pd.DatetimeIndex(index)
    else:
        old = changed[column].iloc[row]
        new = 1.0 if math.isnan(old) else old * (1 + 2**-40) + 1e-12
        changed.iloc[row, changed.columns.get_loc(column)] = new
    assert fingerprint_bars(changed) != fingerprint_bars(bars)
    assert fingerprint_bars(bars.iloc[:-1]) != fingerprint_bars(bars)


def test_a_frame_without_ohlcv_columns_is_refused() -> None:
    bars = load_catalog().get("GOOG-D1").bars
    with pytest.raises(ValueError, match="Volume"):
        fingerprint_bars(bars.drop(columns=["Volume"]))


def test_a_csv_with_the_builtin_data_has_the_builtin_fingerprint(tmp_path: Path) -> None:
    """The fingerprint is of the bars, not of the file: other formatting, same data."""
    catalog = load_catalog()
    builtin = fingerprint_datasets(catalog.bars())
    assert set(builtin) == set(catalog.ids)
    assert len(set(builtin.values())) == len(builtin)
    rows = [line.split(",") for line in eurusd_lines()[1:]]
    reformatted = [
        f"{t.replace(' ', 'T')}Z,{float(o):.6f},{h},{lo},{c},{float(v):g}"
        for t, o, h, lo, c, v in rows
    ]
    path = write_csv(tmp_path, "EURUSD-H1.csv", [HEADER, *reformatted])
    assert fingerprint_bars(load_csv(path)) == builtin["EURUSD-H1"]


def test_the_optional_fields_are_optional_on_the_wire() -> None:
    """v1 peers without the fields keep working both ways."""
    old_pong = decode_message(b'{"type": "PONG", "v": 1, "datasets": ["A"], "workers": 1}')
    assert isinstance(old_pong, Pong)
    assert old_pong.fingerprints == {}
    old_result = decode_message(
        b'{"type": "BACKTEST_RESULT", "v": 1, "request_id": "r", "result": {"strategy_name": "s"}}'
    )
    assert isinstance(old_result, BacktestResult)
    assert old_result.data_fingerprint is None
    new = BacktestResult(request_id="r", result=Metrics(strategy_name="s"), data_fingerprint="00ff")
    assert decode_message(encode_message(new)) == new


# -- a real service process ------------------------------------------------------------


def _ping_and_run(context: zmq.Context[Any], endpoint: str) -> tuple[dict[str, Any], list[str]]:
    """The PONG, and the data_fingerprint of one result per dataset of interest."""
    with RawClient(context, endpoint) as client:
        pong, _ = client.ping()
        fingerprints = []
        for i, data_id in enumerate(["EURUSD-1k", "GOOG-D1"]):
            reply = client.request(
                backtest(f"fp-{i}", data_id=data_id, params={"fast": 5, "slow": 20})
            )
            assert reply["type"] == "BACKTEST_RESULT", reply
            fingerprints.append(reply["data_fingerprint"])
    return pong, fingerprints


@pytest.mark.slow
def test_a_service_reports_fingerprints_that_follow_the_data(
    zmq_context: zmq.Context[Any], tmp_path: Path
) -> None:
    """PONG lists a fingerprint per dataset; each result names its dataset's; a restart on
    the same data gives the same ones; a changed CSV gives that dataset a new one."""
    data = tmp_path / "data"
    data.mkdir()
    lines = eurusd_lines()
    write_csv(data, "EURUSD-1k.csv", [HEADER, *lines[1:1001]])
    runs = []
    for round_ in range(3):
        if round_ == 2:  # one close price changes, in the last bar
            last = lines[1000].split(",")
            last[4] = f"{float(last[4]) + 0.0001:.5f}"
            write_csv(data, "EURUSD-1k.csv", [HEADER, *lines[1:1000], ",".join(last)])
        log_path = tmp_path / f"service-{round_}.log"
        with run_service_process(
            zmq_context, log_path, "--workers", "1", "--data", str(data)
        ) as service:
            pong, in_results = _ping_and_run(zmq_context, service.endpoint)
            assert service.stop() == 0
        fingerprints = pong["fingerprints"]
        assert sorted(fingerprints) == pong["datasets"]
        assert all(HEX.match(value) for value in fingerprints.values())
        assert in_results == [fingerprints["EURUSD-1k"], fingerprints["GOOG-D1"]]
        assert f"EURUSD-1k={fingerprints['EURUSD-1k']}" in log_path.read_text()
        runs.append(fingerprints)
    assert runs[1] == runs[0]
    assert runs[2]["EURUSD-1k"] != runs[0]["EURUSD-1k"]
    assert {k: v for k, v in runs[2].items() if k != "EURUSD-1k"} == {
        k: v for k, v in runs[0].items() if k != "EURUSD-1k"
    }

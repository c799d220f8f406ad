"""``backtest-queue data check DIR`` and ``service --data DIR`` as a user runs them.

The installed console script runs as a subprocess (``PYTHONPATH`` is inherited, so it
imports this checkout), on files written the way real exporters write them.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest

from backtest_queue.data_command import describe_interval

pytestmark = pytest.mark.slow

COMMAND = Path(sys.executable).parent / "backtest-queue"
#: Generous: the command imports pandas on a loaded machine; only catches hangs.
TIMEOUT = 45.0

MT4 = "\r\n".join(
    [
        "2023.01.02,00:00,1.07010,1.07120,1.06900,1.07050,1234",
        "2023.01.02,01:00,1.07050,1.07200,1.07000,1.07100,1100",
        "2023.01.02,03:00,1.07100,1.07150,1.06980,1.07000,987",
    ]
)
MT5 = "\r\n".join(
    [
        "<DATE>\t<TIME>\t<OPEN>\t<HIGH>\t<LOW>\t<CLOSE>\t<TICKVOL>\t<VOL>\t<SPREAD>",
        "2023.01.02\t00:00:00\t1.07010\t1.07120\t1.06900\t1.07050\t1234\t0\t12",
        "2023.01.02\t01:00:00\t1.07050\t1.07200\t1.07000\t1.07100\t1100\t0\t12",
    ]
)
EUROPEAN = "\n".join(
    [
        "timestamp;open;high;low;close;volume",
        "2023-01-02 00:00;1,0701;1,0712;1,0690;1,0705;1234",
        "2023-01-02 01:00;1,0705;1,0720;1,0700;1,0710;1100",
        "2023-01-02 01:00;1,0705;1,0720;1,0700;1,0710;1100",
    ]
)
BINANCE = "\n".join(
    [
        "open_time,open,high,low,close,volume,close_time,quote_volume,count,"
        "taker_buy_volume,taker_buy_quote_volume,ignore",
        "1672531200000,16541.77,16545.70,16508.39,16529.67,4364.83,1672534799999,"
        "72146355.67,94432,2121.69,35093011.45,0",
        "1672534800000,16529.59,16556.80,16525.78,16551.47,3590.06,1672538399999,"
        "59392341.69,80215,1841.55,30465617.23,0",
    ]
)
AMBIGUOUS = "Date,Open,High,Low,Close\n01/02/2023,1,2,1,1.5\n01/03/2023,1,2,1,1.5\n"


def backtest_queue(*args: str) -> subprocess.CompletedProcess[str]:
    assert COMMAND.exists(), f"the console script {COMMAND} is not installed"
    return subprocess.run(
        [str(COMMAND), *args],
        capture_output=True,
        text=True,
        timeout=TIMEOUT,
        env={**os.environ, "COLUMNS": "400"},
        check=False,
    )


def write(directory: Path, name: str, text: str) -> None:
    (directory / name).write_text(text + "\n")


def blocks(stdout: str) -> dict[str, str]:
    """file name -> its lines of the report."""
    found: dict[str, str] = {}
    name = ""
    for line in stdout.splitlines():
        if line.startswith("  "):
            found[name] += line + "\n"
        elif ": " in line:
            name = line.split(": ", 1)[0]
            found[name] = line + "\n"
    return found


def test_data_check_prints_what_was_understood(tmp_path: Path) -> None:
    write(tmp_path, "EURUSD60.csv", MT4)
    write(tmp_path, "EURUSD_H1.csv", MT5)
    write(tmp_path, "EU-H1.csv", EUROPEAN)
    write(tmp_path, "BTCUSDT-1h.csv", BINANCE)
    done = backtest_queue("data", "check", str(tmp_path))
    assert done.returncode == 0, done.stdout + done.stderr
    report = blocks(done.stdout)
    mt4 = report["EURUSD60.csv"]
    assert "ok, data_id EURUSD60" in mt4
    assert "bars        3, 2023-01-02T00:00:00 .. 2023-01-02T03:00:00 UTC" in mt4
    assert "interval    1h; 1 gap(s) longer than 1h (largest 2h, after 2023-01-02T01:00:00)" in mt4
    assert "duplicates  0" in mt4
    assert "no header (columns by position)" in mt4
    assert "(YYYY.MM.DD hh:mm), no time zone in the file: taken as UTC" in mt4
    mt5 = report["EURUSD_H1.csv"]
    assert "separator tab" in mt5
    assert "time from '<DATE>' + '<TIME>'" in mt5
    assert "volume from '<TICKVOL>'" in mt5
    european = report["EU-H1.csv"]
    assert "separator ';', decimal ','" in european
    assert "bars        2," in european
    assert "duplicates  1 (exact repeats of a bar, dropped)" in european
    binance = report["BTCUSDT-1h.csv"]
    assert "2023-01-01T00:00:00 .. 2023-01-01T01:00:00 UTC" in binance
    assert "time from 'open_time' (epoch milliseconds), epoch time is UTC" in binance
    assert done.stdout.rstrip().endswith("4 file(s) usable, 0 refused")


def test_data_check_says_why_a_file_is_refused_and_exits_1(tmp_path: Path) -> None:
    write(tmp_path, "good.csv", MT4)
    write(tmp_path, "us-dates.csv", AMBIGUOUS)
    write(tmp_path, "klines.csv", "\n".join(BINANCE.splitlines()[1:]))  # as downloaded
    done = backtest_queue("data", "check", str(tmp_path))
    assert done.returncode == 1, done.stdout + done.stderr
    report = blocks(done.stdout)
    assert "ok, data_id good" in report["good.csv"]
    us = report["us-dates.csv"]
    assert us.startswith("us-dates.csv: REFUSED\n")
    assert f"{tmp_path / 'us-dates.csv'}, line 2: date '01/02/2023' is ambiguous" in us
    assert "write time stamps as ISO-8601" in us
    klines = report["klines.csv"]
    assert "line 1: has no header line and 12 fields per row" in klines
    assert "add a header line" in klines
    assert done.stdout.rstrip().endswith("1 file(s) usable, 2 refused")


def test_data_check_of_a_single_file_and_of_nothing(tmp_path: Path) -> None:
    write(tmp_path, "EU-H1.csv", EUROPEAN)
    done = backtest_queue("data", "check", str(tmp_path / "EU-H1.csv"))
    assert done.returncode == 0, done.stdout + done.stderr
    assert "EU-H1.csv: ok, data_id EU-H1" in done.stdout
    empty = tmp_path / "empty"
    empty.mkdir()
    done = backtest_queue("data", "check", str(empty))
    assert done.returncode == 1
    assert f"{empty}: no *.csv file in this directory" in done.stdout
    done = backtest_queue("data", "check", str(tmp_path / "nope"))
    assert done.returncode == 2
    assert "no such file or directory" in done.stdout


def test_a_service_whose_data_files_are_all_refused_does_not_start(tmp_path: Path) -> None:
    """Said loudly: an error naming each file and the fix, exit status 2, no service."""
    write(tmp_path, "us-dates.csv", AMBIGUOUS)
    write(tmp_path, "klines.csv", "\n".join(BINANCE.splitlines()[1:]))
    command = ["service", "--bind", "tcp://127.0.0.1:*", "--workers", "1"]
    process = subprocess.Popen(
        [str(COMMAND), *command, "--data", str(tmp_path)],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        env={**os.environ, "COLUMNS": "400"},
    )
    try:
        output, _ = process.communicate(timeout=TIMEOUT)
    finally:
        if process.poll() is None:  # the original started a service with the built-ins
            process.kill()
            process.communicate()
    assert process.returncode == 2, output
    assert "ERROR" in output
    assert "cannot start the service" in output
    assert "none of the 2 CSV file(s) in data directory" in output
    assert "us-dates.csv, line 2: date '01/02/2023' is ambiguous" in output
    assert f"backtest-queue data check {tmp_path}" in output
    assert "service ready" not in output


def test_describe_interval_of_one_bar_says_so() -> None:
    """A file that is one bar after dropping exact repeats crashed ``data check``."""
    index = pd.DatetimeIndex(["2023-01-02 00:00"])
    assert describe_interval(index) == ("unknown", "one bar only")

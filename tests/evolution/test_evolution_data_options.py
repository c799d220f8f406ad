"""The data and CURVE options of ``demo``/``evolve``: one vocabulary, errors naming the fix."""

from __future__ import annotations

import argparse
import logging
from pathlib import Path

import pytest

from backtest_queue.curve_options import add_curve_arguments, curve_from_args
from backtest_queue.errors import UsageError
from backtest_queue.evolution import command_demo, command_evolve
from backtest_queue.evolution.dataset_source import local_dataset, resolve_data_arguments
from backtest_queue.security import generate_keys


def parse(command: str, *argv: str) -> argparse.Namespace:
    parser = argparse.ArgumentParser()
    (command_demo if command == "demo" else command_evolve).add_arguments(parser)
    if command == "evolve":
        argv = ("--connect", "tcp://127.0.0.1:1", *argv)
    args = parser.parse_args(list(argv))
    resolve_data_arguments(args)
    return args


@pytest.mark.parametrize("command", ["demo", "evolve"])
def test_data_is_a_directory_and_dataset_an_id(command: str, tmp_path: Path) -> None:
    args = parse(command, "--data", str(tmp_path), "--dataset", "MINE-H1")
    assert (args.data_dir, args.dataset) == (tmp_path, "MINE-H1")
    assert parse(command).dataset == "EURUSD-H1"
    assert parse(command).data_dir is None


def test_the_old_spellings_work_with_a_warning(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.WARNING)
    args = parse("demo", "--data", "GOOG-D1", "--data-dir", str(tmp_path))
    assert (args.data_dir, args.dataset) == (tmp_path, "GOOG-D1")
    messages = " ".join(r.getMessage() for r in caplog.records)
    assert "for a dataset id write --dataset GOOG-D1" in messages
    assert "--data-dir is now spelled --data" in messages


@pytest.mark.parametrize(
    ("typed", "fix"),
    [
        ("no/such/dir", "--data no/such/dir: no such directory"),
        ("MINE.csv", "use --data {parent} --dataset MINE"),
    ],
)
def test_a_data_option_that_is_neither_is_refused_naming_the_fix(
    tmp_path: Path, typed: str, fix: str
) -> None:
    if typed.endswith(".csv"):
        (tmp_path / typed).write_text("timestamp,open,high,low,close\n")
        typed = str(tmp_path / typed)
    with pytest.raises(UsageError) as caught:
        parse("evolve", "--data", typed)
    assert fix.format(parent=tmp_path) in str(caught.value)


def test_an_unknown_local_dataset_names_the_option_and_lists_the_ids() -> None:
    with pytest.raises(UsageError) as caught:
        local_dataset("NOPE", None, fraction=0.7)
    message = str(caught.value)
    assert message.startswith("--dataset NOPE: not among the built-in datasets")
    assert "BTCUSD-MN1, EURUSD-H1, GOOG-D1" in message
    assert "--data DIR holding NOPE.csv" in message


def curve_args(*argv: str) -> argparse.Namespace:
    parser = argparse.ArgumentParser()
    add_curve_arguments(parser)
    return parser.parse_args(list(argv))


def test_curve_options(tmp_path: Path) -> None:
    generate_keys(tmp_path, "service")
    generate_keys(tmp_path, "requester")
    assert curve_from_args(curve_args()) is None
    from_dir = curve_from_args(curve_args("--curve-keys", str(tmp_path)))
    by_name = curve_from_args(curve_args(
        "--curve-secret", str(tmp_path / "requester.key_secret"),
        "--curve-server-key", str(tmp_path / "service.key"),
    ))  # fmt: skip
    assert from_dir == by_name
    assert from_dir is not None


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["--curve-secret", "x.key_secret"], "--curve-secret needs --curve-server-key FILE"),
        (["--curve-server-key", "x.key"], "--curve-server-key needs --curve-secret FILE"),
        (["--curve-keys", "{tmp}/none"], "not a directory (make one with 'backtest-queue keys"),
        (["--curve-keys", "{tmp}"], "--curve-keys: {tmp}/requester.key_secret does not exist"),
    ],
)
def test_curve_option_mistakes_name_the_option(
    tmp_path: Path, argv: list[str], message: str
) -> None:
    with pytest.raises(UsageError) as caught:
        curve_from_args(curve_args(*(a.format(tmp=tmp_path) for a in argv)))
    assert message.format(tmp=tmp_path) in str(caught.value)


def test_demo_refuses_curve_options_without_connect(tmp_path: Path) -> None:
    generate_keys(tmp_path, "service")
    generate_keys(tmp_path, "requester")
    args = parse("demo", "--curve-keys", str(tmp_path), "--out", str(tmp_path / "out"))
    args.command = "demo"
    assert command_demo.run(args) == 1
    assert not (tmp_path / "out").exists()


def test_a_local_copy_is_used_only_when_identical_to_the_services(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    from backtest_queue.evolution.dataset_source import _identical_local_copy
    from backtest_queue.service.fingerprint import fingerprint_bars

    lines = ["timestamp,open,high,low,close"] + [
        f"2023-01-{d:02d} 00:00:00,1.0,1.2,0.9,1.1" for d in range(1, 31)
    ]
    (tmp_path / "MINE-D1.csv").write_text("\n".join(lines) + "\n")
    bars = local_dataset("MINE-D1", tmp_path, fraction=0.7).bars
    assert bars is not None
    same = _identical_local_copy("MINE-D1", tmp_path, fingerprint_bars(bars))
    assert same is not None
    assert len(same) == 30
    caplog.set_level(logging.WARNING)
    assert _identical_local_copy("MINE-D1", tmp_path, "0123456789abcdef") is None
    assert "differs from the service's: using the service's" in caplog.text
    assert _identical_local_copy("MINE-D1", tmp_path, None) is None  # nothing to compare
    assert _identical_local_copy("OTHER", tmp_path, "0123456789abcdef") is None

"""``backtest-queue data check DIR``: how a service would read your CSV files, or why not.

For each ``*.csv`` file of ``DIR`` (or each file named) it prints what was understood -
the data_id, the bars, the first and last stamp, the bar interval, gaps, duplicates and
how the file was read (separator, decimal mark, time columns and format, time zone) - or
why the file is refused, naming the line and the fix. A service started with
``--data DIR`` loads exactly the files printed as ``ok``.

Exit status: 0 when every file is usable, 1 when any file is refused or there is no
``*.csv`` file, 2 when a path does not exist.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import TextIO

import numpy as np
import pandas as pd

from .service.datasets import BUILTIN_DATASETS, DataFileCheck, check_data_dir, check_data_file

__all__ = ["add_arguments", "describe_interval", "run"]


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Add the ``data`` subcommands to ``parser``."""
    sub = parser.add_subparsers(dest="data_command", required=True, metavar="SUBCOMMAND")
    check = sub.add_parser(
        "check",
        help="show how each CSV file is read, or why it is refused",
        description="Show how each <data_id>.csv file would be read by "
        "'backtest-queue service --data DIR' (bars, first/last stamp, bar interval, gaps, "
        "duplicates, separator, time format), or why it is refused and how to fix it. "
        "Exit status 1 when any file is refused.",
    )
    check.add_argument(
        "paths",
        nargs="+",
        metavar="PATH",
        help="a data directory (its *.csv files are checked) or single CSV files",
    )


def run(args: argparse.Namespace) -> int:
    """Run ``data check``; returns the exit status (see the module docstring)."""
    return check_paths([Path(p) for p in args.paths], sys.stdout)


def check_paths(paths: list[Path], out: TextIO) -> int:
    """Check directories and files, print a report to ``out``, return the exit status."""
    checks: list[DataFileCheck] = []
    for path in paths:
        if path.is_dir():
            found = check_data_dir(path)
            if not found:
                print(f"{path}: no *.csv file in this directory", file=out)
            checks.extend(found)
        elif path.is_file():
            checks.append(check_data_file(path))
        else:
            print(f"{path}: no such file or directory", file=out)
            return 2
    for check in checks:
        _print_check(check, out)
    refused = sum(check.read is None for check in checks)
    print(f"{len(checks) - refused} file(s) usable, {refused} refused", file=out)
    return 1 if refused or not checks else 0


def _print_check(check: DataFileCheck, out: TextIO) -> None:
    if check.read is None:
        print(f"{check.path.name}: REFUSED", file=out)
        print(f"  {check.problem}", file=out)
        return
    read = check.read
    index = pd.DatetimeIndex(read.bars.index)
    interval, gaps = describe_interval(index)
    print(f"{check.path.name}: ok, data_id {check.data_id}", file=out)
    print(
        f"  bars        {len(index)}, {index[0].isoformat()} .. {index[-1].isoformat()} UTC",
        file=out,
    )
    print(f"  interval    {interval}; {gaps}", file=out)
    print(
        f"  duplicates  {read.duplicates}"
        + (" (exact repeats of a bar, dropped)" if read.duplicates else ""),
        file=out,
    )
    sep = {"\t": "tab", ";": "';'", ",": "','"}[read.separator]
    header = "header on line 1" if read.header else "no header (columns by position)"
    columns = " + ".join(repr(c) for c in read.time_columns)
    volume = f"volume from {read.volume_column!r}" if read.volume_column else "no volume"
    print(
        f"  read as     separator {sep}, decimal {read.decimal!r}, {header}; time from "
        f"{columns} ({read.time_format}), {read.time_zone}; {volume}",
        file=out,
    )
    notes = list(read.notes)
    if check.data_id in BUILTIN_DATASETS:
        notes.append(f"replaces the built-in dataset {check.data_id}")
    for note in notes:
        print(f"  note        {note}", file=out)


def describe_interval(index: pd.DatetimeIndex) -> tuple[str, str]:
    """The bar interval (the most common step) and the gaps (longer steps), in words.

    Args:
        index: sorted, unique stamps.

    Returns:
        ``(interval, gaps)``, e.g. ``("1h", "12 gaps longer than 1h (largest 2d 1h,
        after 2017-04-21T20:00:00)")``; ``("unknown", "one bar only")`` for one bar.
    """
    if len(index) < 2:
        return "unknown", "one bar only"
    steps = np.diff(index.asi8)  # in the index's unit
    unit_ns = pd.Timedelta(1, unit=index.unit).value
    values, counts = np.unique(steps, return_counts=True)
    interval = int(values[np.argmax(counts)])
    longer = np.flatnonzero(steps > interval)
    shown = _duration(interval * unit_ns)
    if not longer.size:
        return shown, "no gaps"
    largest = int(longer[np.argmax(steps[longer])])
    return shown, (
        f"{longer.size} gap(s) longer than {shown} (largest "
        f"{_duration(int(steps[largest]) * unit_ns)}, after {index[largest].isoformat()})"
    )


def _duration(nanoseconds: int) -> str:
    seconds, rest = divmod(nanoseconds, 10**9)
    parts = []
    for name, size in (("d", 86400), ("h", 3600), ("min", 60), ("s", 1)):
        amount, seconds = divmod(seconds, size)
        if amount:
            parts.append(f"{amount}{name}")
    if rest or not parts:
        parts.append(f"{rest / 1e6:g}ms")
    return " ".join(parts)

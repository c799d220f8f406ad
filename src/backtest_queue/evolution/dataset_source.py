"""Which dataset a search runs on, and where its bars are known: the data options.

**One vocabulary on every command:** ``--data DIR`` is a directory of ``<data_id>.csv``
OHLCV files (as for ``backtest-queue service`` and ``data check``), and ``--dataset ID``
is the id of one dataset. For one release the old spellings still work, with a warning
naming the new one: ``--data-dir DIR``, and ``--data ID`` where ``ID`` is not a directory.

**The service is asked, not the client's own files.** A search against services you
run (:func:`dataset_from_service`) PINGs them and checks ``--dataset`` against the
datasets the first one to answer lists. The split into in-sample and out-of-sample bars
needs only the dataset's bar count and span, which the PONG reports (``ranges``); the
client never needs a copy of the data. When it has one that is identical to the
service's (the content fingerprints match: a built-in dataset, or ``--data DIR`` with
the same file), it uses those bars: the split is then cut at exactly the bar count, and
the winner's equity curve and the overfitting measures (DSR, PBO), which re-run the
top strategies here, are computed. Without such a copy, the split is cut at the same
share of the dataset's *time span* (exact for evenly spaced bars; gaps move it by a few
bars) and those extras are skipped, with a line saying so.
"""

from __future__ import annotations

import argparse
import logging
import re
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ..errors import NoAnswer, TransportError, UsageError
from .split import SampleSplit, split_bars

if TYPE_CHECKING:
    import pandas as pd

    from ..protocol import Pong
    from ..transport import CurveClient

__all__ = [
    "SearchData",
    "add_data_arguments",
    "dataset_from_service",
    "local_dataset",
    "resolve_data_arguments",
]

log = logging.getLogger("backtest_queue.evolution")

_DATA_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,127}$")
#: Seconds each PING waits before it is sent again; and before a line says we wait.
_PING_TIMEOUT = 5.0
_WAIT_WARNING = 10.0


@dataclass(frozen=True, slots=True, kw_only=True)
class SearchData:
    """The dataset a search runs on.

    Attributes:
        split: the in-sample / out-of-sample bounds.
        in_sample_stamps: the in-sample bars' timestamps, to cut walk-forward windows
            (evenly spaced over the span when the bars are on the service only).
        bars: the bars, when this process has a copy identical to the service's (for
            the equity curve and the DSR/PBO), else ``None``.
    """

    split: SampleSplit
    in_sample_stamps: pd.Index[Any]
    bars: pd.DataFrame | None


def add_data_arguments(parser: argparse.ArgumentParser, *, default_dataset: str) -> None:
    """Add ``--data DIR`` and ``--dataset ID`` (and the old ``--data-dir``, hidden)."""
    parser.add_argument(
        "--dataset",
        default=None,
        metavar="ID",
        help=f"the dataset to search on, one the service lists (default: {default_dataset}; "
        "'backtest-queue status ENDPOINT' lists a service's)",
    )
    parser.add_argument(
        "--data",
        dest="data_given",
        default=None,
        metavar="DIR",
        help="directory of <data_id>.csv OHLCV files, as for 'backtest-queue service --data "
        "DIR' (pick one with --dataset, its file name without .csv): the demo's own service "
        "serves them; against a service you run (--connect) it is an optional copy of the "
        "service's files, used when identical for the equity curve and the DSR/PBO",
    )
    parser.add_argument("--data-dir", dest="data_dir_given", default=None, type=Path,
                        help=argparse.SUPPRESS)  # fmt: skip
    parser.set_defaults(default_dataset=default_dataset)


def resolve_data_arguments(args: argparse.Namespace) -> None:
    """Set ``args.data_dir`` (a ``Path`` or ``None``) and ``args.dataset`` from the options.

    Old spellings are accepted with a warning naming the new one.

    Raises:
        UsageError: ``--data`` names neither a directory nor a dataset id (the message
            says what was typed and what to type instead), or two options disagree.
    """
    data_dir: Path | None = args.data_dir_given
    if data_dir is not None:
        log.warning("--data-dir is now spelled --data (as on 'backtest-queue service'); "
                    "--data-dir will be removed")  # fmt: skip
    dataset: str | None = args.dataset
    given: str | None = args.data_given
    if given is not None:
        path = Path(given)
        if path.is_dir():
            if data_dir is not None and data_dir != path:
                raise UsageError(f"--data {given} and --data-dir {data_dir} disagree; give --data")
            data_dir = path
        elif path.is_file() and path.suffix.lower() == ".csv":
            raise UsageError(
                f"--data {given}: --data takes the directory holding the file; use "
                f"--data {path.parent} --dataset {path.stem}"
            )
        elif _DATA_ID.match(given) and "/" not in given and dataset is None:
            log.warning(
                "--data %s: --data now names a directory of CSV files (as on 'backtest-queue "
                "service'); for a dataset id write --dataset %s", given, given,
            )  # fmt: skip
            dataset = given
        else:
            raise UsageError(
                f"--data {given}: no such directory. --data DIR is a directory of "
                "<data_id>.csv files; --dataset ID picks a dataset by its id"
            )
    args.data_dir = data_dir
    args.dataset = dataset or args.default_dataset


def local_dataset(data_id: str, data_dir: Path | None, *, fraction: float) -> SearchData:
    """The dataset from this process's own files: what the demo's own service serves.

    Raises:
        UsageError: no such dataset among the built-ins and ``data_dir``'s files (the
            message lists those there are), or ``data_dir`` cannot be used.
    """
    from ..service.datasets import load_catalog

    try:
        catalog = load_catalog(data_dir)
    except NotADirectoryError:
        raise UsageError(f"--data {data_dir}: not a directory") from None
    dataset = catalog.datasets.get(data_id)
    if dataset is None:
        where = "the built-in datasets"
        if data_dir is not None:
            where += f" and the files of --data {data_dir}"
        raise UsageError(
            f"--dataset {data_id}: not among {where}; there are {', '.join(catalog.ids)}"
            + ("" if data_dir else f" (your own file: --data DIR holding {data_id}.csv)")
        )
    return _from_bars(dataset.bars, data_id, fraction)


def _from_bars(bars: pd.DataFrame, data_id: str, fraction: float) -> SearchData:
    split = split_bars(bars.index, data_id, fraction=fraction)
    return SearchData(split=split, in_sample_stamps=bars.index[: split.in_sample_bars],
                      bars=bars)  # fmt: skip


async def dataset_from_service(
    data_id: str,
    endpoints: Sequence[str],
    *,
    fraction: float,
    data_dir: Path | None = None,
    curve: CurveClient | None = None,
) -> SearchData:
    """Ask the services for ``data_id``; use a local copy only when it is identical.

    Waits until one of ``endpoints`` answers a PING (saying so after a while: the
    services may start after the search, as requests would wait for them too).

    Raises:
        UsageError: the service that answered has no ``data_id`` (the message lists the
            datasets it has), or it does not report the dataset's bars and there is no
            identical local copy.
        HandshakeRefused: a service refused the handshake (keys that do not fit).
        TransportError: an endpoint is malformed.
    """
    endpoint, pong = await _first_answer(endpoints, curve)
    if data_id not in pong.datasets:
        listed = ", ".join(pong.datasets) or "none"
        raise UsageError(
            f"--dataset {data_id}: the service at {endpoint} has no such dataset; it has "
            f"{listed}. Pick one of those, or start the service with --data DIR holding "
            f"{data_id}.csv"
        )
    local = _identical_local_copy(data_id, data_dir, pong.fingerprints.get(data_id))
    if local is not None:
        log.info("dataset %s: the service's bars are identical to the copy here "
                 "(fingerprint %s)", data_id, pong.fingerprints[data_id])  # fmt: skip
        return _from_bars(local, data_id, fraction)
    span = pong.ranges.get(data_id)
    if span is None:
        raise UsageError(
            f"--dataset {data_id}: the service at {endpoint} does not report the dataset's "
            f"bars (version {pong.version or '?'}, older than this client) and there is no "
            f"identical copy here: update the service, or give --data DIR holding the "
            f"same {data_id}.csv"
        )
    import pandas as pd

    stamps = pd.date_range(pd.Timestamp(span.first), pd.Timestamp(span.last), periods=span.bars)
    split = split_bars(stamps, data_id, fraction=fraction)
    log.info(
        "dataset %s is on the service only (%d bars, %s .. %s): the split is cut at %g of "
        "its time span; the equity curve and the DSR/PBO need the bars here and are "
        "skipped (--data DIR with the same %s.csv computes them)",
        data_id, span.bars, span.first, span.last, fraction, data_id,
    )  # fmt: skip
    return SearchData(split=split, in_sample_stamps=stamps[: split.in_sample_bars], bars=None)


def _identical_local_copy(
    data_id: str, data_dir: Path | None, fingerprint: str | None
) -> pd.DataFrame | None:
    """This process's bars of ``data_id`` if their fingerprint is ``fingerprint``."""
    if fingerprint is None:
        return None
    from ..service.datasets import load_catalog
    from ..service.fingerprint import fingerprint_bars

    try:
        catalog = load_catalog(data_dir)
    except (OSError, UsageError) as exc:  # a bad --data DIR: the service's data still works
        log.warning("--data %s cannot be read (%s); using the service's dataset", data_dir, exc)
        return None
    dataset = catalog.datasets.get(data_id)
    if dataset is None:
        return None
    if fingerprint_bars(dataset.bars) != fingerprint:
        log.warning("dataset %s here (%s) differs from the service's: using the service's",
                    data_id, dataset.source)  # fmt: skip
        return None
    return dataset.bars


async def _first_answer(endpoints: Sequence[str], curve: CurveClient | None) -> tuple[str, Pong]:
    """The first PONG any of ``endpoints`` sends, asking again until one answers."""
    import anyio

    from ..status import ping_service

    answers: list[tuple[str, Pong]] = []
    errors: list[TransportError] = []  # a refused handshake, a malformed endpoint
    async with anyio.create_task_group() as tg:

        async def ask(endpoint: str) -> None:
            while True:
                try:
                    pong = await ping_service(endpoint, timeout=_PING_TIMEOUT, curve=curve)
                except NoAnswer:
                    continue
                except TransportError as exc:  # one clear error, not a group of one
                    errors.append(exc)
                else:
                    answers.append((endpoint, pong))
                tg.cancel_scope.cancel()
                return

        async def say_we_wait() -> None:
            await anyio.sleep(_WAIT_WARNING)
            log.warning("waiting for a backtest service at %s to list its datasets "
                        "(is one running there? Ctrl-C to stop)", ", ".join(endpoints))  # fmt: skip

        for endpoint in endpoints:
            tg.start_soon(ask, endpoint)
        tg.start_soon(say_we_wait)
    if errors:
        raise errors[0]
    return answers[0]

"""The requester's CURVE options on the command line (``evolve``, ``demo``, ``status``).

They mirror the service's: ``backtest-queue keys DIR`` writes ``service.key`` /
``service.key_secret`` and ``requester.key`` / ``requester.key_secret``; the service is
started with ``--curve-secret DIR/service.key_secret`` (and ``--allowed-keys``), and a
requester is given

* ``--curve-keys DIR``: that directory, read as ``DIR/requester.key_secret`` (its own
  secret certificate) and ``DIR/service.key`` (the service's public one, pinned); or
* ``--curve-secret FILE`` and ``--curve-server-key FILE``: the two files by name (each
  also overrides its half of ``--curve-keys``).
"""

from __future__ import annotations

import argparse
from pathlib import Path

from .errors import UsageError
from .transport import CurveClient

__all__ = ["add_curve_arguments", "curve_from_args"]


def add_curve_arguments(parser: argparse.ArgumentParser) -> None:
    """Add ``--curve-keys``, ``--curve-secret`` and ``--curve-server-key`` to ``parser``."""
    group = parser.add_argument_group(
        "CURVE encryption", "for a service started with --curve-secret (keys from "
        "'backtest-queue keys DIR')",
    )  # fmt: skip
    group.add_argument(
        "--curve-keys",
        type=Path,
        default=None,
        metavar="DIR",
        help="a directory written by 'backtest-queue keys DIR': uses DIR/requester.key_secret "
        "and the service's public DIR/service.key",
    )
    group.add_argument(
        "--curve-secret",
        type=Path,
        default=None,
        metavar="FILE",
        help="this requester's secret certificate (*.key_secret)",
    )
    group.add_argument(
        "--curve-server-key",
        type=Path,
        default=None,
        metavar="FILE",
        help="the service's public certificate (*.key), pinned: a service with another "
        "key is refused",
    )


def curve_from_args(args: argparse.Namespace) -> CurveClient | None:
    """The CURVE keys the options name, or ``None`` when none was given.

    Raises:
        UsageError: only one of ``--curve-secret`` / ``--curve-server-key`` was given
            without ``--curve-keys``, or a certificate is missing, unreadable or of the
            wrong kind (the message names the option and the file).
    """
    keys: Path | None = args.curve_keys
    secret: Path | None = args.curve_secret
    server: Path | None = args.curve_server_key
    if keys is None and secret is None and server is None:
        return None
    origin = {"secret": "--curve-secret", "server": "--curve-server-key"}
    if keys is not None:
        if not keys.is_dir():
            raise UsageError(f"--curve-keys {keys}: not a directory (make one with "
                             f"'backtest-queue keys {keys}')")  # fmt: skip
        if secret is None:
            secret, origin["secret"] = keys / "requester.key_secret", "--curve-keys"
        if server is None:
            server, origin["server"] = keys / "service.key", "--curve-keys"
    if secret is None:
        raise UsageError("--curve-server-key needs --curve-secret FILE (this requester's "
                         "*.key_secret), or give both with --curve-keys DIR")  # fmt: skip
    if server is None:
        raise UsageError("--curve-secret needs --curve-server-key FILE (the service's public "
                         "*.key), or give both with --curve-keys DIR")  # fmt: skip
    from .security import load_client

    for option, path in ((origin["secret"], secret), (origin["server"], server)):
        if not path.is_file():
            raise UsageError(f"{option}: {path} does not exist")
    return load_client(secret, server)

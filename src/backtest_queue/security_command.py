"""``backtest-queue keys DIR``: generate CURVE key pairs for a service and a requester."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from .errors import UsageError
from .security import generate_keys

__all__ = ["add_arguments", "run"]


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("directory", type=Path, help="where to write the certificates")
    parser.add_argument(
        "--name",
        action="append",
        help="key pair name (repeatable; default: service and requester)",
    )


def run(args: argparse.Namespace) -> int:
    names = args.name or ["service", "requester"]
    try:
        for name in names:
            public, secret = generate_keys(args.directory, name)
            print(f"{name}: public {public}  secret {secret}")
    except BrokenPipeError:
        raise  # stdout's reader went away: the CLI ends quietly (141)
    except (UsageError, OSError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    print(
        "Give the service its *.key_secret and a directory holding the requesters' *.key;\n"
        "give each requester its own *.key_secret and the service's public *.key."
    )
    return 0

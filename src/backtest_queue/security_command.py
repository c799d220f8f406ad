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
    made: list[tuple[str, Path, Path]] = []
    try:
        for name in names:
            public, secret = args.directory / f"{name}.key", args.directory / f"{name}.key_secret"
            if public.exists() or secret.exists():  # before writing any: all pairs or none
                raise UsageError(
                    f"{public} or {secret} already exists; refusing to overwrite keys (give "
                    "another directory, or delete the old keys first)"
                )
        for name in names:
            made.append((name, *generate_keys(args.directory, name)))
    except (UsageError, OSError) as exc:
        print(f"backtest-queue keys: {exc}", file=sys.stderr)
        return 2
    # Printed only once every pair is written: a reader that goes away (141) loses nothing.
    for name, public, secret in made:
        print(f"{name}: public {public}  secret {secret}")
    print(
        "Give the service its *.key_secret and a directory holding the requesters' *.key;\n"
        "give each requester its own *.key_secret and the service's public *.key."
    )
    return 0

"""Run every example script in this directory; fail if any fails or runs too long.

Usage: ``python examples/run_all.py [--timeout SECONDS] [NAME ...]`` (names without
``.py``; default: every ``*.py`` here but this one). Each script runs in a fresh
interpreter (the one running this), from the repository root, without arguments: an
example must work standalone. Exit status 0 when all pass, 1 otherwise.
"""

from __future__ import annotations

import argparse
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent


def run(script: Path, timeout: float) -> tuple[bool, float, str]:
    """Run one script; return (passed, seconds, the tail of its output)."""
    started = time.monotonic()
    # A new session, so a timed-out example is stopped with everything it started.
    with subprocess.Popen(
        [sys.executable, str(script)],
        cwd=HERE.parent,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        start_new_session=True,
    ) as process:
        try:
            output, _ = process.communicate(timeout=timeout)
            passed = process.returncode == 0
        except subprocess.TimeoutExpired:
            os.killpg(process.pid, signal.SIGTERM)
            try:
                output, _ = process.communicate(timeout=10)
            except subprocess.TimeoutExpired:
                os.killpg(process.pid, signal.SIGKILL)
                output, _ = process.communicate()
            output += f"\n(timed out after {timeout:g} s)"
            passed = False
    tail = "\n".join(output.splitlines()[-20:])
    return passed, time.monotonic() - started, tail


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("names", nargs="*", help="examples to run (default: all)")
    parser.add_argument("--timeout", type=float, default=60.0, help="seconds per example")
    args = parser.parse_args()
    scripts = sorted(p for p in HERE.glob("*.py") if p.name != Path(__file__).name)
    if args.names:
        scripts = [p for p in scripts if p.stem in args.names]
        missing = set(args.names) - {p.stem for p in scripts}
        if missing:
            print(f"no such example: {', '.join(sorted(missing))}", file=sys.stderr)
            return 1
    failed = []
    for script in scripts:
        passed, seconds, tail = run(script, args.timeout)
        print(f"{'ok  ' if passed else 'FAIL'} {script.name} ({seconds:.1f} s)", flush=True)
        if not passed:
            failed.append(script.name)
            print("    " + tail.replace("\n", "\n    "), flush=True)
    print(f"{len(scripts) - len(failed)}/{len(scripts)} examples passed")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())

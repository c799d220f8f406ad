"""Real service processes for fault tests: the backtest service comes from the test kit
(:class:`backtest_queue.testing.ServiceProcess`); the stub echo service is ours."""

from __future__ import annotations

import subprocess
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from backtest_queue.testing import ServiceProcess, service_process, wait_ready

from lifelines import tied

__all__ = ["PROCS", "ServiceProcess", "echo_process", "service_process", "wait_ready"]

PROCS = Path(__file__).parent / "procs"


@contextmanager
def echo_process(endpoint: str, delay: float = 0.0) -> Iterator[subprocess.Popen[bytes]]:
    """The stub echo service (no backtest work) as a real process."""
    cmd = [sys.executable, str(PROCS / "echo_service.py"), endpoint, str(delay)]
    process = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, **tied())
    try:
        wait_ready(endpoint, process)
        yield process
    finally:
        if process.poll() is None:
            process.kill()
        process.wait(timeout=20)  # reaped before the next one binds the endpoint

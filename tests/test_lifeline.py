"""Child processes end with their parent, however it ends (issue 10, section 5).

Real processes throughout: ``backtest-queue demo`` and its service, a service and its
pool workers, and small scripts in ``procs/`` around :mod:`backtest_queue.lifeline`.
"""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import pytest
import zmq

from backtest_queue.lifeline import EXIT_PARENT_GONE, LIFELINE_ENV, Lifeline

from lifelines import tied
from proc_watch import alive, descendants, needs_proc, wait_gone
from service_process import PROCS, service_process
from stubs import free_tcp_endpoint

pytestmark = [needs_proc, pytest.mark.slow]

STARTED = re.compile(r"backtest service started \(pid (\d+)\)")
BIND = re.compile(r"service --bind (tcp://[\d.]+:\d+)")
#: Bound on a process noticing its parent is gone and stopping (normally well under 1 s).
GONE_TIMEOUT = 30.0


def _bindable(endpoint: str) -> bool:
    context: zmq.Context[Any] = zmq.Context()
    try:
        router = context.socket(zmq.ROUTER)
        router.bind(endpoint)
        router.close(linger=0)
        return True
    except zmq.ZMQError:
        return False
    finally:
        context.destroy(linger=0)


@pytest.mark.parametrize("backend", ["trio", "asyncio"])
def test_kill_9_of_the_demo_stops_its_service_and_workers(tmp_path: Path, backend: str) -> None:
    """kill -9 of ``backtest-queue demo`` mid-search: its service, the service's pool
    workers and the pool's resource tracker all exit, and the port is free again."""
    command = [sys.executable, "-m", "backtest_queue", "demo", "--workers", "2",
               "--service-delay", "0", "--generations", "50", "--out", str(tmp_path),
               "--backend", backend]  # fmt: skip
    env = {**os.environ, "COLUMNS": "400"}
    with subprocess.Popen(command, stderr=subprocess.STDOUT, stdout=subprocess.PIPE,
                          text=True, **tied(env)) as demo:  # fmt: skip
        try:
            assert demo.stdout is not None
            pid, endpoint = None, None
            deadline = time.monotonic() + 60
            for line in demo.stdout:  # bounded by the deadline check and the test timeout
                if match := STARTED.search(line):
                    pid = int(match.group(1))
                if match := BIND.search(line):
                    endpoint = match.group(1)
                if pid is not None and "generation 1/50" in line:
                    break  # results came back: the service and its workers run
                assert time.monotonic() < deadline, "the demo did not get going"
            assert pid is not None
            assert endpoint is not None
            below = descendants(pid)
            assert len(below) >= 2, below  # two workers (and a resource tracker)
            demo.send_signal(signal.SIGKILL)
            assert demo.wait(timeout=20) == -signal.SIGKILL
        finally:
            if demo.poll() is None:
                demo.kill()
    for process in [pid, *sorted(below)]:
        assert wait_gone(process, GONE_TIMEOUT), f"pid {process} outlived the demo"
    assert _bindable(endpoint)
    # It stopped gracefully (SIGTERM from its lifeline): its datasets file is gone too.
    assert not list(Path(tempfile.gettempdir()).glob(f"backtest-queue-datasets-{pid}-*"))


def test_kill_9_of_a_service_stops_its_workers() -> None:
    """The pool workers (and the resource tracker) exit when their service is killed."""
    with service_process(free_tcp_endpoint(), workers=2) as service:
        assert service.process is not None
        pid = service.process.pid
        below = descendants(pid)
        assert len(below) >= 2, below
        service.kill(signal.SIGKILL, group=False)  # the service alone, not its group
    for process in sorted(below):
        assert wait_gone(process, GONE_TIMEOUT), f"worker {process} outlived its service"


def test_a_child_outlives_the_thread_that_started_it_not_the_process() -> None:
    """The child of a parent whose forking thread has ended keeps running (the trap of
    ``PR_SET_PDEATHSIG``, which trio's threaded process start would spring), and stops
    once that parent process is killed."""
    command = [sys.executable, str(PROCS / "lifeline_parent.py")]
    with subprocess.Popen(command, stdout=subprocess.PIPE, text=True) as parent:
        try:
            assert parent.stdout is not None
            word, pid = parent.stdout.readline().split()
            assert word == "child"
            child = int(pid)
            assert alive(child)
        finally:
            parent.kill()
    assert wait_gone(child, GONE_TIMEOUT)


def _start_child(lifeline: Lifeline, *args: str) -> subprocess.Popen[str]:
    child = subprocess.Popen(
        [sys.executable, str(PROCS / "lifeline_child.py"), *args],
        env={**os.environ, **lifeline.env}, pass_fds=lifeline.pass_fds,
        stdout=subprocess.PIPE, text=True,
    )  # fmt: skip
    lifeline.child_started()
    assert child.stdout is not None
    assert child.stdout.readline().strip() == "watching"
    child.stdout.close()
    return child


def test_cutting_the_line_sends_sigterm_then_exits() -> None:
    kept = Lifeline()
    with Lifeline() as lifeline:
        child = _start_child(lifeline)
        stubborn = _start_child(kept, "--ignore-sigterm", "0.5")
    try:
        assert child.wait(timeout=GONE_TIMEOUT) == -signal.SIGTERM
        assert stubborn.poll() is None  # its line is still up
    finally:
        kept.close()
    assert stubborn.wait(timeout=GONE_TIMEOUT) == EXIT_PARENT_GONE  # SIGTERM ignored


def test_a_bad_lifeline_variable_is_a_usage_error() -> None:
    env = {**os.environ, LIFELINE_ENV: "987"}
    done = subprocess.run([sys.executable, "-m", "backtest_queue", "--version"],
                          env=env, capture_output=True, text=True, timeout=60)  # fmt: skip
    assert done.returncode == 2
    assert f"{LIFELINE_ENV}=987: not an open file descriptor" in done.stderr


def test_a_service_logging_to_its_dead_parents_pipe_still_stops() -> None:
    """A service whose log went to a pipe read by its parent (as in the multi-host
    tests): when the parent dies, the pipe's reader dies with it. The lifeline must stop
    the service all the same, although writing the log now fails (rich's handler raises
    ``SystemExit`` on a broken pipe, which ended the watch thread before it stopped
    anything)."""
    command = [sys.executable, "-m", "backtest_queue", "service",
               "--bind", "tcp://127.0.0.1:*", "--workers", "1"]  # fmt: skip
    with Lifeline() as lifeline:
        service = subprocess.Popen(
            command, env={**os.environ, **lifeline.env}, pass_fds=lifeline.pass_fds,
            stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
        )  # fmt: skip
        lifeline.child_started()
        assert service.stdout is not None
        for line in service.stdout:
            if b"service ready on" in line:
                break
        service.stdout.close()  # the reader is gone, as with a dead parent
    # The line is cut (the parent's end closed): the service must stop.
    try:
        assert service.wait(timeout=GONE_TIMEOUT) is not None
    finally:
        if service.poll() is None:
            service.kill()
            service.wait()

"""A parent that starts lifeline_child.py from a thread that then ends, and waits.

Usage: python lifeline_parent.py

Prints "child PID" once the starting thread has ended and the child watches, then
blocks until it is killed.
"""

from __future__ import annotations

import os
import subprocess
import sys
import threading
from pathlib import Path

from backtest_queue.lifeline import Lifeline

if __name__ == "__main__":
    lifeline = Lifeline()  # kept open until this process dies
    children: list[subprocess.Popen[str]] = []

    def start() -> None:
        child = subprocess.Popen(
            [sys.executable, str(Path(__file__).with_name("lifeline_child.py"))],
            env={**os.environ, **lifeline.env}, pass_fds=lifeline.pass_fds,
            stdout=subprocess.PIPE, text=True,
        )  # fmt: skip
        lifeline.child_started()
        children.append(child)

    thread = threading.Thread(target=start)
    thread.start()
    thread.join()  # the thread that forked the child is gone (PR_SET_PDEATHSIG would fire)
    assert children[0].stdout is not None
    assert children[0].stdout.readline().strip() == "watching"
    print(f"child {children[0].pid}", flush=True)
    threading.Event().wait()

"""A child that watches its lifeline, then waits to be stopped.

Usage: python lifeline_child.py [--ignore-sigterm GRACE]

Prints "watching" once the watch runs. With --ignore-sigterm it ignores SIGTERM, so only
the watch's os._exit after GRACE seconds can end it.
"""

from __future__ import annotations

import os
import signal
import sys
import threading

from backtest_queue.lifeline import exit_with_parent, watch_parent_from_environment

if __name__ == "__main__":
    if len(sys.argv) > 2 and sys.argv[1] == "--ignore-sigterm":
        signal.signal(signal.SIGTERM, signal.SIG_IGN)
        fd = int(os.environ.pop("BACKTEST_QUEUE_LIFELINE_FD"))
        exit_with_parent(fd, grace=float(sys.argv[2]))
    else:
        assert watch_parent_from_environment() is not None
    print("watching", flush=True)
    threading.Event().wait()

"""Child processes of the tests stop when the test run dies (no pytest import here:
spawned service workers import this through ``service_helpers``)."""

from __future__ import annotations

import os
from collections.abc import Mapping
from typing import Any

from backtest_queue.lifeline import Lifeline

_lifeline: list[Lifeline] = []


def tied(env: Mapping[str, str] | None = None) -> dict[str, Any]:
    """``subprocess.Popen`` keyword arguments (``env``, ``pass_fds``) that tie the child
    to this test process (see :mod:`backtest_queue.lifeline`).

    One lifeline serves every child: its write end lives as long as this process, so the
    children stop when the test run is killed, whatever kills it.
    """
    if not _lifeline:
        _lifeline.append(Lifeline())
    line = _lifeline[0]
    return {"env": {**(os.environ if env is None else env), **line.env}, "pass_fds": line.pass_fds}

"""Engines that return or raise what a service must still turn into a valid reply.

Importable by the spawned worker processes (the engine is pickled by reference).
"""

from __future__ import annotations

from typing import Any

import pandas as pd

from backtest_queue.protocol import BacktestRequest, Strategy


class OddEngine:
    """The strategy name picks the misbehaviour: ``"dict"`` returns a dict instead of
    Metrics; ``"control"`` raises with control characters and a lone surrogate in the
    message; anything else returns ``None``."""

    def validate(self, strategy: Strategy) -> int:
        return 2

    def prepare(self) -> None:
        pass

    def run(self, request: BacktestRequest, bars: pd.DataFrame) -> Any:
        name = request.strategy.name
        if name == "dict":
            return {"strategy_name": name, "sharpe": 1.0}
        if name == "control":
            raise ValueError("bad\x1b[2J\x00line\nbreak \udc80 end")
        return None

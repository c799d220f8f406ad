"""Benchmarks for backtest-queue (issue #7): ``python -m benchmarks [--quick]``.

Every figure is measured in one harness run on one machine, so the dispatcher's numbers
can be read as ratios to baselines (raw pyzmq, ``zmq.asyncio``, naive zmq-anyio) measured
minutes apart. See ``benchmarks/README.md`` for what each row measures.
"""

from __future__ import annotations

__all__: list[str] = []

"""The one set of message bodies every benchmark variant sends and receives.

Requests are real :class:`~backtest_queue.BacktestRequest` values (about 256 bytes
encoded); replies are real ``BACKTEST_RESULT`` bodies (about 267 bytes) for the same
``request_id``. The services fill a pre-encoded result template with the id they read,
so every variant (baselines included) exchanges byte-identical bodies.
"""

from __future__ import annotations

from typing import Final

import msgspec

from backtest_queue.protocol import (
    BacktestRequest,
    BacktestResult,
    Metrics,
    Strategy,
    encode_message,
)

__all__ = [
    "ID_WIDTH",
    "ResultTemplate",
    "make_request",
    "make_requests",
    "request_bodies",
]

#: Request ids are ``f"{tag}-{i:0{ID_WIDTH}d}"``: fixed width, JSON-safe, ordered.
ID_WIDTH: Final = 24
_PLACEHOLDER: Final = "@@request-id@@"


def make_request(i: int, tag: str = "bench") -> BacktestRequest:
    """Return request number ``i``: an SMA-cross strategy with stop loss and take profit."""
    fast = 5 + i % 20
    slow = 20 + i % 180
    strategy = Strategy(
        name=f"sma-{fast}-{slow}",
        kind="sma_cross",
        params={"fast": fast, "slow": slow},
        sl=0.005 + (i % 10) * 0.001,
        tp=0.01 + (i % 10) * 0.002,
    )
    # A distinct cash per request makes every request's content distinct, so a result
    # cache (``store=``) never answers one from an earlier one; the width stays fixed.
    return BacktestRequest(
        strategy=strategy,
        data_id="EURUSD-H1",
        request_id=f"{tag}-{i:0{ID_WIDTH}d}",
        cash=10_000.0 + i % 80_000,
    )


def make_requests(n: int, tag: str = "bench") -> list[BacktestRequest]:
    """Return requests ``0 .. n-1`` (see :func:`make_request`)."""
    return [make_request(i, tag) for i in range(n)]


def request_bodies(requests: list[BacktestRequest]) -> list[bytes]:
    """Encode requests exactly as the dispatcher puts them on the wire."""
    return [encode_message(r) for r in requests]


class _RequestId(msgspec.Struct):
    request_id: str


class ResultTemplate:
    """Builds the ``BACKTEST_RESULT`` body that answers a request body, cheaply.

    The service reads only ``request_id`` (a partial msgspec decode, about 1 us) and
    splices it into a pre-encoded result, so its per-message cost is small and equal for
    every variant.
    """

    def __init__(self) -> None:
        metrics = Metrics(
            strategy_name="sma-10-40",
            sharpe=0.41,
            sortino=0.6,
            return_pct=3.2,
            max_drawdown_pct=-4.1,
            trades=57,
            win_rate=0.44,
            profit_factor=1.12,
            bars=5000,
            elapsed_ms=38.0,
        )
        body = encode_message(BacktestResult(request_id=_PLACEHOLDER, result=metrics))
        self._head, self._tail = body.split(_PLACEHOLDER.encode())
        self._decode = msgspec.json.Decoder(_RequestId).decode

    def reply_to(self, request_body: bytes) -> bytes:
        """Return the result body for ``request_body`` (same ``request_id``)."""
        rid = self._decode(request_body).request_id
        return b"".join((self._head, rid.encode(), self._tail))

    def request_id_of(self, request_body: bytes) -> str:
        """Return the ``request_id`` of a request body."""
        return self._decode(request_body).request_id

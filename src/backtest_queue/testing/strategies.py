"""Hypothesis strategies for suites built on backtest-queue (needs ``hypothesis``).

Valid input:

* :func:`strategies` - a :class:`~backtest_queue.Strategy` of a built-in kind, parameters
  inside the kind's rules (``sma_cross``/``ema_cross``: ``1 <= fast < slow <= 100000``;
  ``rsi_reversion``: ``2 <= period``, ``0 < lower < upper < 100``; ``sl``/``tp`` in
  ``[0.0001, 1)``), so the reference service accepts every one;
* :func:`requests` - a :class:`~backtest_queue.BacktestRequest` around one, unique ids;
* :func:`messages` - any valid wire message (all five types), encoded.

Invalid input, by field:

* :func:`invalid_requests` - an :class:`InvalidBody`: a BACKTEST body with one field
  broken, the field's name, and where it is caught (``"protocol"``: ``decode_message``
  raises ``ProtocolError`` naming it; ``"service"``: it decodes, and the service's
  strategy check raises ``ProtocolError`` naming it). Either way the error's ``field`` is
  the field's path and its message starts with it (except ``v``: the ``unsupported_version``
  message says "protocol version ... is not supported").

Hostile peers (from :mod:`backtest_queue.testing.hostile`): :func:`mutated_messages`,
:func:`hostile_bodies`, :func:`hostile_replies`.

Faults: :func:`faults` for one fake service, :func:`fault_plans` for several endpoints.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Final, Literal

from hypothesis import strategies as st

from ..protocol import (
    ERROR_CODES,
    BacktestRequest,
    BacktestResult,
    ErrorReply,
    Message,
    Metrics,
    Ping,
    Pong,
    Strategy,
    encode_message,
)
from .faults import Faults, exponential, uniform
from .hostile import REPLIES, REQUESTS, backtest_message, dump, hostile_bodies, hostile_replies
from .hostile import mutated as _mutated

__all__ = [
    "BUILTIN_DATA_IDS",
    "KIND_PARAMS",
    "InvalidBody",
    "data_ids",
    "fault_plans",
    "faults",
    "hostile_bodies",
    "hostile_replies",
    "invalid_requests",
    "messages",
    "mutated_messages",
    "request_ids",
    "requests",
    "strategies",
]

#: The built-in datasets of the reference service.
BUILTIN_DATA_IDS: Final = ("EURUSD-H1", "GOOG-D1", "BTCUSD-MN1")
#: Each built-in strategy kind and its parameter names (as ``service/strategies.py``).
KIND_PARAMS: Final = {
    "sma_cross": ("fast", "slow"),
    "ema_cross": ("fast", "slow"),
    "rsi_reversion": ("period", "lower", "upper"),
}
_MAX_PERIOD: Final = 100_000
_MIN_BRACKET: Final = 0.0001

_names = st.text(
    st.characters(categories=("L", "N", "P", "S"), include_characters=" "),
    min_size=1,
    max_size=40,
).filter(lambda s: s.isprintable())


@st.composite
def _periods(draw: st.DrawFn, low: int, high: int) -> int | float:
    """An integer period, sometimes sent as an integral float (``10.0``)."""
    value = draw(st.integers(low, high))
    return float(value) if draw(st.booleans()) else value


@st.composite
def _params(draw: st.DrawFn, kind: str, max_period: int) -> dict[str, int | float]:
    if kind in ("sma_cross", "ema_cross"):
        slow = draw(st.integers(2, max_period))
        fast = draw(_periods(1, slow - 1))
        return {"fast": fast, "slow": float(slow) if draw(st.booleans()) else slow}
    period = draw(_periods(2, max_period))
    lower = draw(st.floats(0.5, 98.5, allow_nan=False))
    upper = draw(st.floats(lower + 0.5, 99.5, allow_nan=False))
    return {"period": period, "lower": lower, "upper": upper}


_brackets = st.none() | st.floats(_MIN_BRACKET, 0.9999, allow_nan=False)


@st.composite
def strategies(draw: st.DrawFn, kind: str | None = None, *, max_period: int = 200) -> Strategy:
    """A strategy the reference service accepts.

    Args:
        kind: one of :data:`KIND_PARAMS` (default: any).
        max_period: the longest period drawn, in bars (small by default so the
            built-in datasets have enough bars; at most 100000).
    """
    chosen = kind if kind is not None else draw(st.sampled_from(sorted(KIND_PARAMS)))
    if chosen not in KIND_PARAMS:
        raise ValueError(f"kind must be one of {', '.join(sorted(KIND_PARAMS))}, got {kind!r}")
    params = draw(_params(chosen, min(max_period, _MAX_PERIOD)))
    return Strategy(name=draw(_names), kind=chosen, params=params, sl=draw(_brackets),
                    tp=draw(_brackets))  # fmt: skip


def request_ids() -> st.SearchStrategy[str]:
    """Unique-looking request ids (32 hex characters, as the default ones)."""
    return st.uuids().map(lambda u: u.hex)


def data_ids() -> st.SearchStrategy[str]:
    """Valid dataset ids: mostly the built-in ones, sometimes any valid id."""
    return st.sampled_from(BUILTIN_DATA_IDS) | st.from_regex(
        r"[A-Za-z0-9][A-Za-z0-9._-]{0,30}", fullmatch=True
    )


@st.composite
def requests(
    draw: st.DrawFn,
    kind: str | None = None,
    *,
    data_id: str | st.SearchStrategy[str] | None = None,
    max_period: int = 200,
) -> BacktestRequest:
    """A valid request with a fresh id.

    Args:
        kind: the strategy kind (default: any).
        data_id: a dataset id or a strategy of them (default: a built-in dataset).
        max_period: as in :func:`strategies`.
    """
    if data_id is None:
        chosen = draw(st.sampled_from(BUILTIN_DATA_IDS))
    elif isinstance(data_id, str):
        chosen = data_id
    else:
        chosen = draw(data_id)
    start = end = None
    if draw(st.booleans()):
        year = draw(st.integers(2000, 2020))
        start, end = f"{year}-01-01", f"{year + draw(st.integers(0, 5))}-12-31"
    return BacktestRequest(
        request_id=draw(request_ids()),
        strategy=draw(strategies(kind, max_period=max_period)),
        data_id=chosen,
        start=start,
        end=end,
        cash=draw(st.floats(1.0, 1e9, allow_nan=False)),
        commission=draw(st.floats(0.0, 0.0999, allow_nan=False)),
    )


def _metrics() -> st.SearchStrategy[Metrics]:
    maybe = st.none() | st.floats(-1e6, 1e6, allow_nan=False)
    return st.builds(Metrics, strategy_name=_names, sharpe=maybe, return_pct=maybe,
                     trades=st.integers(0, 10_000), bars=st.integers(0, 10**6))  # fmt: skip


def messages() -> st.SearchStrategy[bytes]:
    """Any valid wire message body: BACKTEST, BACKTEST_RESULT, ERROR, PING or PONG."""
    ids = request_ids()
    one: st.SearchStrategy[Message] = st.one_of(
        requests(),
        st.builds(BacktestResult, request_id=ids, result=_metrics()),
        st.builds(
            ErrorReply,
            request_id=st.none() | ids,
            code=st.sampled_from(ERROR_CODES),
            message=st.text(st.characters(categories=("L", "N")), max_size=30),
        ),
        st.builds(Ping, request_id=st.none() | ids),
        st.builds(
            Pong,
            request_id=st.none() | ids,
            datasets=st.lists(st.sampled_from(BUILTIN_DATA_IDS), unique=True),
            workers=st.integers(0, 64),
        ),
    )
    return one.map(encode_message)


def mutated_messages(side: Literal["request", "reply"] = "request") -> st.SearchStrategy[bytes]:
    """A valid message with one to three fields replaced, deleted or duplicated, maybe
    damaged at the byte level (replies carry ``@RID@`` where a request id goes)."""
    return _mutated(REQUESTS if side == "request" else REPLIES)


@dataclass(frozen=True, slots=True)
class InvalidBody:
    """A BACKTEST body with ``field`` broken; ``caught_by`` says who refuses it."""

    field: str
    body: bytes
    caught_by: Literal["protocol", "service"]


_Bad = tuple[str, Literal["protocol", "service"], Sequence[Any]]

#: Per field: where it is caught, and values that break it (``Raw`` JSON allowed).
_BAD_VALUES: Final[list[_Bad]] = [
    ("v", "protocol", [2, 0, "1", None]),
    ("request_id", "protocol", ["", "x" * 65, "a\nb", 7]),
    ("data_id", "protocol", ["", "-lead", "has space", "x" * 129, 3]),
    ("start", "protocol", ["", "201", "x" * 41, 2010]),
    ("end", "protocol", ["", "x" * 41, []]),
    ("cash", "protocol", [0, -5.0, "100", None, True]),
    ("commission", "protocol", [0.1, -0.01, 5, "0"]),
    ("strategy.name", "protocol", ["", "a\x00b", "x" * 129, 1]),
    ("strategy.kind", "protocol", ["", "a\tb", None]),
    ("strategy.params", "protocol", [[], "fast", 3]),
    ("strategy.sl", "protocol", [0.0, 1.0, 1.5, -0.1, "0.02"]),
    ("strategy.tp", "protocol", [0.0, 1.0, 2.0, -0.5]),
    ("strategy.kind", "service", ["no_such_kind", "SMA_CROSS"]),
    (
        "strategy.params.fast",
        "service",
        [
            {"fast": 40, "slow": 10},
            {"fast": 10.5, "slow": 40},
            {"fast": 0, "slow": 40},
            {"slow": 40},
        ],
    ),
    ("strategy.params.slow", "service", [{"fast": 1, "slow": 100_001}]),
    ("strategy.params.extra", "service", [{"fast": 1, "slow": 5, "extra": 1}]),
    ("strategy.sl", "service", [0.00001]),
]


@st.composite
def invalid_requests(draw: st.DrawFn, field: str | None = None) -> InvalidBody:
    """A BACKTEST body with exactly one field broken (``field``: that one; default any).

    The refusal is a ``ProtocolError`` whose ``field`` is ``field`` and whose message
    starts with it (``"cash: ..."``, ``"strategy.params.fast: ..."``), except for ``v``
    (code ``unsupported_version``, "protocol version 2 is not supported; ...").
    """
    choices = [b for b in _BAD_VALUES if field is None or b[0] == field]
    if not choices:
        fields = sorted({b[0] for b in _BAD_VALUES})
        raise ValueError(f"field must be one of {', '.join(fields)}, got {field!r}")
    name, caught_by, values = draw(st.sampled_from(choices))
    value = draw(st.sampled_from(list(values)))
    message = json.loads(json.dumps(backtest_message(draw(request_ids()))))
    if name.startswith("strategy.params."):
        message["strategy"]["params"] = value
    elif name.startswith("strategy."):
        message["strategy"][name.split(".", 1)[1]] = value
    else:
        message[name] = value
    return InvalidBody(name, dump(message), caught_by)


def faults(
    *,
    seed: st.SearchStrategy[int] | None = None,
    max_latency: float = 2.0,
    disconnects: bool = True,
    refuse: bool = False,
) -> st.SearchStrategy[Faults]:
    """Faults for one fake service, shrinking towards a healthy service.

    Args:
        seed: strategy for the seed (default: small integers).
        max_latency: the longest latency drawn, in seconds.
        disconnects: may drop the connection after N requests (it always comes back).
        refuse: may refuse every handshake (a service that never comes up: a loop that
            waits for every outcome then hangs unless another service serves it).
    """
    probability = st.sampled_from([0.0, 0.0, 0.1, 0.3, 1.0])
    latencies = st.one_of(
        st.just(0.0),
        st.floats(0.0, max_latency, allow_nan=False),
        st.floats(0.0, max_latency, allow_nan=False).map(lambda hi: uniform(0.0, hi)),
        st.floats(0.01, max(0.01, max_latency / 2), allow_nan=False).map(
            lambda m: exponential(m, cap=max_latency)
        ),
    )

    @st.composite
    def build(draw: st.DrawFn) -> Faults:
        replaced = [draw(probability) / 4 for _ in range(4)]  # sums to at most 1
        return Faults(
            latency=draw(latencies),
            drop_request=draw(probability),
            drop_reply=draw(probability),
            duplicate_reply=draw(probability),
            reorder=draw(probability),
            error=replaced[0],
            unavailable=replaced[1],
            garbage=replaced[2],
            unknown_id=replaced[3],
            disconnect_after=draw(st.none() | st.integers(1, 10)) if disconnects else None,
            reconnect_after=draw(st.floats(0.0, 5.0, allow_nan=False)),
            refuse=draw(st.booleans()) if refuse else False,
            seed=draw(seed if seed is not None else st.integers(0, 2**16)),
        )

    return build()


def fault_plans(
    endpoints: Sequence[str], *, healthy_first: bool = True, **kwargs: Any
) -> st.SearchStrategy[dict[str, Faults]]:
    """Faults per endpoint (``kwargs`` as for :func:`faults`); with ``healthy_first``
    the first endpoint never refuses handshakes (so some service can always serve)."""
    parts = []
    for n, endpoint in enumerate(endpoints):
        options = dict(kwargs)
        if healthy_first and n == 0:
            options["refuse"] = False
        parts.append(st.tuples(st.just(endpoint), faults(**options)))
    return st.tuples(*parts).map(dict)

"""Wire protocol v1: typed, validated messages and their JSON encoding.

Both sides (the requester in :mod:`backtest_queue.dispatcher` and the backtest service)
use this module and nothing else to turn messages into bytes and back. The normative
description is ``docs/protocol.md``; in short:

* A requester (ZeroMQ DEALER) sends ``[b"", body]``; the service's ROUTER sees
  ``[identity, b"", body]`` and replies ``[identity, b"", body]``.
* ``body`` is one UTF-8 JSON object with ``"type"`` and ``"v": 1``.
* Fractions (``sl``, ``tp``, ``commission``, ``win_rate``) are plain fractions
  (0.01 = 1 %); percentages end in ``_pct``.
* A metric undefined for a run is ``null``, never NaN.

No pickle, ever: bodies are JSON decoded into frozen ``msgspec`` structs, which
validate types and bounds while decoding. The structs are ``gc=False`` (they hold only
strings, numbers and dicts of numbers, so they cannot form reference cycles): 16 bytes
less per object and no garbage-collector passes over a large send queue.
"""

from __future__ import annotations

import math
import uuid
from typing import Annotated, Any, Final, Literal, get_args

import msgspec

from .errors import ProtocolError

__all__ = [
    "DEFAULT_ENDPOINT",
    "DEFAULT_MAX_MESSAGE_BYTES",
    "ERROR_CODES",
    "MAX_NAME_LENGTH",
    "MAX_REQUEST_ID_LENGTH",
    "PROTOCOL_VERSION",
    "BacktestRequest",
    "BacktestResult",
    "ErrorCode",
    "ErrorReply",
    "Message",
    "Metrics",
    "Ping",
    "Pong",
    "Strategy",
    "decode_message",
    "encode_message",
    "new_request_id",
    "peek_request_id",
    "validate_request",
]

PROTOCOL_VERSION: Final = 1
#: The original system's backtest port, on loopback.
DEFAULT_ENDPOINT: Final = "tcp://127.0.0.1:5580"
#: Default cap on one message body, in bytes (1 MiB); enforced with ``ZMQ_MAXMSGSIZE``
#: on sockets and again here.
DEFAULT_MAX_MESSAGE_BYTES: Final = 1 << 20
MAX_REQUEST_ID_LENGTH: Final = 64
MAX_NAME_LENGTH: Final = 128

#: Error codes. All are final for the request except ``unavailable``: the service did
#: not run it (it is stopping or overloaded) and the requester should send it again,
#: to this service later or to another one.
ErrorCode = Literal[
    "invalid_request",
    "unknown_data",
    "unsupported_version",
    "too_large",
    "engine_error",
    "unavailable",
]
ERROR_CODES: Final[tuple[str, ...]] = get_args(ErrorCode)

RequestId = Annotated[str, msgspec.Meta(min_length=1, max_length=MAX_REQUEST_ID_LENGTH)]
Name = Annotated[str, msgspec.Meta(min_length=1, max_length=MAX_NAME_LENGTH)]
DataId = Annotated[
    str,
    msgspec.Meta(min_length=1, max_length=MAX_NAME_LENGTH, pattern=r"^[A-Za-z0-9][A-Za-z0-9._-]*$"),
]
Fraction = Annotated[float, msgspec.Meta(gt=0.0, lt=1.0)]
IsoTime = Annotated[str, msgspec.Meta(min_length=4, max_length=40)]
ParamValue = int | float
#: A dataset's content fingerprint (the reference service sends 16 lowercase hex chars).
Fingerprint = Annotated[str, msgspec.Meta(min_length=1, max_length=MAX_NAME_LENGTH)]


def new_request_id() -> str:
    """Return a fresh unique request id (32 lowercase hex characters, UUID4)."""
    return uuid.uuid4().hex


class Strategy(msgspec.Struct, frozen=True, kw_only=True, gc=False):
    """A trading strategy to backtest.

    Attributes:
        name: a label for people and leaderboards (1-128 characters).
        kind: the strategy family the service implements, e.g. ``"sma_cross"``.
        params: the family's parameters, numbers only (e.g. ``{"fast": 10, "slow": 40}``).
        sl: optional stop loss as a fraction of the entry price, in (0, 1).
        tp: optional take profit as a fraction of the entry price, in (0, 1).
    """

    name: Name
    kind: Name
    params: dict[Name, ParamValue] = msgspec.field(default_factory=dict)
    sl: Fraction | None = None
    tp: Fraction | None = None


class BacktestRequest(
    msgspec.Struct, frozen=True, kw_only=True, gc=False, tag_field="type", tag="BACKTEST"
):
    """One backtest request (``"type": "BACKTEST"``).

    Attributes:
        strategy: what to backtest.
        data_id: the dataset id the service knows, e.g. ``"EURUSD-H1"``.
        request_id: unique id (1-64 characters); generated (UUID4 hex) when not given.
        start: optional ISO-8601 lower bound (inclusive) on the bars used.
        end: optional ISO-8601 upper bound (inclusive) on the bars used.
        cash: starting cash, in the dataset's quote currency (> 0).
        commission: commission per trade as a fraction of the trade value, in [0, 1).
        v: protocol version, always 1.
    """

    v: int = PROTOCOL_VERSION
    request_id: RequestId = msgspec.field(default_factory=new_request_id)
    strategy: Strategy
    data_id: DataId
    start: IsoTime | None = None
    end: IsoTime | None = None
    cash: Annotated[float, msgspec.Meta(gt=0.0)] = 10_000.0
    commission: Annotated[float, msgspec.Meta(ge=0.0, lt=1.0)] = 0.0002


class Metrics(msgspec.Struct, frozen=True, kw_only=True, gc=False):
    """What a backtest measured. ``None`` (JSON ``null``) where undefined for the run.

    Attributes:
        strategy_name: the request's ``strategy.name``.
        sharpe: annualised Sharpe ratio (risk-free rate 0).
        sortino: annualised Sortino ratio.
        return_pct: total return over the run, in percent.
        max_drawdown_pct: maximum drawdown, in percent (zero or negative).
        trades: number of closed trades.
        win_rate: fraction of trades that made money, in [0, 1].
        profit_factor: gross profit / gross loss.
        bars: number of OHLCV bars the backtest ran on.
        elapsed_ms: wall time the engine took, in milliseconds.
    """

    strategy_name: str
    sharpe: float | None = None
    sortino: float | None = None
    return_pct: float | None = None
    max_drawdown_pct: float | None = None
    trades: int = 0
    win_rate: float | None = None
    profit_factor: float | None = None
    bars: int = 0
    elapsed_ms: float = 0.0

    def __post_init__(self) -> None:
        for name in ("sharpe", "sortino", "return_pct", "max_drawdown_pct", "win_rate",
                     "profit_factor", "elapsed_ms"):  # fmt: skip
            value = getattr(self, name)
            if value is not None and not math.isfinite(value):
                raise ValueError(f"metric {name} must be finite or null, got {value!r}")


class BacktestResult(
    msgspec.Struct, frozen=True, kw_only=True, gc=False, tag_field="type", tag="BACKTEST_RESULT"
):
    """The service's answer to a :class:`BacktestRequest` (``"type": "BACKTEST_RESULT"``).

    Attributes:
        request_id: the id of the request it answers.
        result: what the backtest measured.
        data_fingerprint: the content fingerprint of the dataset the backtest ran on
            (as listed in :attr:`Pong.fingerprints`), or ``None`` from a service that does
            not report one (optional: v1 peers without it keep working).
    """

    v: int = PROTOCOL_VERSION
    request_id: RequestId
    result: Metrics
    data_fingerprint: Fingerprint | None = None


class ErrorReply(
    msgspec.Struct, frozen=True, kw_only=True, gc=False, tag_field="type", tag="ERROR"
):
    """An explicit failure (``"type": "ERROR"``).

    Attributes:
        request_id: the id of the request it answers, or ``None`` when that could not be read.
        code: one of :data:`ERROR_CODES`.
        message: one line a person can act on.
    """

    v: int = PROTOCOL_VERSION
    request_id: RequestId | None = None
    code: ErrorCode
    message: str


class Ping(msgspec.Struct, frozen=True, kw_only=True, gc=False, tag_field="type", tag="PING"):
    """A health check; the service answers with a :class:`Pong`."""

    v: int = PROTOCOL_VERSION
    request_id: RequestId | None = None


class Pong(msgspec.Struct, frozen=True, kw_only=True, gc=False, tag_field="type", tag="PONG"):
    """The answer to a :class:`Ping`: what the service is and has.

    Attributes:
        request_id: echoed from the ping.
        version: the service's package version.
        datasets: dataset ids it can backtest on.
        workers: size of its backtest process pool.
        fingerprints: data_id -> content fingerprint of that dataset's OHLCV data; it
            changes when the data changes (optional: empty from a service that does not
            report them).
    """

    v: int = PROTOCOL_VERSION
    request_id: RequestId | None = None
    version: str = ""
    datasets: list[str] = msgspec.field(default_factory=list)
    workers: int = 0
    fingerprints: dict[str, Fingerprint] = msgspec.field(default_factory=dict)


Message = BacktestRequest | BacktestResult | ErrorReply | Ping | Pong
_TYPES: Final = frozenset({"BACKTEST", "BACKTEST_RESULT", "ERROR", "PING", "PONG"})


class _Envelope(msgspec.Struct):
    """The loosest reading of a body, used only to explain why a strict decode failed."""

    type: Any = None
    v: Any = None
    request_id: Any = None


_encoder: Final = msgspec.json.Encoder()
_decoder: Final[msgspec.json.Decoder[Message]] = msgspec.json.Decoder(Message)
_envelope_decoder: Final = msgspec.json.Decoder(_Envelope)


def encode_message(message: Message) -> bytes:
    """Encode a message as a UTF-8 JSON body (``type`` first, then ``v``)."""
    return _encoder.encode(message)


def peek_request_id(body: bytes) -> str | None:
    """Return the body's ``request_id`` if it is a JSON object with a valid one, else ``None``.

    Never raises: it is for answering bad input with the right id.
    """
    try:
        envelope = _envelope_decoder.decode(body)
    except (msgspec.DecodeError, msgspec.ValidationError):
        return None
    rid = envelope.request_id
    if isinstance(rid, str) and 0 < len(rid) <= MAX_REQUEST_ID_LENGTH:
        return rid
    return None


def decode_message(body: bytes, *, max_bytes: int = DEFAULT_MAX_MESSAGE_BYTES) -> Message:
    """Decode and validate one message body.

    Args:
        body: the JSON body frame.
        max_bytes: largest body accepted, in bytes.

    Returns:
        The typed message.

    Raises:
        ProtocolError: with ``code`` ``too_large`` (body over ``max_bytes``),
            ``unsupported_version`` (``v`` is not 1) or ``invalid_request`` (not JSON, not
            an object, unknown ``type``, a missing field, a wrong type or a value out of
            bounds; the message names the field). ``request_id`` is set when readable.
    """
    if len(body) > max_bytes:
        raise ProtocolError(
            "too_large",
            f"message of {len(body)} bytes exceeds the {max_bytes}-byte limit",
            request_id=peek_request_id(body[:4096]) if len(body) <= 4096 else None,
        )
    try:
        message = _decoder.decode(body)
    except msgspec.ValidationError as exc:  # a subclass of DecodeError: catch it first
        raise _explain(body, exc) from None
    except msgspec.DecodeError as exc:
        raise ProtocolError("invalid_request", f"body is not valid JSON: {exc}") from None
    if message.v != PROTOCOL_VERSION:
        raise ProtocolError(
            "unsupported_version",
            f"protocol version {message.v!r} is not supported; this side speaks v1",
            request_id=getattr(message, "request_id", None),
        )
    if isinstance(message, BacktestRequest) and _envelope_decoder.decode(body).request_id is None:
        # The struct generates ids for callers that build requests in Python; on the wire
        # an id is required, or the reply could not be correlated. (The top-level field,
        # not the text anywhere in the body: a parameter may be called "request_id".)
        raise ProtocolError("invalid_request", "Object missing required field `request_id`")
    return message


def _explain(body: bytes, exc: msgspec.ValidationError) -> ProtocolError:
    try:
        envelope = _envelope_decoder.decode(body)
    except (msgspec.DecodeError, msgspec.ValidationError):
        return ProtocolError("invalid_request", "body must be a JSON object")
    rid = peek_request_id(body)
    if envelope.v != PROTOCOL_VERSION:
        return ProtocolError(
            "unsupported_version",
            f"protocol version {envelope.v!r} is not supported; this side speaks v1",
            request_id=rid,
        )
    if envelope.type not in _TYPES:
        return ProtocolError(
            "invalid_request",
            f"unknown message type {envelope.type!r}; expected one of {sorted(_TYPES)}",
            request_id=rid,
        )
    return ProtocolError("invalid_request", str(exc), request_id=rid)


def validate_request(request: object) -> BacktestRequest:
    """Return ``request`` if it is a valid request (placeholder)."""
    from .errors import UsageError

    if not isinstance(request, BacktestRequest):
        raise UsageError(f"submit takes a BacktestRequest, got {type(request).__name__}")
    return request

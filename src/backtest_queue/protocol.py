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

No pickle, ever: bodies are JSON decoded into frozen ``msgspec`` structs. msgspec
checks the types while decoding; every struct's ``__post_init__`` then applies the value
rules of :mod:`backtest_queue.validation` - on decoding *and* when a message is built in
Python, so both ends refuse the same values with the same message. Decoding never raises
anything but :class:`~backtest_queue.errors.ProtocolError`, whatever the bytes.

The structs are ``gc=False`` (they hold only strings, numbers and dicts of numbers, so
they cannot form reference cycles): 16 bytes less per object and no garbage-collector
passes over a large send queue.
"""

from __future__ import annotations

import math
import uuid
from math import isfinite as _isfinite
from typing import Annotated, Any, Final, Literal, get_args

import msgspec

from ._explain import scan_request_id, translate
from .errors import InvalidMessage, InvalidRequest, ProtocolError
from .pong_fields import DatasetRange, check_status_fields
from .validation import (
    GOOD_DATA_IDS,
    GOOD_NAMES,
    GOOD_TIMES,
    MAX_COMMISSION,
    MAX_NAME_LENGTH,
    MAX_REQUEST_ID_LENGTH,
    MAX_SAFE_INTEGER,
    check_data_id,
    check_finite,
    check_fraction,
    check_int,
    check_params,
    check_text,
    problem,
    remember,
)

__all__ = [
    "DEFAULT_ENDPOINT",
    "DEFAULT_MAX_MESSAGE_BYTES",
    "ERROR_CODES",
    "MAX_COMMISSION",
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
    "validate_request_encoded",
]

PROTOCOL_VERSION: Final = 1
#: The original system's backtest port, on loopback.
DEFAULT_ENDPOINT: Final = "tcp://127.0.0.1:5580"
#: Default cap on one message body, in bytes (1 MiB); enforced with ``ZMQ_MAXMSGSIZE``
#: on sockets and again here.
DEFAULT_MAX_MESSAGE_BYTES: Final = 1 << 20
#: Bodies up to this size (bytes) are searched for a ``request_id`` when the decoder
#: cannot read them, so an error can still name the request.
PEEK_LIMIT: Final = 4096

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

ParamValue = int | float
#: A dataset's content fingerprint (the reference service sends 16 lowercase hex chars).
Fingerprint = Annotated[str, msgspec.Meta(min_length=1, max_length=MAX_NAME_LENGTH)]


# Module constants for the fast paths (``-MAX_SAFE_INTEGER`` would build an int per use).
_MIN_SAFE_INTEGER: Final = -MAX_SAFE_INTEGER
_INF: Final = math.inf


def new_request_id() -> str:
    """Return a fresh unique request id (32 lowercase hex characters, UUID4)."""
    return uuid.uuid4().hex


def _check_version(value: object, error: type[InvalidMessage]) -> None:
    if type(value) is not int or value != PROTOCOL_VERSION:
        raise problem("v", "must be 1 (this side speaks protocol v1)", value, error)


def _check_request_id(value: object, error: type[InvalidMessage], *, optional: bool) -> None:
    if value is None and optional:
        return
    check_text(value, "request_id", max_length=MAX_REQUEST_ID_LENGTH, error=error)


class Strategy(msgspec.Struct, frozen=True, kw_only=True, gc=False):
    """A trading strategy to backtest.

    Every value is checked when the strategy is built (and when it is decoded); see
    :mod:`backtest_queue.validation` and ``docs/protocol.md``.

    Attributes:
        name: a label for people and leaderboards (1-128 characters, no control
            characters, valid UTF-8).
        kind: the strategy family the service implements, e.g. ``"sma_cross"`` (as
            ``name``).
        params: the family's parameters, finite numbers only, not bools (e.g.
            ``{"fast": 10, "slow": 40}``).
        sl: optional stop loss as a fraction of the entry price, finite, in (0, 1).
        tp: optional take profit as a fraction of the entry price, finite, in (0, 1).

    Raises:
        InvalidRequest: a value breaks these rules; the message names the field, e.g.
            ``"strategy.sl: must be a finite fraction in (0, 1), got nan"``.
    """

    name: str
    kind: str
    params: dict[str, ParamValue] = msgspec.field(default_factory=dict)
    sl: float | None = None
    tp: float | None = None

    def __post_init__(self) -> None:
        # Each rule has an inline fast path (decoding runs this for every message); the
        # check_* call on the slow path raises with the message, or passes an odd but
        # valid value.
        name, kind, params, sl, tp = self.name, self.kind, self.params, self.sl, self.tp
        if not (type(name) is str and 0 < len(name) <= MAX_NAME_LENGTH and name.isprintable()):
            check_text(name, "strategy.name", max_length=MAX_NAME_LENGTH)
        if not (type(kind) is str and kind in GOOD_NAMES):
            check_text(kind, "strategy.kind", max_length=MAX_NAME_LENGTH)
            remember(GOOD_NAMES, kind)
        if type(params) is not dict:
            check_params(params)
        for key, number in params.items():
            kind_of = type(number)
            if kind_of is int:
                if (
                    _MIN_SAFE_INTEGER <= number <= MAX_SAFE_INTEGER
                    and type(key) is str
                    and key in GOOD_NAMES
                ):
                    continue
            elif kind_of is float and _isfinite(number) and type(key) is str and key in GOOD_NAMES:
                continue
            check_params(params)  # raises naming the parameter, or learns its names
            break
        if sl is not None and not (type(sl) is float and 0.0 < sl < 1.0):
            check_fraction(sl, "strategy.sl")
        if tp is not None and not (type(tp) is float and 0.0 < tp < 1.0):
            check_fraction(tp, "strategy.tp")


class BacktestRequest(
    msgspec.Struct, frozen=True, kw_only=True, gc=False, tag_field="type", tag="BACKTEST"
):
    """One backtest request (``"type": "BACKTEST"``).

    Every value is checked when the request is built (and when it is decoded); see
    :mod:`backtest_queue.validation`. Call :func:`validate_request` to check a request
    again after it was built (``submit`` does): a dict held by it can still be mutated.

    Attributes:
        strategy: what to backtest.
        data_id: the dataset id the service knows, e.g. ``"EURUSD-H1"`` (1-128
            characters of ``[A-Za-z0-9._-]``, starting with a letter or digit).
        request_id: unique id (1-64 characters, no control characters); generated
            (UUID4 hex) when not given.
        start: optional ISO-8601 lower bound (inclusive) on the bars used (4-40
            characters).
        end: optional ISO-8601 upper bound (inclusive) on the bars used (4-40 characters).
        cash: starting cash, in the dataset's quote currency: finite, > 0.
        commission: commission per trade as a fraction of the trade value: finite, in
            [0, 0.1) (:data:`MAX_COMMISSION`, backtesting.py's own limit).
        v: protocol version, always 1.

    Raises:
        InvalidRequest: a value breaks these rules; the message names the field, e.g.
            ``"cash: must be a finite amount of cash in (0, inf), got -5"``.
    """

    v: int = PROTOCOL_VERSION
    request_id: str = msgspec.field(default_factory=new_request_id)
    strategy: Strategy
    data_id: str
    start: str | None = None
    end: str | None = None
    cash: float = 10_000.0
    commission: float = 0.0002

    def __post_init__(self) -> None:
        # Inline fast paths, as in Strategy.__post_init__.
        if self.v != PROTOCOL_VERSION or type(self.v) is not int:
            _check_version(self.v, InvalidRequest)
        rid = self.request_id
        if not (type(rid) is str and 0 < len(rid) <= MAX_REQUEST_ID_LENGTH and rid.isprintable()):
            _check_request_id(rid, InvalidRequest, optional=False)
        if not isinstance(self.strategy, Strategy):
            raise problem("strategy", "must be a Strategy", self.strategy)
        data_id, start, end = self.data_id, self.start, self.end
        if not (type(data_id) is str and data_id in GOOD_DATA_IDS):
            check_data_id(data_id)
            remember(GOOD_DATA_IDS, data_id)
        if start is not None and not (type(start) is str and start in GOOD_TIMES):
            check_text(start, "start", min_length=4, max_length=40)
            remember(GOOD_TIMES, start)
        if end is not None and not (type(end) is str and end in GOOD_TIMES):
            check_text(end, "end", min_length=4, max_length=40)
            remember(GOOD_TIMES, end)
        cash, commission = self.cash, self.commission
        if not (type(cash) is float and 0.0 < cash < math.inf):
            check_finite(cash, "cash", low=0.0, low_open=True, what="amount of cash")
        if not (type(commission) is float and 0.0 <= commission < MAX_COMMISSION):
            check_finite(
                commission, "commission", low=0.0, high=MAX_COMMISSION, high_open=True,
                what="fraction",
            )  # fmt: skip


class Metrics(msgspec.Struct, frozen=True, kw_only=True, gc=False):
    """What a backtest measured. ``None`` (JSON ``null``) where undefined for the run.

    Attributes:
        strategy_name: the request's ``strategy.name``.
        sharpe: annualised Sharpe ratio (risk-free rate 0).
        sortino: annualised Sortino ratio.
        return_pct: total return over the run, in percent.
        max_drawdown_pct: maximum drawdown, in percent (zero or negative).
        trades: number of closed trades (>= 0).
        win_rate: fraction of trades that made money, in [0, 1].
        profit_factor: gross profit / gross loss.
        bars: number of OHLCV bars the backtest ran on (>= 0).
        elapsed_ms: wall time the engine took, in milliseconds (>= 0).

    Raises:
        InvalidMessage: a metric is NaN, infinite or a bool, ``win_rate`` is outside
            [0, 1], a count is negative; the message names the field (``result.sharpe``).
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
        # Inline fast paths, as in Strategy.__post_init__; the slow path names the field.
        name = self.strategy_name
        if not (type(name) is str and name.isprintable()):
            check_text(name, "result.strategy_name", min_length=0, max_length=None,
                       error=InvalidMessage)  # fmt: skip
        # One attribute load per statement: a tuple build and unpack costs more.
        a = self.sharpe
        b = self.sortino
        c = self.return_pct
        d = self.max_drawdown_pct
        e = self.profit_factor
        # Five floats (a result with trades): one finiteness test of their sum, which is
        # finite only if each is (an overflow to inf only takes the per-value path).
        if not (type(a) is float and type(b) is float and type(c) is float and type(d) is float
                and type(e) is float and _isfinite(a + b + c + d + e)):  # fmt: skip
            for value in (a, b, c, d, e):
                if value is not None and not (type(value) is float and _isfinite(value)):
                    self._explain_metrics()
        win_rate = self.win_rate
        trades = self.trades
        bars = self.bars
        elapsed = self.elapsed_ms
        if not (
            (win_rate is None or (type(win_rate) is float and 0.0 <= win_rate <= 1.0))
            and (type(trades) is int and 0 <= trades <= MAX_SAFE_INTEGER)
            and (type(bars) is int and 0 <= bars <= MAX_SAFE_INTEGER)
            and (type(elapsed) is float and 0.0 <= elapsed < _INF)
        ):
            self._explain_metrics()

    def _explain_metrics(self) -> None:
        """Raise the error for the first bad metric (the slow path of ``__post_init__``)."""
        error = InvalidMessage
        for name in ("sharpe", "sortino", "return_pct", "max_drawdown_pct", "profit_factor"):
            value = getattr(self, name)
            if value is not None:
                check_finite(value, f"result.{name}", error=error)
        if self.win_rate is not None:
            check_finite(self.win_rate, "result.win_rate", low=0.0, high=1.0, what="fraction",
                         error=error)  # fmt: skip
        check_int(self.trades, "result.trades")
        check_int(self.bars, "result.bars")
        check_finite(self.elapsed_ms, "result.elapsed_ms", low=0.0, error=error)


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

    Raises:
        InvalidMessage: a bad ``v`` or ``request_id``, or ``result`` is not :class:`Metrics`.
    """

    v: int = PROTOCOL_VERSION
    request_id: str
    result: Metrics
    data_fingerprint: Fingerprint | None = None

    def __post_init__(self) -> None:
        # Inline fast paths, as in BacktestRequest (a requester decodes one per backtest).
        v, rid = self.v, self.request_id
        if type(v) is not int or v != PROTOCOL_VERSION:
            _check_version(v, InvalidMessage)
        if not (type(rid) is str and 0 < len(rid) <= MAX_REQUEST_ID_LENGTH and rid.isprintable()):
            _check_request_id(rid, InvalidMessage, optional=False)
        if not isinstance(self.result, Metrics):
            raise problem("result", "must be Metrics", self.result, InvalidMessage)


class ErrorReply(
    msgspec.Struct, frozen=True, kw_only=True, gc=False, tag_field="type", tag="ERROR"
):
    """An explicit failure (``"type": "ERROR"``).

    Attributes:
        request_id: the id of the request it answers, or ``None`` when that could not be read.
        code: one of :data:`ERROR_CODES`.
        message: one line a person can act on (valid UTF-8, no control characters).

    Raises:
        InvalidMessage: a bad ``v``, ``request_id``, ``code`` or ``message``.
    """

    v: int = PROTOCOL_VERSION
    request_id: str | None = None
    code: ErrorCode
    message: str

    def __post_init__(self) -> None:
        _check_version(self.v, InvalidMessage)
        _check_request_id(self.request_id, InvalidMessage, optional=True)
        if self.code not in ERROR_CODES:
            raise problem("code", f"must be one of {', '.join(ERROR_CODES)}", self.code,
                          InvalidMessage)  # fmt: skip
        check_text(self.message, "message", min_length=0, max_length=None, error=InvalidMessage)


class Ping(msgspec.Struct, frozen=True, kw_only=True, gc=False, tag_field="type", tag="PING"):
    """A health check; the service answers with a :class:`Pong`.

    Raises:
        InvalidMessage: a bad ``v`` or ``request_id``.
    """

    v: int = PROTOCOL_VERSION
    request_id: str | None = None

    def __post_init__(self) -> None:
        _check_version(self.v, InvalidMessage)
        _check_request_id(self.request_id, InvalidMessage, optional=True)


class Pong(msgspec.Struct, frozen=True, kw_only=True, gc=False, tag_field="type", tag="PONG"):
    """The answer to a :class:`Ping`: what the service is and has.

    Attributes:
        request_id: echoed from the ping.
        version: the service's package version.
        datasets: dataset ids it can backtest on.
        workers: size of its backtest process pool (>= 0).
        fingerprints: data_id -> content fingerprint of that dataset's OHLCV data; it
            changes when the data changes (optional: empty from a service that does not
            report them).
        ranges: data_id -> :class:`~backtest_queue.pong_fields.DatasetRange` (bar count,
            first and last stamp) of each dataset (optional: empty when not reported).
        running: backtests running now (optional: ``None`` when not reported).
        queued: validated backtests waiting for a worker (optional, likewise).
        uptime_s: seconds since the service became ready (optional, likewise).
        credit: how many requests one requester may keep in flight at this service
            (running plus waiting for a worker), an int >= 1; optional: ``None`` from a
            service that does not say (no per-service limit).

    Raises:
        InvalidMessage: a bad ``v``, ``request_id``, ``version``, dataset id, ``workers``,
            ``credit`` or optional status field (see :mod:`backtest_queue.pong_fields`).
    """

    v: int = PROTOCOL_VERSION
    request_id: str | None = None
    version: str = ""
    datasets: list[str] = msgspec.field(default_factory=list)
    workers: int = 0
    fingerprints: dict[str, Fingerprint] = msgspec.field(default_factory=dict)
    ranges: dict[str, DatasetRange] = msgspec.field(default_factory=dict)
    running: int | None = None
    queued: int | None = None
    uptime_s: float | None = None
    credit: int | None = None

    def __post_init__(self) -> None:
        _check_version(self.v, InvalidMessage)
        _check_request_id(self.request_id, InvalidMessage, optional=True)
        check_text(self.version, "version", min_length=0, max_length=MAX_NAME_LENGTH,
                   error=InvalidMessage)  # fmt: skip
        if not isinstance(self.datasets, list):
            raise problem("datasets", "must be a list", self.datasets, InvalidMessage)
        for i, data_id in enumerate(self.datasets):
            check_data_id(data_id, f"datasets[{i}]", InvalidMessage)
        check_int(self.workers, "workers")
        check_status_fields(self.ranges, self.running, self.queued, self.uptime_s)
        if self.credit is not None:
            check_int(self.credit, "credit", low=1)


Message = BacktestRequest | BacktestResult | ErrorReply | Ping | Pong
_TYPES: Final = frozenset({"BACKTEST", "BACKTEST_RESULT", "ERROR", "PING", "PONG"})


class _Envelope(msgspec.Struct):
    """The loosest reading of a body, used only to explain why a strict decode failed."""

    type: Any = None
    v: Any = None
    request_id: Any = None


_encoder: Final = msgspec.json.Encoder()
_decoder: Final[msgspec.json.Decoder[Message]] = msgspec.json.Decoder(Message)
_request_decoder: Final = msgspec.json.Decoder(BacktestRequest)
_envelope_decoder: Final = msgspec.json.Decoder(_Envelope)

_TOO_DEEP: Final = "body nests arrays or objects too deeply to decode (protocol v1 needs 3 levels)"


def encode_message(message: Message) -> bytes:
    """Encode a message as a UTF-8 JSON body (``type`` first, then ``v``).

    Raises:
        UnicodeEncodeError, TypeError: only for a message that was changed after it was
            built (``msgspec.structs.force_setattr``, a mutated ``params`` dict); a message
            that passed :func:`validate_request` always encodes.
    """
    return _encoder.encode(message)


def validate_request(request: object) -> BacktestRequest:
    """Check that ``request`` is a valid backtest request that survives the wire.

    What a requester calls before it accepts a request (``submit`` does): the structs
    check their values when built, but a request can still be changed afterwards (its
    ``params`` dict mutated, ``msgspec.structs.force_setattr``), or not be a request.

    Args:
        request: what the caller passed.

    Returns:
        A private copy, equal to ``request``, that every rule of
        :mod:`backtest_queue.validation` was checked on, and that is exactly what decoding
        its encoding gives back (equal, with the same types): it survives the wire
        unchanged. Nobody else holds a reference to it or to its ``params`` dict, so a
        change made to the caller's object after this call (a mutated ``params`` dict)
        cannot reach the wire or a store.

    Raises:
        InvalidRequest: ``request`` is not a :class:`BacktestRequest` (``field`` ``""``,
            e.g. ``"submit takes a BacktestRequest, got dict"``); a value breaks the rules
            (``field`` names it); or encoding it and decoding it strictly does not give
            an equal request back.
    """
    copy = _plain_copy(request)
    return copy if copy is not None else _validate_by_round_trip(request)[0]


def validate_request_encoded(request: object) -> tuple[BacktestRequest, bytes]:
    """Like :func:`validate_request`, and also return the body it checked.

    Returns:
        The private copy and its encoding (what :func:`encode_message` gives for it, byte
        for byte), so a requester that sends the request soon need not encode it again.

    Raises:
        InvalidRequest: as :func:`validate_request`.
    """
    copy = _plain_copy(request)
    if copy is not None:
        return copy, _encoder.encode(copy)
    return _validate_by_round_trip(request)


def _plain_copy(request: object) -> BacktestRequest | None:
    """The fast path of :func:`validate_request`: a copy built by the constructors, or
    ``None`` when only :func:`_validate_by_round_trip` may judge ``request``.

    Sound because decoding runs the very same ``__post_init__`` rules on values the
    decoder gives exactly the types of the structs' annotations: when the request and
    its strategy are exactly these classes and the fields the rules would also accept
    with another type (``cash`` and ``commission`` as an ``int``; ``strategy`` as a
    subclass; ``params`` as something ``dict()`` turns into a dict) have exactly the
    decoder's types, a copy the constructors accept is valid and encodes to JSON that
    decodes to an equal copy with the same types. (Every other field's type is pinned
    by the rules themselves: ``type(x) is str``, ``int`` or ``float``, never a subclass;
    tests/test_validation_fast_path.py holds both paths to agree on hostile input.)
    Anything else - or a value the rules refuse - goes to the round trip, so every error
    keeps its message.
    """
    if type(request) is not BacktestRequest:
        return None
    strategy = request.strategy
    if type(strategy) is not Strategy:
        return None
    params = strategy.params
    if type(params) is not dict or type(request.cash) is not float:
        return None
    if type(request.commission) is not float:
        return None
    try:
        return BacktestRequest(
            v=request.v,
            request_id=request.request_id,
            strategy=Strategy(
                name=strategy.name,
                kind=strategy.kind,
                params=dict(params),  # the copy's own: the caller's stays the caller's
                sl=strategy.sl,
                tp=strategy.tp,
            ),
            data_id=request.data_id,
            start=request.start,
            end=request.end,
            cash=request.cash,
            commission=request.commission,
        )
    except Exception:  # InvalidRequest, or a hostile value's own error from a rule
        return None  # the round trip raises it, with the message it always had


def _validate_by_round_trip(request: object) -> tuple[BacktestRequest, bytes]:
    """:func:`validate_request_encoded` the slow, obviously sound way: encode, decode
    strictly, compare. Takes anything; the fast path must agree with it."""
    if not isinstance(request, BacktestRequest):
        raise InvalidRequest("", f"submit takes a BacktestRequest, got {type(request).__name__}")
    # The round trip runs every check again on the decoded copy (``__post_init__``), so
    # an equal copy proves the original valid. Only on failure are the original's values
    # checked directly, for a message that names the field.
    problem_found: InvalidRequest | None = None
    try:
        body = _encoder.encode(request)
        decoded = _request_decoder.decode(body)
    except msgspec.ValidationError as exc:
        field, message = translate(exc)
        problem_found = InvalidRequest(field, message)
    except Exception as exc:  # UnicodeEncodeError, TypeError (unencodable), ...
        problem_found = InvalidRequest(
            "", f"the request cannot be encoded as JSON: {type(exc).__name__}: {exc}"
        )
    else:
        if decoded == request:
            # The copy's own encoding: an int ``cash`` decodes as a float, and the body
            # must be the copy's (the same bytes whether it is sent now or re-encoded).
            return decoded, _encoder.encode(decoded)
        problem_found = InvalidRequest(
            "", "the request does not survive encoding (decoded differs from the original)"
        )
    request.__post_init__()  # raises the precise error when a value was changed
    request.strategy.__post_init__()
    raise problem_found


def _envelope(body: bytes) -> _Envelope | str:
    """The loosest reading of ``body``, or why it cannot be read. Never raises."""
    try:
        return _envelope_decoder.decode(body)
    except RecursionError:
        return _TOO_DEEP
    except msgspec.ValidationError as exc:
        return f"body must be a JSON object: {exc}"
    except msgspec.DecodeError as exc:
        return f"body is not valid JSON: {exc}"
    except Exception as exc:  # the safety net: untrusted bytes never raise anything else
        return f"body could not be decoded: {type(exc).__name__}"


def _valid_id(value: object) -> str | None:
    try:
        _check_request_id(value, InvalidMessage, optional=False)
    except InvalidMessage:
        return None
    return value  # type: ignore[return-value]


def peek_request_id(body: bytes) -> str | None:
    """Return the body's ``request_id`` if it is a JSON object with a valid one, else ``None``.

    Never raises: it is for answering bad input with the right id. A body the decoder
    cannot read (nested too deeply, say) is searched token by token for a top-level
    ``"request_id"`` when it is at most :data:`PEEK_LIMIT` bytes long.
    """
    envelope = _envelope(body)
    if isinstance(envelope, _Envelope):
        return _valid_id(envelope.request_id)
    if len(body) > PEEK_LIMIT:
        return None
    return _valid_id(scan_request_id(bytes(body)))


def decode_message(body: bytes, *, max_bytes: int = DEFAULT_MAX_MESSAGE_BYTES) -> Message:
    """Decode and validate one message body.

    Never raises anything but :class:`ProtocolError` on any bytes: JSON that is not
    valid UTF-8 or not JSON, nested too deeply (the decoder's recursion limit), numbers
    out of range, wrong types, values that break the rules of
    :mod:`backtest_queue.validation`. Duplicate keys are not an error: the last one wins.

    Args:
        body: the JSON body frame.
        max_bytes: largest body accepted, in bytes.

    Returns:
        The typed message.

    Raises:
        ProtocolError: with ``code`` ``too_large`` (body over ``max_bytes``),
            ``unsupported_version`` (``v`` is not 1) or ``invalid_request`` (not JSON, not
            an object, nested too deeply, unknown ``type``, a missing field, a wrong type
            or a value out of bounds; the message starts with the field's path, and
            ``field`` holds it). ``request_id`` is set when readable.
    """
    if len(body) > max_bytes:
        raise ProtocolError(
            "too_large",
            f"message of {len(body)} bytes exceeds the {max_bytes}-byte limit",
            request_id=peek_request_id(body) if len(body) <= PEEK_LIMIT else None,
        )
    try:
        message = _decoder.decode(body)
    except msgspec.ValidationError as exc:  # a subclass of DecodeError: catch it first
        try:
            error = _explain(body, exc)
        except Exception as bug:  # the safety net, as below
            error = ProtocolError("invalid_request", f"{exc} ({type(bug).__name__})")
        raise error from None
    except msgspec.DecodeError as exc:
        raise ProtocolError("invalid_request", f"body is not valid JSON: {exc}") from None
    except RecursionError:
        raise ProtocolError(
            "invalid_request", _TOO_DEEP, request_id=peek_request_id(body)
        ) from None
    except Exception as exc:  # the safety net: untrusted bytes never raise anything else
        raise ProtocolError(
            "invalid_request",
            f"body could not be decoded: {type(exc).__name__}",
            request_id=peek_request_id(body),
        ) from None
    # Exact: the decoder builds the union's own classes, never subclasses; and a failing
    # isinstance with a msgspec struct class (its metaclass's __instancecheck__) costs
    # as much as a Python call, once per reply.
    if type(message) is BacktestRequest:
        envelope = _envelope(body)
        if not isinstance(envelope, _Envelope) or envelope.request_id is None:
            # The struct generates ids for callers that build requests in Python; on the
            # wire an id is required, or the reply could not be correlated. (The top-level
            # field, not the text anywhere in the body: a parameter may be called so.)
            raise ProtocolError(
                "invalid_request", "request_id: missing required field", field="request_id"
            )
    return message


def _explain(body: bytes, exc: msgspec.ValidationError) -> ProtocolError:
    envelope = _envelope(body)
    rid = peek_request_id(body)
    if isinstance(envelope, str):
        if envelope == _TOO_DEEP:  # the strict decoder failed first, on a real problem
            field, message = translate(exc)
            return ProtocolError("invalid_request", message, request_id=rid, field=field or None)
        return ProtocolError("invalid_request", envelope, request_id=rid)
    if envelope.v is not None and (type(envelope.v) is not int or envelope.v != PROTOCOL_VERSION):
        return ProtocolError(
            "unsupported_version",
            f"protocol version {envelope.v!r} is not supported; this side speaks v1",
            request_id=rid,
            field="v",
        )
    if type(envelope.type) is not str or envelope.type not in _TYPES:
        return ProtocolError(
            "invalid_request",
            f"type: unknown message type {envelope.type!r}; expected one of {sorted(_TYPES)}",
            request_id=rid,
            field="type",
        )
    field, message = translate(exc)
    return ProtocolError("invalid_request", message, request_id=rid, field=field or None)

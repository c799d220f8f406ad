"""Wire protocol v1 against an in-process service (on trio and on asyncio), raw pyzmq.

The service runs in a blocking portal's thread (``shared_service``), so these tests are
plain functions talking to it the way a client in another language would.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from typing import Any

import pytest

from backtest_queue import __version__
from backtest_queue.protocol import BacktestRequest, decode_message
from backtest_queue.service import load_catalog

from service_helpers import PortalService, RawClient, backtest

Client = Callable[..., RawClient]

EXPECTED_DATASETS = ["BTCUSD-MN1", "EURUSD-H1", "EURUSD-small", "GOOG-D1"]
KIND_PARAMS: dict[str, dict[str, Any]] = {
    "sma_cross": {"fast": 10, "slow": 40},
    "ema_cross": {"fast": 12, "slow": 26},
    "rsi_reversion": {"period": 14, "lower": 30, "upper": 70},
}


@pytest.fixture
def client(shared_service: PortalService, client_factory: Client) -> RawClient:
    return client_factory(shared_service.endpoint)


def test_ping_is_answered_with_what_the_service_has(
    shared_service: PortalService, client: RawClient
) -> None:
    pong = client.request({"type": "PING", "v": 1, "request_id": "p-1"})
    ranges, uptime = pong.pop("ranges"), pong.pop("uptime_s")
    assert sorted(ranges) == EXPECTED_DATASETS
    assert ranges["EURUSD-H1"] == {
        "bars": 5000,
        "first": "2017-04-19T09:00:00",
        "last": "2018-02-07T15:00:00",
    }
    assert isinstance(uptime, float)
    assert uptime >= 0.0
    assert pong == {
        "type": "PONG",
        "v": 1,
        "request_id": "p-1",
        "version": __version__,
        "datasets": EXPECTED_DATASETS,  # broken.csv was logged and skipped
        "workers": 1,
        "fingerprints": dict(shared_service.service.fingerprints),
        "running": 0,
        "queued": 0,
        "credit": 2,  # 1 worker running + 1 request waiting (issue 13)
    }
    assert sorted(pong["fingerprints"]) == EXPECTED_DATASETS
    assert client.request({"type": "PING"})["request_id"] is None  # v defaults to 1
    assert shared_service.statistics().pings >= 2
    assert f"<Service {shared_service.endpoint} serving workers=1" in repr(shared_service.service)
    assert len(shared_service.service.skipped) == 1
    assert "broken.csv" in shared_service.service.skipped[0]


@pytest.mark.parametrize("kind", sorted(KIND_PARAMS))
def test_each_strategy_kind_gets_a_result(client: RawClient, kind: str) -> None:
    reply = client.request(
        backtest(f"k-{kind}", kind=kind, params=KIND_PARAMS[kind], sl=0.02, tp=0.05)
    )
    assert reply["type"] == "BACKTEST_RESULT", reply
    assert reply["request_id"] == f"k-{kind}"
    result = reply["result"]
    assert result["strategy_name"] == f"{kind}-k-{kind}"
    assert result["bars"] == 2148
    assert result["trades"] > 0
    assert 0.0 <= result["win_rate"] <= 1.0
    assert result["elapsed_ms"] > 0


def test_start_and_end_bound_the_bars(client: RawClient) -> None:
    reply = client.request(
        backtest("range", data_id="EURUSD-H1", start="2017-06-01", end="2017-06-30")
    )
    assert reply["type"] == "BACKTEST_RESULT", reply
    june = load_catalog().get("EURUSD-H1").bars.loc["2017-06-01":"2017-06-30"]  # inclusive
    assert reply["result"]["bars"] == len(june) == 525


def test_a_csv_dataset_from_the_data_dir(client: RawClient) -> None:
    reply = client.request(backtest("csv", data_id="EURUSD-small", params={"fast": 5, "slow": 20}))
    assert reply["type"] == "BACKTEST_RESULT", reply
    assert reply["result"]["bars"] == 300


def test_same_request_same_result(client: RawClient) -> None:
    message = backtest("again", kind="ema_cross", params={"fast": 5, "slow": 30}, sl=0.01)
    first = client.request(message)["result"]
    second = client.request(message)["result"]
    first.pop("elapsed_ms")
    second.pop("elapsed_ms")
    assert first == second


@pytest.mark.parametrize(
    ("changes", "field"),
    [
        ({"params": {"fast": 40, "slow": 10}}, "strategy.params.fast: must be less than slow"),
        ({"params": {"fast": -1, "slow": 10}}, "strategy.params.fast: must be between"),
        ({"params": {"fast": 2.5, "slow": 10}}, "strategy.params.fast: must be an integer"),
        ({"params": {"fast": 2}}, "strategy.params.slow: missing"),
        ({"params": {"fast": 2, "slow": 9, "x": 1}}, "strategy.params.x: unknown parameter"),
        ({"kind": "macd"}, "strategy.kind: 'macd' is not a strategy kind"),
        ({"start": "June"}, "start: 'June' is not an ISO-8601"),
        ({"end": "2017-02-30"}, "end: '2017-02-30' is not an ISO-8601"),
        ({"data_id": "EURUSD-H1", "start": "2017-06-01", "end": "2017-06-01"}, "start/end: 24"),
        ({"sl": 1e-7}, "strategy.sl: must be a fraction"),
        ({"sl": 2.0}, "strategy.sl"),  # out of the protocol's bounds: msgspec says so
        ({"params": {"fast": "10", "slow": 40}}, "strategy.params"),
        ({"cash": -5}, "cash"),
    ],
)
def test_invalid_requests_name_the_field(
    client: RawClient, changes: dict[str, Any], field: str
) -> None:
    changes = dict(changes)  # the parameters are shared by both backends' runs
    message = backtest("bad", data_id=changes.pop("data_id", "GOOG-D1"))
    for key in ("params", "kind", "sl"):
        if key in changes:
            message["strategy"][key] = changes.pop(key)
    message.update(changes)
    reply = client.request(message)
    assert reply["type"] == "ERROR"
    assert reply["code"] == "invalid_request"
    assert reply["request_id"] == "bad"
    assert field in reply["message"]


def test_unknown_data_id(client: RawClient) -> None:
    reply = client.request(backtest("u", data_id="XAUUSD-M5"))
    assert (reply["type"], reply["code"], reply["request_id"]) == ("ERROR", "unknown_data", "u")
    assert "'XAUUSD-M5'" in reply["message"]
    assert "EURUSD-H1" in reply["message"]


@pytest.mark.parametrize(
    ("body", "code", "request_id", "words"),
    [
        (b"not json", "invalid_request", None, "not valid JSON"),
        (b"[1, 2]", "invalid_request", None, "JSON object"),
        (b'{"type": "FLY", "v": 1, "request_id": "f"}', "invalid_request", "f", "'FLY'"),
        (b'{"type": "PING", "v": 2, "request_id": "v2"}', "unsupported_version", "v2", "2"),
        (b'{"type": "BACKTEST", "v": 1, "request_id": "m"}', "invalid_request", "m", "strategy"),
        (
            json.dumps({k: v for k, v in backtest("x").items() if k != "request_id"}).encode(),
            "invalid_request",
            None,
            "request_id",
        ),
        (
            json.dumps(
                {
                    k: v
                    for k, v in backtest("x", params={"request_id": 1}).items()
                    if k != "request_id"
                }
            ).encode(),
            "invalid_request",
            None,
            "request_id: missing required field",
        ),
        (b'{"type": "PONG", "v": 1}', "invalid_request", None, "PONG is a reply"),
        (
            b'{"type": "ERROR", "v": 1, "code": "too_large", "message": "x", "request_id": "e"}',
            "invalid_request",
            "e",
            "ERROR is a reply",
        ),
        (
            json.dumps(
                {"type": "BACKTEST_RESULT", "request_id": "r", "result": {"strategy_name": "s"}}
            ).encode(),
            "invalid_request",
            "r",
            "BACKTEST_RESULT is a reply",
        ),
    ],
)
def test_bad_messages_get_an_error_reply(
    client: RawClient, body: bytes, code: str, request_id: str | None, words: str
) -> None:
    reply = client.request(body)
    assert reply["type"] == "ERROR"
    assert reply["code"] == code
    assert reply["request_id"] == request_id
    assert words in reply["message"]
    assert "\n" not in reply["message"]


@pytest.mark.parametrize(
    "frames",
    [
        [b'{"type": "PING", "v": 1, "request_id": "no-delimiter"}'],
        [b"", b'{"type": "PING"}', b"extra"],
        [b"x", b'{"type": "PING"}'],
    ],
)
def test_wrong_framing_gets_an_error(
    shared_service: PortalService, client: RawClient, frames: list[bytes]
) -> None:
    before = shared_service.statistics().bad_frames
    client.socket.send_multipart(frames)
    if not client.socket.poll(15_000):
        raise TimeoutError("no reply")
    reply = client.socket.recv_multipart()
    error = decode_message(reply[-1])
    assert error.__struct_config__.tag == "ERROR"
    assert "framing" in json.loads(reply[-1])["message"]
    assert shared_service.statistics().bad_frames == before + 1
    assert client.ping()[0]["type"] == "PONG"


def test_a_body_over_the_cap_gets_too_large(
    shared_service: PortalService, client: RawClient
) -> None:
    padding = "x" * (20 * 1024)  # over 16 KiB, under the 32 KiB hard cap
    body = json.dumps({"type": "PING", "v": 1, "request_id": "big", "pad": padding}).encode()
    reply = client.request(body)
    assert (reply["code"], reply["request_id"]) == ("too_large", None)
    assert "16384-byte limit" in reply["message"]
    assert shared_service.statistics().too_large >= 1


def test_a_frame_over_the_hard_cap_drops_only_that_connection(
    shared_service: PortalService, client_factory: Client
) -> None:
    before = shared_service.statistics()
    offender = client_factory(shared_service.endpoint)
    assert offender.ping()[0]["type"] == "PONG"
    bystander = client_factory(shared_service.endpoint)
    assert bystander.ping()[0]["type"] == "PONG"
    offender.send(b"x" * (64 * 1024))  # over 2 x 16 KiB: libzmq disconnects the sender
    shared_service.wait_statistics(lambda s: s.disconnects > before.disconnects)
    assert bystander.ping()[0]["type"] == "PONG"
    assert offender.ping()[0]["type"] == "PONG"  # a DEALER reconnects by itself
    assert shared_service.statistics().messages_received == before.messages_received + 4


def test_a_duplicate_in_flight_request_is_ignored(
    shared_service: PortalService, client: RawClient
) -> None:
    before = shared_service.statistics()
    message = backtest("dup", data_id="EURUSD-H1")
    for _ in range(3):
        client.send(message)  # one batch: the first is still in flight when the others land
    stats = shared_service.wait_statistics(
        lambda s: s.backtests_completed > before.backtests_completed and s.replies_waiting == 0
    )
    assert stats.duplicates_ignored == before.duplicates_ignored + 2
    assert stats.backtests_accepted == before.backtests_accepted + 1
    _, replies = client.ping()  # everything sent before the PONG has arrived
    assert [(r["type"], r["request_id"]) for r in replies] == [("BACKTEST_RESULT", "dup")]
    assert client.request(message)["type"] == "BACKTEST_RESULT"  # no longer in flight


def test_many_pipelined_requests_each_get_one_reply(
    shared_service: PortalService, client: RawClient
) -> None:
    ids = [f"many-{i}" for i in range(24)]
    for i, request_id in enumerate(ids):
        kind = sorted(KIND_PARAMS)[i % 3]
        client.send(
            backtest(request_id, kind=kind, params=KIND_PARAMS[kind], data_id="EURUSD-small")
        )
    replies = [client.receive() for _ in ids]
    assert sorted(r["request_id"] for r in replies) == sorted(ids)
    assert {r["type"] for r in replies} == {"BACKTEST_RESULT"}
    stats = shared_service.wait_statistics(lambda s: s.running == 0 and s.queued == 0)
    assert stats.replies_waiting == 0
    assert stats.replies_dropped == 0


def test_the_request_struct_round_trips_through_the_service(client: RawClient) -> None:
    """A request built with the library's own structs is accepted as is."""
    from backtest_queue.protocol import Strategy, encode_message

    request = BacktestRequest(
        request_id="struct",
        strategy=Strategy(name="s", kind="sma_cross", params={"fast": 3, "slow": 8}),
        data_id="BTCUSD-MN1",
        cash=1_000_000.0,
    )
    reply = client.request(encode_message(request))
    assert reply["type"] == "BACKTEST_RESULT"
    assert reply["result"]["bars"] == 156

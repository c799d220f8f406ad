"""CURVE between requester and service, with pyzmq's zmq.auth, over real TCP sockets."""

from __future__ import annotations

import logging
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import anyio
import pytest
import zmq
from anyio.streams.memory import MemoryObjectReceiveStream

from backtest_queue import BacktestRequest, Strategy, UsageError, open_dispatcher
from backtest_queue.security import (
    AllowedKeys,
    generate_keys,
    load_client,
    server_options,
    start_authenticator,
)

from stubs import echo, free_tcp_endpoint, stub_service

pytestmark = pytest.mark.anyio


@pytest.fixture
def keys(tmp_path: Path) -> Path:
    generate_keys(tmp_path / "service", "service")
    generate_keys(tmp_path / "allowed", "requester")
    generate_keys(tmp_path / "stranger", "requester")
    return tmp_path


@contextmanager
def log_stream(name: str) -> Iterator[MemoryObjectReceiveStream[logging.LogRecord]]:
    """Log records of ``name`` as an anyio stream, to wait on instead of polling."""
    send, receive = anyio.create_memory_object_stream[logging.LogRecord](100)

    class Handler(logging.Handler):
        def emit(self, record: logging.LogRecord) -> None:
            if record.name == name:  # not children: the ZAP thread logs as a child
                send.send_nowait(record)

    logger = logging.getLogger(name)
    handler = Handler(logging.INFO)
    logger.addHandler(handler)
    old_level = logger.level
    logger.setLevel(logging.INFO)
    try:
        with send, receive:
            yield receive
    finally:
        logger.removeHandler(handler)
        logger.setLevel(old_level)


def request() -> BacktestRequest:
    strategy = Strategy(name="s", kind="sma_cross", params={"fast": 5, "slow": 20})
    return BacktestRequest(strategy=strategy, data_id="EURUSD-H1")


async def test_an_authorised_requester_gets_results(keys: Path) -> None:
    endpoint = free_tcp_endpoint()
    ctx: zmq.Context[zmq.Socket[bytes]] = zmq.Context()
    auth = start_authenticator(ctx, AllowedKeys(keys / "allowed"))
    try:
        options = server_options(keys / "service" / "service.key_secret")
        curve = load_client(keys / "allowed" / "requester.key_secret",
                            keys / "service" / "service.key")  # fmt: skip
        async with (
            stub_service(endpoint, echo, options=options, context=ctx),
            open_dispatcher([endpoint], curve=curve) as d,
        ):
            with anyio.fail_after(5):
                state = await d.submit(request())
                outcome = await d.wait(state.request_id)
        assert outcome.ok
    finally:
        auth.stop()
        ctx.destroy(linger=0)


@pytest.mark.parametrize("who", ["stranger", "no-key"])
async def test_a_requester_with_a_wrong_or_missing_key_gets_nothing(keys: Path, who: str) -> None:
    endpoint = free_tcp_endpoint()
    ctx: zmq.Context[zmq.Socket[bytes]] = zmq.Context()
    allowed = AllowedKeys(keys / "allowed")
    auth = start_authenticator(ctx, allowed)
    curve = None
    if who == "stranger":
        curve = load_client(keys / "stranger" / "requester.key_secret",
                            keys / "service" / "service.key")  # fmt: skip
    try:
        options = server_options(keys / "service" / "service.key_secret")
        with log_stream("backtest_queue") as records:
            async with (
                stub_service(endpoint, echo, options=options, context=ctx) as stub,
                open_dispatcher([endpoint], curve=curve) as d,
            ):
                await d.submit(request())
                with anyio.fail_after(5):
                    async for record in records:
                        if "refused" in record.getMessage():
                            break
                assert not d.connected
                assert d.stats().handshakes_refused >= 1
                assert stub.received == []
        with d.outcomes:
            assert [o.reason async for o in d.outcomes] == ["shutdown"]
        if who == "stranger":  # the service saw the key and said who it refused
            assert allowed.refused >= 1
    finally:
        auth.stop()
        ctx.destroy(linger=0)


def test_keys_are_never_overwritten_and_kinds_are_checked(keys: Path) -> None:
    with pytest.raises(UsageError, match="refusing to overwrite"):
        generate_keys(keys / "service", "service")
    with pytest.raises(UsageError, match="public certificate"):
        server_options(keys / "service" / "service.key")
    with pytest.raises(UsageError, match="no public certificates"):
        AllowedKeys(_empty(keys))


def _empty(root: Path) -> Path:
    folder = root / "empty"
    folder.mkdir()
    return folder

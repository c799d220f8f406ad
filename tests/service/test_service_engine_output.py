"""Whatever a plugged-in engine returns or raises, the service answers with a valid reply.

The message structs now refuse bad values when built (issue 10), so the service must
never build a reply from an engine's output unchecked: that would raise in a runner
task and stop the service.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

import anyio
import pytest
import zmq

from backtest_queue.service import open_service

from odd_engines import OddEngine
from service_helpers import open_async_client, scripted

pytestmark = pytest.mark.anyio


@pytest.fixture
async def context() -> AsyncIterator[zmq.Context[Any]]:
    context: zmq.Context[Any] = zmq.Context()
    yield context
    with anyio.move_on_after(10):
        await anyio.to_thread.run_sync(context.destroy, 0, abandon_on_cancel=True)


async def test_odd_engine_output_becomes_an_engine_error_and_the_service_lives(
    context: zmq.Context[Any],
) -> None:
    with anyio.fail_after(40):
        async with (
            open_service(bind="tcp://127.0.0.1:*", workers=1, engine=OddEngine()) as service,
            open_async_client(context, service.endpoint) as client,
        ):
            for name in ("dict", "none"):
                reply = await client.request(scripted(name, name))
                assert (reply["type"], reply["code"]) == ("ERROR", "engine_error"), reply
                assert "Metrics" in reply["message"] or "invalid" in reply["message"]
            reply = await client.request(scripted("c", "control"))
            assert (reply["code"], reply["request_id"]) == ("engine_error", "c")
            message = reply["message"]
            assert "\\x1b[2J\\x00line break \\udc80 end" in message, message
            pong = await client.request({"type": "PING", "v": 1, "request_id": "alive"})
            assert pong["type"] == "PONG"
            assert service.statistics().engine_errors == 3

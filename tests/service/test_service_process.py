"""The real thing: ``python -m backtest_queue service`` as a child process, raw pyzmq."""

from __future__ import annotations

import json
import os
import select
import signal
import subprocess
import sys
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import zmq
import zmq.auth
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from backtest_queue import __version__

from service_helpers import (
    RawClient,
    ServiceProcess,
    backtest,
    eurusd_lines,
    run_service_process,
    start_service_process,
    write_csv,
)

Client = Callable[..., RawClient]


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    directory = tmp_path_factory.mktemp("process-data")
    lines = eurusd_lines()
    write_csv(directory, "EURUSD-1k.csv", ["timestamp,open,high,low,close,volume", *lines[1:1001]])
    write_csv(directory, "no-close.csv", ["timestamp,open,high,low", "2020-01-01,1,2,1"])
    return directory


@pytest.fixture(scope="module")
def service(
    zmq_context: zmq.Context[Any], data_dir: Path, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[ServiceProcess]:
    """One service process for the module; stopped with SIGINT (Ctrl-C) at the end."""
    log_path = tmp_path_factory.mktemp("process-log") / "service.log"
    with run_service_process(
        zmq_context, log_path, "--workers", "1", "--data", str(data_dir)
    ) as process:
        yield process
        assert process.stop(signal.SIGINT) == 0
        assert "received SIGINT; stopping" in process.log()
        assert "service stopped:" in process.log()


@pytest.fixture
def client(service: ServiceProcess, client_factory: Client) -> RawClient:
    return client_factory(service.endpoint)


def test_ready_line_pong_and_skipped_file(service: ServiceProcess, client: RawClient) -> None:
    pong = client.request({"type": "PING", "v": 1, "request_id": "hello"})
    assert pong["version"] == __version__
    assert pong["workers"] == 1
    assert pong["datasets"] == ["BTCUSD-MN1", "EURUSD-1k", "EURUSD-H1", "GOOG-D1"]
    log = service.log()
    assert f"service ready on {service.endpoint} with 1 workers, datasets: BTCUSD-MN1" in log
    assert "no-close.csv, line 1: missing column(s) close" in log


@pytest.mark.parametrize(
    ("kind", "params"),
    [
        ("sma_cross", {"fast": 10, "slow": 40}),
        ("ema_cross", {"fast": 8, "slow": 21}),
        ("rsi_reversion", {"period": 14, "lower": 25, "upper": 75}),
    ],
)
def test_each_kind_on_a_csv_dataset(client: RawClient, kind: str, params: dict[str, Any]) -> None:
    reply = client.request(backtest(kind, kind=kind, params=params, data_id="EURUSD-1k", tp=0.01))
    assert reply["type"] == "BACKTEST_RESULT", reply
    assert reply["result"]["bars"] == 1000
    assert reply["result"]["trades"] > 0


def test_errors_from_the_process(client: RawClient) -> None:
    reply = client.request(backtest("e1", params={"fast": 3, "slow": 3}))
    assert reply["code"] == "invalid_request"
    assert reply["message"].startswith("strategy.params.fast:")
    reply = client.request(backtest("e2", data_id="EURUSD-2k"))
    assert reply["code"] == "unknown_data"
    reply = client.request(b"\x00\xff")
    assert reply["code"] == "invalid_request"


@settings(
    max_examples=25,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture],
)
@given(
    frames=st.lists(st.binary(max_size=300), min_size=1, max_size=3)
    | st.builds(
        lambda d: [b"", json.dumps(d).encode()],
        st.dictionaries(
            st.sampled_from(["type", "v", "request_id", "strategy", "data_id"]),
            st.none()
            | st.integers()
            | st.text(max_size=10)
            | st.sampled_from(["PING", "BACKTEST"]),
        ),
    )
)
def test_the_process_survives_arbitrary_input(
    service: ServiceProcess, client_factory: Client, frames: list[bytes]
) -> None:
    client = client_factory(service.endpoint)
    client.socket.send_multipart(frames)
    pong, replies = client.ping()
    assert pong["type"] == "PONG"
    assert len(replies) == 1
    assert replies[0]["type"] in ("ERROR", "PONG")
    assert service.process.poll() is None


def test_sigterm_lets_the_running_backtest_finish(
    zmq_context: zmq.Context[Any], tmp_path: Path, client_factory: Client
) -> None:
    with run_service_process(zmq_context, tmp_path / "service.log", "--workers", "1") as service:
        client = client_factory(service.endpoint)
        ids = ["t1", "t2", "t3"]
        for request_id in ids:
            client.send(backtest(request_id, data_id="EURUSD-H1"))
        client.ping()  # the service has read all three requests
        assert service.stop(signal.SIGTERM) == 0
        replies = {r["request_id"]: r for r in (client.receive() for _ in ids)}
    assert sorted(replies) == ids
    outcomes = [(r["type"], r.get("code")) for r in replies.values()]
    assert ("BACKTEST_RESULT", None) in outcomes  # the one running finished
    assert set(outcomes) <= {("BACKTEST_RESULT", None), ("ERROR", "unavailable")}
    assert "received SIGTERM; stopping" in service.log()


def _children(pid: int) -> list[int]:
    children: list[int] = []
    for task in os.listdir(f"/proc/{pid}/task"):
        children += map(int, Path(f"/proc/{pid}/task/{task}/children").read_text().split())
    return children


@pytest.mark.skipif(
    not (sys.platform == "linux" and hasattr(os, "pidfd_open")), reason="needs Linux pidfds"
)
def test_workers_exit_when_the_service_is_killed(
    zmq_context: zmq.Context[Any], tmp_path: Path
) -> None:
    with run_service_process(zmq_context, tmp_path / "service.log", "--workers", "2") as service:
        children = _children(service.process.pid)
        assert len(children) >= 2  # two workers (and multiprocessing's resource tracker)
        pidfds = [os.pidfd_open(pid) for pid in children]
        try:
            service.process.kill()
            service.process.wait()
            waiting = set(pidfds)
            while waiting:
                ready, _, _ = select.select(list(waiting), [], [], 15.0)
                assert ready, "worker processes outlived the killed service"
                waiting -= set(ready)
        finally:
            for fd in pidfds:
                os.close(fd)


def test_curve_admits_only_allowed_requesters(
    zmq_context: zmq.Context[Any], tmp_path: Path, client_factory: Client
) -> None:
    from backtest_queue.security import generate_keys

    _, service_secret = generate_keys(tmp_path / "service", "service")
    generate_keys(tmp_path / "allowed", "requester")
    generate_keys(tmp_path / "strangers", "stranger")

    def curve(name: str, folder: str) -> dict[int, Any]:
        public, secret = zmq.auth.load_certificate(tmp_path / folder / f"{name}.key_secret")
        server_public, _ = zmq.auth.load_certificate(tmp_path / "service" / "service.key")
        return {
            zmq.CURVE_SERVERKEY: server_public,
            zmq.CURVE_PUBLICKEY: public,
            zmq.CURVE_SECRETKEY: secret,
        }

    allowed = curve("requester", "allowed")
    with run_service_process(
        zmq_context,
        tmp_path / "service.log",
        "--workers", "1",
        "--curve-secret", str(service_secret),
        "--allowed-keys", str(tmp_path / "allowed"),
        client_options=allowed,
    ) as service:  # fmt: skip
        client = client_factory(service.endpoint, options=allowed)
        assert client.request(backtest("curve"))["type"] == "BACKTEST_RESULT"
        stranger = client_factory(service.endpoint, options=curve("stranger", "strangers"))
        stranger.send({"type": "PING", "v": 1})
        for _ in range(300):  # up to 30 s, paced by the poll timeout
            assert not stranger.socket.poll(100), "a stranger got a reply"
            if "refused a CURVE handshake" in service.log():
                break
        else:
            raise AssertionError(f"no refusal logged:\n{service.log()}")
        plain = client_factory(service.endpoint)  # no CURVE at all
        plain.send({"type": "PING", "v": 1})
        assert not plain.socket.poll(300)
        assert client.ping()[0]["type"] == "PONG"


def test_a_missing_data_directory_exits_with_2(
    zmq_context: zmq.Context[Any], tmp_path: Path
) -> None:
    process = start_service_process(
        zmq_context, tmp_path / "service.log", "--data", str(tmp_path / "nope")
    )
    assert process.process.wait(30) == 2
    assert "cannot start the service" in process.log()
    assert "is not a directory" in process.log()


def test_a_busy_port_exits_with_1(zmq_context: zmq.Context[Any], tmp_path: Path) -> None:
    squatter = zmq_context.socket(zmq.ROUTER)
    try:
        port = squatter.bind_to_random_port("tcp://127.0.0.1")
        process = start_service_process(
            zmq_context, tmp_path / "service.log", endpoint=f"tcp://127.0.0.1:{port}"
        )
        assert process.process.wait(30) == 1
        assert "Address already in use" in process.log()
    finally:
        squatter.close(linger=0)


def test_help_lists_the_options() -> None:
    result = subprocess.run(
        [sys.executable, "-m", "backtest_queue", "service", "--help"],
        capture_output=True,
        text=True,
        check=True,
        timeout=30,
    )
    for option in ("--bind", "--workers", "--data", "--max-message-bytes", "--shutdown-grace"):
        assert option in result.stdout

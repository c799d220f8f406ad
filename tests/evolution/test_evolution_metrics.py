"""``evolve`` / ``demo`` ``--metrics-port``: passed through to the dispatcher."""

from __future__ import annotations

import argparse
import logging
import socket
import sys
from pathlib import Path

import pytest
from test_evolution_evolve_command import evolve_args, fake_in_thread

from backtest_queue.evolution import command_demo, command_evolve
from backtest_queue.metrics import MetricsSettings, metrics_from_args


def test_evolve_serves_the_requesters_metrics(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="backtest_queue")
    with fake_in_thread() as fake:
        args = evolve_args(
            *("--connect", fake.endpoint, "--generations", "1", "--population", "4"),
            *("--top", "2", "--out", str(tmp_path), "--metrics-port", "0"),
        )
        assert command_evolve.run(args) == 0
    lines = [r.getMessage() for r in caplog.records]
    assert any(m.startswith("requester metrics on http://127.0.0.1:") for m in lines), lines


def test_evolve_with_a_busy_metrics_port_stops_with_1(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    with socket.socket() as squatter, fake_in_thread() as fake:  # evolve asks it first
        squatter.bind(("127.0.0.1", 0))
        squatter.listen()
        port = squatter.getsockname()[1]
        args = evolve_args("--connect", fake.endpoint, "--out", str(tmp_path),
                           "--metrics-port", str(port))  # fmt: skip
        assert command_evolve.run(args) == 1
    errors = [r.getMessage() for r in caplog.records if r.levelno == logging.ERROR]
    assert any(f"cannot serve requester metrics on 127.0.0.1 port {port}" in m
               for m in errors), errors  # fmt: skip


def test_evolve_metrics_without_prometheus_client_name_the_extra(
    tmp_path: Path, caplog: pytest.LogCaptureFixture, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setitem(sys.modules, "prometheus_client", None)
    with fake_in_thread() as fake:  # evolve asks the service for its datasets first
        args = evolve_args("--connect", fake.endpoint, "--out", str(tmp_path),
                           "--metrics-port", "0")  # fmt: skip
        assert command_evolve.run(args) == 1
    errors = [r.getMessage() for r in caplog.records if r.levelno == logging.ERROR]
    assert any("backtest-queue[metrics]" in m for m in errors), errors


def test_demo_takes_the_metrics_options() -> None:
    parser = argparse.ArgumentParser()
    command_demo.add_arguments(parser)
    args = parser.parse_args(["--metrics-port", "9464", "--metrics-addr", "::1"])
    assert metrics_from_args(args) == MetricsSettings(port=9464, addr="::1")
    assert metrics_from_args(parser.parse_args([])) is None

"""``backtest-queue evolve --connect`` against a fake service run in a portal thread."""

from __future__ import annotations

import argparse
import json
import logging
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest
from anyio.from_thread import start_blocking_portal

from backtest_queue.evolution import command_evolve

from evolution_helpers import FakeService, Rule, fake_service
from stubs import free_tcp_endpoint


def evolve_args(*argv: str) -> argparse.Namespace:
    parser = argparse.ArgumentParser()
    command_evolve.add_arguments(parser)
    args = parser.parse_args(list(argv))
    args.command = "evolve"
    return args


@contextmanager
def fake_in_thread(fail: Rule | None = None) -> Iterator[FakeService]:
    with start_blocking_portal(backend="trio") as portal:
        endpoint = free_tcp_endpoint()
        with portal.wrap_async_context_manager(fake_service(endpoint, fail=fail)) as fake:
            yield fake


def test_evolve_against_running_services(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO, logger="backtest_queue")
    with fake_in_thread() as fake:
        args = evolve_args(
            *("--connect", fake.endpoint, "--generations", "2", "--population", "6"),
            *("--top", "3", "--out", str(tmp_path), "--backend", "asyncio"),
        )
        assert command_evolve.run(args) == 0
        requests = list(fake.requests)
    in_sample = [r for r in requests if r.start == "2017-04-19T09:00:00"]
    assert {r.end for r in in_sample} == {"2017-11-09T03:00:00"}
    out_of_sample = [r for r in requests if r.start == "2017-11-09T04:00:00"]
    assert {r.end for r in out_of_sample} == {"2018-02-07T15:00:00"}
    assert len(out_of_sample) == 3
    assert len(in_sample) + len(out_of_sample) == len(requests)
    document = json.loads((tmp_path / "results.json").read_text())
    assert len(document["leaderboard"]) == 3
    assert document["split"]["in_sample_bars"] == 3500
    # The fake's invented metrics cannot match the real engine's equity curve: said so.
    assert any("disagrees with the service's result" in r.getMessage() for r in caplog.records)


def test_evolve_stops_when_the_first_generation_all_fails(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    with fake_in_thread(fail=lambda s: True) as fake:
        args = evolve_args(
            *("--connect", fake.endpoint, "--generations", "5", "--population", "4"),
            *("--out", str(tmp_path)),
        )
        assert command_evolve.run(args) == 1
        assert len(fake.requests) == 4
    errors = [r.getMessage() for r in caplog.records if r.levelno == logging.ERROR]
    assert any("every evaluation of the first generation failed" in m for m in errors), errors
    assert any("engine_error" in m for m in errors)


def test_evolve_refuses_a_dataset_the_service_does_not_list(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    with fake_in_thread() as fake:
        args = evolve_args("--connect", fake.endpoint, "--dataset", "NOPE-H1",
                           "--out", str(tmp_path / "out"))  # fmt: skip
        assert command_evolve.run(args) == 1
        assert fake.requests == []  # nothing was sent
    errors = [r.getMessage() for r in caplog.records if r.levelno == logging.ERROR]
    assert any(
        f"--dataset NOPE-H1: the service at {fake.endpoint} has no such dataset; it has "
        "BTCUSD-MN1, EURUSD-H1, GOOG-D1" in m
        for m in errors
    ), errors

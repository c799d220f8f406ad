"""``evolve``/``demo``/``status`` against real services, as a user runs them.

The installed ``backtest-queue`` command in subprocesses; real services started with
``backtest-queue service``: one serving a CSV dataset the client does not have, one
with CURVE. Bounds are generous (a loaded 2-core machine); they only catch hangs.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from importlib.util import find_spec
from pathlib import Path

import pytest

from backtest_queue.security import generate_keys

from lifelines import tied
from service_process import wait_ready
from stubs import free_tcp_endpoint

pytestmark = pytest.mark.slow

COMMAND = Path(sys.executable).parent / "backtest-queue"
#: The CSV dataset only the service has: the first 1200 bars of EURUSD, under its own id.
OWN_ID = "MINE-H1"
OWN_BARS = 1200
TIMEOUT = 240.0
TINY = ("--generations", "1", "--population", "4", "--top", "2", "--min-trades", "0")


def run(*args: str, timeout: float = TIMEOUT) -> subprocess.CompletedProcess[str]:
    """Run the installed command; logs and results both captured. (``status`` runs get
    ``-q``: until logs go to stderr, an INFO line could precede its JSON on stdout.)"""
    assert COMMAND.exists(), f"the console script {COMMAND} is not installed"
    env = {**os.environ, "COLUMNS": "250"}
    return subprocess.run(
        [str(COMMAND), *args], capture_output=True, text=True, timeout=timeout, **tied(env)
    )


@contextmanager
def service(*args: str) -> Iterator[str]:
    """A real ``backtest-queue service`` on a free port; yields its endpoint."""
    endpoint = free_tcp_endpoint()
    command = [str(COMMAND), "-q", "service", "--bind", endpoint, "--workers", "1", *args]
    process = subprocess.Popen(
        command, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, **tied()
    )
    try:
        if "--curve-secret" not in args:
            wait_ready(endpoint, process)
        else:  # a plain PING gets no answer from a CURVE service: ask with the keys
            keys = Path(args[args.index("--curve-secret") + 1]).parent
            deadline = time.monotonic() + 60
            while run("-q", "status", endpoint, "--curve-keys", str(keys)).returncode != 0:
                assert process.poll() is None, "the CURVE service exited"
                assert time.monotonic() < deadline, "the CURVE service did not get ready"
        yield endpoint
    finally:
        process.terminate()
        try:
            process.wait(timeout=30)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    spec = find_spec("backtesting")
    assert spec is not None
    assert spec.submodule_search_locations
    source = Path(next(iter(spec.submodule_search_locations))) / "test" / "EURUSD.csv"
    lines = source.read_text().splitlines()[: OWN_BARS + 1]  # header + bars
    directory = tmp_path_factory.mktemp("data")
    (directory / f"{OWN_ID}.csv").write_text("\n".join(lines) + "\n")
    return directory


@pytest.fixture(scope="module")
def own_data_service(data_dir: Path) -> Iterator[str]:
    with service("--data", str(data_dir)) as endpoint:
        yield endpoint


@pytest.fixture(scope="module")
def keys(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("keys")
    generate_keys(root / "mine", "service")
    generate_keys(root / "mine", "requester")
    generate_keys(root / "allowed", "requester")
    (root / "allowed" / "requester.key").write_bytes((root / "mine" / "requester.key").read_bytes())
    generate_keys(root / "other", "service")  # a service key that is not this service's
    generate_keys(root / "other", "requester")  # a requester key the service does not admit
    return root


@pytest.fixture(scope="module")
def curve_service(keys: Path) -> Iterator[str]:
    secret = keys / "mine" / "service.key_secret"
    with service("--curve-secret", str(secret), "--allowed-keys", str(keys / "allowed")) as ep:
        yield ep


# -- section 1: the dataset is the service's ---------------------------------------------------


@pytest.mark.parametrize("option", ["--dataset", "--data"])  # --data ID: the old spelling
def test_evolve_runs_on_a_dataset_only_the_service_has(
    own_data_service: str, tmp_path: Path, option: str
) -> None:
    """The issue: the service lists MINE-H1, evolve said it does not have it."""
    out = tmp_path / "out"
    done = run("evolve", "--connect", own_data_service, option, OWN_ID, *TINY, "--out", str(out))
    assert done.returncode == 0, done.stdout + done.stderr
    document = json.loads((out / "results.json").read_text())
    assert document["config"]["data_id"] == OWN_ID
    assert document["split"]["bars"] == OWN_BARS  # from the service's PONG
    logs = done.stdout + done.stderr
    assert "is on the service only" in logs
    if option == "--data":
        assert "for a dataset id write --dataset MINE-H1" in logs


def test_evolve_names_the_services_datasets_for_an_unknown_one(
    own_data_service: str, tmp_path: Path
) -> None:
    done = run("evolve", "--connect", own_data_service, "--dataset", "NOPE-H1", *TINY,
               "--out", str(tmp_path / "out"))  # fmt: skip
    assert done.returncode == 1
    logs = " ".join((done.stdout + done.stderr).split())  # unwrapped, whatever the handler
    assert (
        f"--dataset NOPE-H1: the service at {own_data_service} has no such dataset; it has "
        f"BTCUSD-MN1, EURUSD-H1, GOOG-D1, {OWN_ID}"
    ) in logs
    assert not (tmp_path / "out" / "results.json").exists()


@pytest.mark.parametrize("dataset", [OWN_ID, None])
def test_demo_takes_a_data_directory_as_the_service_does(
    data_dir: Path, tmp_path: Path, dataset: str | None
) -> None:
    """The issue: 'demo --data DIR' blamed a service the user never started."""
    out = tmp_path / "out"
    chosen = ["--dataset", dataset] if dataset else []
    done = run("demo", "--data", str(data_dir), *chosen, *TINY, "--workers", "1",
               "--service-delay", "0", "--out", str(out))  # fmt: skip
    assert done.returncode == 0, done.stdout + done.stderr
    document = json.loads((out / "results.json").read_text())
    assert document["config"]["data_id"] == (dataset or "EURUSD-H1")
    bars = OWN_BARS if dataset else 5000
    assert document["split"]["in_sample_bars"] == int(bars * 0.7)  # the exact bars here


def test_demo_names_what_was_typed_for_an_unknown_dataset(data_dir: Path, tmp_path: Path) -> None:
    done = run("demo", "--data", str(data_dir), "--dataset", "NOPE", "--out", str(tmp_path))
    assert done.returncode == 1
    logs = " ".join((done.stdout + done.stderr).split())
    assert (
        f"--dataset NOPE: not among the built-in datasets and the files of --data {data_dir}"
        in logs
    )
    assert OWN_ID in logs
    assert "of this service" not in logs  # it blamed a service nobody started


# -- section 4: CURVE from the command line ------------------------------------------------------


def test_evolve_with_the_right_keys_runs(curve_service: str, keys: Path, tmp_path: Path) -> None:
    out = tmp_path / "out"
    done = run("evolve", "--connect", curve_service, "--curve-keys", str(keys / "mine"), *TINY,
               "--out", str(out))  # fmt: skip
    assert done.returncode == 0, done.stdout + done.stderr
    assert (out / "results.json").exists()


@pytest.mark.parametrize("keys_given", ["none", "wrong service key", "unknown requester key"])
def test_evolve_with_keys_that_do_not_fit_stops_with_one_clear_error(
    curve_service: str, keys: Path, tmp_path: Path, keys_given: str
) -> None:
    """The issue: evolve logged 'handshake refused' and waited for ever."""
    options = {
        "none": [],
        "wrong service key": ["--curve-secret", str(keys / "mine" / "requester.key_secret"),
                              "--curve-server-key", str(keys / "other" / "service.key")],
        "unknown requester key": ["--curve-secret", str(keys / "other" / "requester.key_secret"),
                                  "--curve-server-key", str(keys / "mine" / "service.key")],
    }[keys_given]  # fmt: skip
    start = time.monotonic()
    done = run("evolve", "--connect", curve_service, *options, *TINY, "--out", str(tmp_path),
               timeout=120)  # fmt: skip
    assert done.returncode == 1
    assert time.monotonic() - start < 120
    logs = " ".join((done.stdout + done.stderr).split())
    assert f"the service at {curve_service} refused the handshake" in logs
    assert "--curve-keys DIR" in logs
    assert "Traceback" not in logs


def test_status_of_a_curve_service(curve_service: str, keys: Path) -> None:
    done = run("-q", "status", curve_service, "--json", "--curve-keys", str(keys / "mine"))
    assert done.returncode == 0, done.stderr
    assert json.loads(done.stdout)["ok"] is True
    refused = run("-q", "status", curve_service, "--timeout", "60")
    assert refused.returncode == 3
    assert "refused the handshake" in refused.stderr
    assert json.loads(run("-q", "status", curve_service, "--json").stdout)["ok"] is False


# -- section 6: status -------------------------------------------------------------------------


def test_status_prints_what_the_service_has(own_data_service: str) -> None:
    done = run("-q", "status", own_data_service)
    assert done.returncode == 0, done.stderr
    lines = done.stdout.splitlines()
    assert lines[0].startswith(f"{own_data_service}: backtest service ")
    assert "protocol v1" in lines[0]
    assert lines[1] == "workers 1, credit 2; backtests running 0, queued 0"
    mine = next(line for line in lines if line.strip().startswith(OWN_ID))
    assert f"{OWN_BARS} bars  2017-04-19T09:00:00 .. " in mine
    document = json.loads(run("-q", "status", own_data_service, "--json").stdout)
    assert document["workers"] == 1
    assert document["uptime_s"] > 0
    (own,) = [d for d in document["datasets"] if d["data_id"] == OWN_ID]
    assert own["bars"] == OWN_BARS
    assert own["first"] == "2017-04-19T09:00:00"
    assert len(own["fingerprint"]) == 16


def test_status_without_a_service_fails_in_bounded_time() -> None:
    start = time.monotonic()
    done = run("-q", "status", free_tcp_endpoint(), "--timeout", "1")
    assert done.returncode == 1
    assert time.monotonic() - start < 60  # the 1 s plus starting Python on a busy box
    assert "no answer from" in done.stderr
    assert "within 1 s" in done.stderr
    bad = run("-q", "status", "localhost:5580")
    assert bad.returncode == 2
    assert "must be a ZeroMQ endpoint such as tcp://HOST:PORT" in bad.stderr
    assert "did you mean tcp://localhost:5580?" in bad.stderr

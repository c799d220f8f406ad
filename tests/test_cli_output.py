"""The command line's output in a terminal, a pipe and a log file (issue 11, §5).

Logs go to stderr, one line per record, never wrapped; results go to stdout; a closed
stdout ends a command quietly; bad option values are refused by argparse; -v/-q work
before and after the subcommand and raise only our loggers; ``service`` prints the
endpoint it bound. The process tests run the installed ``backtest-queue`` script.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import re
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import anyio
import pytest
import zmq

from backtest_queue import cli
from backtest_queue.cli_output import OneLineFormatter, broken_pipe
from backtest_queue.evolution.command_common import run_command

from lifelines import tied

SCRIPT = shutil.which("backtest-queue") or str(Path(sys.executable).with_name("backtest-queue"))
#: One log record: "2026-11-30 11:25:31,021 INFO backtest_queue.evolution: ...".
LOG_LINE = re.compile(r"^\d{4}-\d\d-\d\d \d\d:\d\d:\d\d,\d{3} (DEBUG|INFO|WARNING|ERROR|CRITICAL) "
                      r"([\w.]+): ")  # fmt: skip
TINY = ["--generations", "1", "--population", "3", "--top", "2", "--workers", "1",
        "--service-delay", "0"]  # fmt: skip


def command(*argv: str) -> list[str]:
    return [SCRIPT, *argv]


def environment() -> dict[str, str]:
    """No terminal, and a narrow one if anything asked: wrapping would show."""
    env = {k: v for k, v in os.environ.items() if k not in ("FORCE_COLOR", "TTY_COMPATIBLE")}
    return {**env, "COLUMNS": "60", "TERM": "xterm"}


# -- options: refused at parse time -------------------------------------------------------

BAD_OPTIONS = [
    ("demo", "--seed", "-1"),
    ("demo", "--seed", "4294967296"),
    ("demo", "--seed", "x"),
    ("demo", "--walk-forward", "1"),
    ("demo", "--in-sample", "nan"),
    ("demo", "--in-sample", "1"),
    ("demo", "--service-delay", "inf"),
    ("demo", "--workers", "0"),
    ("demo", "--top", "0"),
    ("demo", "--min-trades", "-3"),
    ("demo", "--generations", "1.5"),
    ("evolve", "--rate", "inf"),
    ("evolve", "--result-timeout", "0"),
    ("evolve", "--flush-interval", "nan"),
    ("evolve", "--max-pending", "0"),
    ("service", "--workers", "-1"),
    ("service", "--max-message-bytes", "10"),
    ("service", "--reply-timeout", "-1"),
    ("service", "--shutdown-grace", "inf"),
    ("service", "--credit", "0"),
    ("service", "--scheduler-timeout", "0"),
    ("service", "--metrics-port", "70000"),
    ("demo", "--metrics-port", "-1"),
    ("evolve", "--metrics-port", "http"),
]


@pytest.mark.parametrize(("subcommand", "option", "value"), BAD_OPTIONS)
def test_a_bad_number_is_refused_by_argparse(
    subcommand: str, option: str, value: str, capsys: pytest.CaptureFixture[str]
) -> None:
    argv = [subcommand, f"{option}={value}"]
    if subcommand == "evolve":
        argv += ["--connect", "tcp://127.0.0.1:1"]
    with pytest.raises(SystemExit) as exit_info:
        cli.main(argv)
    assert exit_info.value.code == 2
    err = capsys.readouterr().err
    assert f"argument {option}: must be " in err, err
    assert repr(value) in err  # what the user typed


@pytest.mark.slow
def test_a_negative_seed_is_one_clear_line_not_a_traceback() -> None:
    done = subprocess.run(command("demo", "--seed", "-1"), capture_output=True, text=True,
                          timeout=60, **tied(environment()))  # fmt: skip
    assert done.returncode == 2
    assert "argument --seed: must be an integer from 0 to 4294967295, got '-1'" in done.stderr
    assert "Traceback" not in done.stderr
    assert done.stdout == ""


@pytest.mark.parametrize("backend", ["trio", "asyncio"])
def test_one_unexpected_error_out_of_task_groups_is_one_line(
    backend: str, caplog: pytest.LogCaptureFixture
) -> None:
    """Any single error out of the CLI's nested task groups: one ERROR line, not an
    exception group's traceback. (run_command runs its own event loop, on each backend,
    in this main thread: its signal receiver needs it.)"""
    caplog.set_level(logging.INFO, logger="backtest_queue")

    async def main() -> int:
        async with anyio.create_task_group() as outer, anyio.create_task_group() as inner:
            outer.start_soon(anyio.sleep_forever)
            inner.start_soon(anyio.sleep_forever)
            raise ValueError("seed must be between 0 and 2**32 - 1")
        return 0

    args = argparse.Namespace(command="demo", backend=backend)
    assert run_command(args, main) == 1
    errors = [r for r in caplog.records if r.levelno >= logging.ERROR]
    assert [r.getMessage() for r in errors] == [
        "unexpected ValueError: seed must be between 0 and 2**32 - 1 "
        "(run with -v for the traceback)"
    ]


# -- -v / -q ------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("argv", "verbose", "quiet"),
    [
        (["-v", "demo"], 1, False),
        (["demo", "-v"], 1, False),
        (["demo", "-vv"], 2, False),
        (["-q", "demo"], 0, True),
        (["demo", "-q"], 0, True),
        (["-v", "service"], 1, False),
        (["service", "--quiet"], 0, True),
        (["keys", "-v", "DIR"], 1, False),
    ],
)
def test_verbosity_before_or_after_the_subcommand(
    argv: list[str], verbose: int, quiet: bool
) -> None:
    args = cli.build_parser().parse_args(argv)
    assert (args.verbose, args.quiet) == (verbose, quiet)


def test_verbose_raises_only_our_loggers() -> None:
    root, ours = logging.getLogger(), logging.getLogger("backtest_queue")
    saved = (root.level, list(root.handlers), ours.level)
    try:
        from backtest_queue.cli_output import setup_logging

        setup_logging(1, False)
        assert ours.getEffectiveLevel() == logging.DEBUG
        assert logging.getLogger("backtest_queue.evolution").isEnabledFor(logging.DEBUG)
        assert not logging.getLogger("matplotlib.font_manager").isEnabledFor(logging.INFO)
        setup_logging(0, True)
        assert not ours.isEnabledFor(logging.INFO)
    finally:
        root.setLevel(saved[0])
        root.handlers[:] = saved[1]
        ours.setLevel(saved[2])


def test_a_multi_line_message_is_one_log_line() -> None:
    message = "the service exited; its last output:\n%s"
    record = logging.LogRecord("backtest_queue.x", logging.ERROR, __file__, 1, message,
                               ("a\nb",), None)  # fmt: skip
    line = OneLineFormatter().format(record)
    assert "\n" not in line
    assert line.endswith("backtest_queue.x: the service exited; its last output: | a | b")


def test_broken_pipe_is_found_inside_groups_and_behind_rich() -> None:
    try:
        try:
            raise BrokenPipeError(32, "Broken pipe")
        except BrokenPipeError:
            raise SystemExit(1) from None  # what rich's console does
    except SystemExit as exc:
        turned = exc
    group = BaseExceptionGroup("tg", [ExceptionGroup("inner", [ValueError("x")]), turned])
    assert broken_pipe(group)
    assert not broken_pipe(BaseExceptionGroup("tg", [ValueError("x"), SystemExit(1)]))


# -- real processes -----------------------------------------------------------------------


def assert_log_lines(stderr: str) -> list[tuple[str, str]]:
    """Every stderr line is a whole log record of ours; return (level, logger) pairs."""
    records = []
    for line in stderr.splitlines():
        match = LOG_LINE.match(line)
        assert match, f"not a log line: {line!r}"
        records.append((match.group(1), match.group(2)))
        assert match.group(2).startswith("backtest_queue"), line
    return records


@pytest.mark.slow
@pytest.mark.timeout(180)
def test_demo_json_on_stdout_logs_on_stderr_one_line_each(tmp_path: Path) -> None:
    """``demo -v --json`` in a pipe: stdout is one JSON document, stderr only whole log
    lines of our loggers (DEBUG ones included, no matplotlib), each longer than the
    60 columns the environment claims (never wrapped)."""
    done = subprocess.run(
        command("demo", "-v", "--json", *TINY, "--out", str(tmp_path / "out")),
        capture_output=True, text=True, timeout=170, **tied(environment()),
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    document = json.loads(done.stdout)
    assert document["complete"] is True
    assert len(document["leaderboard"]) == 2
    assert document["counts"]["evaluations"] == 3
    assert "in-sample evaluations" in document["summary"]
    assert set(document["files"]) >= {"results_csv", "results_json", "readme"}
    assert_log_lines(done.stderr)  # -v let no other library's records through
    ready = [line for line in done.stderr.splitlines() if "generation 1/1" in line]
    assert ready
    assert all(len(line) > 60 for line in ready)


@pytest.mark.slow
@pytest.mark.timeout(180)
def test_a_closed_stdout_ends_the_demo_quietly(tmp_path: Path) -> None:
    """``backtest-queue demo | head -2``: whoever reads stdout went away before the
    leaderboard is printed (here: before anything is). Exit 141, no traceback."""
    demo = subprocess.Popen(
        command("demo", *TINY, "--out", str(tmp_path / "out")),
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, **tied(environment()),
    )  # fmt: skip
    assert demo.stdout is not None
    demo.stdout.close()  # the reader is gone: the demo's first write gets EPIPE
    _, err = demo.communicate(timeout=170)
    assert demo.returncode == 141, err
    assert "Traceback" not in err
    assert "Exception" not in err
    assert_log_lines(err)
    assert (tmp_path / "out" / "results.json").exists()  # the files were written first


@pytest.mark.slow
@pytest.mark.parametrize("subcommand", ["data", "keys"])
def test_a_closed_stdout_ends_the_other_commands_quietly(subcommand: str, tmp_path: Path) -> None:
    """The same for the commands that print results without an event loop."""
    if subcommand == "data":
        (tmp_path / "X-H1.csv").write_text(
            "timestamp,open,high,low,close,volume\n"
            "2023-01-02 00:00:00,1.0,1.2,0.9,1.1,10\n2023-01-02 01:00:00,1.1,1.3,1.0,1.2,10\n"
        )
        argv = ["data", "check", str(tmp_path)]
    else:
        argv = ["keys", str(tmp_path / "keys")]
    process = subprocess.Popen(command(*argv), stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                               text=True, **tied(environment()))  # fmt: skip
    assert process.stdout is not None
    process.stdout.close()
    _, err = process.communicate(timeout=60)
    assert process.returncode == 141, err
    assert err == ""
    if subcommand == "keys":  # every pair written, not only the one before the first print
        names = sorted(p.name for p in (tmp_path / "keys").iterdir())
        assert names == ["requester.key", "requester.key_secret", "service.key",
                         "service.key_secret"]  # fmt: skip


@pytest.mark.slow
@pytest.mark.timeout(120)
def test_service_prints_the_endpoint_it_bound(tmp_path: Path) -> None:
    """``service --bind 'tcp://127.0.0.1:*'``: a script reads the port from stdout; the
    log's ready line (stderr) names it too, whole; the service answers a PING there."""
    service = subprocess.Popen(
        command("service", "--bind", "tcp://127.0.0.1:*", "--workers", "1"),
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, **tied(environment()),
    )  # fmt: skip
    try:
        assert service.stdout is not None
        line = read_line(service, service.stdout, deadline=time.monotonic() + 90)
        endpoint = line.strip()
        assert re.fullmatch(r"tcp://127\.0\.0\.1:\d+", endpoint), line
        assert not endpoint.endswith(":0")
        assert ping(endpoint)["type"] == "PONG"
    finally:
        service.send_signal(signal.SIGTERM)
        out, err = service.communicate(timeout=60)
    assert service.returncode == 0, err
    assert out == ""  # the endpoint is the only thing on stdout
    records = assert_log_lines(err)
    assert records
    assert f"service ready on {endpoint} with 1 workers" in err


def read_line(process: subprocess.Popen[str], stream: Any, *, deadline: float) -> str:
    """The next line of ``stream``; fails when the process ends first. Bounded by the
    test timeout (a readline blocks) and by ``deadline`` between lines."""
    line: str = stream.readline()
    assert line, f"exited with {process.poll()} before printing"
    assert time.monotonic() < deadline
    return line


def ping(endpoint: str, timeout: float = 20.0) -> dict[str, Any]:
    context: zmq.Context[Any] = zmq.Context()
    try:
        with context.socket(zmq.DEALER) as sock:
            sock.setsockopt(zmq.LINGER, 0)
            sock.connect(endpoint)
            sock.send_multipart([b"", b'{"type": "PING", "v": 1, "request_id": "p"}'])
            assert sock.poll(int(timeout * 1000)), f"no PONG from {endpoint} in {timeout} s"
            reply: dict[str, Any] = json.loads(sock.recv_multipart()[-1])
            return reply
    finally:
        context.destroy(linger=0)

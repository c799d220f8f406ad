"""The harness: run every section in one process run, print one table, write JSON.

``python -m benchmarks [--quick] [--json PATH] [--only SECTION ...]``
"""

from __future__ import annotations

import argparse
import datetime as dt
import importlib.metadata
import json
import math
import os
import platform
import statistics
import subprocess
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Final, Literal

import zmq
from rich.console import Console
from rich.table import Table

from .flush import FlushRun, run_flush, run_raw_flush
from .payloads import ResultTemplate, make_requests, request_bodies
from .services import EchoService
from .throughput import Target, Timing, Variant, store_available, variants

__all__ = ["Settings", "main"]

SECTIONS: Final = ("throughput", "flush", "memory", "durable", "endtoend", "utilisation")
#: What runs without ``--only``: the end-to-end comparison and the utilisation demos take
#: minutes (real backtests).
DEFAULT_SECTIONS: Final = ("throughput", "flush", "memory", "durable")
#: Issue 14's throughput targets, as ratios to zmq.asyncio measured in the same rounds.
PER_MESSAGE_TARGET: Final = 0.5  # one ``await submit`` per message (row 4)
BATCHED_TARGET: Final = 1.5  # ``submit_nowait`` batched per wake-up (row 4d)
END_TO_END_TARGET: Final = 0.95  # queue / plain process pool
DEFAULT_JSON: Final = Path(__file__).parent / "results" / "latest.json"
Backend = Literal["trio", "asyncio"]
BACKENDS: Final[tuple[Backend, ...]] = ("trio", "asyncio")


@dataclass(frozen=True, slots=True)
class Settings:
    """How much to measure.

    Attributes:
        messages: round trips per throughput run.
        rounds: throughput rounds (every variant once per round, order rotated).
        window: requests kept in flight in throughput runs.
        flush_n: requests queued before the service binds.
        flush_runs: flush-after-connect runs per backend (and for the raw baseline).
        memory_n: queued requests for the RSS measurement.
        tracemalloc_n: queued requests for the tracemalloc cross-check (slow: ~10x).
        e2e_n: backtests per end-to-end run (the demo's in-sample candidates: 288).
        e2e_rounds: end-to-end rounds (the pool and the queue alternate).
        util_rounds: default demos in the utilisation section.
    """

    messages: int = 20_000
    rounds: int = 5
    window: int = 128
    flush_n: int = 10_000
    flush_runs: int = 5
    memory_n: int = 1_000_000
    tracemalloc_n: int = 200_000
    e2e_n: int = 288
    e2e_rounds: int = 3
    util_rounds: int = 3


QUICK: Final = Settings(
    messages=3_000,
    rounds=3,
    flush_runs=3,
    tracemalloc_n=20_000,
    e2e_n=96,
    e2e_rounds=2,
    util_rounds=1,
)


@dataclass
class Row:
    """One line of the printed table."""

    section: str
    name: str
    median: str
    spread: str = ""
    versus: str = ""
    target: str = ""
    met: bool | None = None


@dataclass
class Report:
    """Everything the run measured (the JSON file is this, as a dict)."""

    machine: dict[str, Any]
    settings: dict[str, Any]
    throughput: dict[str, Any] = field(default_factory=dict)
    flush: dict[str, Any] = field(default_factory=dict)
    memory: dict[str, Any] = field(default_factory=dict)
    durable: dict[str, Any] = field(default_factory=dict)
    endtoend: dict[str, Any] = field(default_factory=dict)
    utilisation: dict[str, Any] = field(default_factory=dict)
    targets: dict[str, Any] = field(default_factory=dict)
    rows: list[Row] = field(default_factory=list)


def _median(values: Sequence[float]) -> float:
    return statistics.median(values) if values else math.nan


def _machine() -> dict[str, Any]:
    cpu = "unknown"
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    cpu = line.split(":", 1)[1].strip()
                    break
    except OSError:
        pass
    versions: dict[str, str | None] = {}
    for dist in ("pyzmq", "zmq-anyio", "anyio", "trio", "msgspec", "backtest-queue"):
        try:
            versions[dist] = importlib.metadata.version(dist)
        except importlib.metadata.PackageNotFoundError:
            versions[dist] = None
    versions["libzmq"] = zmq.zmq_version()
    commit = _git("rev-parse", "--short", "HEAD")
    dirty = bool(_git("status", "--porcelain", "--", "src"))
    return {
        "date": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
        "nproc": os.cpu_count(),
        "cpu": cpu,
        "python": platform.python_version(),
        "implementation": platform.python_implementation(),
        "platform": platform.platform(),
        "versions": versions,
        "git_commit": commit,
        "src_modified_since_commit": dirty,
        "command": " ".join(["python", "-m", "benchmarks", *sys.argv[1:]]),
        "loadavg_start": _loadavg(),
    }


def _git(*args: str) -> str:
    try:
        done = subprocess.run(
            ["git", *args], capture_output=True, text=True, cwd=_root(), check=False
        )
    except OSError:
        return ""
    return done.stdout.strip()


def _loadavg() -> list[float]:
    try:
        return [float(x) for x in Path("/proc/loadavg").read_text().split()[:3]]
    except OSError:
        return []


# -- throughput ----------------------------------------------------------------------


def _run_throughput(settings: Settings, report: Report, log: Callable[[str], None]) -> None:
    requests = make_requests(settings.messages + 1)  # the last one is the warm-up
    bodies = request_bodies(requests[:-1])
    template = ResultTemplate()
    replies = [template.reply_to(b) for b in bodies]
    chosen = variants()
    if "durable" not in settings_sections(report):
        chosen = tuple(v for v in chosen if v.section != "durable")
    picked = report.settings.get("variants")
    if picked:  # the baselines always run: every ratio is to them, round by round
        chosen = tuple(v for v in chosen if v.key in {"raw_pyzmq", "zmq_asyncio", *picked})
    runs: dict[str, list[Timing]] = {v.key: [] for v in chosen}
    with EchoService() as service:
        target = Target(service.endpoint, requests, bodies, replies, settings.window, service.stats)
        for r in range(settings.rounds):
            order = chosen[r % len(chosen) :] + chosen[: r % len(chosen)]
            for variant in order:
                timing = variant.run(target)
                runs[variant.key].append(timing)
                log(f"round {r + 1}/{settings.rounds} {variant.key}: {timing.rate:,.0f}/s")
    baselines = ("raw_pyzmq", "zmq_asyncio")
    out: dict[str, Any] = {}
    for variant in chosen:
        timings = runs[variant.key]
        rates = [t.rate for t in timings]
        per_round = {
            b: [t.rate / base.rate for t, base in zip(timings, runs[b], strict=True)]
            for b in baselines
        }
        ratios = {b: _median(per_round[b]) for b in baselines}
        busy = [t.service_cpu_s / t.seconds for t in timings if t.service_cpu_s is not None]
        out[variant.key] = {
            "label": variant.label,
            "median_per_s": _median(rates),
            "min_per_s": min(rates),
            "max_per_s": max(rates),
            "runs_per_s": rates,
            "ratio_to_raw_pyzmq": ratios["raw_pyzmq"],
            "ratio_to_zmq_asyncio": ratios["zmq_asyncio"],
            # Round by round: the spread of a target's ratio is mostly the baseline's.
            "ratios_to_zmq_asyncio": per_round["zmq_asyncio"],
            "client_cpu_us_per_msg": _median([t.cpu_s / t.messages * 1e6 for t in timings]),
            # The thread that ran the loop (the event loop: all the Python work); the
            # rest of the client's CPU is libzmq's I/O thread.
            "loop_cpu_us_per_msg": _median([t.loop_cpu_s / t.messages * 1e6 for t in timings]),
            "loop_busy": _median([t.loop_cpu_s / t.seconds for t in timings]),
            "service_busy": _median(busy) if busy else None,
        }
        if variant.section == "durable":
            backend = variant.key.rsplit("_", 1)[1]
            plain = runs[f"dispatcher_{backend}"]
            out[variant.key]["ratio_to_dispatcher"] = _median(
                [t.rate / p.rate for t, p in zip(timings, plain, strict=True)]
            )
            report.durable[variant.key] = out[variant.key]
        else:
            report.throughput[variant.key] = out[variant.key]
        report.rows.append(_throughput_row(variant, out[variant.key]))
    if "dispatcher_trio" in out:
        ref = out["dispatcher_trio"]["client_cpu_us_per_msg"]
        for key in ("codec_only", "policy_only"):
            if key in out:
                out[key]["share_of_dispatcher_trio_cpu"] = out[key]["client_cpu_us_per_msg"] / ref
    for backend in BACKENDS:
        for key, name, limit in (
            (f"dispatcher_{backend}", "per_message", PER_MESSAGE_TARGET),
            (f"dispatcher_nowait_{backend}", "batched", BATCHED_TARGET),
        ):
            if key not in out:
                continue
            ratio = out[key]["ratio_to_zmq_asyncio"]
            report.targets[f"dispatch_throughput_{name}_{backend}"] = {
                "target": f"{key} / zmq.asyncio >= {limit}",
                "value": ratio,
                "met": ratio >= limit,
            }


def _throughput_row(variant: Variant, stats: dict[str, Any]) -> Row:
    cpu = stats["client_cpu_us_per_msg"]
    busy = stats["service_busy"]
    target = ""
    met = None
    if not variant.needs_service:
        versus = f"{cpu:.2f} us CPU/msg (no I/O: a floor, not a transport)"
    else:
        versus = (
            f"{stats['ratio_to_raw_pyzmq']:.2f}x raw, {stats['ratio_to_zmq_asyncio']:.2f}x "
            f"zmq.asyncio; {cpu:.0f} us CPU/msg, loop thread {stats['loop_cpu_us_per_msg']:.0f} "
            f"({stats['loop_busy']:.0%} busy); svc {busy:.0%} busy"
        )
    if "ratio_to_dispatcher" in stats:
        versus = f"{stats['ratio_to_dispatcher']:.2f}x the dispatcher without store; " + versus
    limit = {f"dispatcher_{b}": PER_MESSAGE_TARGET for b in BACKENDS} | {
        f"dispatcher_nowait_{b}": BATCHED_TARGET for b in BACKENDS
    }
    if variant.key in limit:
        target = f">= {limit[variant.key]:.2f}x zmq.asyncio"
        met = stats["ratio_to_zmq_asyncio"] >= limit[variant.key]
        rounds = stats["ratios_to_zmq_asyncio"]
        versus += f"; rounds {min(rounds):.2f}-{max(rounds):.2f}x"
    return Row(
        variant.section,
        variant.label,
        f"{stats['median_per_s']:,.0f} msg/s",
        f"{stats['min_per_s']:,.0f}-{stats['max_per_s']:,.0f}",
        versus,
        target,
        met,
    )


# -- flush after connect -------------------------------------------------------------------


def _summarise_flush(runs: list[FlushRun]) -> dict[str, Any]:
    def med(get: Callable[[FlushRun], float | int | None]) -> float | None:
        values = [float(v) for r in runs if (v := get(r)) is not None]
        return _median(values) if values else None

    return {
        "n": runs[0].n,
        "runs": [asdict(r) for r in runs],
        "all_received": all(r.received == r.n for r in runs),
        "all_fifo": all(r.fifo for r in runs),
        "first_ms": _median([r.first_s * 1e3 for r in runs]),
        "first_ms_min": min(r.first_s * 1e3 for r in runs),
        "first_ms_max": max(r.first_s * 1e3 for r in runs),
        "last_s": _median([r.last_s for r in runs]),
        "last_s_min": min(r.last_s for r in runs),
        "last_s_max": max(r.last_s for r in runs),
        "drain_per_s": _median([r.drain_rate for r in runs]),
        "first_after_requester_connect_ms": med(
            lambda r: None if (v := r.first_after_requester_s) is None else v * 1e3
        ),
        "requester_connect_ms": med(
            lambda r: None if r.dispatcher_connect_s is None else r.dispatcher_connect_s * 1e3
        ),
        "first_flush_ms": med(lambda r: None if r.first_flush_s is None else r.first_flush_s * 1e3),
        "first_flush_count": med(lambda r: r.first_flush_count),
        "flush_log_ms": med(lambda r: r.flush_log_ms),
    }


def _run_flush(settings: Settings, report: Report, log: Callable[[str], None]) -> None:
    n = settings.flush_n
    runs: dict[str, list[FlushRun]] = {"raw_pyzmq": [], "trio": [], "asyncio": []}
    for i in range(settings.flush_runs):
        for key in ("raw_pyzmq", *BACKENDS):
            run = run_raw_flush(n) if key == "raw_pyzmq" else run_flush(n, key)  # type: ignore[arg-type]
            runs[key].append(run)
            log(
                f"flush {i + 1}/{settings.flush_runs} {key}: first {run.first_s * 1e3:.2f} ms, "
                f"last {run.last_s * 1e3:.1f} ms"
            )
    out = {key: _summarise_flush(r) for key, r in runs.items()}
    report.flush = out
    raw = out["raw_pyzmq"]
    for key, label in (
        ("raw_pyzmq", "raw pyzmq DEALER (baseline)"),
        ("trio", "dispatcher (trio)"),
        ("asyncio", "dispatcher (asyncio)"),
    ):
        s = out[key]
        ok = s["all_received"] and s["all_fifo"]
        is_ours = key != "raw_pyzmq"
        own = s["first_after_requester_connect_ms"]
        first_vs = (
            f"raw {raw['first_ms']:.2f} ms; " if is_ours else ""
        ) + f"{own:.2f} ms after the requester's own connect event"
        first_met = s["first_ms"] <= 5.0 and ok if is_ours else None
        drain_met = s["last_s"] < 1.0 and ok if is_ours else None
        report.rows.append(
            Row(
                "flush",
                f"5. {label}: connect -> first request",
                f"{s['first_ms']:.2f} ms",
                f"{s['first_ms_min']:.2f}-{s['first_ms_max']:.2f}",
                first_vs,
                "<= 5 ms" if is_ours else "",
                first_met,
            )
        )
        drain_vs = (
            f"{s['drain_per_s'] / raw['drain_per_s']:.2f}x raw rate; "
            f"{s['drain_per_s']:,.0f} req/s; connect flush sent {s['first_flush_count']:.0f}"
            if is_ours
            else f"{s['drain_per_s']:,.0f} req/s"
        )
        report.rows.append(
            Row(
                "flush",
                f"5. {label}: connect -> last of {n:,}",
                f"{s['last_s'] * 1e3:.0f} ms",
                f"{s['last_s_min'] * 1e3:.0f}-{s['last_s_max'] * 1e3:.0f}",
                drain_vs + ("" if ok else "; LOST OR REORDERED"),
                "< 1 s" if is_ours else "",
                drain_met,
            )
        )
        if is_ours:
            report.targets[f"flush_first_{key}"] = {
                "target": "median first request <= 5 ms after connect",
                "value_ms": s["first_ms"],
                "met": first_met,
            }
            report.targets[f"flush_drain_{key}"] = {
                "target": f"{n} requests drained in < 1 s",
                "value_s": s["last_s"],
                "met": drain_met,
            }


# -- memory ----------------------------------------------------------------------------------


def _memory_child(n: int, use_tracemalloc: bool) -> dict[str, Any]:
    cmd = [sys.executable, "-m", "benchmarks.memory", "--n", str(n)]
    if use_tracemalloc:
        cmd.append("--tracemalloc")
    done = subprocess.run(cmd, capture_output=True, text=True, check=True, cwd=_root())
    result: dict[str, Any] = json.loads(done.stdout)
    return result


def _run_memory(settings: Settings, report: Report, log: Callable[[str], None]) -> None:
    rss = _memory_child(settings.memory_n, False)
    log(f"memory (RSS, n={settings.memory_n:,}): {rss['total_per_request']:.0f} B/request")
    traced = _memory_child(settings.tracemalloc_n, True)
    log(
        f"memory (tracemalloc, n={settings.tracemalloc_n:,}): "
        f"{traced['total_per_request']:.0f} B/request"
    )
    encoded = rss["encoded_bytes_mean"]
    limit = 2 * encoded + 200
    total = rss["total_per_request"]
    report.memory = {"rss": rss, "tracemalloc": traced, "limit_bytes": limit}
    report.targets["memory_per_queued_request"] = {
        "target": "RSS per queued request <= 2 x encoded + 200 B",
        "value_bytes": total,
        "limit_bytes": limit,
        "met": total <= limit,
    }
    sizes = rss["getsizeof"]
    report.rows.append(
        Row(
            "memory",
            f"6. RSS per queued request (n={rss['n']:,})",
            f"{total:.0f} B",
            f"tracemalloc {traced['total_per_request']:.0f} B (n={traced['n']:,})",
            f"{total / encoded:.2f}x encoded ({encoded:.0f} B); request objects "
            f"{rss['requests_per_request']:.0f} B + queue {rss['queue_per_request']:.0f} B",
            f"<= {limit:.0f} B",
            total <= limit,
        )
    )
    parts = ", ".join(f"{k} {v:g}" for k, v in sizes.items())
    report.rows.append(Row("memory", "6. getsizeof per queued request (B)", "", "", parts))


# -- durable queue -------------------------------------------------------------------------


def _run_durable(settings: Settings, report: Report, log: Callable[[str], None]) -> None:
    """Rows for the store variants come from the throughput rounds (interleaved)."""
    if not store_available():
        report.durable = {"status": "not built yet"}
        report.rows.append(
            Row(
                "durable",
                "7. durable queue",
                "not built yet",
                "",
                "skipped: backtest_queue.store does not exist",
            )
        )
    elif "throughput" not in settings_sections(report):
        report.durable = {"status": "needs the throughput section (runs interleaved with it)"}
    log(f"durable: {report.durable.get('status', 'measured with the throughput rounds')}")


def _run_endtoend(settings: Settings, report: Report, log: Callable[[str], None]) -> None:
    from .endtoend import run_end_to_end

    log(f"end to end: {settings.e2e_n} backtests x {settings.e2e_rounds} rounds, 2 workers")
    result = run_end_to_end(settings.e2e_n, 2, settings.e2e_rounds)
    summary = result.summary()
    report.endtoend = summary
    ratio = summary["ratio"]
    met = ratio >= END_TO_END_TARGET
    report.targets["end_to_end"] = {
        "target": f"queue / plain ProcessPoolExecutor(2) >= {END_TO_END_TARGET}",
        "value": ratio,
        "met": met,
    }
    n = result.n

    def per_backtest_ms(cpu: list[dict[str, float]], key: str) -> float:
        return _median([c[key] for c in cpu]) / n * 1e3

    pool_spread = f"{n / max(result.pool_s):.1f}-{n / min(result.pool_s):.1f}"
    queue_spread = f"{n / max(result.queue_s):.1f}-{n / min(result.queue_s):.1f}"
    report.rows.append(
        Row(
            "endtoend",
            f"8. plain ProcessPoolExecutor(2), {n} backtests (EURUSD-H1 in sample)",
            f"{summary['pool_per_s']:.1f} backtests/s",
            pool_spread,
            f"workers {per_backtest_ms(result.pool_cpu, 'workers'):.1f} ms CPU/backtest; "
            f"parent {per_backtest_ms(result.pool_cpu, 'here'):.2f} ms; "
            f"workers busy {_median(result.pool_busy):.0%} (CPU over wall)",
        )
    )
    report.rows.append(
        Row(
            "endtoend",
            "8. backtest-queue service --workers 2 + dispatcher, same backtests",
            f"{summary['queue_per_s']:.1f} backtests/s",
            queue_spread,
            f"{ratio:.2f}x the pool (per round {', '.join(f'{r:.2f}' for r in result.ratios)}); "
            f"workers {per_backtest_ms(result.queue_cpu, 'workers'):.1f} ms CPU/backtest; "
            f"service {per_backtest_ms(result.queue_cpu, 'service'):.2f} ms, "
            f"requester {per_backtest_ms(result.queue_cpu, 'here'):.2f} ms; "
            f"workers busy {_median(result.queue_busy):.0%} (CPU over wall)",
            f">= {END_TO_END_TARGET:.2f}x the pool",
            met,
        )
    )


def _run_utilisation(settings: Settings, report: Report, log: Callable[[str], None]) -> None:
    from .utilisation import run_section

    run_section(settings.util_rounds, report, log)


def settings_sections(report: Report) -> list[str]:
    """The sections this run measures."""
    sections: list[str] = report.settings["sections"]
    return sections


# -- output --------------------------------------------------------------------------------


def _table(report: Report) -> Table:
    m = report.machine
    table = Table(
        title=f"backtest-queue benchmarks — {m['date']} — {m['nproc']} x {m['cpu']}, "
        f"Python {m['python']}, load {m['loadavg_start']}",
        caption=m["command"],
    )
    for name in (
        "benchmark",
        "median",
        "spread (min-max)",
        "vs baselines / details",
        "target",
        "met",
    ):
        table.add_column(name, overflow="fold")
    section = ""
    for row in sorted(report.rows, key=lambda r: SECTIONS.index(r.section)):
        if section and row.section != section:
            table.add_section()
        section = row.section
        met = "" if row.met is None else ("[green]yes[/]" if row.met else "[red]NO[/]")
        table.add_row(row.name, row.median, row.spread, row.versus, row.target, met)
    return table


def _root() -> Path:
    return Path(__file__).resolve().parent.parent


def main(argv: Sequence[str] | None = None) -> int:
    """Run the benchmarks; return the process exit code."""
    parser = argparse.ArgumentParser(prog="python -m benchmarks", description=__doc__)
    parser.add_argument("--quick", action="store_true", help="a run under a minute")
    parser.add_argument("--json", type=Path, default=DEFAULT_JSON, help="where to write JSON")
    parser.add_argument(
        "--only", nargs="+", choices=SECTIONS, default=list(DEFAULT_SECTIONS),
        help="sections to run (default: all but endtoend and utilisation, which take minutes)",
    )  # fmt: skip
    parser.add_argument("--messages", type=int, help="round trips per throughput run")
    parser.add_argument("--rounds", type=int, help="throughput rounds")
    parser.add_argument("--window", type=int, help="requests in flight")
    parser.add_argument("--flush-n", type=int, help="requests queued before the service binds")
    parser.add_argument("--flush-runs", type=int, help="flush runs per backend")
    parser.add_argument("--memory-n", type=int, help="queued requests for RSS")
    parser.add_argument("--tracemalloc-n", type=int, help="queued requests for tracemalloc")
    parser.add_argument(
        "--variants", nargs="+", metavar="KEY",
        help="throughput rows to run (JSON keys, e.g. dispatcher_trio dispatcher_nowait_trio); "
        "raw_pyzmq and zmq_asyncio always run",
    )  # fmt: skip
    parser.add_argument("--e2e-n", type=int, help="backtests per end-to-end run")
    parser.add_argument("--e2e-rounds", type=int, help="end-to-end rounds")
    parser.add_argument("--util-rounds", type=int, help="default demos for utilisation")
    args = parser.parse_args(argv)
    base = QUICK if args.quick else Settings()
    overrides = {
        "messages": args.messages,
        "rounds": args.rounds,
        "window": args.window,
        "flush_n": args.flush_n,
        "flush_runs": args.flush_runs,
        "memory_n": args.memory_n,
        "tracemalloc_n": args.tracemalloc_n,
        "e2e_n": args.e2e_n,
        "e2e_rounds": args.e2e_rounds,
        "util_rounds": args.util_rounds,
    }
    settings = Settings(**{**asdict(base), **{k: v for k, v in overrides.items() if v}})
    console = Console(stderr=True)
    started = time.monotonic()

    def log(message: str) -> None:
        console.log(message)

    report = Report(
        _machine(),
        {**asdict(settings), "quick": args.quick, "sections": args.only,
         "variants": args.variants},
    )  # fmt: skip
    runners = {
        "throughput": _run_throughput,
        "flush": _run_flush,
        "memory": _run_memory,
        "durable": _run_durable,
        "endtoend": _run_endtoend,
        "utilisation": _run_utilisation,
    }
    for section in SECTIONS:
        if section in args.only:
            runners[section](settings, report, log)
    report.machine["loadavg_end"] = _loadavg()
    report.machine["elapsed_s"] = round(time.monotonic() - started, 1)
    Console(width=200).print(_table(report))
    args.json.parent.mkdir(parents=True, exist_ok=True)
    data = asdict(report)
    tmp = args.json.with_suffix(".json.tmp")
    tmp.write_text(json.dumps(data, indent=2) + "\n")
    tmp.replace(args.json)
    console.log(f"wrote {args.json} in {report.machine['elapsed_s']} s")
    return 0

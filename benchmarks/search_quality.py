"""Search quality (issue #12): which proposer's pick holds up out of sample.

``python -m benchmarks.search_quality [--seeds 10] [--generations 8] [--population 16]
[--walk-forward K] [--merge JSON ...]``

For each sampler (``tpe``, ``nsga2``, ``random``: :class:`OptunaProposer`, exactly as
``demo`` builds it; ``tpe-1``: TPE asked and told one trial at a time) and each seed,
the same loop the evolution cycle runs - ask a generation, evaluate it, tell it in ask
order - on the demo's in-sample bars (the first 70 % of EURUSD-H1), at an equal budget
of ``generations x population`` distinct evaluations (repeats are re-asked by the
proposer, see its docstring). Each backtest is the service's engine
(:class:`BacktestingPyEngine`) called in-process, in a small process pool: the ZeroMQ
path is measured elsewhere and changes no result.

With ``--walk-forward K`` each candidate is scored as ``demo --walk-forward K`` scores
it (mean minus standard deviation of the Sharpe ratios of K in-sample windows, see
:mod:`backtest_queue.evolution.walkforward`).

Per run: the pick (best in-sample score among candidates with at least
``--min-trades`` trades, the leaderboard's #1), its out-of-sample Sharpe ratio and
trades, the Spearman rank correlation of in- and out-of-sample Sharpe over the run's
top 10, real generations and repeats re-asked. Per sampler: means and standard errors
over seeds. Results go to ``benchmarks/results/search_quality_latest.json`` (``--json``);
the measured ones are described in benchmarks/README.md.
"""

from __future__ import annotations

import argparse
import contextlib
import io
import json
import math
import os
import statistics
import time
from collections.abc import Sequence
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path
from typing import Any

from backtest_queue.evolution.cycle import Evaluation, RunSettings
from backtest_queue.evolution.proposer import OptunaProposer
from backtest_queue.evolution.report import best_candidates
from backtest_queue.evolution.search_space import Candidate
from backtest_queue.evolution.walkforward import combiner
from backtest_queue.protocol import Metrics

RESULTS = Path(__file__).resolve().parent / "results" / "search_quality_latest.json"
_BARS: dict[str, Any] = {}


def _init(data_id: str, fraction: float, folds: int, mode: str) -> None:
    from backtest_queue.evolution.split import load_bars

    bars = load_bars(data_id)
    cut = int(len(bars) * fraction)
    _BARS["in"], _BARS["out"] = bars.iloc[:cut], bars.iloc[cut:]
    for i in range(folds):  # the walk-forward windows, cut as walkforward.windows does
        end = round((i + 1) * cut / folds)
        start = 0 if mode == "anchored" else round(i * cut / folds)
        _BARS[f"w{i}"] = bars.iloc[start:end]


def _run(job: tuple[Candidate, str]) -> Metrics:
    from backtest_queue.service.engine import BacktestingPyEngine

    candidate, part = job
    with contextlib.redirect_stderr(io.StringIO()):  # backtesting.py's tqdm bar
        return BacktestingPyEngine().run(RunSettings().request_for(candidate), _BARS[part])


class Evaluator:
    """Backtests in a process pool, each (candidate, part) run once across all runs."""

    def __init__(self, pool: ProcessPoolExecutor) -> None:
        self._pool = pool
        self._cache: dict[tuple[Candidate, str], Metrics] = {}
        self.backtests = 0

    def __call__(self, candidates: Sequence[Candidate], part: str) -> list[Metrics]:
        todo = list(dict.fromkeys(c for c in candidates if (c, part) not in self._cache))
        for c, metrics in zip(todo, self._pool.map(_run, [(c, part) for c in todo]), strict=True):
            self._cache[(c, part)] = metrics
        self.backtests += len(todo)
        return [self._cache[(c, part)] for c in candidates]


def spearman(xs: Sequence[float], ys: Sequence[float]) -> float | None:
    """Spearman's rank correlation (average ranks for ties); ``None`` under 3 points."""
    if len(xs) < 3:
        return None

    def ranks(values: Sequence[float]) -> list[float]:
        order = sorted(range(len(values)), key=lambda i: values[i])
        out = [0.0] * len(values)
        i = 0
        while i < len(order):
            j = i
            while j + 1 < len(order) and values[order[j + 1]] == values[order[i]]:
                j += 1
            for k in range(i, j + 1):
                out[order[k]] = (i + j) / 2.0
            i = j + 1
        return out

    try:
        return statistics.correlation(ranks(xs), ranks(ys))
    except statistics.StatisticsError:  # constant input
        return None


def one_run(
    sampler: str, seed: int, args: argparse.Namespace, evaluate: Evaluator
) -> dict[str, Any]:
    name, _, single = sampler.partition("-")  # "tpe-1": TPE told one trial at a time
    proposer = OptunaProposer(
        sampler=name,  # type: ignore[arg-type]
        seed=seed,
        population=args.population,
        min_trades=args.min_trades,
        mutation_prob=0.4,
    )
    evaluations: list[Evaluation] = []
    combine = combiner(args.wf_mode)
    batches = [args.population] * args.generations
    if single == "1":
        batches = [1] * (args.population * args.generations)
    for batch, size in enumerate(batches):
        generation = batch * size // args.population + 1  # 1-based, as the cycle numbers them
        proposals = proposer.ask(size)
        candidates = [p.candidate for p in proposals]
        if args.walk_forward >= 2:
            per_window = [evaluate(candidates, f"w{i}") for i in range(args.walk_forward)]
            results = [combine(list(folds)) for folds in zip(*per_window, strict=True)]
        else:
            results = evaluate(candidates, "in")
        proposer.tell(list(zip(proposals, results, strict=True)))
        for p, m in zip(proposals, results, strict=True):
            evaluations.append(
                Evaluation(
                    number=p.number,
                    generation=generation,
                    candidate=p.candidate,
                    status="ok",
                    metrics=m,
                )
            )
    top = best_candidates(evaluations, 10, min_trades=args.min_trades)
    oos = evaluate([e.candidate for e in top], "out")
    pairs = [(e.sharpe, m.sharpe) for e, m in zip(top, oos, strict=True)]
    defined = [(i, o) for i, o in pairs if i is not None and o is not None]
    pick, pick_oos = (top[0], oos[0]) if top else (None, None)
    return {
        "sampler": sampler,
        "seed": seed,
        "distinct": len({e.candidate for e in evaluations}),
        "repeats": proposer.repeats,
        "real_generations": proposer.generations,
        "pick": None if pick is None else pick.candidate.name,
        "pick_is_sharpe": None if pick is None else pick.sharpe,
        "pick_is_trades": None if pick is None or pick.metrics is None else pick.metrics.trades,
        "pick_oos_sharpe": None if pick_oos is None else pick_oos.sharpe,
        "pick_oos_trades": None if pick_oos is None else pick_oos.trades,
        "top10_spearman": spearman([i for i, _ in defined], [o for _, o in defined]),
    }


def mean_se(values: Sequence[float | None]) -> tuple[float | None, float | None, int]:
    """Mean, standard error of the mean, and count of the defined values."""
    xs = [v for v in values if v is not None and math.isfinite(v)]
    if not xs:
        return None, None, 0
    se = statistics.stdev(xs) / math.sqrt(len(xs)) if len(xs) > 1 else None
    return statistics.fmean(xs), se, len(xs)


def summarise(runs: list[dict[str, Any]], samplers: Sequence[str]) -> list[dict[str, Any]]:
    rows = []
    for sampler in samplers:
        mine = [r for r in runs if r["sampler"] == sampler]
        row: dict[str, Any] = {"sampler": sampler, "runs": len(mine)}
        for key in ("pick_is_sharpe", "pick_oos_sharpe", "top10_spearman", "repeats",
                    "real_generations", "distinct", "pick_oos_trades"):  # fmt: skip
            mean, se, n = mean_se([r[key] for r in mine])
            row[key] = {"mean": mean, "se": se, "n": n}
        row["oos_losers"] = sum((r["pick_oos_sharpe"] or 0.0) < 0 for r in mine)
        rows.append(row)
    return rows


def _fmt(cell: dict[str, Any], digits: int = 2) -> str:
    if cell["mean"] is None:
        return "-"
    se = "" if cell["se"] is None else f" ± {cell['se']:.{digits}f}"
    return f"{cell['mean']:.{digits}f}{se}"


def table(rows: list[dict[str, Any]]) -> str:
    """The summary as a Markdown table."""
    lines = [
        "| sampler | pick's IS Sharpe | pick's OOS Sharpe | picks losing OOS | "
        "IS/OOS Spearman (top 10) | real generations | repeats re-asked |",
        "|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        lines.append(
            f"| {r['sampler']} | {_fmt(r['pick_is_sharpe'])} | {_fmt(r['pick_oos_sharpe'])} | "
            f"{r['oos_losers']}/{r['runs']} | {_fmt(r['top10_spearman'])} | "
            f"{_fmt(r['real_generations'], 1)} | {_fmt(r['repeats'], 1)} |"
        )
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.search_quality")
    parser.add_argument("--samplers", nargs="+", default=["tpe", "nsga2", "random"])
    parser.add_argument("--seeds", type=int, default=10)
    parser.add_argument("--first-seed", type=int, default=1)
    parser.add_argument("--generations", type=int, default=8)
    parser.add_argument("--population", type=int, default=16)
    parser.add_argument("--min-trades", type=int, default=20)
    # --dataset ID as on 'backtest-queue evolve' (--data is a directory there); the old
    # spelling still works.
    parser.add_argument("--dataset", "--data", dest="data", default="EURUSD-H1", metavar="ID")
    parser.add_argument("--in-sample", type=float, default=0.7)
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--walk-forward", type=int, default=0, metavar="K")
    parser.add_argument("--wf-mode", choices=("rolling", "anchored"), default="rolling")
    parser.add_argument("--json", type=Path, default=RESULTS)
    parser.add_argument(
        "--merge",
        type=Path,
        nargs="+",
        metavar="JSON",
        help="summarise earlier runs' JSON files together (runs nothing)",
    )
    args = parser.parse_args(argv)
    if args.merge:
        runs = [run for path in args.merge for run in json.loads(path.read_text())["runs"]]
        print(table(summarise(runs, list(dict.fromkeys(r["sampler"] for r in runs)))))
        return 0
    os.environ.setdefault("TQDM_DISABLE", "1")
    started = time.monotonic()
    runs = []
    with ProcessPoolExecutor(args.workers, initializer=_init,
                             initargs=(args.data, args.in_sample, args.walk_forward,
                                       args.wf_mode)) as pool:  # fmt: skip
        evaluate = Evaluator(pool)
        for seed in range(args.first_seed, args.first_seed + args.seeds):
            for sampler in args.samplers:
                runs.append(one_run(sampler, seed, args, evaluate))
                print(json.dumps(runs[-1]), flush=True)
    rows = summarise(runs, args.samplers)
    elapsed = time.monotonic() - started
    print(table(rows))
    print(f"{evaluate.backtests} backtests in {elapsed:.0f} s")
    args.json.parent.mkdir(parents=True, exist_ok=True)
    settings = {k: str(v) if isinstance(v, Path) else v for k, v in vars(args).items()}
    document = {"settings": settings, "summary": rows, "runs": runs, "elapsed_s": elapsed}
    args.json.write_text(json.dumps(document, indent=2) + "\n", encoding="utf-8")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

"""Strategy evolution through the backtest queue (needs the ``evolve`` extra).

* :func:`run_evolution` - the evolution cycle and its outcome collector, run as sibling
  tasks inside an open dispatcher (see :mod:`.cycle`).
* :class:`Proposer` - the ask/tell interface optimizers plug into
  (:class:`StreamingProposer`: one that also hands out a generation one candidate at a
  time, each submitted as it comes); :class:`OptunaProposer` is Optuna's TPE, NSGA-II or
  random sampler (``NSGAIIProposer``, its old name), :class:`ListProposer` a fixed list.
* :class:`SearchSpace` and :class:`Candidate` - what may be proposed.
* :func:`run_search` - the whole job behind ``backtest-queue demo`` and ``evolve``:
  evolve in-sample, re-run the best out-of-sample, report.

Names are imported lazily, so importing this package (the CLI does, to list its
commands) loads neither Optuna nor pandas nor matplotlib.
"""

from __future__ import annotations

from importlib import import_module
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from .cycle import CycleHook as CycleHook
    from .cycle import Evaluation as Evaluation
    from .cycle import EvolutionObserver as EvolutionObserver
    from .cycle import GenerationSummary as GenerationSummary
    from .cycle import Progress as Progress
    from .cycle import ResultCache as ResultCache
    from .cycle import RunSettings as RunSettings
    from .cycle import run_evolution as run_evolution
    from .proposer import ListProposer as ListProposer
    from .proposer import NSGAIIProposer as NSGAIIProposer
    from .proposer import OptunaProposer as OptunaProposer
    from .proposer import Proposal as Proposal
    from .proposer import Proposer as Proposer
    from .proposer import StreamingProposer as StreamingProposer
    from .search import SearchConfig as SearchConfig
    from .search import SearchFailed as SearchFailed
    from .search import SearchReport as SearchReport
    from .search import run_search as run_search
    from .search import write_outputs as write_outputs
    from .search_space import Candidate as Candidate
    from .search_space import SearchSpace as SearchSpace
    from .split import SampleSplit as SampleSplit
    from .split import split_bars as split_bars

_LAZY = {
    "CycleHook": "cycle",
    "Evaluation": "cycle",
    "EvolutionObserver": "cycle",
    "GenerationSummary": "cycle",
    "Progress": "cycle",
    "ResultCache": "cycle",
    "RunSettings": "cycle",
    "run_evolution": "cycle",
    "ListProposer": "proposer",
    "NSGAIIProposer": "proposer",
    "OptunaProposer": "proposer",
    "Proposal": "proposer",
    "Proposer": "proposer",
    "StreamingProposer": "proposer",
    "SearchConfig": "search",
    "SearchFailed": "search",
    "SearchReport": "search",
    "run_search": "search",
    "write_outputs": "search",
    "Candidate": "search_space",
    "SearchSpace": "search_space",
    "SampleSplit": "split",
    "split_bars": "split",
}


def __getattr__(name: str) -> Any:
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    value = getattr(import_module(f".{module}", __name__), name)
    globals()[name] = value
    return value


__all__ = [
    "Candidate",
    "CycleHook",
    "Evaluation",
    "EvolutionObserver",
    "GenerationSummary",
    "ListProposer",
    "NSGAIIProposer",
    "OptunaProposer",
    "Progress",
    "Proposal",
    "Proposer",
    "ResultCache",
    "RunSettings",
    "SampleSplit",
    "SearchConfig",
    "SearchFailed",
    "SearchReport",
    "SearchSpace",
    "StreamingProposer",
    "run_evolution",
    "run_search",
    "split_bars",
    "write_outputs",
]

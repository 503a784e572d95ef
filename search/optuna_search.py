"""Optuna search: a sampler proposes per-unit keep ratios, trials live in an RDB study.

One trial suggests a keep ratio per unit, the shared projection turns the ratios into integer
keeps that meet every budget, and the evaluator scores them on the validation split. TPE is the
default sampler; with `multi_objective` NSGA-II trades validation accuracy against a cost (MACs,
params or size) and the allocation is picked from the Pareto front.

The study lives in a real Optuna storage (SQLite in the run directory by default, any SQLAlchemy
URL otherwise), so a search survives Ctrl-C and kill -9 (finished trials are committed one by one)
and `n_jobs` worker processes can share it (see autoprune.search.trials). Every trial records its
allocation, predicted costs and validation accuracy for optuna-dashboard.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import optuna
import torch
from optuna.storages import RDBStorage
from optuna.trial import TrialState

from autoprune.errors import AutoPruneError, UsageError
from autoprune.quant.bits import BitAllocation
from autoprune.rundir import ARTIFACTS, STUDY_DB
from autoprune.search.base import (
    SEARCH_METHODS,
    SearchMethod,
    SearchProblem,
    SearchResult,
    Trial,
    best_of,
)
from autoprune.search.pareto import check_pick, pareto_front, pick_from_front
from autoprune.search.starts import start_trials
from autoprune.search.storage import check_sqlite_file
from autoprune.search.study import SAMPLERS, StudySpec, check_study, open_storage, safe_url
from autoprune.search.trial_gate import TrialGate
from autoprune.search.trials import quiet_optuna, run_workers

COST_METRICS = ("macs", "params", "size", "bops", "weights")


@SEARCH_METHODS.register("optuna")
@dataclass
class OptunaSearch(SearchMethod):
    """Keep ratios from an Optuna sampler, projected onto the budgets; the best (or picked) trial.

    `trials` counts completed trials of the study, earlier sessions' included, so a resumed study
    runs only what is missing. With one worker and a fresh study the same seed gives the same
    allocation; with several workers trials interleave (the allocation can differ run to run)
    and, on SQLite or PostgreSQL, exactly `trials` finish (autoprune.search.trial_gate).
    """

    supports_bits = True  # per-layer categorical widths beside the keep ratios
    trials: int = 20
    sampler: str | None = None  # None: tpe, or nsga2 with multi_objective
    storage: str | None = None  # SQLAlchemy URL; None: sqlite in the run directory (else memory)
    study: str | None = None  # name; an existing study of this name is resumed
    n_jobs: int = 1  # worker processes on the same storage
    multi_objective: str | None = None  # the cost traded against accuracy: macs | params | size
    pick: str = "best"  # from the Pareto front: best | knee | cheapest | 1% (cheapest within 1 pt)
    artifacts: bool = True  # a PNG keep-ratio chart per trial (needs a run directory)
    heartbeat_s: int = 10  # a trial whose process stops beating for 2x this is marked FAIL
    # A fresh study's first trials are the uniform allocation and every heuristic that applies
    # (search/starts.py), each exactly as that method chose it, bits included, best first: the
    # sampler starts from the baselines and the study never ends below them on its own proxy.
    # One worker only: with several, two processes can pop the same enqueued trial (Optuna on
    # SQLite).
    warm_start: bool = True

    def __post_init__(self) -> None:
        if not isinstance(self.trials, int) or self.trials < 1:
            raise UsageError(f"--trials must be a positive integer, got {self.trials!r}")
        if not isinstance(self.n_jobs, int) or self.n_jobs < 1:
            raise UsageError(f"--n-jobs must be a positive integer, got {self.n_jobs!r}")
        if self.sampler is not None:
            SAMPLERS.get(self.sampler)
        if self.multi_objective is not None and self.multi_objective not in COST_METRICS:
            raise UsageError(
                f"--multi-objective {self.multi_objective!r} is not a cost; use one of "
                f"{', '.join(COST_METRICS)}"
            )
        check_pick(self.pick)
        if self.storage is not None:  # a damaged or foreign SQLite file fails before any work
            check_sqlite_file(self.storage)
        if self.heartbeat_s < 1:
            raise UsageError(f"heartbeat must be at least 1 s, got {self.heartbeat_s!r}")

    def search(self, problem: SearchProblem) -> SearchResult:
        if problem.evaluate is None:
            raise ValueError("optuna search needs an evaluator")
        quiet_optuna()
        spec = self._spec(problem)
        if self.n_jobs > 1 and spec.storage is None:
            raise UsageError(
                "--n-jobs > 1 needs a shared storage: pass --storage URL "
                "(or run inside a run directory)"
            )
        storage = open_storage(spec.storage, spec.heartbeat_s)
        study = optuna.create_study(
            storage=storage, study_name=spec.study, load_if_exists=True, directions=spec.directions
        )
        before = len(study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,)))
        check_study(study, problem, spec, resume=self.study is not None)
        if self.warm_start and self.n_jobs == 1:
            # under the study's lock: search commands started together enqueue the starts once
            with TrialGate(spec.storage, spec.study):
                if not study.get_trials(deepcopy=False):
                    for source, params in warm_params(problem):
                        study.enqueue_trial(params, user_attrs={"source": source})
        try:
            run_workers(spec, problem, study, self.n_jobs)
            return self._result(study, problem, spec, before)
        finally:
            if isinstance(storage, RDBStorage):
                storage.engine.dispose()  # close SQLite before the run directory is renamed

    def _spec(self, problem: SearchProblem) -> StudySpec:
        storage = self.storage
        if storage is None and problem.workdir is not None:
            storage = f"sqlite:///{(Path(problem.workdir) / STUDY_DB).resolve()}"
        artifact_dir = None
        if self.artifacts and problem.workdir is not None:
            artifact_dir = str((Path(problem.workdir) / ARTIFACTS).resolve())
        multi = self.multi_objective is not None
        return StudySpec(
            storage=storage,
            study=self.study or "autoprune",
            trials=self.trials,
            seed=problem.seed,
            sampler=self.sampler or ("nsga2" if multi else "tpe"),
            cost_metric=self.multi_objective,
            artifact_dir=artifact_dir,
            heartbeat_s=self.heartbeat_s,
            progress=problem.progress,
            threads=max(1, torch.get_num_threads() // self.n_jobs),
        )

    def _result(
        self, study: optuna.Study, problem: SearchProblem, spec: StudySpec, before: int
    ) -> SearchResult:
        done = sorted(
            study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,)), key=lambda t: t.number
        )
        graph = problem.cost_model.graph
        trials = [
            Trial(
                t.number,
                np.asarray(t.user_attrs["keep"], dtype=np.int64),
                float(t.user_attrs["val_accuracy"]),
                dict(t.user_attrs["costs"]),
                BitAllocation.from_json(t.user_attrs["bits"], graph)
                if "bits" in t.user_attrs
                else None,
                source=t.user_attrs.get("source"),  # a start it was handed (uniform, global ...)
            )
            for t in done
        ]
        if not trials:
            raise AutoPruneError(f"study {spec.study!r} has no completed trial")
        # the default storage moves with the run directory, so it is recorded relative to it
        where = (
            {"study_file": STUDY_DB}
            if spec.storage and not self.storage
            else {"storage": safe_url(self.storage)}
        )
        info: dict[str, Any] = {
            "study": spec.study,
            **where,
            "sampler": spec.sampler,
            "n_jobs": self.n_jobs,
            "resumed_from": before,
        }
        if spec.cost_metric is None:
            best = best_of(trials)
        else:
            points = [(t.score or 0.0, t.costs[spec.cost_metric]) for t in trials]
            front = pareto_front(points)
            best = trials[pick_from_front(points, front, self.pick)]
            info |= {
                "objective": ["val_accuracy", spec.cost_metric],
                "pick": self.pick,
                "pareto": [trials[i].number for i in front],
            }
        info["best_trial"] = best.number
        return SearchResult(best.keep, best.score, trials, info, bits=best.bits)


def warm_params(problem: SearchProblem) -> list[tuple[str | None, dict[str, float | int]]]:
    """The starts (uniform, heuristics), each named, as trial parameters that reproduce them
    exactly, best first: each unit's ratio keep / size (which the projection maps back to the same
    keeps) and, with bits, each layer's widths (the starts give every kernel of a layer one
    width)."""
    graph = problem.cost_model.graph
    starts = sorted(start_trials(problem), key=lambda t: -(t.score or 0.0))  # stable: uniform first
    out: list[tuple[str | None, dict[str, float | int]]] = []
    for t in starts:
        params: dict[str, float | int] = {
            u.name: int(k) / u.size for u, k in zip(graph.units, t.keep, strict=True)
        }
        if t.bits is not None and problem.bits is not None:
            widths = {lay.name: set(t.bits.weight[lay.name]) for lay in graph.layers}
            if any(len(w) > 1 for w in widths.values()):
                continue  # per-kernel widths are not in the sampler's space
            for lay in graph.layers:
                if len(problem.bits.weight) > 1:
                    params[f"wbits:{lay.name}"] = int(next(iter(widths[lay.name])))
                if len(problem.bits.act) > 1:
                    params[f"abits:{lay.name}"] = int(t.bits.act[lay.name])
        out.append((t.source, params))
    return out

"""Optuna search: a sampler proposes per-unit keep ratios, trials live in an RDB study.

One trial suggests a keep ratio per unit, the shared projection turns the ratios into integer
keeps that meet every budget, and the evaluator scores them on the validation split. TPE is the
default sampler; with `multi_objective` NSGA-II trades validation accuracy against a cost (MACs,
params or size) and the allocation is picked from the Pareto front.

The study lives in a real Optuna storage (SQLite in the run directory by default, any SQLAlchemy
URL otherwise), so a search survives Ctrl-C and kill -9 (finished trials are committed one by one)
and `n_jobs` worker processes can share it. Every trial records its allocation, predicted costs
and validation accuracy as user attributes, plus a Markdown note (and, with an artifact folder, a
PNG chart) of the keep ratio per unit, for optuna-dashboard.
"""

from __future__ import annotations

import contextlib
import multiprocessing
import os
import socket
import tempfile
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import optuna
import torch
from autoprune.search.base import (
    SEARCH_METHODS,
    SearchMethod,
    SearchProblem,
    SearchResult,
    Trial,
    best_of,
)
from autoprune.search.pareto import check_pick, pareto_front, pick_from_front
from autoprune.search.study import (
    SAMPLERS,
    StudySpec,
    check_study,
    open_storage,
    safe_url,
    trial_note,
)
from optuna.artifacts import FileSystemArtifactStore, upload_artifact
from optuna.storages import RDBStorage
from optuna.trial import TrialState
from tqdm.auto import tqdm

from autoprune.errors import AutoPruneError, UsageError
from autoprune.projection import min_keeps

STUDY_DB = "study.db"  # the default storage's file inside SearchProblem.workdir
ARTIFACTS = "artifacts"  # the artifact store's folder inside SearchProblem.workdir
COST_METRICS = ("macs", "params", "size", "bops", "weights")


@SEARCH_METHODS.register("optuna")
@dataclass
class OptunaSearch(SearchMethod):
    """Keep ratios from an Optuna sampler, projected onto the budgets; the best (or picked) trial.

    `trials` counts completed trials of the study, earlier sessions' included, so a resumed study
    runs only what is missing. With one worker and a fresh study the same seed gives the same
    allocation; with several workers trials interleave and up to `n_jobs - 1` extra may finish.
    """

    name = "optuna"
    trials: int = 20
    sampler: str | None = None  # None: tpe, or nsga2 with multi_objective
    storage: str | None = None  # SQLAlchemy URL; None: sqlite in the run directory (else memory)
    study: str | None = None  # name; an existing study of this name is resumed
    n_jobs: int = 1  # worker processes on the same storage
    multi_objective: str | None = None  # the cost traded against accuracy: macs | params | size
    pick: str = "best"  # from the Pareto front: best | knee | cheapest | 1% (cheapest within 1 pt)
    artifacts: bool = True  # a PNG keep-ratio chart per trial (needs a run directory)
    heartbeat_s: int = 10  # a trial whose process stops beating for 2x this is marked FAIL

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
        try:
            _run_workers(spec, problem, study, self.n_jobs)
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
        trials = [
            Trial(
                t.number,
                np.asarray(t.user_attrs["keep"], dtype=np.int64),
                float(t.user_attrs["val_accuracy"]),
                dict(t.user_attrs["costs"]),
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
        return SearchResult(best.keep, best.score, trials, info)


def _run_workers(spec: StudySpec, problem: SearchProblem, study: optuna.Study, n_jobs: int) -> None:
    """Worker 0 runs here; workers 1.. are spawned processes on the same storage."""
    if n_jobs == 1:
        optimize(study, problem, spec, worker=0)
        return
    ctx = multiprocessing.get_context("spawn")  # fork is unsafe after torch has started threads
    procs = [
        ctx.Process(target=_work, args=(spec, problem, w), daemon=False) for w in range(1, n_jobs)
    ]
    try:
        for p in procs:
            p.start()
    except (TypeError, AttributeError, RuntimeError) as e:  # pickling the problem failed
        raise UsageError(
            f"--n-jobs {n_jobs} needs a picklable evaluator and cost model ({e}); use --n-jobs 1"
        ) from None
    interrupted = False
    try:
        optimize(study, problem, spec, worker=0)
    except KeyboardInterrupt:
        interrupted = True
        for p in procs:  # SIGINT lets each worker mark its running trial FAIL before it exits
            if p.is_alive() and p.pid is not None:
                os.kill(p.pid, 2)
        raise
    finally:
        for p in procs:
            p.join(timeout=None if not interrupted else 30)
            if p.is_alive():
                p.terminate()
                p.join()
    failed = [
        f"worker {w} exit code {p.exitcode}" for w, p in enumerate(procs, 1) if p.exitcode != 0
    ]
    if failed:
        raise AutoPruneError(
            f"search workers failed ({', '.join(failed)}); see their tracebacks above"
        )


def quiet_optuna() -> None:
    """Optuna's per-trial INFO lines and experimental-API warnings would drown the progress bar."""
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    warnings.filterwarnings("ignore", category=optuna.exceptions.ExperimentalWarning)


def _work(spec: StudySpec, problem: SearchProblem, worker: int) -> None:
    """Entry point of a spawned worker process."""
    torch.set_num_threads(spec.threads)
    storage = open_storage(spec.storage, spec.heartbeat_s)
    study = optuna.load_study(study_name=spec.study, storage=storage)
    # On Ctrl-C the running trial is already marked FAIL; the parent reports the interrupt.
    with contextlib.suppress(KeyboardInterrupt):
        optimize(study, problem, spec, worker=worker)


def optimize(study: optuna.Study, problem: SearchProblem, spec: StudySpec, *, worker: int) -> None:
    """Run trials until the study holds `spec.trials` completed ones."""
    quiet_optuna()
    study.sampler = SAMPLERS.get(spec.sampler)(
        spec.seed + worker, spec.trials, spec.cost_metric is not None
    )
    objective = _Objective(problem, spec)

    def complete() -> int:
        return len(study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,)))

    done = complete()
    with tqdm(
        total=spec.trials,
        initial=min(done, spec.trials),
        desc="search",
        leave=False,
        disable=not (spec.progress and worker == 0),
    ) as bar:
        while done < spec.trials:
            study.optimize(objective, n_trials=1, catch=())
            now = complete()
            bar.update(min(now, spec.trials) - min(done, spec.trials))
            done = now


class _Objective:
    """One trial: ratios -> projected keeps -> validation accuracy (and cost), all recorded."""

    def __init__(self, problem: SearchProblem, spec: StudySpec) -> None:
        self.problem = problem
        self.spec = spec
        self.names = [u.name for u in problem.cost_model.graph.units]
        self.store = None
        if spec.artifact_dir is not None:
            Path(spec.artifact_dir).mkdir(parents=True, exist_ok=True)
            self.store = FileSystemArtifactStore(spec.artifact_dir)

    def __call__(self, trial: optuna.Trial) -> float | tuple[float, float]:
        p = self.problem
        lo = p.projection.min_ratio
        ratios = np.array([trial.suggest_float(n, lo, 1.0) for n in self.names])
        keep = self._keep(ratios)
        costs = p.costs(keep)
        assert p.evaluate is not None  # checked by OptunaSearch.search
        detailed = getattr(p.evaluate, "evaluate", None)  # MaskEvaluator also reports the loss
        if detailed is not None:
            res = detailed(keep)
            acc, loss = float(res.accuracy), float(res.loss)
        else:
            acc, loss = float(p.evaluate(keep)), None
        ratio = (keep / p.sizes).round(4).tolist()
        attrs = {
            "keep": [int(k) for k in keep],
            "keep_ratio": ratio,
            "costs": costs,
            "val_accuracy": acc,
            "val_loss": loss,
            "worker": f"{socket.gethostname()}:{os.getpid()}",  # which process ran it (--n-jobs)
        }
        for key, value in attrs.items():
            trial.set_user_attr(key, value)
        trial_note(trial, self.names, keep, p.sizes, costs, acc, p.limits)
        self._chart(trial, ratio, acc)
        if self.spec.cost_metric is None:
            return acc
        return acc, float(p.cost_model.metric(self.spec.cost_metric, keep))

    def _keep(self, ratios: np.ndarray) -> np.ndarray:
        p = self.problem
        if self.spec.cost_metric is None:
            return p.project(ratios)  # accuracy grows with size: fill the budget
        # Trading accuracy against cost: keep the proposal as it is when it already fits, so the
        # front spans every cost below the budget, and project only what does not fit.
        raw = np.clip(np.round(ratios * p.sizes), min_keeps(p.sizes, p.projection), p.sizes).astype(
            np.int64
        )
        fits = all(p.cost_model.metric(m, raw) <= lim for m, lim in p.limits.items())
        return raw if fits else p.project(ratios)

    def _chart(self, trial: optuna.Trial, ratio: list[float], acc: float) -> None:
        if self.store is None:
            return
        from autoprune.plots import keep_ratio_chart

        with tempfile.TemporaryDirectory() as tmp:
            path = Path(tmp) / f"keep_ratio_trial{trial.number}.png"
            keep_ratio_chart(
                self.names, ratio, path, title=f"trial {trial.number}: val acc {100 * acc:.2f}%"
            )
            upload_artifact(
                artifact_store=self.store,
                file_path=str(path),
                study_or_trial=trial,
                mimetype="image/png",
            )

"""Optuna plumbing of the search: samplers, the study's identity check, trial notes.

Storages are in autoprune.search.storage (`open_storage`, `safe_url` are re-exported here).
"""

from __future__ import annotations

import dataclasses
import hashlib
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import optuna
import torch
from optuna.trial import FrozenTrial

from autoprune.cost.budgets import format_value
from autoprune.errors import UsageError
from autoprune.quant.bits import BitAllocation
from autoprune.registry import Registry
from autoprune.search.base import SearchProblem
from autoprune.search.storage import open_storage, safe_url
from autoprune.train.checkpoint import state_hash

SamplerFactory = Callable[[int, int, bool], optuna.samplers.BaseSampler]  # (seed, trials, multi)
SAMPLERS: Registry[SamplerFactory] = Registry("sampler")
__all__ = ["SAMPLERS", "StudySpec", "check_study", "open_storage", "safe_url", "study_sampler",
           "trial_note"]  # fmt: skip
IDENTITY_ATTR = "autoprune"  # study user attribute: what it searches and how it scores


@dataclass(frozen=True)
class StudySpec:
    """Everything a worker process needs to join the study (picklable)."""

    storage: str | None  # SQLAlchemy URL; None: in memory (one process only)
    study: str
    trials: int  # completed trials the study should hold when the search ends
    seed: int
    sampler: str
    cost_metric: str | None  # None: single objective (accuracy)
    artifact_dir: str | None
    heartbeat_s: int
    progress: bool
    threads: int  # torch threads per worker: the cores split between workers

    @property
    def directions(self) -> list[str]:
        return ["maximize"] if self.cost_metric is None else ["maximize", "minimize"]


@SAMPLERS.register("tpe")
def _tpe(seed: int, trials: int, multi: bool) -> optuna.samplers.BaseSampler:
    # A quarter of the trials (4..10) explore at random before the model of good ratios is used;
    # multivariate TPE models the units jointly, since their keeps trade against one budget.
    startup = max(4, min(10, trials // 4))
    return optuna.samplers.TPESampler(
        seed=seed, n_startup_trials=startup, multivariate=True, constant_liar=True
    )


@SAMPLERS.register("random")
def _random(seed: int, trials: int, multi: bool) -> optuna.samplers.BaseSampler:
    return optuna.samplers.RandomSampler(seed=seed)


@SAMPLERS.register("nsga2")
def _nsga2(seed: int, trials: int, multi: bool) -> optuna.samplers.BaseSampler:
    # Several generations even for short searches: the default population of 50 would leave a
    # 40-trial search entirely random.
    return optuna.samplers.NSGAIISampler(seed=seed, population_size=max(8, min(50, trials // 4)))


@SAMPLERS.register("qmc")
def _qmc(seed: int, trials: int, multi: bool) -> optuna.samplers.BaseSampler:
    return optuna.samplers.QMCSampler(seed=seed, scramble=True)


def study_sampler(spec: StudySpec) -> optuna.samplers.BaseSampler:
    """The spec's sampler, seeded per trial (QMC: once, its points are numbered in the study)."""
    make = SAMPLERS.get(spec.sampler)
    multi = spec.cost_metric is not None
    if spec.sampler == "qmc":
        return make(spec.seed, spec.trials, multi)
    return TrialSeeded(lambda seed: make(seed, spec.trials, multi), spec.seed)


class TrialSeeded(optuna.samplers.BaseSampler):
    """A sampler made afresh for each trial from (seed, trial number), which it then serves.

    One seed per process would make every process that joins a study with the same --seed (other
    machines, other commands) propose the same points; seeded by the trial's number, which the
    storage gives out once, each trial draws its own, and one worker still repeats exactly.
    Everything a sampler learns lives in the study's trials, so nothing is lost between trials.
    """

    def __init__(self, make: Callable[[int], optuna.samplers.BaseSampler], seed: int) -> None:
        self._make, self._seed = make, seed
        self._inner = make(seed)

    def before_trial(self, study: optuna.Study, trial: FrozenTrial) -> None:
        mixed = int.from_bytes(hashlib.sha256(f"{self._seed}:{trial.number}".encode()).digest()[:4])
        self._inner = self._make(mixed)
        self._inner.before_trial(study, trial)

    def infer_relative_search_space(self, study: optuna.Study, trial: FrozenTrial) -> Any:
        return self._inner.infer_relative_search_space(study, trial)

    def sample_relative(self, study: optuna.Study, trial: FrozenTrial, space: Any) -> Any:
        return self._inner.sample_relative(study, trial, space)

    def sample_independent(
        self, study: optuna.Study, trial: FrozenTrial, name: str, distribution: Any
    ) -> Any:
        return self._inner.sample_independent(study, trial, name, distribution)

    def after_trial(self, study: optuna.Study, trial: FrozenTrial, state: Any, values: Any) -> None:
        self._inner.after_trial(study, trial, state, values)

    def reseed_rng(self) -> None:
        self._inner.reseed_rng()


def identity(problem: SearchProblem, spec: StudySpec) -> dict[str, Any]:
    """What a study's trials depend on; a resumed study must match it exactly."""
    graph = problem.cost_model.graph
    mine: dict[str, Any] = {
        "model": graph.model_name,
        "signature": graph.signature,
        "sizes": [int(s) for s in problem.sizes],
        "limits": {m: float(v) for m, v in sorted(problem.limits.items())},
        "min_ratio": problem.projection.min_ratio,
        "cost_metric": spec.cost_metric,
    }
    if problem.bits is not None:  # only then: studies searched before bits existed still match
        mine["bits"] = problem.bits.to_json()
    return mine | scored_with(problem)


def scored_with(problem: SearchProblem) -> dict[str, Any]:
    """How the study's trials were scored: the evaluator's settings and the dense weights.

    A trial's accuracy depends on both, so trials scored otherwise cannot be mixed with new ones.
    """
    cfg = getattr(problem.evaluate, "cfg", None)
    configured = dataclasses.is_dataclass(cfg) and not isinstance(cfg, type)
    evaluator = dataclasses.asdict(cfg) if configured else None  # type: ignore[arg-type]
    model = problem.context.model if problem.context is not None else None
    model = getattr(problem.evaluate, "model", None) if model is None else model
    dense = state_hash(model.state_dict()) if isinstance(model, torch.nn.Module) else None
    return {"evaluator": evaluator, "dense_weights": dense}


def _differences(theirs: Mapping[str, Any], mine: Mapping[str, Any]) -> list[str]:
    """What differs between a study's identity and this search's, named for the user."""
    out = []
    for key in sorted(mine.keys() | theirs.keys()):
        old, new = theirs.get(key), mine.get(key)
        if old == new:
            continue
        if key == "evaluator" and isinstance(old, dict) and isinstance(new, dict):
            changed = sorted(k for k in old.keys() | new.keys() if old.get(k) != new.get(k))
            out += [
                f"evaluator {k} {old.get(k)!r} (study) vs {new.get(k)!r} (now)" for k in changed
            ]
        elif key == "dense_weights":
            out.append("the dense checkpoint (other weights)")
        else:
            out.append(key)
    return out


def check_study(
    study: optuna.Study, problem: SearchProblem, spec: StudySpec, *, resume: bool
) -> None:
    """Refuse to mix trials of different searches; label a new study for the dashboard."""
    where = safe_url(spec.storage) or "memory"
    if study.trials and not resume:
        raise UsageError(
            f"study {spec.study!r} in {where} already holds {len(study.trials)} trials; pass "
            f"--study {spec.study} to resume it, or name a new study with --study"
        )
    wanted = [
        optuna.study.StudyDirection.MAXIMIZE
        if d == "maximize"
        else optuna.study.StudyDirection.MINIMIZE
        for d in spec.directions
    ]
    if list(study.directions) != wanted:
        raise UsageError(
            f"study {spec.study!r} in {where} has {len(study.directions)} objective(s), this "
            f"search {len(wanted)}; resume it with the same --multi-objective or choose another "
            "--study"
        )
    mine = identity(problem, spec)
    theirs = study.user_attrs.get(IDENTITY_ATTR)
    if theirs is None:
        study.set_user_attr(IDENTITY_ATTR, mine)
        study.set_metric_names(["val_accuracy"] + ([spec.cost_metric] if spec.cost_metric else []))
        _study_note(study, problem)
    elif theirs != mine:
        raise UsageError(
            f"study {spec.study!r} in {where} was searched or scored otherwise "
            f"({'; '.join(_differences(theirs, mine))}); resume it with the model, budgets and "
            "evaluator flags it was made with, or start afresh under another --study NAME"
        )


def _study_note(study: optuna.Study, problem: SearchProblem) -> None:
    from optuna_dashboard import save_note

    graph = problem.cost_model.graph
    dense_keep = problem.cost_model.dense_keep
    dense = {m: format_value(m, problem.cost_model.metric(m, dense_keep)) for m in problem.limits}
    budgets = ", ".join(
        f"{m} <= {format_value(m, v)} (dense {dense[m]})" for m, v in problem.limits.items()
    )
    save_note(
        study,
        f"## {graph.model_name}, {graph.granularity} granularity\n\n"
        f"{len(graph.units)} units, input {'x'.join(map(str, graph.input_size))}; "
        f"budgets: {budgets}.\n\n"
        "Each trial's user attributes hold its allocation (`keep`), `costs` and `val_accuracy`; "
        "its note and artifact show the keep ratio per unit.",
    )


def trial_note(
    trial: optuna.Trial,
    names: Sequence[str],
    keep: np.ndarray,
    sizes: np.ndarray,
    costs: Mapping[str, float],
    accuracy: float,
    limits: Mapping[str, float],
    bits: BitAllocation | None = None,
) -> None:
    """A Markdown note on the trial: costs against limits, a bar per unit of its keep ratio and,
    with bits, each layer's weight and activation widths."""
    from optuna_dashboard import save_note

    parts = [
        f"{m} {format_value(m, v)}" + (f" / {format_value(m, limits[m])}" if m in limits else "")
        for m, v in costs.items()
    ]
    rows = [
        f"| {n} | {k} | {s} | {k / s:.1%} | `{'#' * round(20 * k / s):<20}` |"
        for n, k, s in zip(names, keep.tolist(), sizes.tolist(), strict=False)
    ]
    body = (
        f"**val accuracy {100 * accuracy:.2f}%**; {'; '.join(parts)}\n\n"
        "| unit | keep | total | ratio | |\n|---|---:|---:|---:|---|\n" + "\n".join(rows)
    )
    if bits is not None:
        widths = [
            f"| {name} | {min(w)}-{max(w)} | {sum(w) / len(w):.2f} | {bits.act[name]} |"
            for name, w in bits.weight.items()
        ]
        body += (
            "\n\n| layer | weight bits | mean | activation bits |\n|---|---:|---:|---:|\n"
            + "\n".join(widths)
        )
    save_note(trial, body)

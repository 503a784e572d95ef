"""Workers of an Optuna search: one trial's objective, and the loop (or processes) running trials.

A trial suggests a keep ratio per unit, the shared projection turns the ratios into integer keeps
that meet every budget, the evaluator scores them, and the trial records its allocation, costs,
validation accuracy, a Markdown note and (with an artifact folder) a PNG chart for the dashboard.
Worker processes are spawned, never forked: fork is unsafe once torch has started its threads.
"""

from __future__ import annotations

import contextlib
import multiprocessing
import os
import queue
import signal
import socket
import sys
import tempfile
import time
import warnings
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import optuna
import torch
from optuna.artifacts import FileSystemArtifactStore, upload_artifact
from optuna.trial import TrialState
from tqdm.auto import tqdm

from autoprune.cost.projection import min_keeps
from autoprune.errors import AutoPruneError, UsageError
from autoprune.quant.bits import BitAllocation
from autoprune.search.base import SearchProblem
from autoprune.search.bit_space import fit_bits
from autoprune.search.storage import open_storage
from autoprune.search.study import StudySpec, study_sampler, trial_note
from autoprune.search.trial_gate import TrialGate


def run_workers(spec: StudySpec, problem: SearchProblem, study: optuna.Study, n_jobs: int) -> None:
    """Worker 0 runs here; workers 1.. are spawned processes on the same storage."""
    if n_jobs == 1:
        optimize(study, problem, spec, worker=0)
        return
    ctx = multiprocessing.get_context("spawn")  # fork is unsafe after torch has started threads
    ready = ctx.Queue()
    procs = [ctx.Process(target=_work, args=(spec, problem, w, ready)) for w in range(1, n_jobs)]
    try:
        for p in procs:
            p.start()
    except (TypeError, AttributeError, RuntimeError) as e:  # pickling the problem failed
        raise UsageError(
            f"--n-jobs {n_jobs} needs a picklable evaluator and cost model ({e}); use --n-jobs 1"
        ) from None
    interrupted, threads = False, torch.get_num_threads()
    try:
        _await_ready(ready, procs)
        torch.set_num_threads(spec.threads)
        optimize(study, problem, spec, worker=0)
    except KeyboardInterrupt:
        interrupted = True
        for p in procs:  # SIGINT lets each worker mark its running trial FAIL before it exits
            if p.is_alive() and p.pid is not None:
                os.kill(p.pid, signal.SIGINT)
        raise
    finally:
        torch.set_num_threads(threads)
        for p in procs:
            p.join(timeout=30 if interrupted else None)
            if p.is_alive():
                p.terminate()
                p.join()
    # A worker killed by a signal (kill -9, a machine's OOM killer) loses only its running trial,
    # which the others retried; the search failed only if the study fell short of its trials.
    complete = len(study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,)))
    killed = [w for w, p in enumerate(procs, 1) if p.exitcode is not None and p.exitcode < 0]
    failed = [f"worker {w} exit code {p.exitcode}" for w, p in enumerate(procs, 1)
              if p.exitcode and (w not in killed or complete < spec.trials)]  # fmt: skip
    for w in killed:
        if complete >= spec.trials:
            print(f"note: search worker {w} was killed (signal {-(procs[w - 1].exitcode or 0)}); "
                  "the other workers retried its trial", file=sys.stderr)  # fmt: skip
    if failed:
        raise AutoPruneError(
            f"search workers failed ({', '.join(failed)}); see their tracebacks above"
        )


def _await_ready(ready: Any, procs: list[Any]) -> None:
    """Wait until every worker has joined the study, so that all start (and share trials) together.

    A worker that dies while starting ends the wait; its exit code is reported at the end.
    """
    pending = len(procs)
    while pending:
        try:
            ready.get(timeout=1.0)
            pending -= 1
        except queue.Empty:
            if not all(p.is_alive() for p in procs):
                return


def quiet_optuna() -> None:
    """Optuna's per-trial INFO lines and experimental-API warnings would drown the progress bar."""
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    warnings.filterwarnings("ignore", category=optuna.exceptions.ExperimentalWarning)


def _work(spec: StudySpec, problem: SearchProblem, worker: int, ready: Any) -> None:
    """Entry point of a spawned worker process."""
    torch.set_num_threads(spec.threads)
    storage = open_storage(spec.storage, spec.heartbeat_s)
    study = optuna.load_study(study_name=spec.study, storage=storage)
    ready.put(worker)
    # On Ctrl-C the running trial is already marked FAIL; the parent reports the interrupt.
    with contextlib.suppress(KeyboardInterrupt):
        optimize(study, problem, spec, worker=worker)


def optimize(study: optuna.Study, problem: SearchProblem, spec: StudySpec, *, worker: int) -> None:
    """Run trials until the study holds `spec.trials` completed ones, together with every other
    worker on it: a trial starts only while completed + running ones fall short (`TrialGate`), and
    a running trial whose worker died (no heartbeat for 2 x `heartbeat_s`) is failed and retried
    with its parameters (`open_storage`), so each requested trial completes exactly once."""
    quiet_optuna()
    study.sampler = study_sampler(spec)
    gate = TrialGate(spec.storage, spec.study)
    objective = _Objective(problem, spec, started=gate.release)

    def count(state: TrialState) -> int:
        return len(study.get_trials(deepcopy=False, states=(state,)))

    done, waiting = count(TrialState.COMPLETE), Waiting(spec.heartbeat_s)
    with tqdm(
        total=spec.trials,
        initial=min(done, spec.trials),
        desc="search",
        leave=False,
        disable=not (spec.progress and worker == 0),
    ) as bar:
        try:
            while done < spec.trials:
                gate.acquire()  # both counts under the lock: a trial may have finished since
                done, running = count(TrialState.COMPLETE), count(TrialState.RUNNING)
                if done >= spec.trials:
                    gate.release()
                    break
                if done + running >= spec.trials and not waiting.too_long(done, running):
                    gate.release()  # the last trials are running elsewhere: wait for them
                    waiting.pause(study)
                else:
                    study.optimize(objective, n_trials=1, catch=())  # releases the gate
                    gate.release()
                done = count(TrialState.COMPLETE)
                bar.update(min(done, spec.trials) - bar.n)  # others' trials count too
        finally:
            gate.close()


class Waiting:
    """A worker waiting for the trials others run; it fails those whose worker died.

    A running trial with no heartbeat at all (a tool that wrote the study without heartbeats)
    never turns stale, so after a minute without progress the worker starts trials again.
    """

    def __init__(self, heartbeat_s: int) -> None:
        self.poll_s = min(1.0, heartbeat_s / 4)
        self.limit_s = max(60.0, 6.0 * heartbeat_s)
        self._seen: tuple[int, int] | None = None
        self._since = 0.0

    def too_long(self, done: int, running: int) -> bool:
        if self._seen != (done, running):
            self._seen, self._since = (done, running), time.monotonic()
        return time.monotonic() - self._since > self.limit_s

    def pause(self, study: optuna.Study) -> None:
        time.sleep(self.poll_s)
        optuna.storages.fail_stale_trials(study)  # a dead worker's trial: FAIL, then retried


class _Objective:
    """One trial: ratios -> projected keeps -> validation accuracy (and cost), all recorded."""

    def __init__(
        self, problem: SearchProblem, spec: StudySpec, started: Callable[[], None] | None = None
    ) -> None:
        self.problem = problem
        self.spec = spec
        self.started = started  # called once the trial exists in the storage
        self.names = [u.name for u in problem.cost_model.graph.units]
        self.store = None
        if spec.artifact_dir is not None:
            Path(spec.artifact_dir).mkdir(parents=True, exist_ok=True)
            self.store = FileSystemArtifactStore(spec.artifact_dir)

    def __call__(self, trial: optuna.Trial) -> float | tuple[float, float]:
        if self.started is not None:
            self.started()
        # which process runs it (--n-jobs, several machines), visible while it runs
        trial.set_user_attr("worker", f"{socket.gethostname()}:{os.getpid()}")
        p = self.problem
        lo = p.projection.min_ratio
        ratios = np.array([trial.suggest_float(n, lo, 1.0) for n in self.names])
        bits = self._bits(trial)
        keep = self._keep(ratios, bits)
        costs = p.costs(keep, bits)
        metric = self.spec.cost_metric
        if metric is not None:  # the traded cost is recorded even when no budget names it
            costs[metric] = float(p.costed(bits).metric(metric, keep))
        assert p.evaluate is not None  # checked by OptunaSearch.search
        detailed = getattr(p.evaluate, "evaluate", None)  # MaskEvaluator also reports the loss
        if detailed is not None:
            res = detailed(keep) if bits is None else detailed(keep, bits)
            acc, loss = float(res.accuracy), float(res.loss)
        else:
            acc, loss = p.score(keep, bits), None
        ratio = (keep / p.sizes).round(4).tolist()
        attrs = {
            "keep": [int(k) for k in keep],
            "keep_ratio": ratio,
            "costs": costs,
            "val_accuracy": acc,
            "val_loss": loss,
        }
        if bits is not None:
            attrs["bits"] = bits.to_json()
        for key, value in attrs.items():
            trial.set_user_attr(key, value)
        trial_note(trial, self.names, keep, p.sizes, costs, acc, p.limits, bits)
        self._chart(trial, ratio, acc)
        return acc if metric is None else (acc, costs[metric])

    def _bits(self, trial: optuna.Trial) -> BitAllocation | None:
        """Per-layer weight (and, when searched, activation) widths, repaired to fit the budgets."""
        space = self.problem.bits
        if space is None:
            return None
        layers = [lay.name for lay in self.problem.cost_model.graph.layers]
        # A single choice is no choice: it stays out of the sampler's parameters.
        weight = [space.weight[0]] * len(layers)
        if len(space.weight) > 1:
            weight = [trial.suggest_categorical(f"wbits:{n}", space.weight) for n in layers]
        act = [space.act[0]] * len(layers)
        if len(space.act) > 1:
            act = [trial.suggest_categorical(f"abits:{n}", space.act) for n in layers]
        return fit_bits(self.problem, space, weight, act)

    def _keep(self, ratios: np.ndarray, bits: BitAllocation | None) -> np.ndarray:
        p = self.problem
        if self.spec.cost_metric is None:
            return p.project(ratios, bits)  # accuracy grows with size: fill the budget
        # Trading accuracy against cost: keep the proposal as it is when it already fits, so the
        # front spans every cost below the budget, and project only what does not fit.
        raw = np.clip(np.round(ratios * p.sizes), min_keeps(p.sizes, p.projection), p.sizes).astype(
            np.int64
        )
        return raw if p.costed(bits).fits(raw, p.limits) else p.project(ratios, bits)

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

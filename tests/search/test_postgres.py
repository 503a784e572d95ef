"""Several workers on one study in a real PostgreSQL server, one of them killed with SIGKILL.

The server is the session's own (tests/services.py, `postgres_url` gives each test a fresh
database). In both tests a worker is frozen (SIGSTOP) while it holds a running trial, checked to
still hold it, then killed (SIGKILL), so the kill is mid-trial every time. The others must fail
that trial once its heartbeat is stale, retry its parameters, and stop at exactly the requested
number of completed trials; the best allocation meets the budget and the study resumes after.
"""

from __future__ import annotations

import functools
import json
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

import optuna
from optuna.storages import RetryHeartbeatStaleTrialCallback
from optuna.trial import FrozenTrial, TrialState
from test_search import lenet5_problem

from autoprune.cli.main import main
from autoprune.search.optuna_search import OptunaSearch
from autoprune.search.starts import HEURISTICS
from autoprune.search.storage import open_storage
from autoprune.search.testing import SyntheticEvaluator

STUDY = "shared"


@functools.cache
def _storage(url: str) -> optuna.storages.BaseStorage:
    """One storage per database for the test's own reads (each opens a pool of connections)."""
    return open_storage(url, heartbeat_s=1)  # retries the race to create the tables


def _trials(url: str, *states: TrialState) -> list[FrozenTrial]:
    trials = optuna.load_study(study_name=STUDY, storage=_storage(url)).get_trials(deepcopy=False)
    return [t for t in trials if not states or t.state in states]


def _enqueued(trial: FrozenTrial) -> bool:
    """A start the search enqueued (a retry of a killed trial is fixed too, but not enqueued)."""
    retried = RetryHeartbeatStaleTrialCallback.retried_trial_number(trial) is not None
    return "fixed_params" in trial.system_attrs and not retried


def _pid(trial: FrozenTrial) -> int | None:
    worker = trial.user_attrs.get("worker")
    return int(worker.rsplit(":", 1)[1]) if worker else None


def kill_mid_trial(url: str, allowed: set[int] | None, *, exclude: int = -1) -> FrozenTrial:
    """SIGKILL a worker (of `allowed`, or any but `exclude`) while it runs a trial; that trial."""
    deadline = time.monotonic() + 240
    while time.monotonic() < deadline:
        time.sleep(0.05)
        try:
            running = _trials(url, TrialState.RUNNING)
        except KeyError:  # the study does not exist yet
            continue
        for trial in running:
            pid = _pid(trial)
            if pid is None or pid == exclude or (allowed is not None and pid not in allowed):
                continue
            os.kill(pid, signal.SIGSTOP)  # frozen: it cannot finish the trial while we look
            still = [t for t in _trials(url, TrialState.RUNNING) if t.number == trial.number]
            if still:
                os.kill(pid, signal.SIGKILL)
                return still[0]
            os.kill(pid, signal.SIGCONT)  # it finished just before: try again
    raise AssertionError("no worker was ever seen running a trial")


def assert_killed_trial_retried_once(url: str, killed: FrozenTrial, requested: int) -> None:
    after = {t.number: t for t in _trials(url)}
    assert after[killed.number].state == TrialState.FAIL
    complete = [t for t in after.values() if t.state == TrialState.COMPLETE]
    assert len(complete) == requested  # exactly: no worker ran one beyond the target
    retried_from = RetryHeartbeatStaleTrialCallback.retried_trial_number
    retried = [t for t in complete if retried_from(t) == killed.number]
    # with its parameters (the kill may come before it suggested them all)
    assert len(retried) == 1 and after[killed.number].params.items() <= retried[0].params.items()
    # every sampled proposal is a different one (workers with one --seed do not repeat each
    # other), and the starts were enqueued once, not once per worker; two starts (uniform and a
    # heuristic) may coincide, so those are counted rather than compared
    sampled = [tuple(sorted(t.params.items())) for t in complete if not _enqueued(t)]
    assert len(set(sampled)) == len(sampled)
    assert len([t for t in after.values() if _enqueued(t)]) <= 1 + len(HEURISTICS)
    assert {t.state for t in after.values()} <= {TrialState.COMPLETE, TrialState.FAIL}


def test_three_worker_processes_survive_one_killed_mid_trial(postgres_url: str) -> None:
    problem = lenet5_problem()
    problem.evaluate = SyntheticEvaluator(problem.sizes, delay_s=0.5)
    killed: list[Any] = []

    def kill() -> None:  # a spawned worker, not this process (worker 0 runs here)
        try:
            killed.append(kill_mid_trial(postgres_url, None, exclude=os.getpid()))
        except BaseException as e:  # reported by the assert below, not lost with the thread
            killed.append(e)

    killer = threading.Thread(target=kill, daemon=True)
    killer.start()
    search = OptunaSearch(trials=12, storage=postgres_url, study=STUDY, n_jobs=3, heartbeat_s=1,
                          artifacts=False)  # fmt: skip
    result = search.search(problem)
    killer.join(timeout=5)
    assert killed and isinstance(killed[0], FrozenTrial), killed or "the killer is still looking"
    assert_killed_trial_retried_once(postgres_url, killed[0], requested=12)
    assert problem.cost_model.fits(result.keep, problem.limits)
    assert (
        len(result.trials) == 12
        and len({t.user_attrs["worker"] for t in _trials(postgres_url)}) == 3
    )

    resumed = OptunaSearch(trials=14, storage=postgres_url, study=STUDY, heartbeat_s=1,
                           artifacts=False).search(problem)  # fmt: skip
    assert resumed.info["resumed_from"] == 12 and len(resumed.trials) == 14


def test_three_search_commands_on_one_study_survive_one_killed_mid_trial(
    postgres_url: str, tmp_path: Path
) -> None:
    argv = [sys.executable, "-m", "autoprune", "search", "--model", "lenet5", "--dataset",
            "digits", "--input-size", "1x16x16", "--limit", "96", "--dense-epochs", "0",
            "--budget-flops", "30%", "--no-prune", "--finetune-steps", "8", "--heartbeat", "1",
            "--storage", postgres_url, "--study", STUDY, "--quiet"]  # fmt: skip
    procs = [
        subprocess.Popen(
            [*argv, "--trials", "9", "--out", str(tmp_path / f"run{i}")],
            stderr=subprocess.PIPE,
            text=True,
        )
        for i in range(3)
    ]
    killed = kill_mid_trial(postgres_url, {p.pid for p in procs})
    for p in procs:
        _, err = p.communicate(timeout=300)
        assert p.returncode == (-signal.SIGKILL if p.pid == _pid(killed) else 0), err[-2000:]
    assert_killed_trial_retried_once(postgres_url, killed, requested=9)
    survivors = [tmp_path / f"run{i}" for i, p in enumerate(procs) if p.returncode == 0]
    for run in survivors:
        metrics = json.loads((run / "metrics.json").read_text())
        assert metrics["budgets"]["macs"]["met"] and metrics["search"]["trials"] == 9

    out = tmp_path / "resumed"  # in this process: resuming needs no fresh one
    assert main([*argv[3:], "--trials", "11", "--out", str(out)]) == 0
    assert len(_trials(postgres_url, TrialState.COMPLETE)) == 11
    assert json.loads((out / "metrics.json").read_text())["search"]["resumed_from"] == 9

"""Optuna studies on real storage: kill -9 and resume, worker processes, the CLI, the dashboard."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
import optuna
import pytest
from optuna.trial import TrialState
from test_search import lenet5_problem, problem_for

from autoprune.cli.main import main
from autoprune.cost.measure import count_macs
from autoprune.errors import UsageError
from autoprune.export.program import load_program
from autoprune.rundir import partial_dir
from autoprune.search.optuna_search import OptunaSearch
from autoprune.search.testing import SyntheticEvaluator

WORKER = Path(__file__).with_name("search_study_worker.py")


def _trials(
    url: str, study: str, state: TrialState | None = None
) -> list[optuna.trial.FrozenTrial]:
    trials = optuna.load_study(study_name=study, storage=url).get_trials(deepcopy=False)
    return [t for t in trials if state is None or t.state == state]


def _done(t: optuna.trial.FrozenTrial) -> tuple[Any, ...]:
    return t.number, tuple(sorted(t.params.items())), t.value, tuple(t.user_attrs["keep"])


@pytest.mark.slow
def test_a_study_killed_mid_way_resumes_without_losing_finished_trials(tmp_path: Path) -> None:
    n_trials = 40
    url = f"sqlite:///{tmp_path / 'study.db'}"
    # Far more trials than the test waits for, so a slow poll (a loaded machine) cannot find
    # the worker already finished instead of mid-way.
    proc = subprocess.Popen(
        [sys.executable, str(WORKER), url, str(n_trials)], stderr=subprocess.PIPE
    )
    deadline = time.monotonic() + 120
    finished: list[optuna.trial.FrozenTrial] = []
    while len(finished) < 3:
        assert proc.poll() is None, proc.stderr.read().decode() if proc.stderr else ""
        assert time.monotonic() < deadline, "the search never finished 3 trials"
        time.sleep(0.1)
        try:
            finished = _trials(url, "killed", TrialState.COMPLETE)
        except KeyError:  # the study is not created yet
            continue
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    before = {_done(t) for t in _trials(url, "killed", TrialState.COMPLETE)}
    assert 3 <= len(before) < n_trials
    time.sleep(2.5)  # past the heartbeat grace period (2 x 1 s): the killed trial is now stale

    problem = lenet5_problem()
    result = OptunaSearch(
        trials=n_trials, storage=url, study="killed", heartbeat_s=1, artifacts=False
    ).search(problem)
    after = _trials(url, "killed")
    complete = {_done(t) for t in after if t.state == TrialState.COMPLETE}
    assert before <= complete and len(complete) == n_trials
    assert {t.state for t in after} <= {TrialState.COMPLETE, TrialState.FAIL}
    assert result.info["resumed_from"] == len(before) and len(result.trials) == n_trials


@pytest.mark.slow
def test_two_worker_processes_share_one_sqlite_study(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'study.db'}"
    problem = lenet5_problem()
    problem.evaluate = SyntheticEvaluator(problem.sizes, delay_s=1.0)
    result = OptunaSearch(trials=8, storage=url, study="pair", n_jobs=2, artifacts=False).search(
        problem
    )
    trials = _trials(url, "pair")
    assert all(t.state == TrialState.COMPLETE for t in trials)
    assert len(trials) == 8  # exactly: a worker starts a trial only while the study is short
    assert len({t.user_attrs["worker"] for t in trials}) == 2
    assert len(result.trials) == len(trials)


def test_search_cli_writes_study_report_and_a_program_within_budget(tmp_path: Path) -> None:
    out = tmp_path / "run"
    argv = [
        "search",
        "--model",
        "lenet5",
        "--dataset",
        "digits",
        "--limit",
        "200",
        "--dense-epochs",
        "0",
        "--budget-flops",
        "20%",
        "--trials",
        "4",
        "--no-prune",
        "--quiet",
        "--out",
        str(out),
    ]
    assert main(argv) == 0
    for name in (
        "model.pt2",
        "allocation.json",
        "study.db",
        "report.md",
        "keep_ratio.png",
        "trials.png",
        "pareto.png",
        "trials.json",
    ):
        assert (out / name).is_file(), name
    metrics = json.loads((out / "metrics.json").read_text())
    alloc = json.loads((out / "allocation.json").read_text())
    assert count_macs(load_program(out / "model.pt2"), (1, 28, 28)) <= 0.2 * alloc["dense"]["macs"]
    assert metrics["search"]["trials"] == 4 and metrics["search"]["study_file"] == "study.db"
    trials = _trials(f"sqlite:///{out / 'study.db'}", "autoprune", TrialState.COMPLETE)
    assert len(trials) == 4
    best = max(trials, key=lambda t: (t.value, -t.number))
    assert best.user_attrs["keep"] == [u["keep"] for u in alloc["units"]]
    assert best.user_attrs["val_accuracy"] == metrics["search"]["proxy_accuracy"]
    assert set(best.user_attrs["costs"]) >= {"macs", "params"}
    # a keep-ratio chart (artifact) and a note per trial, for the dashboard
    assert all(any(k.startswith("artifacts:") for k in t.system_attrs) for t in trials)
    assert len(list((out / "artifacts").iterdir())) == 4
    study = optuna.load_study(study_name="autoprune", storage=f"sqlite:///{out / 'study.db'}")
    notes = study._storage.get_study_system_attrs(study._study_id)
    assert all(f"dashboard:{t._trial_id}:note_str:0" in notes for t in trials)
    # the report and trials.json say what the study holds: its trials, its best, its keeps
    report = (out / "report.md").read_text()
    assert "![keep ratio](keep_ratio.png)" in report
    assert metrics["search"]["best_trial"] == best.number
    assert f"chosen allocation: {100 * best.value:.2f}%; 4 trials in " in report
    assert f"| {best.number} | {100 * best.value:.2f}% |" in report  # on the Pareto front
    assert all(f"| {u['name']} | {u['keep']} | {u['total']} |" in report for u in alloc["units"])
    listed = json.loads((out / "trials.json").read_text())
    assert [(t["number"], t["score"], t["keep"]) for t in listed] == [
        (t.number, t.value, t.user_attrs["keep"]) for t in sorted(trials, key=lambda t: t.number)
    ]


def test_an_interrupted_search_is_kept_refused_without_study_and_resumed(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    from autoprune.search import evaluator

    out = tmp_path / "run"
    argv = [
        "search",
        "--model",
        "lenet5",
        "--dataset",
        "digits",
        "--limit",
        "120",
        "--budget-flops",
        "20%",
        "--trials",
        "5",
        "--no-prune",
        "--no-warm-start",  # every evaluator call is then a study trial's (starts score too)
        "--quiet",
        "--out",
        str(out),
    ]
    # the third trial is interrupted: evaluate, not _score, so a trial whose allocation an
    # earlier one already scored (a cache hit) counts as well
    real = evaluator.MaskEvaluator.evaluate
    calls = {"n": 0}

    def interrupt_third(self: Any, keep: Any, bits: Any = None) -> Any:
        calls["n"] += 1
        if calls["n"] == 3:
            raise KeyboardInterrupt
        return real(self, keep, bits)

    monkeypatch.setattr(evaluator.MaskEvaluator, "evaluate", interrupt_third)
    assert main(argv) == 130
    stage = partial_dir(out)
    assert (
        (stage / "study.db").is_file()
        and (stage / "dense" / "checkpoint.pt").is_file()
        and not out.exists()
    )
    url = f"sqlite:///{stage / 'study.db'}"
    kept = {_done(t) for t in _trials(url, "autoprune", TrialState.COMPLETE)}
    assert len(kept) == 2 and len(_trials(url, "autoprune", TrialState.FAIL)) == 1

    assert main(argv) == 2  # not resumed by accident, not discarded either
    assert "--study autoprune" in capsys.readouterr().err and stage.is_dir()

    monkeypatch.setattr(evaluator.MaskEvaluator, "evaluate", real)
    assert main([*argv, "--study", "autoprune"]) == 0
    trials = _trials(f"sqlite:///{out / 'study.db'}", "autoprune", TrialState.COMPLETE)
    assert kept <= {_done(t) for t in trials} and len(trials) == 5 and not stage.exists()


def test_dashboard_serves_the_run_study_on_localhost_only(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import optuna_dashboard

    seen: dict[str, Any] = {}
    monkeypatch.setattr(
        optuna_dashboard, "run_server", lambda storage, **kw: seen.update(storage=storage, **kw)
    )
    run = tmp_path / "run"
    with pytest.raises(UsageError, match=r"holds no study\.db"):
        from autoprune.pipeline.dashboard import locate

        locate(str(run), None)
    problem = problem_for("lenet5", [("macs", "30%")])
    problem.workdir = partial_dir(run)  # a search still running: its study is in the staging folder
    problem.workdir.mkdir()
    OptunaSearch(trials=2).search(problem)
    assert main(["dashboard", str(run), "--port", "8123"]) == 0
    assert seen["host"] == "127.0.0.1" and seen["port"] == 8123
    assert seen["storage"] == f"sqlite:///{(problem.workdir / 'study.db').resolve()}"
    assert seen["artifact_store"] is not None
    assert np.isfinite(_trials(seen["storage"], "autoprune")[0].value)


def _finished_study(run: Path, trials: int) -> Path:
    """A run directory holding a finished optuna study of `trials` trials on lenet5."""
    run.mkdir()
    problem = problem_for("lenet5", [("macs", "30%")])
    problem.workdir = run
    OptunaSearch(trials=trials).search(problem)
    return run


def test_dashboard_screenshot_renders_the_finished_study(tmp_path: Path) -> None:
    from PIL import Image
    from services import chromium, missing

    if chromium() is None:  # skips here, fails in CI (.ci/run installs chromium)
        missing("headless Chromium (Debian's chromium package)")
    run = _finished_study(tmp_path / "run", trials=3)
    png = tmp_path / "shots" / "dashboard.png"
    assert main(["dashboard", str(run), "--screenshot", str(png)]) == 0
    image = Image.open(png).convert("RGB")
    assert image.size == (1600, 1000)
    # the page rendered: the dashboard's blue app bar on top, a light page body below it
    r, _, b = image.getpixel((800, 5))
    assert b > 200 and r < 100
    assert len(set(image.crop((0, 100, 1600, 1000)).getdata())) > 50  # charts, not a blank page


def test_dashboard_screenshot_without_a_browser_is_a_usage_error(tmp_path: Path) -> None:
    run = _finished_study(tmp_path / "run", trials=1)
    code = main(["dashboard", str(run), "--screenshot", str(tmp_path / "x.png"),
                 "--browser", "no-such-browser"])  # fmt: skip
    assert code == 2 and not (tmp_path / "x.png").exists()

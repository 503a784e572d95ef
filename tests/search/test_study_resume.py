"""A study is resumed only by a search scored as its trials were: evaluator settings, dense weights.

The study records both (user attribute `autoprune`); a resume that differs is one line naming
what differs and how to start afresh, and a matching one continues the study.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any

import optuna
import pytest
import torch
from optuna.trial import TrialState
from test_search import lenet5_problem

from autoprune.cli.main import main
from autoprune.errors import UsageError
from autoprune.models import build_model
from autoprune.search.base import SearchContext, SearchProblem
from autoprune.search.evaluator import EvaluatorConfig
from autoprune.search.optuna_search import OptunaSearch
from autoprune.search.study import IDENTITY_ATTR
from autoprune.search.testing import SyntheticEvaluator


class ConfiguredEvaluator(SyntheticEvaluator):
    """The synthetic score, carrying an evaluator configuration as MaskEvaluator does."""

    def __init__(self, sizes: Any, cfg: EvaluatorConfig) -> None:
        super().__init__(sizes)
        self.cfg = cfg


def _problem(cfg: EvaluatorConfig, model: torch.nn.Module) -> SearchProblem:
    problem = lenet5_problem()
    problem.evaluate = ConfiguredEvaluator(problem.sizes, cfg)
    graph = problem.cost_model.graph
    problem.context = SearchContext(model, graph, train=[], val=[])  # type: ignore[arg-type]
    return problem


def _search(url: str, problem: SearchProblem, trials: int) -> Any:
    return OptunaSearch(trials=trials, storage=url, study="s", artifacts=False).search(problem)


@pytest.fixture
def study(tmp_path: Path) -> tuple[str, torch.nn.Module]:
    """A study of 2 trials scored with the default evaluator on a fixed lenet5."""
    torch.manual_seed(0)
    model = build_model("lenet5", num_classes=10, input_size=(1, 28, 28))
    url = f"sqlite:///{tmp_path / 'study.db'}"
    _search(url, _problem(EvaluatorConfig(), model), trials=2)
    return url, model


@pytest.mark.parametrize(
    ("change", "named"),
    [({"finetune_steps": 5}, "evaluator finetune_steps 0 (study) vs 5 (now)"),
     ({"val_limit": 50}, "evaluator val_limit None (study) vs 50 (now)"),
     ({"importance": "l2"}, "evaluator importance 'l1' (study) vs 'l2' (now)"),
     ({"seed": 3}, "evaluator seed 0 (study) vs 3 (now)")],
)  # fmt: skip
def test_another_evaluator_setting_is_refused_naming_it(
    study: tuple[str, torch.nn.Module], change: dict[str, Any], named: str
) -> None:
    url, model = study
    cfg = dataclasses.replace(EvaluatorConfig(), **change)
    before = len(optuna.load_study(study_name="s", storage=url).trials)
    with pytest.raises(UsageError) as err:
        _search(url, _problem(cfg, model), trials=3)
    message = str(err.value)
    assert named in message and "another --study" in message and "\n" not in message
    assert len(optuna.load_study(study_name="s", storage=url).trials) == before  # none added


def test_another_dense_checkpoint_is_refused(study: tuple[str, torch.nn.Module]) -> None:
    url, model = study
    other = build_model("lenet5", num_classes=10, input_size=(1, 28, 28))
    other.load_state_dict(model.state_dict())
    with torch.no_grad():
        next(other.parameters()).view(-1)[0] += 1e-3  # one weight differs
    with pytest.raises(UsageError, match=r"the dense checkpoint \(other weights\)"):
        _search(url, _problem(EvaluatorConfig(), other), trials=3)


def test_the_same_settings_and_weights_resume_the_study(
    study: tuple[str, torch.nn.Module],
) -> None:
    url, model = study
    same = build_model("lenet5", num_classes=10, input_size=(1, 28, 28))
    same.load_state_dict(model.state_dict())
    result = _search(url, _problem(EvaluatorConfig(), same), trials=3)
    assert result.info["resumed_from"] == 2 and len(result.trials) == 3
    recorded = optuna.load_study(study_name="s", storage=url).user_attrs[IDENTITY_ATTR]
    assert recorded["evaluator"] == dataclasses.asdict(EvaluatorConfig())
    assert len(recorded["dense_weights"]) == 16


def test_the_cli_refuses_another_fine_tune_and_resumes_the_same(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    url = f"sqlite:///{tmp_path / 'study.db'}"
    base = ["search", "--model", "lenet5", "--dataset", "digits", "--input-size", "1x16x16",
            "--limit", "96", "--dense-epochs", "0", "--budget-flops", "30%", "--no-prune",
            "--quiet", "--storage", url, "--study", "s"]  # fmt: skip
    assert main([*base, "--trials", "2", "--out", str(tmp_path / "a")]) == 0
    capsys.readouterr()
    code = main([*base, "--trials", "3", "--finetune-steps", "2", "--out", str(tmp_path / "b")])
    err = capsys.readouterr().err.strip()
    assert code == 2 and "\n" not in err and "finetune_steps 0 (study) vs 2 (now)" in err
    assert not (tmp_path / "b").exists()
    assert main([*base, "--trials", "3", "--out", str(tmp_path / "c")]) == 0
    done = optuna.load_study(study_name="s", storage=url).get_trials(states=(TrialState.COMPLETE,))
    assert len(done) == 3

"""The final round: a search's best few allocations re-scored on more fine-tune orders; the best
mean wins, the best start is always a finalist, and nothing changes when the round is off."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np
import pytest
import torch

from autoprune.errors import UsageError
from autoprune.graph.units import trace_units
from autoprune.models import build_model
from autoprune.quant.bits import BitAllocation
from autoprune.search.base import SearchResult, Trial
from autoprune.search.evaluator import EvaluatorConfig, MaskEvaluator
from autoprune.search.finalists import FinalRound, final_round, finalists
from autoprune.train.data import load_dataset


class Table:
    """An evaluator that looks scores up by the first keep (the trial's id), counting calls."""

    def __init__(self, scores: dict[int, float]) -> None:
        self.scores = scores
        self.calls: list[int] = []

    def __call__(self, keep: Sequence[int], bits: BitAllocation | None = None) -> float:
        self.calls.append(int(keep[0]))
        return self.scores[int(keep[0])]


def trial(i: int, score: float | None, source: str | None = None) -> Trial:
    return Trial(i, np.array([i, 1]), score, {"macs": 1.0}, source=source)


def result_of(trials: list[Trial]) -> SearchResult:
    best = max((t for t in trials if t.score is not None), key=lambda t: t.score or 0.0)
    return SearchResult(best.keep.copy(), best.score, trials, {"kept": True})


def test_finalists_are_the_k_best_distinct_trials_and_the_best_start() -> None:
    trials = [trial(0, 0.70, "uniform"), trial(1, 0.75, "global"), trial(2, 0.90),
              trial(3, 0.85), trial(4, 0.90), trial(5, None), trial(6, 0.80)]  # fmt: skip
    trials.append(Trial(7, np.array([2, 1]), 0.95, {}))  # the same keeps as trial 2
    chosen = finalists(trials, 3)
    assert [t.number for t in chosen] == [7, 4, 3, 1]  # 2 repeats 7; global is the best start
    assert [t.number for t in finalists(trials[2:], 2)] == [7, 4]  # no start: none added


def orders(*tables: Table) -> Callable[[int], Table]:
    return lambda i: tables[i]


def test_the_best_fresh_mean_wins_over_the_luckiest_single_score() -> None:
    # trial 2 won the search on a lucky fine-tune; on two fresh orders trial 3 is better
    trials = [trial(0, 0.70, "uniform"), trial(1, 0.80, "global"), trial(2, 0.90), trial(3, 0.85)]
    first = Table({2: 0.78, 3: 0.86, 1: 0.80})
    second = Table({2: 0.80, 3: 0.84, 1: 0.82})
    res = final_round(result_of(trials), orders(first, second), FinalRound(finalists=2, orders=2))
    assert res.keep.tolist() == [3, 1]
    assert res.score == pytest.approx(0.85)  # the fresh scores only, not the search's 0.85
    assert first.calls == second.calls == [2, 3, 1]  # each finalist once on each order
    info = res.info["final_round"]
    assert info["chosen"] == 3 and info["search_best"] == 2 and info["orders"] == 2
    assert [f["trial"] for f in info["finalists"]] == [2, 3, 1]
    assert [f["search_score"] for f in info["finalists"]] == [0.90, 0.85, 0.80]
    assert res.info["kept"] and res.trials == trials  # the search's own record stays


def test_the_score_that_made_a_finalist_is_left_out_of_its_mean() -> None:
    # by all three scores trial 2 would win (0.99, 0.80 -> 0.895 > 0.85); by the fresh one, 3
    trials = [trial(2, 0.99), trial(3, 0.85)]
    res = final_round(result_of(trials), orders(Table({2: 0.80, 3: 0.85})), FinalRound(2, 1))
    assert res.keep.tolist() == [3, 1] and res.score == pytest.approx(0.85)


def test_optuna_best_trial_names_the_winner() -> None:
    trials = [trial(0, 0.80, "uniform"), trial(1, 0.90)]
    found = result_of(trials)
    found.info["best_trial"] = 1
    res = final_round(found, orders(Table({0: 0.8, 1: 0.7})), FinalRound(1, 1))
    assert res.info["best_trial"] == 0 and res.info["final_round"]["search_best"] == 1


def test_the_best_start_wins_when_the_finds_were_noise() -> None:
    trials = [trial(0, 0.70, "uniform"), trial(1, 0.80, "global"), trial(2, 0.90)]
    res = final_round(result_of(trials), orders(Table({1: 0.81, 2: 0.70})), FinalRound(1, 1))
    assert res.keep.tolist() == [1, 1] and res.info["final_round"]["chosen"] == 1


def test_allocations_with_bits_are_rescored_with_their_bits() -> None:
    seen: list[BitAllocation | None] = []
    narrow = BitAllocation({"conv": (2,)}, {"conv": 8})
    wide = BitAllocation({"conv": (8,)}, {"conv": 8})

    def evaluate(keep: Sequence[int], bits: BitAllocation | None = None) -> float:
        seen.append(bits)
        return 0.9 if bits is wide else 0.5

    same_keep = [Trial(0, np.array([4, 1]), 0.95, {}, narrow),
                 Trial(1, np.array([4, 1]), 0.9, {}, wide)]  # fmt: skip
    res = final_round(result_of(same_keep), lambda i: evaluate, FinalRound(2, 1))
    assert seen == [narrow, wide]  # one keep, two widths: two finalists
    assert res.bits is wide and res.score == 0.9


def test_off_or_nothing_to_compare_changes_nothing() -> None:
    trials = [trial(0, 0.70, "uniform"), trial(1, 0.90)]
    res = result_of(trials)
    assert final_round(res, orders(Table({})), FinalRound(finalists=0)) is res
    alone = result_of([trial(0, 0.9, "uniform")])
    assert final_round(alone, orders(Table({})), FinalRound(finalists=3)) is alone


@pytest.mark.parametrize("kw", [{"finalists": -1}, {"orders": -2}, {"finalists": 2, "orders": 0},
                                {"finalists": 1.5}])  # fmt: skip
def test_bad_settings_are_usage_errors(kw: dict[str, object]) -> None:
    with pytest.raises(UsageError):
        FinalRound(**kw)  # type: ignore[arg-type]


def test_a_reordered_evaluator_fine_tunes_on_other_batches_and_keeps_its_scores() -> None:
    torch.manual_seed(0)
    size = (1, 28, 28)
    model = build_model("lenet5", num_classes=10, input_size=size)
    graph = trace_units(model, size, "channel", "lenet5")
    data = load_dataset("fake", input_size=size, limit=96)
    cfg = EvaluatorConfig(finetune_steps=3, finetune_lr=0.05, batch_size=16, bn_batches=2)
    ev = MaskEvaluator(model, graph, data.train, data.val, cfg)
    keep = [max(1, s // 2) for s in graph.sizes]
    before = ev.evaluate(keep)
    other = ev.reordered(5)
    assert other.cfg.seed == 5 and ev.cfg.seed == 0
    assert all(torch.equal(a, b) for a, b in zip(other.scores, ev.scores, strict=True))
    assert not torch.equal(other._train_batches[0][0], ev._train_batches[0][0])
    again = other.evaluate(keep)
    assert other.calls == 1 and ev.calls == 1 and len(ev.cache) == 1  # caches apart
    assert (again.accuracy, again.loss) != (before.accuracy, before.loss)
    assert ev.reordered(5).evaluate(keep) == again  # same seed, same score
    assert ev.evaluate(keep) == before


def test_the_cli_runs_the_final_round_and_exports_its_choice(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    import json

    from autoprune.cli.main import main

    base = ["search", "--model", "lenet5", "--dataset", "digits", "--input-size", "1x16x16",
            "--limit", "96", "--dense-epochs", "0", "--budget-flops", "30%", "--no-prune",
            "--quiet", "--trials", "8", "--finetune-steps", "2"]  # fmt: skip
    out = tmp_path / "run"
    assert main([*base, "--finalists", "3", "--final-orders", "2", "--out", str(out)]) == 0
    metrics = json.loads((out / "metrics.json").read_text())
    info = metrics["search"]["final_round"]
    assert info["orders"] == 2 and 3 <= len(info["finalists"]) <= 4
    assert any(f["source"] is None for f in info["finalists"])  # the sampler's own finds too
    assert all(len(f["scores"]) == 2 for f in info["finalists"])
    chosen = next(f for f in info["finalists"] if f["trial"] == info["chosen"])
    assert chosen["mean"] == max(f["mean"] for f in info["finalists"])
    assert metrics["search"]["best_trial"] == info["chosen"]
    trials = {t["number"]: t["keep"] for t in json.loads((out / "trials.json").read_text())}
    units = json.loads((out / "allocation.json").read_text())["units"]
    assert [u["keep"] for u in units] == trials[info["chosen"]]
    assert metrics["search"]["proxy_accuracy"] == pytest.approx(chosen["mean"])
    refused = {
        "--final-orders": [*base, "--finalists", "2", "--final-orders", "0"],
        "add --finalists": [*base, "--final-orders", "2"],
        "scores none": [*base[:-4], "--method", "uniform", "--finalists", "2"],
        "--multi-objective": [*base, "--multi-objective", "--finalists", "2"],
    }
    for said, argv in refused.items():
        capsys.readouterr()
        bad = tmp_path / "bad"
        assert main([*argv, "--out", str(bad)]) == 2, said
        err = capsys.readouterr().err.strip()
        assert "\n" not in err and said in err and not bad.exists(), err


def test_a_pareto_pick_is_left_as_it_is() -> None:
    trials = [trial(0, 0.70, "uniform"), trial(1, 0.90)]
    res = result_of(trials)
    res.info["pareto"] = [0, 1]  # optuna --multi-objective chose from its front on purpose
    assert final_round(res, orders(Table({0: 0.9, 1: 0.1})), FinalRound(finalists=2)) is res

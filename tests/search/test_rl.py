"""RL search: the LayerBudget env passes both env checkers, is seeded, always meets every budget."""

from __future__ import annotations

import json
import shlex
import warnings
from collections.abc import Callable, Iterator
from functools import cache
from pathlib import Path

import gymnasium
import numpy as np
import pytest
from gymnasium.utils.env_checker import check_env as gym_check_env
from hypothesis import given, settings
from hypothesis import strategies as st
from stable_baselines3 import TD3
from stable_baselines3.common.env_checker import check_env as sb3_check_env

from autoprune.cli.main import main
from autoprune.cost.model import CostModel
from autoprune.cost.projection import ProjectionConfig, min_keeps, project
from autoprune.envs import ENV_IDS, LAYER_BUDGET, LayerBudgetEnv
from autoprune.errors import BudgetError, UnknownNameError, UsageError
from autoprune.graph.units import trace_units
from autoprune.models import build_model
from autoprune.search import SEARCH_METHODS, SearchProblem
from autoprune.search.rl_agents import DecayingTruncatedNormal, EpisodeCreditBuffer, RewardBaseline
from autoprune.search.uniform import uniform_trial

SIZES = {"lenet5": (1, 28, 28), "resnet20": (3, 32, 32)}


@cache
def cost_model(name: str = "lenet5", granularity: str = "channel") -> CostModel:
    return CostModel(trace_units(build_model(name, num_classes=10), SIZES[name], granularity, name))  # type: ignore[arg-type]


def score(cm: CostModel) -> Callable[[np.ndarray], float]:
    """A cheap evaluator: more kept scores higher; unequal unit weights make an optimum."""
    weights = np.linspace(1.0, 0.2, len(cm.sizes))

    def evaluate(keep: np.ndarray, bits: object = None) -> float:  # KernelBits passes bits too
        return float(np.exp(weights @ np.log(np.asarray(keep) / cm.sizes) / len(keep)))

    return evaluate


def limits_of(cm: CostModel, fractions: dict[str, float]) -> dict[str, float]:
    """Budgets the given fraction of the way from the smallest feasible model to the dense one."""
    lo = min_keeps(cm.sizes, ProjectionConfig())
    return {
        m: cm.metric(m, lo) + f * (cm.metric(m, cm.sizes) - cm.metric(m, lo))
        for m, f in fractions.items()
    }


def make_env(name: str = "lenet5", granularity: str = "channel", **kwargs: object) -> gymnasium.Env:
    cm = cost_model(name, granularity)
    limits = kwargs.pop("limits", None) or limits_of(cm, {"macs": 0.1, "params": 0.3})
    return gymnasium.make(LAYER_BUDGET, cost_model=cm, limits=limits, evaluate=score(cm), **kwargs)


def episode(env: gymnasium.Env, actions: Iterator[float], seed: int | None = None) -> list[tuple]:
    obs, _ = env.reset(seed=seed)
    steps: list[tuple] = [(obs.tolist(),)]
    done = False
    while not done:
        obs, reward, done, truncated, info = env.step(np.array([next(actions)], dtype=np.float32))
        assert not truncated
        steps.append((obs.tolist(), reward, {k: np.asarray(v).tolist() for k, v in info.items()}))
    return steps


@pytest.mark.parametrize("env_id", ENV_IDS)
@pytest.mark.parametrize("granularity", ["channel", "weight"])
def test_every_registered_env_passes_both_checkers(env_id: str, granularity: str) -> None:
    cm = cost_model("lenet5", granularity)
    env = gymnasium.make(
        env_id, cost_model=cm, limits=limits_of(cm, {"macs": 0.2}), evaluate=score(cm)
    )
    with warnings.catch_warnings():
        # The checkers only warn about some defects (an observation outside its space): fail.
        warnings.simplefilter("error")
        # Both checkers recommend a [-1, 1] action space; ours is a keep ratio in [min_ratio, 1].
        warnings.filterwarnings("ignore", message=".*symmetric and normalized.*")
        gym_check_env(env.unwrapped, skip_render_check=True)
        sb3_check_env(env.unwrapped, warn=True)


def test_seeded_reset_gives_identical_episodes() -> None:
    env = make_env("resnet20")
    runs = []
    for _ in range(2):
        env.action_space.seed(7)
        runs.append(episode(env, iter(lambda: float(env.action_space.sample()[0]), None), seed=3))
    assert runs[0] == runs[1]
    assert len(runs[0]) == len(cost_model("resnet20").sizes) + 1


@settings(max_examples=40, deadline=None)
@given(
    name=st.sampled_from(sorted(SIZES)),
    granularity=st.sampled_from(["channel", "weight"]),
    fractions=st.dictionaries(
        st.sampled_from(["macs", "params", "size", "weights"]),
        st.floats(0.0, 0.9),
        min_size=1,
        max_size=4,
    ),
    actions=st.lists(
        st.one_of(st.floats(-1.0, 2.0), st.just(float("nan"))), min_size=1, max_size=8
    ),
    project_final=st.booleans(),
)
def test_every_finished_episode_meets_every_budget(
    name: str,
    granularity: str,
    fractions: dict[str, float],
    actions: list[float],
    project_final: bool,
) -> None:
    cm = cost_model(name, granularity)
    limits = limits_of(cm, fractions)
    env = LayerBudgetEnv(cm, limits, score(cm), project_final=project_final)
    # The drawn actions repeat over the units; out-of-range and NaN ones test the clipping.
    steps = episode(env, iter(actions * len(cm.sizes)))
    info = steps[-1][2]
    keep = np.array(info["allocation"])
    assert (keep >= min_keeps(cm.sizes, ProjectionConfig())).all() and (keep <= cm.sizes).all()
    for metric, limit in limits.items():
        assert cm.metric(metric, keep) <= limit
        assert info["costs"][metric] == cm.metric(metric, keep)
    proposed = np.array(info["proposed"])
    assert all(s[2]["keep"] <= s[2]["wall"] for s in steps[1:])
    expected = project(proposed / cm.sizes, cm, limits) if project_final else proposed
    assert keep.tolist() == expected.tolist()


def test_greedy_actions_take_the_wall_and_leave_no_slack() -> None:
    cm = cost_model("resnet20")
    limits = limits_of(cm, {"macs": 0.1, "params": 0.2})
    env = LayerBudgetEnv(cm, limits, score(cm), project_final=False)
    steps = episode(env, iter([1.0] * len(cm.sizes)))
    walls = [s[2]["wall"] for s in steps[1:]]
    keep = np.array(steps[-1][2]["allocation"])
    assert keep.tolist() == walls  # keep everything allowed: each unit takes its wall
    assert any(w < size for w, size in zip(walls, cm.sizes, strict=True))
    for u in np.flatnonzero(keep < cm.sizes):  # and no unit can grow without breaking a budget
        bumped = keep.copy()
        bumped[u] += 1
        assert any(cm.metric(m, bumped) > lim for m, lim in limits.items())


def test_env_rejects_bad_input() -> None:
    cm = cost_model()
    with pytest.raises(BudgetError, match="smallest model"):
        LayerBudgetEnv(cm, {"macs": 1.0}, score(cm))
    with pytest.raises(BudgetError, match="no cost model for budget"):
        LayerBudgetEnv(cm, {"latency": 1.0}, score(cm))
    with pytest.raises(UsageError, match="unknown reward 'acc'"):
        LayerBudgetEnv(cm, limits_of(cm, {"macs": 0.5}), score(cm), reward="acc")  # type: ignore[arg-type]
    env = LayerBudgetEnv(cm, limits_of(cm, {"macs": 0.5}), score(cm))
    episode(env, iter([0.5] * 3))
    with pytest.raises(RuntimeError, match="call reset"):
        env.step(np.array([0.5], dtype=np.float32))


def test_amc_reward_is_minus_error_times_log_macs() -> None:
    env = make_env(reward="amc")
    info = episode(env, iter([0.5] * 3))[-1]
    assert info[1] == pytest.approx(-(1 - info[2]["accuracy"]) * np.log(info[2]["costs"]["macs"]))


def problem(tmp: Path | None = None, seed: int = 0) -> SearchProblem:
    cm = cost_model()
    return SearchProblem(
        cm, limits_of(cm, {"macs": 0.1, "params": 0.3}), score(cm), seed=seed, workdir=tmp
    )


@pytest.mark.parametrize("agent", ["ddpg", "td3", "sac"])
def test_rl_search_keeps_the_best_episode_and_checkpoints_the_agent(
    agent: str, tmp_path: Path
) -> None:
    p = problem(tmp_path)
    rl = SEARCH_METHODS.get("rl")(episodes=12, agent=agent, checkpoint_every=5, warm_start=False)
    result = rl.search(p)
    assert len(result.trials) == 13  # every episode, then the trained policy's greedy one
    assert result.score == max(t.score for t in result.trials)
    assert result.info["best_episode"] == next(
        t.number for t in result.trials if t.score == result.score
    )
    for t in result.trials:
        assert all(p.cost_model.metric(m, t.keep) <= lim for m, lim in p.limits.items())
        assert t.score == p.evaluate(t.keep)
    assert (tmp_path / result.info["checkpoint"]).is_file()


def test_rl_search_keeps_uniform_when_no_episode_beats_it() -> None:
    p = problem()
    uniform = uniform_trial(p)

    def near_uniform(keep: np.ndarray, bits: object = None) -> float:
        return -float(np.abs(np.asarray(keep) - uniform.keep).sum())

    p.evaluate = near_uniform
    result = SEARCH_METHODS.get("rl")(episodes=6).search(p)
    assert len(result.trials) == 8  # episodes, the greedy one, then uniform
    assert result.keep.tolist() == uniform.keep.tolist() and result.score == 0.0
    episodes_best = max(t.score for t in result.trials[:-1])
    if episodes_best < 0:  # no episode found it by itself
        assert result.info["best_episode"] is None
    else:  # an episode found it: that episode is named, not the warm start
        assert result.trials[result.info["best_episode"]].score == 0.0
    off = SEARCH_METHODS.get("rl")(episodes=6, warm_start=False).search(p)
    assert len(off.trials) == 7 and off.score == episodes_best


def test_rl_search_is_reproducible_with_a_seed() -> None:
    method = SEARCH_METHODS.get("rl")
    a, b, c = (method(episodes=10).search(problem(seed=s)) for s in (4, 4, 5))
    assert [t.keep.tolist() for t in a.trials] == [t.keep.tolist() for t in b.trials]
    assert [t.keep.tolist() for t in a.trials] != [t.keep.tolist() for t in c.trials]


def test_rl_search_options_are_checked() -> None:
    method = SEARCH_METHODS.get("rl")
    with pytest.raises(UnknownNameError, match="did you mean 'ddpg'"):
        method(agent="dpg")
    with pytest.raises(UsageError, match="episodes must be >= 1"):
        method(episodes=0)
    with pytest.raises(UsageError, match="warmup must be between 0 and"):
        method(episodes=10, warmup=20)
    cm = cost_model()
    with pytest.raises(UsageError, match="needs an evaluator"):
        method(episodes=2).search(SearchProblem(cm, limits_of(cm, {"macs": 0.5})))


def test_noise_is_truncated_and_decays_after_the_warmup() -> None:
    noise = DecayingTruncatedNormal(1.0, decay=0.5, warmup=2, shape=(1000,), seed=0)
    assert np.abs(noise()).max() <= 2.0
    sigmas = []
    for _ in range(4):
        sigmas.append(noise.sigma)
        noise.reset()
    assert sigmas == [1.0, 1.0, 1.0, 0.5]


def test_baseline_centres_and_scales_episode_rewards() -> None:
    env = RewardBaseline(make_env(), alpha=0.5)
    steps = [episode(env, iter([ratio] * 3))[-1] for ratio in (0.2, 1.0)]
    rewards = [s[1] for s in steps]
    raws = [s[2]["raw_reward"] for s in steps]
    assert raws[1] > raws[0]
    assert rewards[0] == 0.0  # the first episode is its own baseline
    # alpha 0.5: the baseline moves halfway and the running std is half the jump, so +1 exactly
    assert rewards[1] == pytest.approx(1.0)


def test_credit_buffer_gives_every_step_the_episode_reward() -> None:
    env = make_env()
    buf = EpisodeCreditBuffer(16, env.observation_space, env.action_space, device="cpu", n_envs=1)
    obs = np.zeros((1, *env.observation_space.shape), dtype=np.float32)
    for reward, done in ((0.0, False), (0.0, False), (0.7, True), (0.0, False)):
        buf.add(obs, obs, np.zeros((1, 1)), np.array([reward]), np.array([done]), [{}])
    assert buf.rewards[:4, 0].tolist() == pytest.approx([0.7, 0.7, 0.7, 0.0])


@pytest.mark.slow
def test_cli_search_rl_end_to_end(tmp_path: Path) -> None:
    out = tmp_path / "run"
    flags = "--budget-flops 20% --method rl --episodes 6 --agent td3 --dense-epochs 0 --no-prune"
    argv = ["search", "--model", "lenet5", "--dataset", "digits", *shlex.split(flags)]
    argv += ["--quiet", "--out", str(out)]
    assert main(argv) == 0
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["search"]["agent"] == "td3" and metrics["search"]["episodes"] == 6
    trials = json.loads((out / "trials.json").read_text())
    starts = [t for t in trials if t.get("source") in ("uniform", "global", "lamp", "erk")]
    assert "uniform" in {t["source"] for t in starts}  # rl scores the baselines it starts from
    assert len(trials) - len(starts) == 6 + 1  # the episodes, then the greedy one
    assert json.loads((out / "allocation.json").read_text())["provenance"]["method"] == "rl"
    agent = TD3.load(out / "agent" / "td3.zip", device="cpu")
    assert agent.action_space.shape == (1,)
    assert main([*argv[:-1], str(tmp_path / "bad"), "--agent", "dqn"]) == 2


def test_search_benchmark_reports_rl_against_uniform(tmp_path: Path) -> None:
    from autoprune.bench.search_report import checks, render_readme

    row = {"proxy_accuracy": 0.9, "search_s": 2.0, "macs": 1e5, "dense_macs": 2.29e6, "keep": [3]}
    rows = [
        {**row, "method": "uniform", "budget": "10%", "test_accuracy": 0.95, "trials": 1},
        {**row, "method": "rl", "budget": "10%", "test_accuracy": 0.96, "trials": 151, "keep": [4]},
    ]
    rows[1]["best_episode"] = 42
    recipe = {"budgets": ["10%"], "backend": "reweighted", "epochs": 1, "finetune_epochs": 1,
              "lr": 0.01, "seed": 0, "trials": 4, "episodes": 150,
              "evaluator": {"val_limit": 100, "finetune_steps": 2}}  # fmt: skip
    points = [{"keep": [i], "proxy_accuracy": i / 10, "test_accuracy": i / 10} for i in range(3)]
    dense = {"checkpoint": "d.pt", "epochs": 1, "test_accuracy": 0.99, "macs": 2.29e6}
    corr = {"budget": "10%", "n": 3, "spearman": 1.0, "points": points}
    summary = {"benchmark": "b", "dataset": "mnist", "command": "c", "rows": rows, "recipe": recipe,
               "dense": dense, "correlation": corr}  # fmt: skip
    assert checks(summary)[0] == (
        "- 10% MACs: rl beats uniform on final test accuracy (96.00% vs 95.00%, +1.00 points)"
    )
    text = render_readme(summary, tmp_path)
    assert (
        "| rl | 90.00% | 96.00% | 2.0 s | 151 (best: #42) |" in text and "rl 150 episodes" in text
    )

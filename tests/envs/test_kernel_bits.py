"""KernelBits env and `rl --bits`: env checkers, seeded episodes, every budget met with bits."""

from __future__ import annotations

import warnings
from collections.abc import Callable, Iterator
from functools import cache

import gymnasium
import numpy as np
import pytest
from gymnasium.utils.env_checker import check_env as gym_check_env
from hypothesis import given, settings
from hypothesis import strategies as st
from stable_baselines3.common.env_checker import check_env as sb3_check_env

from autoprune.cost.kernel_counts import KernelCounts, priced
from autoprune.cost.model import CostModel
from autoprune.cost.projection import ProjectionConfig, min_keeps, project
from autoprune.envs import KERNEL_BITS, KernelBitsEnv
from autoprune.envs.kernel_bits import spread_bits
from autoprune.errors import BudgetError, UsageError
from autoprune.graph.importance import score_units
from autoprune.graph.units import trace_units
from autoprune.models import build_model
from autoprune.quant.bits import BIT_CHOICES, BitAllocation
from autoprune.search import SEARCH_METHODS, SearchProblem
from autoprune.search.bit_space import BitSpace, smallest_bits
from autoprune.search.testing import SyntheticEvaluator

SIZES = {"lenet5": (1, 28, 28), "resnet20": (3, 32, 32)}
SPACE = BitSpace(act=(4, 8))


@cache
def cost_model(name: str = "lenet5", granularity: str = "channel") -> CostModel:
    model = build_model(name, num_classes=10, input_size=SIZES[name])
    return CostModel(trace_units(model, SIZES[name], granularity, name))  # type: ignore[arg-type]


@cache
def exact_counts(name: str = "lenet5", granularity: str = "channel") -> KernelCounts:
    model = build_model(name, num_classes=10, input_size=SIZES[name])
    return KernelCounts(
        cost_model(name, granularity), score_units(model, cost_model(name, granularity).graph.units)
    )


def limits_of(cm: CostModel, fractions: dict[str, float]) -> dict[str, float]:
    """Budgets a share of the way from the smallest model at the smallest widths to the dense one
    at 8 bits (sizes and BOPs of a float model would make every budget trivial)."""
    lo = min_keeps(cm.sizes, ProjectionConfig())
    small = cm.with_bits(smallest_bits(cm.graph, SPACE))
    wide = cm.with_bits(BitAllocation.uniform(cm.graph, 8, 8))
    return {
        m: small.metric(m, lo) + f * (wide.metric(m, cm.sizes) - small.metric(m, lo))
        for m, f in fractions.items()
    }


def make_env(name: str = "lenet5", granularity: str = "channel", **kwargs: object) -> KernelBitsEnv:
    cm = cost_model(name, granularity)
    limits = kwargs.pop("limits", None) or limits_of(cm, {"size": 0.05, "macs": 0.3})
    evaluate = SyntheticEvaluator(cm.sizes)
    return KernelBitsEnv(
        cm,
        limits,
        evaluate,
        weight_bits=SPACE.weight,
        act_bits=SPACE.act,
        **kwargs,  # type: ignore[arg-type]
    )


def forever(action: Callable[[], np.ndarray]) -> Iterator[np.ndarray]:
    while True:
        yield action()


def episode(env: gymnasium.Env, actions: Iterator[np.ndarray], seed: int | None = None) -> list:
    obs, _ = env.reset(seed=seed)
    steps: list = [obs.tolist()]
    done = False
    while not done:
        obs, reward, done, truncated, info = env.step(next(actions).astype(np.float32))
        assert not truncated
        steps.append((obs.tolist(), reward, info))
    return steps


def assert_meets(
    cm: CostModel,
    limits: dict[str, float],
    keep: np.ndarray,
    bits: BitAllocation,
    counts: KernelCounts | None = None,
) -> None:
    model = cm.with_bits(bits) if counts is None else priced(cm, bits, counts)
    for metric, limit in limits.items():
        assert model.metric(metric, keep) <= limit, (metric, model.metric(metric, keep), limit)
    assert (keep >= min_keeps(cm.sizes, ProjectionConfig())).all() and (keep <= cm.sizes).all()
    for lay in cm.graph.layers:
        assert len(bits.weight[lay.name]) == lay.out_channels
        assert set(bits.weight[lay.name]) <= set(SPACE.weight) and bits.act[lay.name] in SPACE.act


@pytest.mark.parametrize("granularity", ["channel", "weight"])
def test_kernel_bits_passes_both_checkers(granularity: str) -> None:
    env = gymnasium.make(
        KERNEL_BITS,
        cost_model=cost_model("lenet5", granularity),
        limits=limits_of(cost_model("lenet5", granularity), {"size": 0.05, "bops": 0.05}),
        evaluate=SyntheticEvaluator(cost_model("lenet5", granularity).sizes),
        act_bits=(4, 8),
    )
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # the checkers only warn about some defects: fail
        warnings.filterwarnings("ignore", message=".*symmetric and normalized.*")
        gym_check_env(env.unwrapped, skip_render_check=True)
        sb3_check_env(env.unwrapped, warn=True)


def test_seeded_reset_gives_identical_episodes() -> None:
    env = make_env("resnet20", limits=limits_of(cost_model("resnet20"), {"size": 0.05}))
    runs = []
    for _ in range(2):
        env.action_space.seed(7)
        steps = episode(env, forever(env.action_space.sample), seed=3)
        last = steps[-1][2]
        runs.append((steps[:-1], last["allocation"].tolist(), last["bits"], last["accuracy"]))
    assert runs[0] == runs[1]
    assert len(runs[0][0]) == len(cost_model("resnet20").graph.layers)  # reset + one step per layer


@settings(max_examples=25, deadline=None)
@given(
    granularity=st.sampled_from(["channel", "weight"]),
    fractions=st.dictionaries(
        st.sampled_from(["macs", "params", "size", "bops"]),
        st.floats(0.0, 0.9),
        min_size=1,
        max_size=4,
    ),
    actions=st.lists(
        st.lists(st.one_of(st.floats(-1.0, 2.0), st.just(float("nan"))), min_size=4, max_size=4),
        min_size=1,
        max_size=5,
    ),
    project_final=st.booleans(),
    exact=st.booleans(),
)
def test_every_finished_episode_meets_every_budget(
    granularity: str,
    fractions: dict[str, float],
    actions: list[list[float]],
    project_final: bool,
    exact: bool,
) -> None:
    cm = cost_model("lenet5", granularity)
    limits = limits_of(cm, fractions)
    counts = exact_counts("lenet5", granularity) if exact else None
    env = make_env(
        "lenet5", granularity, limits=limits, project_final=project_final, kernel_counts=counts
    )
    # The drawn actions repeat over the layers; out-of-range and NaN ones test the clipping.
    steps = episode(env, iter([np.array(a) for a in actions] * len(cm.graph.layers)))
    info = steps[-1][2]
    keep, bits = np.asarray(info["allocation"]), info["bits"]
    model = cm.with_bits(bits) if counts is None else priced(cm, bits, counts)
    assert_meets(cm, limits, keep, bits, counts)
    assert set(limits) <= set(info["costs"])
    assert info["costs"] == {m: model.metric(m, keep) for m in info["costs"]}
    proposed = np.asarray(info["proposed"])
    assert_meets(cm, limits, proposed, bits, counts)  # the env's own walls, before projection
    expected = project(proposed / cm.sizes, model, limits) if project_final else proposed
    assert keep.tolist() == expected.tolist()


def test_the_low_level_action_gives_important_kernels_more_bits() -> None:
    cm = cost_model()
    importance = {lay.name: np.arange(lay.out_channels, dtype=float) for lay in cm.graph.layers}
    env = make_env(importance=importance, limits={"macs": cm.metric("macs", cm.sizes) * 0.5})
    # mean weight bits halfway, full spread: widths rise with importance, the mean held
    steps = episode(env, forever(lambda: np.array([1.0, 1.0, 0.5, 1.0])))
    bits = steps[-1][2]["bits"]
    for lay in cm.graph.layers:
        widths = np.array(bits.weight[lay.name])
        assert (np.diff(widths) >= 0).all() and widths[-1] > widths[0]
        assert widths.mean() <= 5.0 + 1e-9


def test_env_rejects_bad_input() -> None:
    cm = cost_model()
    with pytest.raises(BudgetError, match="smallest widths"):
        KernelBitsEnv(cm, {"size": 10.0}, SyntheticEvaluator(cm.sizes))
    with pytest.raises(UsageError, match="one value per kernel"):
        make_env(importance={lay.name: np.ones(3) for lay in cm.graph.layers})
    env = make_env()
    episode(env, forever(lambda: np.full(4, 0.5)))
    with pytest.raises(RuntimeError, match="call reset"):
        env.step(np.full(4, 0.5, dtype=np.float32))


@settings(max_examples=60, deadline=None)
@given(
    importance=st.lists(st.floats(0.0, 10.0), min_size=1, max_size=40),
    mean=st.floats(2.0, 8.0),
    spread=st.floats(0.0, 1.0),
)
def test_spread_bits_holds_the_mean_and_favours_important_kernels(
    importance: list[float], mean: float, spread: float
) -> None:
    bits = np.array(spread_bits(np.array(importance), mean, spread, BIT_CHOICES))
    assert set(bits.tolist()) <= set(BIT_CHOICES)
    assert bits.mean() <= mean + 1e-9
    assert bits.mean() > mean - 2  # nothing given away beyond the widest step between choices
    order = np.argsort(np.array(importance), kind="stable")
    assert (np.diff(bits[order]) >= 0).all()  # a more important kernel never gets fewer bits


def test_spread_bits_without_spread_is_as_even_as_the_mean_allows() -> None:
    bits = spread_bits(np.arange(10.0), 4.5, 0.0, BIT_CHOICES)
    assert sorted(bits) == [4] * 5 + [5] * 5 and bits[-1] == 5


# --- rl --bits ---------------------------------------------------------------------------------
def synthetic_problem(fractions: dict[str, float]) -> SearchProblem:
    cm = cost_model()
    return SearchProblem(cm, limits_of(cm, fractions), SyntheticEvaluator(cm.sizes), bits=SPACE)


@pytest.mark.parametrize("fractions", [{"size": 0.02}, {"size": 0.05, "bops": 0.03, "macs": 0.3}])
def test_rl_search_with_bits_meets_every_budget(fractions: dict[str, float]) -> None:
    problem = synthetic_problem(fractions)
    result = SEARCH_METHODS.get("rl")(episodes=6, warmup=3).search(problem)
    assert result.bits is not None and result.info["env"] == KERNEL_BITS
    assert len(result.trials) == 8  # six episodes, the greedy one, then the uniform allocation
    for trial in result.trials:
        assert trial.bits is not None
        assert_meets(problem.cost_model, dict(problem.limits), trial.keep, trial.bits)
    best = max(result.trials, key=lambda t: (t.score, -t.number))
    assert result.score == best.score and result.bits == best.bits

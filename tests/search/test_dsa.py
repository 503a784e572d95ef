"""dsa: differentiable costs equal the cost model, gradients reach every ratio, budgets hold, and a
sensitive layer keeps more than an insensitive one of the same cost."""

from __future__ import annotations

import copy
import json
from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn
from torch.utils.data import TensorDataset

from autoprune.cli.main import main
from autoprune.cost.measure import count_macs
from autoprune.cost.model import BASE_METRICS, CostModel
from autoprune.cost.torch_model import TorchCostModel
from autoprune.errors import UsageError
from autoprune.export.program import load_program
from autoprune.graph.units import trace_units
from autoprune.models import build_model
from autoprune.search import SEARCH_METHODS, SearchProblem
from autoprune.search.base import SearchContext
from autoprune.search.dsa import DSA
from autoprune.search.dsa_masks import (
    SoftMasks,
    keep_probabilities,
    normalised_ranks,
    straight_through,
)


@pytest.mark.parametrize(
    ("name", "size", "granularity"),
    [("lenet5", (1, 28, 28), "channel"), ("resnet20", (3, 32, 32), "channel"),
     ("lenet5", (1, 28, 28), "weight"),
     pytest.param("mobilenet_v2", (3, 32, 32), "channel", marks=pytest.mark.slow)],  # depthwise
)  # fmt: skip
def test_torch_costs_equal_the_cost_model_at_integer_keeps(
    name: str, size: tuple[int, int, int], granularity: str
) -> None:
    model = build_model(name, num_classes=10, input_size=size)
    cm = CostModel(trace_units(model, size, granularity, name), weight_bits=8)  # type: ignore[arg-type]
    tc = TorchCostModel(cm)
    rng = np.random.default_rng(0)
    for keep in (cm.dense_keep, np.ones_like(cm.sizes), rng.integers(1, cm.sizes + 1)):
        want = cm.costs(keep).as_dict()
        got = tc.costs(torch.as_tensor(keep, dtype=torch.float64))
        for metric in BASE_METRICS:
            assert float(got[metric]) == pytest.approx(want[metric], rel=1e-12), metric


def test_a_metric_without_closed_form_is_exact_at_its_anchor_and_linear_around_it() -> None:
    cm = CostModel(trace_units(build_model("lenet5"), (1, 28, 28), "channel", "lenet5"))
    cm.register_metric("fake_latency", lambda k: float(np.sqrt(cm.costs(k).macs)))
    tc = TorchCostModel(cm)
    anchor = cm.sizes // 2
    keep = torch.as_tensor(anchor, dtype=torch.float64)
    assert float(tc.metric("fake_latency", keep, anchor)) == pytest.approx(
        cm.metric("fake_latency", anchor)
    )
    bumped = anchor.copy()
    bumped[0] += 1
    assert float(
        tc.metric("fake_latency", keep + torch.eye(len(anchor))[0].double(), anchor)
    ) == pytest.approx(cm.metric("fake_latency", bumped))
    with pytest.raises(KeyError, match="anchor"):
        tc.metric("fake_latency", keep)


@pytest.mark.parametrize("ratio", [0.05, 0.3, 0.77, 1.0])
def test_keep_probabilities_average_to_the_ratio_and_move_with_it(ratio: float) -> None:
    ranks = normalised_ranks(torch.randn(37, generator=torch.Generator().manual_seed(0)))
    alpha = torch.tensor(ratio, dtype=torch.float64, requires_grad=True)
    p = keep_probabilities(ranks, alpha, temperature=0.05)
    assert float(p.detach().mean()) == pytest.approx(min(ratio, 1 - 1e-9), abs=1e-9)
    p.sum().backward()
    assert float(alpha.grad) == pytest.approx(37.0)  # d(sum p) / d ratio = n, as mean(p) = ratio
    # More important elements keep with higher probability.
    order = torch.argsort(ranks)
    assert (p.detach()[order].diff() >= -1e-12).all()


def _lenet_context(n: int = 64) -> tuple[nn.Module, SearchContext, CostModel]:
    torch.manual_seed(0)
    model = build_model("lenet5")
    graph = trace_units(model, (1, 28, 28), "channel", "lenet5")
    data = TensorDataset(torch.randn(n, 1, 28, 28), torch.randint(0, 10, (n,)))
    return model, SearchContext(model, graph, data, data), CostModel(graph)


def test_gradients_reach_every_keep_ratio() -> None:
    model, ctx, cm = _lenet_context()
    soft = SoftMasks(model, ctx.graph)
    alpha = torch.full((len(cm.sizes),), 0.4, dtype=torch.float64, requires_grad=True)
    ranks = [
        normalised_ranks(torch.rand(n, generator=torch.Generator().manual_seed(int(n))))
        for n in cm.sizes
    ]
    probs = [keep_probabilities(r, alpha[u], 0.1) for u, r in enumerate(ranks)]
    soft.set([straight_through(p, sample=True) for p in probs])
    x, y = ctx.train.tensors  # type: ignore[attr-defined]
    nn.functional.cross_entropy(model(x), y).backward()
    task_grad = alpha.grad.clone()
    assert torch.isfinite(task_grad).all() and (task_grad != 0).all()
    alpha.grad = None
    TorchCostModel(cm).metric(
        "macs", alpha * torch.as_tensor(cm.sizes, dtype=torch.float64)
    ).backward()
    assert (alpha.grad > 0).all()  # keeping more of any unit costs MACs
    soft.remove()
    assert not model._forward_hooks and all(not m._forward_hooks for m in model.modules())


def test_projected_result_meets_every_budget_and_leaves_the_model_alone() -> None:
    model, ctx, cm = _lenet_context()
    before = copy.deepcopy(model.state_dict())
    dense = cm.costs(cm.dense_keep)
    limits = {"macs": 0.1 * dense.macs, "params": 0.05 * dense.params}
    scored = []
    problem = SearchProblem(cm, limits, evaluate=lambda k: scored.append(k) or 0.5, context=ctx)
    result = SEARCH_METHODS.get("dsa")(steps=8, batch_size=16).search(problem)
    for metric, limit in limits.items():
        assert cm.metric(metric, result.keep) <= limit
    # the starts (uniform, global, lamp) are scored, then dsa's own result; among equal scores
    # dsa keeps its own
    assert len(scored) == 4 and result.score == 0.5 and not result.info["returned_start"]
    assert len(result.info["ratios"]) == len(cm.sizes) and result.info["history"]
    for key, value in model.state_dict().items():
        assert torch.equal(value, before[key]), key
    assert all(not m._forward_hooks for m in model.modules())


def test_weight_granularity_runs_through_parametrizations() -> None:
    torch.manual_seed(0)
    model = build_model("lenet5")
    graph = trace_units(model, (1, 28, 28), "weight", "lenet5")
    cm = CostModel(graph)
    data = TensorDataset(torch.randn(32, 1, 28, 28), torch.randint(0, 10, (32,)))
    limit = {"weights": 0.1 * cm.costs(cm.dense_keep).weights}
    problem = SearchProblem(cm, limit, context=SearchContext(model, graph, data, data))
    result = DSA(steps=4, batch_size=16, train_weights=False).search(problem)
    assert cm.metric("weights", result.keep) <= limit["weights"]
    assert not any(hasattr(m, "parametrizations") for m in model.modules())


def test_dsa_refuses_a_problem_without_model_and_bad_options() -> None:
    cm = CostModel(trace_units(build_model("lenet5"), (1, 28, 28), "channel", "lenet5"))
    with pytest.raises(UsageError, match="context"):
        DSA(steps=2).search(SearchProblem(cm, {"macs": 1e6}))
    with pytest.raises(UsageError, match="steps"):
        DSA(steps=0)
    with pytest.raises(UsageError, match="temperature"):
        DSA(temperature=-1.0)


class TwoBranches(nn.Module):
    """Two branches of equal cost concatenated into a head; only branch `a` reaches the output."""

    def __init__(self) -> None:
        super().__init__()
        self.a, self.b, self.head = nn.Linear(12, 16), nn.Linear(12, 16), nn.Linear(32, 4)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(torch.cat([torch.relu(self.a(x)), torch.relu(self.b(x))], dim=1))


def _two_branches(channel_dropout: bool) -> tuple[TwoBranches, torch.Tensor, torch.Tensor]:
    torch.manual_seed(0)
    x = torch.randn(512, 12)
    y = (x @ torch.randn(12, 4)).argmax(1)
    model = TwoBranches()
    with torch.no_grad():
        model.head.weight[:, 16:] = 0.0  # branch b is deliberately useless: nothing reads it
    keep_b_unread = torch.cat([torch.ones(4, 16), torch.zeros(4, 16)], 1)
    model.head.weight.register_hook(lambda g: g * keep_b_unread)
    opt = torch.optim.Adam(model.parameters(), lr=0.02)
    for _ in range(150):
        opt.zero_grad()
        hidden = torch.cat([torch.relu(model.a(x)), torch.relu(model.b(x))], dim=1)
        if channel_dropout:  # a net that degrades gracefully as channels go, as trained nets do
            hidden = hidden * (torch.rand(1, 32) < 0.5)
        nn.functional.cross_entropy(model.head(hidden), y).backward()
        opt.step()
    return model, x, y


@pytest.mark.parametrize(
    ("channel_dropout", "options"),
    [(True, {}),
     # Without dropout, half of branch a gives a loss above chance: far from linear in the masks,
     # where the straight-through estimate from sampled masks is biased; expected masks are not.
     (False, {"sample": False})],
)  # fmt: skip
def test_the_sensitive_branch_keeps_more_than_the_insensitive_one(
    channel_dropout: bool, options: dict[str, bool]
) -> None:
    model, x, y = _two_branches(channel_dropout)
    graph = trace_units(model, (12,), "channel", "two")  # type: ignore[arg-type]
    names = [u.name for u in graph.units]
    assert sorted(names) == ["a", "b"]  # equal sizes, equal cost per channel
    a, b = names.index("a"), names.index("b")
    cm = CostModel(graph)
    data = TensorDataset(x, y)
    problem = SearchProblem(cm, {"macs": 0.5 * cm.costs(cm.dense_keep).macs},
                            context=SearchContext(model, graph, data, data))  # fmt: skip
    uniform = problem.project(np.ones(2))
    assert uniform[a] == uniform[b]
    keep = DSA(steps=60, batch_size=128, lr=0.05, **options).search(problem).keep
    assert keep[a] > uniform[a] and keep[a] > keep[b]


def test_search_dsa_from_the_command_line_writes_a_run_within_budget(tmp_path: Path) -> None:
    out = tmp_path / "run"
    argv = ["search", "--model", "lenet5", "--dataset", "fake", "--limit", "32", "--method", "dsa",
            "--steps", "3", "--train-weights", "--budget-flops", "20%", "--no-prune", "--quiet",
            "--out", str(out)]  # fmt: skip
    assert main(argv) == 0
    metrics = json.loads((out / "metrics.json").read_text())
    assert all(c["met"] for c in metrics["budgets"].values())
    assert metrics["search"]["options"]["steps"] == 3
    assert metrics["search"]["options"]["train_weights"] is True
    alloc = json.loads((out / "allocation.json").read_text())
    assert alloc["provenance"]["method"] == "dsa"
    program = load_program(out / "model.pt2")  # the budget, measured on the exported model
    assert count_macs(program, tuple(alloc["model"]["input_size"])) <= 0.2 * alloc["dense"]["macs"]

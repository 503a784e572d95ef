"""Verified channel units: each is masked, slimmed, run and priced before any search sees it.

A unit is kept prunable only if, at a partial keep and at its smallest keep, (a) slimming it
physically works and the slimmed model runs, (b) the slimmed model computes what the masked
model computes, within a tolerance relative to the output's scale, and (c) the cost model's
change in MACs and parameters equals what FlopCounterMode and a parameter count measure on the
slimmed model. A unit that fails is frozen: kept whole, listed in `UnitGraph.frozen` with a
one-line reason, and never offered to a search (the cost model then counts it at full width).

The check runs on the model itself with seeded random weights (its own values wait in a temporary
file and come back after, so a 2.5 GB model costs no second copy in memory): the verdict depends
on the architecture only, never on a checkpoint (a dense and a trained model get the same units,
hence the same signature). Units are checked together and the failing ones found by bisection:
a model whose units all pass costs two checks. Verdicts are cached per model in memory and on disk
(`autoprune.graph.verify_cache`). This module prices with `autoprune.cost`: verifying the cost
model is its purpose, so it is imported lazily by `trace_units` rather than by the graph package.
"""

from __future__ import annotations

import contextlib
import copy
import dataclasses
import tempfile
from collections.abc import Iterator, Sequence

import numpy as np
import torch
from torch import nn

from autoprune.cost.measure import count_params
from autoprune.cost.model import CostModel
from autoprune.cost.projection import ProjectionConfig, min_keeps
from autoprune.errors import OutputError
from autoprune.graph.masking import apply_masks, element_masks, remove_masks, slim
from autoprune.graph.stash import Restoring, read_tensor, trim_heap, write_tensor
from autoprune.graph.tracing import one_line
from autoprune.graph.units import FrozenUnit, UnitGraph, macs_counter, no_fastpath
from autoprune.graph.verify_cache import Verdict, load_verdict, store_verdict, verdict_key

# Relative to the largest output magnitude: a slimmed conv differs from its masked twin by float
# rounding only (about 1e-6 here); a real mismatch (a norm over pruned channels, a shuffled group)
# is of order one.
TOLERANCE = 1e-4
DIFFERS = "the slimmed model's output differs from the masked one's"
SEED = 0


def verify_units(model: nn.Module, graph: UnitGraph) -> None:
    """Move every unit of `graph` that fails verification to `graph.frozen` (in place)."""
    if not graph.units:
        return
    key = verdict_key(model, graph)
    verdict = load_verdict(key)
    if verdict is None:
        with randomized(model) as work:
            try:
                verifier = _Verifier(work, graph)
            except Exception as err:  # its dense pass fails: nothing can be checked
                reason = f"verification fails: {one_line(err)}"
                verdict = Verdict([(u.name, reason) for u in graph.units])
            else:
                verdict = Verdict(verifier.failures(), verifier.unpriced_macs)
        store_verdict(key, verdict)
    graph.unpriced_macs = verdict.unpriced_macs
    failed = dict(verdict.frozen)
    graph.frozen = graph.frozen + [
        FrozenUnit(u.name, u.size, failed[u.name]) for u in graph.units if u.name in failed
    ]
    graph.units = [u for u in graph.units if u.name not in failed]


@contextlib.contextmanager
def randomized(model: nn.Module, seed: int = SEED) -> Iterator[nn.Module]:
    """`model` itself, in eval mode with seeded random weights and norm statistics, while the
    block runs; its own values and mode come back after, whatever happens in the block.

    Scales keep activations of order one through deep nets (He-style weights, norm scales near
    one), so a relative tolerance means the same thing in every layer. The values it replaces
    wait in a temporary file, written and read back tensor by tensor: a deep copy would double
    the resident memory of a model whose weights take gigabytes (vit_h_14: 2.5 GB).
    """
    touched = _randomizable(model)
    was_training = model.training
    with tempfile.TemporaryFile() as stash:
        for t in touched.values():
            write_tensor(stash, t)
        try:
            _randomize(model.eval(), touched, seed)
            yield model
        finally:
            stash.seek(0)
            with torch.no_grad():
                for t in touched.values():
                    read_tensor(stash, t)
            model.train(was_training)


def _randomizable(model: nn.Module) -> dict[str, torch.Tensor]:
    """The floating-point parameters and the norms' running statistics, once each."""
    out: dict[str, torch.Tensor] = {
        f"p:{name}": p for name, p in model.named_parameters() if p.is_floating_point()
    }
    for name, b in model.named_buffers():
        if name.endswith(("running_mean", "running_var")) and b.is_floating_point():
            out[f"b:{name}"] = b
    return out


def _randomize(model: nn.Module, touched: dict[str, torch.Tensor], seed: int) -> None:
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for key, t in touched.items():
            kind, name = key.split(":", 1)
            if kind == "b":
                if name.endswith("running_mean"):
                    t.copy_(torch.randn(t.shape, generator=gen) * 0.1)
                else:
                    t.copy_(torch.rand(t.shape, generator=gen) + 0.5)
            elif t.dim() >= 2:
                fan_in = max(t[0].numel(), 1)
                t.copy_(torch.randn(t.shape, generator=gen) * (2.0 / fan_in) ** 0.5)
            elif name.endswith("weight"):
                t.copy_(torch.rand(t.shape, generator=gen) + 0.5)
            else:
                t.copy_((torch.rand(t.shape, generator=gen) - 0.5) * 0.4)


def normalised(model: nn.Module, input_shape: Sequence[int]) -> nn.Module | None:
    """A copy of `model` (in eval mode) whose batch norms' running statistics are those of its
    own activations on a seeded random batch, so every normalised activation has unit scale
    however deep the net; None if it has no batch norm. Global random state is left alone (a
    train-mode pass draws for dropout and stochastic depth)."""
    norms = [m for m in model.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]
    if not norms:
        return None
    work = copy.deepcopy(model)
    dtype = next(work.parameters()).dtype
    gen = torch.Generator().manual_seed(SEED + 2)
    batch = torch.randn(4, *input_shape, generator=gen).to(dtype)  # >1: norms after pooling
    for m in work.modules():
        if isinstance(m, nn.modules.batchnorm._BatchNorm):
            m.reset_running_stats()
            m.momentum = None  # a cumulative average: after one batch, that batch's statistics
    with torch.random.fork_rng(devices=[]), torch.no_grad():
        work.train()(batch)
    return work.eval()


class _Verifier:
    """Checks sets of units at one keep level; bisects a failing set down to its culprits."""

    def __init__(self, model: nn.Module, graph: UnitGraph) -> None:
        """`model` is checked in place: `randomized(model)`, slimmed and restored per check."""
        self.graph = graph
        self.base = model
        self.base64: nn.Module | None = None  # made when a float32 comparison needs a second look
        self.normed64: nn.Module | None = None  # and a third one, with batch norms set
        gen = torch.Generator().manual_seed(SEED)
        self.x = torch.randn(1, *graph.input_size, generator=gen)
        self.sizes = np.array(graph.sizes, dtype=np.int64)
        self.levels = {
            "half": np.maximum(self.sizes // 2, min_keeps(self.sizes, ProjectionConfig())),
            "smallest": min_keeps(self.sizes, ProjectionConfig()),
        }
        dense = CostModel(dataclasses.replace(graph, unpriced_macs=0.0)).costs(self.sizes)
        # What no priced layer sees (attention matmuls, nn.MultiheadAttention's projections) is
        # measured here once; a unit passes only if it leaves that part alone, so it stays a
        # constant of the cost model (`UnitGraph.unpriced_macs`).
        self.unpriced_macs = float(_run(self.base, self.x)[1] - round(dense.macs))
        self.graph = dataclasses.replace(graph, unpriced_macs=self.unpriced_macs)
        self.params_offset = count_params(self.base) - round(dense.params)

    def failures(self) -> list[tuple[str, str]]:
        """(unit name, reason) of every unit that fails at some level."""
        failed: dict[int, str] = {}
        for level in self.levels:
            alive = [i for i in range(len(self.sizes)) if i not in failed]
            # Bisection finds units that fail alone; re-checking the survivors together catches
            # the rare pair that fails only jointly (each round removes at least one unit).
            while alive:
                found = self._bisect(alive, level)
                if not found:
                    break
                failed |= found
                alive = [i for i in alive if i not in found]
        return [(self.graph.units[i].name, failed[i]) for i in sorted(failed)]

    def _bisect(self, subset: list[int], level: str) -> dict[int, str]:
        reason = self.check(subset, level)
        if reason is None:
            return {}
        if len(subset) == 1:
            return {subset[0]: reason}
        half = len(subset) // 2
        found = self._bisect(subset[:half], level) | self._bisect(subset[half:], level)
        if not found:  # each half passes alone, the whole does not: freeze them all, say why
            return {i: f"fails only with other units ({reason})" for i in subset}
        return found

    def check(self, subset: Sequence[int], level: str) -> str | None:
        """None if the units `subset` pass at `level`, else the first reason they do not.

        An output that differs is checked again in float64: a deep random-weight net can turn
        float32 rounding (a slimmed conv sums in another order) into an O(1) difference, which
        double precision does not; a real mismatch (a norm over pruned channels) stays. One that
        differs in float64 too is checked a third time with the batch norms' statistics set to
        the activations' own (`normalised`): random statistics let a deep net's activations grow
        without bound (efficientnet_v2_l @96: outputs of 5.5e15, where float64 rounding of the
        slimmed model came out at 4.3e-4 of the scale, and all 144 units were frozen).
        """
        reason = self._check(subset, level, self.base, self.x)
        if reason is None or not reason.startswith(DIFFERS):
            return reason
        if self.base64 is None:
            self.base64 = copy.deepcopy(self.base).double()
        reason = self._check(subset, level, self.base64, self.x.double())
        if reason is None or not reason.startswith(DIFFERS):
            return reason
        if self.normed64 is None:
            self.normed64 = normalised(self.base64, self.x.shape[1:])
            if self.normed64 is None:  # no batch norm to set: the float64 verdict stands
                return reason
        return self._check(subset, level, self.normed64, self.x.double())

    def _check(
        self, subset: Sequence[int], level: str, work: nn.Module, x: torch.Tensor
    ) -> str | None:
        sub = dataclasses.replace(self.graph, units=[self.graph.units[i] for i in subset])
        keep = self.levels[level][list(subset)]
        gen = torch.Generator().manual_seed(SEED + 1)
        # a random subset, not a prefix: an index mapping that is off by a permutation shows
        kept = [torch.sort(torch.randperm(int(n), generator=gen)[: int(k)]).values
                for n, k in zip(self.sizes[list(subset)], keep, strict=True)]  # fmt: skip
        # `work` is masked, then slimmed in place and restored: no copy per check
        try:
            apply_masks(work, element_masks(work, sub, kept))
            with torch.no_grad():
                y_mask = work(x)
        except Exception as err:
            return f"masking fails: {one_line(err)}"
        finally:
            remove_masks(work, bake=False)
        with Restoring(work, sub) as restoring:
            try:
                slim(work, sub, kept, restoring.release)
            except OSError as err:  # the temporary file failed (a full disk): no verdict
                raise OutputError(
                    f"verification cannot park weights in {tempfile.gettempdir()} ({err}); "
                    "free space there or point TMPDIR elsewhere"
                ) from None
            except Exception as err:
                return f"slimming fails: {one_line(err)}"
            trim_heap()
            try:
                y_slim, macs = _run(work, x)
            except Exception as err:
                return f"the slimmed model fails: {one_line(err)}"
            reason = _compare(y_mask, y_slim)
            return reason if reason is not None else self._priced(sub, keep, work, macs)

    def _priced(
        self, sub: UnitGraph, keep: np.ndarray, slimmed: nn.Module, measured_macs: int
    ) -> str | None:
        try:
            predicted = CostModel(sub).costs(keep)
        except Exception as err:
            return f"pricing fails: {one_line(err)}"
        macs = measured_macs
        params = count_params(slimmed) - self.params_offset  # zero, unless a parameter is shared
        if round(predicted.macs) != macs:
            return f"priced at {predicted.macs:,.0f} MACs, the slimmed model measures {macs:,}"
        if round(predicted.params) != params:
            return f"priced at {predicted.params:,.0f} params, the slimmed model has {params:,}"
        return None


def _run(model: nn.Module, x: torch.Tensor) -> tuple[object, int]:
    """The output of one sample and its MACs, as FlopCounterMode counts them (`count_macs`)."""
    with torch.no_grad(), no_fastpath(), macs_counter() as counter:
        y = model(x)
    return y, counter.get_total_flops() // 2


def _compare(y_mask: object, y_slim: object) -> str | None:
    a, b = _first_tensor(y_mask), _first_tensor(y_slim)
    if a is None or b is None:
        return "the model returns no tensor to compare"
    if a.shape != b.shape:
        return f"the slimmed model's output is {tuple(b.shape)}, not {tuple(a.shape)}"
    scale = float(a.abs().max()) or 1.0
    err = float((a - b).abs().max()) / scale
    if not np.isfinite(err) or err > TOLERANCE:
        return f"{DIFFERS} by {err:.1e} of its scale"
    return None


def _first_tensor(y: object) -> torch.Tensor | None:
    if isinstance(y, torch.Tensor):
        return y
    if isinstance(y, (list, tuple)) and y:
        return _first_tensor(y[0])
    if isinstance(y, dict) and y:
        return _first_tensor(next(iter(y.values())))
    return None


def prunable_share(cost_model: CostModel) -> dict[str, float]:
    """Per metric (MACs, params), the fraction of the dense cost that the prunable units control.

    It is what pruning every unit to nothing would remove; frozen units, input channels and the
    classifier's outputs make up the rest. `search` prints it; a budget below the rest is the
    usual "smallest feasible" error (the projection never prices a frozen unit below full).
    """
    dense = cost_model.costs(cost_model.dense_keep)
    empty = cost_model.costs(np.zeros_like(cost_model.dense_keep))
    return {m: 1.0 - getattr(empty, m) / getattr(dense, m) if getattr(dense, m) else 0.0
            for m in ("macs", "params")}  # fmt: skip


def unit_summary(graph: UnitGraph, cost_model: CostModel) -> str:
    """One line: how many units are prunable, what share of the dense cost they control, and
    how many are frozen (`autoprune profile` lists each with its reason)."""
    share = prunable_share(cost_model)
    n = len(graph.units)
    text = (
        f"{n} prunable unit{'s' * (n != 1)} control {100 * share['macs']:.1f}% of the dense "
        f"MACs and {100 * share['params']:.1f}% of the params"
    )
    if graph.frozen:
        text += (
            f"; {len(graph.frozen)} frozen (first: {graph.frozen[0].name}: "
            f"{graph.frozen[0].reason}; `autoprune profile` lists them all)"
        )
    return text

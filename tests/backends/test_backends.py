"""Training backends: every one hits the allocation exactly, resumes, and rejects bad names."""

from __future__ import annotations

import copy
import json
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch

import autoprune.backends  # noqa: F401  (registers the built-in backends)
from autoprune.backends.base import BACKENDS, BackendConfig
from autoprune.backends.reweighted import Reweighted
from autoprune.cli.main import main
from autoprune.cost.measure import count_macs, count_params, count_weights
from autoprune.errors import UnknownNameError, UsageError
from autoprune.graph.masking import UnitMap, slim
from autoprune.pipeline.load import trace
from autoprune.pipeline.prune import PruneRun, run_prune
from autoprune.rundir import partial_dir
from autoprune.train.checkpoint import load_checkpoint, save_checkpoint

SIZE = (1, 16, 16)
BACKEND_NAMES = BACKENDS.names()  # every registered backend keeps the contract below


@pytest.fixture(scope="module")
def dense(digits_lenet: Any) -> Any:
    return digits_lenet


def _cfg(**kw: Any) -> BackendConfig:
    return BackendConfig(
        **{"epochs": 1, "finetune_epochs": 1, "batch_size": 32, "progress": False, **kw}
    )


def _keep(graph: Any, ratio: float = 0.3) -> np.ndarray:
    return np.maximum(1, (np.array(graph.sizes) * ratio).astype(np.int64))


@pytest.mark.parametrize("granularity", ["weight", "channel"])
@pytest.mark.parametrize("name", BACKEND_NAMES)
def test_backend_hits_the_allocation_exactly(dense: Any, name: str, granularity: str) -> None:
    loaded = copy.copy(dense)
    loaded.model = copy.deepcopy(dense.model)
    graph, cost_model = trace(loaded, granularity)  # type: ignore[arg-type]
    keep = _keep(graph)
    res = BACKENDS.get(name)().run(loaded.model, graph, keep, loaded.data, _cfg())

    assert [len(k) for k in res.kept] == keep.tolist()
    alive = UnitMap(res.model, graph).alive(res.model)
    for a, idx, k in zip(alive, res.kept, keep, strict=True):
        outside = torch.ones_like(a)
        outside[idx] = False
        assert not (a & outside).any()  # every pruned element is exactly zero
        assert int(a.sum()) == k  # and every kept one trained to something nonzero
    assert not any("parametrizations" in n for n, _ in res.model.named_modules())
    assert [row["phase"] for row in res.history] == ["prune", "finetune"]

    final = slim(res.model, graph, res.kept)
    predicted = cost_model.costs(keep)
    if granularity == "weight":
        assert count_weights(final, nonzero=True) == predicted.weights
    else:
        assert count_macs(final, SIZE) == predicted.macs
        assert count_params(final) == predicted.params


def test_resumed_run_ends_where_an_uninterrupted_one_does(dense: Any, tmp_path: Path) -> None:
    graph, _ = trace(dense, "weight")
    keep = _keep(graph, 0.2)
    cfg = _cfg(epochs=2, finetune_epochs=2)
    straight = Reweighted().run(copy.deepcopy(dense.model), graph, keep, dense.data, cfg)

    for stop_after in (0, 2):  # interrupted in the pruning phase, then in fine-tuning
        saved: dict[str, Any] = {}

        def interrupt(
            epoch: int, state: dict[str, Any], stop: int = stop_after, saved: dict[str, Any] = saved
        ) -> None:
            saved["state"] = state
            if epoch == stop:
                raise KeyboardInterrupt

        with pytest.raises(KeyboardInterrupt):
            Reweighted().run(
                copy.deepcopy(dense.model), graph, keep, dense.data, cfg, on_epoch_end=interrupt
            )
        path = tmp_path / f"last-{stop_after}.pt"
        torch.save(saved["state"], path)
        state = torch.load(path, weights_only=True)  # what compress hands back on --resume
        resumed = Reweighted().run(
            copy.deepcopy(dense.model), graph, keep, dense.data, cfg, resume=state
        )
        assert [r["epoch"] for r in resumed.history] == [0, 1, 2, 3]
        for a, b in zip(straight.kept, resumed.kept, strict=True):
            assert torch.equal(a, b)
        for (n, a), b in zip(
            straight.model.state_dict().items(), resumed.model.state_dict().values(), strict=True
        ):
            assert torch.allclose(a, b, atol=1e-6), n


@pytest.fixture(scope="module")
def allocation_file(tmp_path_factory: pytest.TempPathFactory, dense: Any) -> Path:
    from autoprune.allocation import Allocation
    from autoprune.pipeline.load import CHECKPOINT_KIND_DENSE
    from autoprune.pipeline.load import checkpoint_meta as _meta

    root = tmp_path_factory.mktemp("prune")
    ckpt = root / "dense.pt"
    save_checkpoint(
        ckpt, state_dict=dense.model.state_dict(), meta=_meta(dense, CHECKPOINT_KIND_DENSE, 0)
    )
    graph, _ = trace(dense, "weight")
    alloc = Allocation.from_keep(
        graph, _keep(graph, 0.1), num_classes=10, dataset="digits", checkpoint=str(ckpt)
    )
    alloc.save(root / "allocation.json")
    return root / "allocation.json"


def test_prune_resumes_after_ctrl_c(
    allocation_file: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    out = tmp_path / "run"
    cfg = PruneRun(
        allocation=str(allocation_file),
        out=str(out),
        backend="reweighted",
        backend_cfg=_cfg(epochs=2),
        limit=96,
        progress=False,
    )
    calls = {"n": 0}
    original = Reweighted.epoch_metrics

    def stop_in_second_epoch(self: Reweighted, model: Any) -> dict[str, Any]:
        calls["n"] += 1
        if calls["n"] == 2:
            raise KeyboardInterrupt
        return original(self, model)

    monkeypatch.setattr(Reweighted, "epoch_metrics", stop_in_second_epoch)
    with pytest.raises(KeyboardInterrupt):
        run_prune(cfg)
    assert (partial_dir(out) / "epochs" / "last.pt").is_file() and not out.exists()

    metrics = run_prune(PruneRun(**{**cfg.__dict__, "resume": True}))
    assert [r["epoch"] for r in metrics["history"]] == [0, 1, 2]
    assert (out / "model.pt2").is_file()
    keep = [u["keep"] for u in json.loads(allocation_file.read_text())["units"]]
    assert metrics["final"]["nonzero_weights"] == sum(keep)


def test_prune_cli_trains_and_records_the_given_recipe(
    allocation_file: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from autoprune.backends import loop

    seen: list[float] = []
    make = loop._optimizer

    def spy(model: Any, cfg: BackendConfig, lr: float) -> torch.optim.Optimizer:
        opt = make(model, cfg, lr)
        seen.append(opt.param_groups[0]["weight_decay"])
        return opt

    monkeypatch.setattr(loop, "_optimizer", spy)
    out = tmp_path / "run"
    argv = ["prune", "--allocation", str(allocation_file), "--backend", "magnitude",
            "--epochs", "1", "--finetune-epochs", "1", "--finetune-lr", "0.02",
            "--weight-decay", "0.001", "--seed", "3", "--limit", "32", "--quiet",
            "--out", str(out)]  # fmt: skip
    assert main(argv) == 0
    assert seen == [0.001, 0.001]  # both phases' optimisers
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["seed"] == 3 and metrics["info"]["recipe"]["seed"] == 3  # the run's own seed
    assert json.loads((out / "allocation.json").read_text())["provenance"]["backend_seed"] == 3
    assert load_checkpoint(out / "checkpoint.pt")[1]["seed"] == 3
    recipe = metrics["info"]["recipe"]
    assert recipe["weight_decay"] == 0.001 and recipe["finetune_lr"] == 0.02
    assert (recipe["epochs"], recipe["finetune_epochs"], recipe["lr"]) == (1, 1, 0.01)


def test_unknown_backend_suggests_the_closest(
    allocation_file: Path, tmp_path: Path, capsys: Any
) -> None:
    with pytest.raises(UnknownNameError, match="did you mean 'reweighted'"):
        BACKENDS.get("reweighed")
    code = main(["prune", "--allocation", str(allocation_file), "--backend", "magnitud",
                 "--limit", "32", "--quiet", "--out", str(tmp_path / "x")])  # fmt: skip
    assert code == 2
    assert "did you mean 'magnitude'" in capsys.readouterr().err
    assert not (tmp_path / "x").exists()


def test_unknown_or_mistyped_option_is_a_usage_error(dense: Any) -> None:
    graph, _ = trace(dense, "weight")
    with pytest.raises(UsageError, match=r"takes no option 'aux_rate'.*aux_lr"):
        Reweighted().run(
            copy.deepcopy(dense.model),
            graph,
            _keep(graph),
            dense.data,
            _cfg(options={"aux_rate": 1}),
        )
    with pytest.raises(UsageError, match="refreshes='often' is not a int"):
        Reweighted().run(copy.deepcopy(dense.model), graph, _keep(graph), dense.data,
                         _cfg(options={"refreshes": "often"}))  # fmt: skip


def test_keep_outside_a_unit_is_a_usage_error(dense: Any) -> None:
    graph, _ = trace(dense, "weight")
    keep = _keep(graph)
    keep[0] = graph.sizes[0] + 1
    with pytest.raises(UsageError, match="keeps 501 of 500"):
        Reweighted().run(copy.deepcopy(dense.model), graph, keep, dense.data, _cfg())


def test_distilling_run_hits_the_allocation_and_records_it(dense: Any) -> None:
    loaded = copy.copy(dense)
    loaded.model = copy.deepcopy(dense.model)
    graph, _ = trace(loaded, "weight")
    keep = _keep(graph)
    res = Reweighted().run(loaded.model, graph, keep, loaded.data, _cfg(distill=0.5))
    assert [len(k) for k in res.kept] == keep.tolist()
    assert res.info["distill"] == {"alpha": 0.5, "temperature": 4.0}
    with pytest.raises(UsageError, match="--distill must be in"):
        Reweighted().run(copy.deepcopy(dense.model), graph, keep, loaded.data, _cfg(distill=1.5))


@pytest.mark.parametrize("sync", [True, False])
def test_synced_gates_hold_the_keep_after_the_ramp(dense: Any, sync: bool) -> None:
    """With `sync` exactly `keep` gates per unit are on from the end of the ramp; without, the
    count is whatever the loss and the regulariser leave (here: not the keep)."""
    loaded = copy.copy(dense)
    loaded.model = copy.deepcopy(dense.model)
    graph, _ = trace(loaded, "weight")  # type: ignore[arg-type]
    keep = _keep(graph, 0.1)
    cfg = _cfg(epochs=3, options={"sync": sync, "ramp": 0.5})
    res = Reweighted().run(loaded.model, graph, keep, loaded.data, cfg)
    prune = [row for row in res.history if row["phase"] == "prune"]
    on_keep = [row["gates_on"] == keep.tolist() for row in prune[1:]]  # the ramp ends mid-run
    assert all(on_keep) if sync else not all(on_keep)


def _pruned_weight_norm(dense: Any, shrink: float) -> float:
    """Mean |raw weight| of the elements the pruning phase cuts, at its end."""
    from autoprune.train.data import make_loader
    from autoprune.train.loop import train_epoch

    model = copy.deepcopy(dense.model)
    graph, _ = trace(dense, "weight")
    keep = _keep(graph, 0.1)
    torch.manual_seed(0)
    loader = make_loader(dense.data.train, batch_size=16, shuffle=True, seed=0)
    backend = Reweighted()
    cfg = _cfg(epochs=1, options={"shrink": shrink, "ramp": 1.0, "refreshes": 4})
    hooks = backend.prepare(model, graph, keep, cfg, steps_per_epoch=len(loader))
    opt = torch.optim.SGD(model.parameters(), lr=0.01)
    train_epoch(model, loader, opt, progress=False, **hooks)
    cut = []
    for u, kept in enumerate(backend.final_kept(model)):
        unit = graph.units[u]
        layer = model.get_submodule(unit.name.removesuffix(".weight"))
        raw = layer.parametrizations.weight.original.detach().flatten()
        mask = torch.ones_like(raw, dtype=torch.bool)
        mask[kept] = False
        cut.append(raw[mask].abs())
    return float(torch.cat(cut).mean())


def test_shrink_makes_the_cut_weights_small_before_the_cut(dense: Any) -> None:
    # the cut elements shrink over the ramp (3 e-folds for one doomed all along) instead of
    # keeping their size until their gate closes
    assert _pruned_weight_norm(dense, 3.0) < 0.8 * _pruned_weight_norm(dense, 0.0)

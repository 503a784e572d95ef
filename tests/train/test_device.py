"""Devices, mixed precision and recipes: --device / --amp on every command, warm-up, augmentation.

CPU only: CUDA paths (GradScaler, pinned memory, NCCL) are exercised by their CPU twins here and
by scripts/gpu-check.sh on a machine with a GPU.
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
import torch
from torch import nn
from torch.utils.data import TensorDataset

from autoprune.cli.main import main
from autoprune.cost.latency_table import LatencyTable
from autoprune.errors import UsageError
from autoprune.train.augment import RECIPES, Recipe, augment_batch, recipe_for
from autoprune.train.data import make_loader
from autoprune.train.device import (
    Runtime,
    autocast,
    current,
    on_device,
    resolve_device,
    scaler_for,
    unscale_outside,
    use_runtime,
)
from autoprune.train.loop import TrainConfig, evaluate, fit, schedule_factor

TINY = ["--dataset", "digits", "--input-size", "1x16x16", "--limit", "96", "--quiet"]


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"device": "gpu"}, "--device 'gpu' is not one of auto"),
        ({"device": "cuda:x"}, "not one of"),
        ({"amp": "fp8"}, "--amp 'fp8'"),
        ({"workers": -1}, "--workers"),
    ],
)
def test_bad_runtimes_are_usage_errors(kwargs: dict, message: str) -> None:
    with pytest.raises(UsageError, match=message):
        Runtime(**kwargs)


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks a machine without CUDA")
def test_devices_this_machine_lacks_are_refused_in_one_line() -> None:
    assert resolve_device("auto") == resolve_device("cpu") == torch.device("cpu")
    for spec in ("cuda", "cuda:1"):
        with pytest.raises(UsageError, match="no CUDA device") as info:
            resolve_device(spec)
        assert "\n" not in str(info.value)
    if not torch.backends.mps.is_available():
        with pytest.raises(UsageError, match="no Apple GPU"):
            resolve_device("mps")


def test_fp16_needs_cuda_and_bf16_autocasts_on_the_cpu() -> None:
    fp16 = use_runtime(Runtime(device="cpu", amp="fp16"))
    with pytest.raises(UsageError, match=r"fp16 needs a CUDA device.*--amp bf16"), fp16:
        pass
    layer = nn.Linear(4, 3)
    with use_runtime(Runtime(device="cpu", amp="bf16")) as active:
        assert active.amp_dtype is torch.bfloat16 and not active.pin_memory
        assert scaler_for(torch.optim.SGD(layer.parameters(), lr=0.1)) is None  # bf16: no scaler
        with autocast():
            assert layer(torch.randn(2, 4)).dtype is torch.bfloat16
        assert current().describe() == {"device": "cpu", "amp": "bf16", "workers": 0,
                                         "world_size": 1}  # fmt: skip
    with autocast():  # outside: the default runtime, float32
        assert layer(torch.randn(2, 4)).dtype is torch.float32


def test_gradients_outside_the_optimiser_are_unscaled_or_dropped_on_overflow() -> None:
    class Scaler:  # what unscale_outside asks of torch.amp.GradScaler
        def get_scale(self) -> float:
            return 4.0

    gates = [torch.ones(3, requires_grad=True), torch.ones(2, requires_grad=True)]
    gates[0].grad, gates[1].grad = torch.full((3,), 8.0), torch.full((2,), 2.0)
    unscale_outside(gates, Scaler())
    assert gates[0].grad.tolist() == [2.0] * 3 and gates[1].grad.tolist() == [0.5] * 2
    gates[1].grad = torch.tensor([float("inf"), 1.0])
    unscale_outside(gates, Scaler())  # an overflowed step: the hooks must not move the gates
    assert gates[0].grad.tolist() == [0.0] * 3 and gates[1].grad.tolist() == [0.0] * 2


def test_on_device_puts_modules_back_where_they_were() -> None:
    model = nn.Linear(2, 2).double()
    with use_runtime(Runtime(device="cpu")), on_device(model) as device:
        assert device == torch.device("cpu") and model.weight.device == device
    assert model.weight.dtype is torch.float64  # moved, not cast


def test_bf16_training_learns_and_keeps_float32_weights() -> None:
    gen = torch.Generator().manual_seed(0)
    x = torch.randn(256, 8, generator=gen)
    y = (x[:, 0] > 0).long()
    loader = make_loader(TensorDataset(x, y), batch_size=32, shuffle=True, seed=0)
    results = {}
    for amp in (None, "bf16"):
        torch.manual_seed(0)
        model = nn.Sequential(nn.Linear(8, 16), nn.ReLU(), nn.Linear(16, 2))
        with use_runtime(Runtime(device="cpu", amp=amp)):
            history = fit(model, loader, loader, TrainConfig(epochs=4, lr=0.1), progress=False)
            results[amp] = evaluate(model, loader).accuracy
        assert history[-1]["train_loss"] < history[0]["train_loss"]
        assert all(p.dtype is torch.float32 for p in model.parameters())
    assert results["bf16"] > 0.85 and abs(results["bf16"] - results[None]) < 0.05


def test_warm_up_ramps_linearly_then_follows_the_schedule() -> None:
    cfg = TrainConfig(epochs=4, warmup_epochs=1, lr=0.1)
    factor = schedule_factor(cfg, steps_per_epoch=10)
    assert [round(factor(s), 4) for s in (0, 4, 9)] == [round(1 / 11, 4), round(5 / 11, 4),
                                                        round(10 / 11, 4)]  # fmt: skip
    assert factor(10) == pytest.approx(1.0)  # the cosine starts at the peak after the ramp
    assert factor(39) == pytest.approx(0.5 * (1 + math.cos(math.pi * 29 / 30)))
    with pytest.raises(UsageError, match="warm-up epochs"):
        TrainConfig(epochs=2, warmup_epochs=3)


def test_augmentation_shifts_within_the_padding_and_flips() -> None:
    x = torch.arange(2 * 1 * 6 * 6, dtype=torch.float32).view(2, 1, 6, 6) + 1
    gen = torch.Generator().manual_seed(0)
    seen_shift = seen_flip = False
    for _ in range(20):
        out = augment_batch(x, Recipe(pad=2 / 6, flip=True), 2, gen)
        assert out.shape == x.shape
        for i in range(2):
            # a shift by (di, dj) within 2 pixels of a possibly flipped image, zeros outside
            candidates = [x[i], x[i].flip(-1)]
            found = False
            for img in candidates:
                padded = nn.functional.pad(img, (2, 2, 2, 2))
                for di in range(5):
                    for dj in range(5):
                        if torch.equal(padded[:, di : di + 6, dj : dj + 6], out[i]):
                            found = True
                            seen_shift |= (di, dj) != (2, 2)
                            seen_flip |= img is candidates[1] and not torch.equal(img, x[i])
            assert found
    assert seen_shift and seen_flip
    again = augment_batch(x, Recipe(pad=2 / 6, flip=True), 2, torch.Generator().manual_seed(0))
    first = augment_batch(x, Recipe(pad=2 / 6, flip=True), 2, torch.Generator().manual_seed(0))
    assert torch.equal(again, first)  # same seed, same batch


def test_every_registered_dataset_has_a_recipe_and_unknown_ones_are_refused() -> None:
    from autoprune.train.data import DATASETS

    assert set(DATASETS.names()) <= set(RECIPES)
    assert recipe_for("cifar10").describe((3, 32, 32))["pad_pixels"] == 4
    assert recipe_for("mnist").describe((1, 28, 28))["pad_pixels"] == 2
    with pytest.raises(UsageError, match="no recipe for dataset 'svhn'"):
        recipe_for("svhn")


def test_train_records_its_recipe_and_runtime(tmp_path: Path) -> None:
    out = tmp_path / "dense"
    argv = ["train", "--model", "lenet5", *TINY, "--epochs", "2", "--augment", "--device", "cpu",
            "--amp", "bf16", "--label-smoothing", "0.1", "--warmup-epochs", "1",
            "--out", str(out)]  # fmt: skip
    assert main(argv) == 0
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["recipe"] == {
        "augment": {"pad": 2 / 28, "flip": False, "resized_crop": False, "pad_pixels": 1},
        "runtime": {"device": "cpu", "amp": "bf16", "workers": 0, "world_size": 1},
    }
    cfg = metrics["train_config"]
    assert (cfg["augment"], cfg["label_smoothing"], cfg["warmup_epochs"]) == (True, 0.1, 1.0)
    assert metrics["history"][1]["lr"] > metrics["history"][0]["lr"]  # warmed up
    state = torch.load(out / "checkpoint.pt", map_location="cpu", weights_only=True)
    assert all(t.device.type == "cpu" for t in state["state_dict"].values())


def test_search_prune_and_eval_on_cpu_with_bf16(tmp_path: Path) -> None:
    """The end-to-end path of the issue: every command takes --device, search + prune in bf16."""
    search, pruned = tmp_path / "search", tmp_path / "pruned"
    amp = ["--device", "cpu", "--amp", "bf16"]
    assert main(["search", "--model", "lenet5", *TINY, *amp, "--dense-epochs", "1",
                 "--budget-flops", "30%", "--method", "random", "--trials", "2", "--epochs", "1",
                 "--finetune-epochs", "1", "--backend", "magnitude",
                 "--out", str(search)]) == 0  # fmt: skip
    assert main(["prune", "--allocation", str(search / "allocation.json"), "--limit", "96",
                 "--epochs", "1", "--finetune-epochs", "1", "--quiet", *amp,
                 "--out", str(pruned)]) == 0  # fmt: skip
    for run in (search, pruned):
        metrics = json.loads((run / "metrics.json").read_text())
        assert metrics["budgets"]["macs"]["met"]
        assert set(json.loads((run / "allocation.json").read_text())) >= {"units", "budgets"}
    runtime = json.loads((pruned / "metrics.json").read_text())["info"]["recipe"]["runtime"]
    assert runtime == {"device": "cpu", "amp": "bf16", "workers": 0, "world_size": 1}
    assert main(["eval", str(pruned), "--limit", "96", "--device", "cpu", "--json"]) == 0


def test_a_latency_table_is_refused_on_another_device_type(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    from autoprune.cost import latency
    from autoprune.cost.model import CostModel
    from autoprune.graph.units import trace_units
    from autoprune.models import build_model
    from autoprune.train.device import Active

    path = tmp_path / "lat.json"
    assert main(["latency-table", "--model", "lenet5", "--input-size", "1x16x16", "--rounds", "1",
                 "--device", "cpu", "--quiet", "--out", str(path)]) == 0  # fmt: skip
    table = LatencyTable.load(path)
    assert table.device == "cpu"
    # A CPU table for a run on CUDA (simulated: this machine has none) ...
    cuda = Active(Runtime(), torch.device("cuda", 0), None)
    monkeypatch.setattr(latency, "current", lambda: cuda)
    graph = trace_units(build_model("lenet5", input_size=(1, 16, 16)), (1, 16, 16), "channel")
    with pytest.raises(UsageError, match=r"measured on cpu and this run computes on cuda:0.*"
                                         r"latency-table --device cuda"):  # fmt: skip
        latency.register_latency(CostModel(graph), table)
    monkeypatch.undo()
    # ... and a CUDA table for a run on the CPU, through the command line
    path.write_text(json.dumps({**json.loads(path.read_text()), "device": "cuda:0"}))
    out = tmp_path / "run"
    code = main(["search", "--model", "lenet5", *TINY, "--budget-latency", "80%",
                 "--latency-table", str(path), "--method", "uniform", "--no-prune",
                 "--device", "cpu", "--out", str(out)])  # fmt: skip
    err = [ln for ln in capsys.readouterr().err.splitlines() if "error" in ln]
    assert code == 2 and not out.exists() and len(err) == 1
    assert "measured on cuda:0 and this run computes on cpu" in err[0]

"""The shared training loop: it learns, it is reproducible, hooks run in order, errors are clear."""

from __future__ import annotations

import pytest
import torch
from torch import nn
from torch.utils.data import TensorDataset

from autoprune.errors import AutoPruneError, UnknownNameError, UsageError
from autoprune.models import build_model
from autoprune.pipeline.load import load_model_and_data
from autoprune.train.data import load_dataset, make_loader
from autoprune.train.loop import (
    Distill,
    TrainConfig,
    evaluate,
    fit,
    make_optimizer,
    make_scheduler,
    set_seed,
    train_epoch,
)


def _toy_loader(n: int = 12, batch_size: int = 4, nan: bool = False) -> object:
    x = torch.randn(n, 3, generator=torch.Generator().manual_seed(0))
    if nan:
        x[0, 0] = float("nan")
    return make_loader(TensorDataset(x, torch.arange(n) % 2), batch_size=batch_size, shuffle=False)


def test_lenet5_learns_digits_in_two_epochs() -> None:
    splits = load_dataset("digits", input_size=(1, 16, 16))
    cfg = TrainConfig(epochs=2, batch_size=64, seed=0)
    set_seed(cfg.seed)
    model = build_model("lenet5", num_classes=10, input_size=(1, 16, 16))
    train = make_loader(splits.train, batch_size=cfg.batch_size, shuffle=True, seed=cfg.seed)
    val = make_loader(splits.val, batch_size=256, shuffle=False)
    before = evaluate(model, val)
    history = fit(model, train, val, cfg, progress=False)
    assert [row["epoch"] for row in history] == [0, 1]
    columns = {"epoch", "train_loss", "train_acc", "val_loss", "val_acc", "lr", "seconds"}
    assert set(history[0]) == columns
    assert history[1]["train_loss"] < history[0]["train_loss"]
    assert history[-1]["val_loss"] < before.loss
    assert history[-1]["val_acc"] > 0.5
    assert history[1]["lr"] < history[0]["lr"] == cfg.lr  # cosine decay


def test_build_and_fit_are_reproducible_whatever_ran_before() -> None:
    """The model is built the way the CLI builds it, after other random numbers were drawn
    (a different number each time), so weights initialised before seeding would differ."""
    weights = []
    for draws, seed in ((1, 5), (7, 5), (3, 6)):
        torch.rand(draws)
        loaded = load_model_and_data(
            model="lenet5", dataset="digits", input_size=(1, 16, 16), limit=96, seed=seed
        )
        cfg = TrainConfig(epochs=1, batch_size=32, seed=seed)
        loader = make_loader(loaded.data.train, batch_size=32, shuffle=True, seed=cfg.seed)
        fit(loaded.model, loader, None, cfg, progress=False)
        weights.append(loaded.model.state_dict())
    assert all(torch.equal(weights[0][k], weights[1][k]) for k in weights[0])
    assert not any(torch.equal(weights[0][k], weights[2][k]) for k in weights[0])


def test_hooks_run_between_backward_and_step_with_global_steps() -> None:
    model = nn.Linear(3, 2)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    scheduler = make_scheduler(optimizer, TrainConfig(epochs=1), steps_per_epoch=3)
    calls: list[tuple[str, int]] = []
    seen_before_step: list[torch.Tensor] = []

    def after_backward(step: int) -> None:
        assert model.weight.grad is not None
        seen_before_step.append(model.weight.detach().clone())
        calls.append(("backward", step))

    def after_step(step: int) -> None:
        assert not torch.equal(model.weight, seen_before_step[-1])  # the optimizer has stepped
        calls.append(("step", step))

    stats = train_epoch(
        model,
        _toy_loader(),  # type: ignore[arg-type]
        optimizer,
        scheduler=scheduler,
        penalty=lambda: model.weight.abs().sum(),
        after_backward=after_backward,
        after_step=after_step,
        step_offset=10,
        progress=False,
    )
    assert calls == [(kind, s) for s in (10, 11, 12) for kind in ("backward", "step")]
    assert stats.steps == 3 and 0 <= stats.accuracy <= 1 and stats.seconds >= 0
    assert optimizer.param_groups[0]["lr"] == pytest.approx(0.0)  # cosine reached its end


def test_evaluate_restores_the_mode_and_counts() -> None:
    model = nn.Linear(3, 2).train()
    result = evaluate(model, _toy_loader(n=10))  # type: ignore[arg-type]
    assert model.training and result.n == 10 and 0 <= result.accuracy <= 1 and result.loss > 0
    assert evaluate(model, []).n == 0


def test_divergence_is_reported() -> None:
    model = nn.Linear(3, 2)
    optimizer = make_optimizer(model.parameters(), TrainConfig())
    with pytest.raises(AutoPruneError, match="diverged"):
        train_epoch(model, _toy_loader(nan=True), optimizer, progress=False)  # type: ignore[arg-type]


def test_optimizers_and_schedules() -> None:
    params = list(nn.Linear(2, 2).parameters())
    assert isinstance(make_optimizer(params, TrainConfig(optimizer="adam")), torch.optim.AdamW)
    sgd = make_optimizer(params, TrainConfig(lr=0.2, schedule="constant"))
    assert isinstance(sgd, torch.optim.SGD) and sgd.param_groups[0]["momentum"] == 0.9
    scheduler = make_scheduler(sgd, TrainConfig(lr=0.2, schedule="constant"), steps_per_epoch=2)
    for _ in range(5):
        sgd.step()
        scheduler.step()
    assert sgd.param_groups[0]["lr"] == pytest.approx(0.2)


@pytest.mark.parametrize(
    ("kwargs", "error", "message"),
    [
        ({"optimizer": "sgdd"}, UnknownNameError, "'sgd'"),
        ({"schedule": "cosin"}, UnknownNameError, "'cosine'"),
        ({"epochs": -1}, UsageError, "epochs"),
        ({"batch_size": 0}, UsageError, "batch size"),
        ({"lr": 0.0}, UsageError, "learning rate"),
        ({"label_smoothing": 1.0}, UsageError, "label smoothing"),
    ],
)
def test_bad_configs_are_rejected(kwargs: dict, error: type, message: str) -> None:
    with pytest.raises(error, match=message):
        TrainConfig(**kwargs)


def test_fit_owns_its_scheduler() -> None:
    with pytest.raises(UsageError, match="scheduler"):
        fit(nn.Linear(3, 2), _toy_loader(), None, TrainConfig(epochs=1), scheduler=None)  # type: ignore[arg-type]


def test_distillation_pulls_the_student_towards_the_teacher() -> None:
    torch.manual_seed(0)
    teacher, student = nn.Linear(3, 2), nn.Linear(3, 2)
    x, ce = torch.randn(12, 3), torch.tensor(0.7)
    same = Distill(student, alpha=1.0).objective(student(x), x, ce)
    assert float(same) == pytest.approx(0.0, abs=1e-6)  # KL of identical outputs
    half = Distill(teacher, alpha=0.5, temperature=2.0).objective(student(x), x, ce)
    assert float(half) > 0.35  # half the cross-entropy plus a positive KL term

    opt = torch.optim.SGD(student.parameters(), lr=0.5)
    distill = Distill(teacher.requires_grad_(False), alpha=1.0)

    def gap() -> float:
        return float((student(x).softmax(1) - teacher(x).softmax(1)).abs().max())

    before = gap()
    labels = torch.zeros(12, dtype=torch.long)
    loader = make_loader(TensorDataset(x, labels), batch_size=12, shuffle=False)
    for _ in range(30):
        train_epoch(student, loader, opt, distill=distill, progress=False)
    assert gap() < before / 4  # alpha 1 ignores the labels and follows the teacher

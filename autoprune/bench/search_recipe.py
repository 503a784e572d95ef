"""The recipe of the search benchmarks: budgets, methods, evaluator and backend training."""

from __future__ import annotations

from dataclasses import dataclass, field

from autoprune.backends.base import BackendConfig
from autoprune.search.evaluator import EvaluatorConfig
from autoprune.train.loop import TrainConfig


@dataclass(frozen=True)
class Recipe:
    """Everything that decides the numbers; the defaults keep the benchmark near 30 CPU minutes."""

    dataset: str = "mnist"
    budgets: tuple[str, ...] = ("10%", "5%")  # of the dense MACs
    methods: tuple[str, ...] = ("uniform", "random", "optuna", "rl", "dsa")
    trials: int = 40  # random and optuna alike
    episodes: int = 150  # rl: one evaluation per episode (repeated allocations are cached)
    # 2000 validation images after 20 SGD steps of 128 on the slimmed model: a couple of seconds a
    # trial, and a fine-tuned proxy ranks allocations better than the raw masked accuracy
    # (LeNet-5 has no BatchNorm to recalibrate)
    evaluator: EvaluatorConfig = field(
        default_factory=lambda: EvaluatorConfig(
            val_limit=2000, finetune_steps=20, batch_size=128, bn_batches=0, physical=True
        )
    )
    backend: str = "reweighted"
    epochs: int = 2
    finetune_epochs: int = 1
    lr: float = 0.01
    correlation: int = 10  # allocations (the methods' own included) behind the rank correlation
    # The methods' allocations are trained again with these backend seeds and the final accuracy
    # is the mean: one seed moves LeNet-5's test accuracy by ~0.05 points, as much as the
    # allocations at these budgets differ.
    extra_seeds: tuple[int, ...] = (1, 2)
    dense: TrainConfig = field(default_factory=lambda: TrainConfig(epochs=15, seed=0))
    seed: int = 0

    def backend_cfg(self, progress: bool, seed: int | None = None) -> BackendConfig:
        return BackendConfig(
            epochs=self.epochs,
            finetune_epochs=self.finetune_epochs,
            lr=self.lr,
            seed=self.seed if seed is None else seed,
            progress=progress,
        )


QUICK = Recipe(
    dataset="digits",
    trials=6,
    episodes=8,
    epochs=1,
    finetune_epochs=1,
    correlation=4,
    extra_seeds=(),
    evaluator=EvaluatorConfig(finetune_steps=5, bn_batches=0),
    dense=TrainConfig(epochs=3, seed=0),
)

"""Training: datasets with fixed splits, the one training loop, and checkpoints.

`load_dataset` reads a registered dataset (DATASETS) normalised at the model's input size with
train / validation / test splits; `fit` is the loop `autoprune train` and every backend use;
checkpoints are a state dict plus plain metadata, read with `weights_only=True`; `Runtime` /
`use_runtime` say where and how the loops compute (device, mixed precision, loader workers).
"""

from autoprune._lazy import lazy_exports

_WHERE = {
    "DATASETS": "autoprune.train.data",
    "DataSplits": "autoprune.train.data",
    "load_dataset": "autoprune.train.data",
    "make_loader": "autoprune.train.data",
    "TrainConfig": "autoprune.train.loop",
    "fit": "autoprune.train.loop",
    "evaluate": "autoprune.train.loop",
    "set_seed": "autoprune.train.loop",
    "OPTIMIZERS": "autoprune.train.loop",
    "SCHEDULES": "autoprune.train.loop",
    "save_checkpoint": "autoprune.train.checkpoint",
    "load_checkpoint": "autoprune.train.checkpoint",
    "Runtime": "autoprune.train.device",
    "use_runtime": "autoprune.train.device",
}
__all__ = sorted(_WHERE)
__getattr__, __dir__ = lazy_exports(__name__, _WHERE)

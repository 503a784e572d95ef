"""Model factories standing in for a user's own module, loaded as `user_models:<factory>`."""

from __future__ import annotations

from torch import nn


def tiny_net(num_classes: int = 4, input_size: tuple[int, int, int] = (1, 12, 12)) -> nn.Module:
    channels, height, width = input_size
    return nn.Sequential(nn.Flatten(), nn.Linear(channels * height * width, num_classes))


def fixed_net() -> nn.Module:
    """Takes no num_classes: always 10 outputs, for 3x224x224 images (the factory default)."""
    return nn.Sequential(nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(3, 10))


def not_a_module() -> dict[str, int]:
    return {"layers": 3}


NOT_CALLABLE = 42

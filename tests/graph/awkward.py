"""Small hand-written models of every awkward topology, loaded as `awkward:<ClassName>`.

Each stands for a pattern torchvision or a user's model has: grouped convolutions with groups
wider than one channel, chunk / cat with a depthwise branch, channel shuffle, squeeze-excite,
weight sharing, a free channel parameter, GroupNorm, LayerNorm over channels (ConvNeXt-style
permuted blocks), flatten into a linear layer, Swin-style windows with a layer used
functionally, transformer encoder layers, and torchvision's own Swin (V1, V2) and MaxViT
attention at a small size.
"""

from __future__ import annotations

import torch
from torch import nn
from torchvision.models.maxvit import MaxVit
from torchvision.models.swin_transformer import (
    PatchMergingV2,
    SwinTransformer,
    SwinTransformerBlockV2,
)
from torchvision.models.vision_transformer import VisionTransformer

Size = tuple[int, int, int]
SIZE: Size = (3, 16, 16)


def _stem(c: int) -> nn.Sequential:
    return nn.Sequential(nn.Conv2d(3, c, 3, padding=1, bias=False), nn.BatchNorm2d(c), nn.ReLU())


def _head(c: int, num_classes: int) -> nn.Sequential:
    return nn.Sequential(nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(c, num_classes))


class Grouped(nn.Module):
    """A grouped 3x3 conv with 4 groups of 4 input / 8 output channels (RegNet, ResNeXt)."""

    def __init__(self, num_classes: int = 10) -> None:
        super().__init__()
        self.stem = _stem(16)
        self.group = nn.Sequential(
            nn.Conv2d(16, 32, 3, padding=1, groups=4, bias=False), nn.BatchNorm2d(32), nn.ReLU()
        )
        self.proj = nn.Sequential(nn.Conv2d(32, 24, 1), nn.ReLU())
        self.head = _head(24, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.proj(self.group(self.stem(x))))


class SqueezeExcite(nn.Module):
    def __init__(self, c: int, hidden: int) -> None:
        super().__init__()
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.fc1 = nn.Conv2d(c, hidden, 1)
        self.fc2 = nn.Conv2d(hidden, c, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x * torch.sigmoid(self.fc2(torch.relu(self.fc1(self.pool(x)))))


class ChunkCat(nn.Module):
    """chunk into a depthwise and a full branch, cat, a grouped conv and a squeeze-excite gate."""

    def __init__(self, num_classes: int = 10) -> None:
        super().__init__()
        self.stem = _stem(16)
        self.dw = nn.Sequential(nn.Conv2d(8, 8, 3, padding=1, groups=8), nn.BatchNorm2d(8))
        self.full = nn.Sequential(nn.Conv2d(8, 16, 3, padding=1), nn.BatchNorm2d(16), nn.ReLU())
        self.group = nn.Conv2d(24, 24, 3, padding=1, groups=3)
        self.se = SqueezeExcite(24, 6)
        self.head = _head(24, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        a, b = self.stem(x).chunk(2, dim=1)
        y = torch.cat([self.dw(a), self.full(b)], dim=1)
        return self.head(self.se(torch.relu(self.group(y))))


def channel_shuffle(x: torch.Tensor, groups: int) -> torch.Tensor:
    n, c, h, w = x.shape
    return x.view(n, groups, c // groups, h, w).transpose(1, 2).reshape(n, c, h, w)


class Shuffle(nn.Module):
    """ShuffleNet-v2 style: split, one branch convolved, cat, channel shuffle."""

    def __init__(self, num_classes: int = 10) -> None:
        super().__init__()
        self.stem = _stem(16)
        self.branch = nn.Sequential(
            nn.Conv2d(8, 8, 1, bias=False), nn.BatchNorm2d(8), nn.ReLU(),
            nn.Conv2d(8, 8, 3, padding=1, groups=8, bias=False), nn.BatchNorm2d(8),
        )  # fmt: skip
        self.out = nn.Sequential(nn.Conv2d(16, 32, 1), nn.ReLU())
        self.head = _head(32, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        a, b = self.stem(x).chunk(2, dim=1)
        y = channel_shuffle(torch.cat([a, self.branch(b)], dim=1), 2)
        return self.head(self.out(y))


class SENet(nn.Module):
    """Conv stages with a squeeze-excite gate (a broadcast multiplication)."""

    def __init__(self, num_classes: int = 10) -> None:
        super().__init__()
        self.stem = _stem(16)
        self.conv = nn.Sequential(nn.Conv2d(16, 32, 3, padding=1), nn.BatchNorm2d(32), nn.ReLU())
        self.se = SqueezeExcite(32, 8)
        self.head = _head(32, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.se(self.conv(self.stem(x))))


class Shared(nn.Module):
    """One conv module applied twice (weight sharing) and a free nn.Parameter channel scale."""

    def __init__(self, num_classes: int = 10) -> None:
        super().__init__()
        self.stem = _stem(16)
        self.twice = nn.Conv2d(16, 16, 3, padding=1)
        self.scale = nn.Parameter(torch.linspace(0.5, 1.5, 16).view(1, 16, 1, 1))
        self.head = _head(16, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.stem(x)
        x = torch.relu(self.twice(x))
        x = torch.relu(self.twice(x)) * self.scale
        return self.head(x)


class FreeScale(nn.Module):
    """A free nn.Parameter that carries a channel dimension (a layer-scale gamma)."""

    def __init__(self, num_classes: int = 10) -> None:
        super().__init__()
        self.stem = _stem(16)
        self.conv = nn.Conv2d(16, 24, 3, padding=1)
        self.gamma = nn.Parameter(torch.linspace(0.5, 1.5, 24).view(1, 24, 1, 1))
        self.head = _head(24, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(torch.relu(self.conv(self.stem(x)) * self.gamma))


class GroupNormNet(nn.Module):
    """GroupNorm with 4 groups of 6 channels after a conv."""

    def __init__(self, num_classes: int = 10) -> None:
        super().__init__()
        self.stem = _stem(16)
        self.conv = nn.Conv2d(16, 24, 3, padding=1)
        self.norm = nn.GroupNorm(4, 24)
        self.head = _head(24, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(torch.relu(self.norm(self.conv(self.stem(x)))))


class ConvNeXtBlock(nn.Module):
    """A ConvNeXt block: depthwise conv, permute, LayerNorm over channels, MLP, layer scale."""

    def __init__(self, c: int) -> None:
        super().__init__()
        self.dw = nn.Conv2d(c, c, 7, padding=3, groups=c)
        self.norm = nn.LayerNorm(c)
        self.fc1 = nn.Linear(c, 4 * c)
        self.fc2 = nn.Linear(4 * c, c)
        self.gamma = nn.Parameter(torch.full((c,), 0.5))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.dw(x).permute(0, 2, 3, 1)
        y = self.gamma * self.fc2(nn.functional.gelu(self.fc1(self.norm(y))))
        return x + y.permute(0, 3, 1, 2)


class ConvNeXt(nn.Module):
    def __init__(self, num_classes: int = 10) -> None:
        super().__init__()
        self.stem = nn.Conv2d(3, 16, 4, stride=4)
        self.block = ConvNeXtBlock(16)
        self.head = _head(16, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.block(self.stem(x)))


class FlattenLinear(nn.Module):
    """Conv features flattened straight into a linear layer (LeNet, VGG, AlexNet)."""

    def __init__(self, num_classes: int = 10, input_size: Size = SIZE) -> None:
        super().__init__()
        self.features = nn.Sequential(_stem(8), nn.MaxPool2d(2))
        h, w = input_size[1] // 2, input_size[2] // 2
        self.fc = nn.Sequential(nn.Flatten(), nn.Linear(8 * h * w, 32), nn.ReLU())
        self.out = nn.Linear(32, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.out(self.fc(self.features(x)))


class TinyViT(nn.Module):
    """A ViT: patch-embedding conv, class token, position embedding, TransformerEncoderLayers."""

    def __init__(self, num_classes: int = 10, input_size: Size = SIZE) -> None:
        super().__init__()
        dim, patch = 32, 4
        tokens = (input_size[1] // patch) * (input_size[2] // patch)
        self.embed = nn.Conv2d(3, dim, patch, stride=patch)
        self.cls = nn.Parameter(torch.zeros(1, 1, dim))
        self.pos = nn.Parameter(torch.randn(1, tokens + 1, dim) * 0.02)
        layer = nn.TransformerEncoderLayer(dim, 4, 64, dropout=0.0, batch_first=True)
        self.encoder = nn.TransformerEncoder(layer, 2, enable_nested_tensor=False)
        self.norm = nn.LayerNorm(dim)
        self.head = nn.Linear(dim, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.embed(x).flatten(2).transpose(1, 2)
        x = torch.cat([self.cls.expand(x.shape[0], -1, -1), x], dim=1) + self.pos
        return self.head(self.norm(self.encoder(x))[:, 0])


class Windowed(nn.Module):
    """Swin-style: channels-last windows (view / permute / reshape that keep the channel dim
    whole) and a layer used functionally, `F.linear(x, self.proj.weight, ...)`."""

    def __init__(self, num_classes: int = 10) -> None:
        super().__init__()
        self.stem = nn.Conv2d(3, 16, 2, stride=2)
        self.norm = nn.LayerNorm(16)
        self.proj = nn.Linear(16, 24)
        self.head = nn.Linear(24, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.stem(x).permute(0, 2, 3, 1)  # (N, H, W, C)
        n, h, w, c = x.shape
        windows = x.view(n, h // 2, 2, w // 2, 2, c).permute(0, 1, 3, 2, 4, 5).reshape(-1, 4, c)
        y = nn.functional.linear(self.norm(windows), self.proj.weight, self.proj.bias)
        return self.head(torch.relu(y).reshape(n, -1, y.shape[-1]).mean(1))


def Swin(num_classes: int = 10) -> nn.Module:
    """torchvision's Swin at a small size: shifted windows, heads packed in one qkv layer."""
    return SwinTransformer([2, 2], 16, [2, 2], [2, 4], [4, 4], stochastic_depth_prob=0.0,
                           num_classes=num_classes)  # fmt: skip


def SwinV2(num_classes: int = 10) -> nn.Module:
    """Swin V2: cosine attention, a per-head logit scale, a bias MLP with one output per head."""
    return SwinTransformer([2, 2], 16, [2, 2], [2, 4], [4, 4], stochastic_depth_prob=0.0,
                           num_classes=num_classes, block=SwinTransformerBlockV2,
                           downsample_layer=PatchMergingV2)  # fmt: skip


def MaxViT(num_classes: int = 10, input_size: Size = SIZE) -> nn.Module:
    """torchvision's MaxViT at a small size: MBConv, window and grid attention, relative bias."""
    return MaxVit(tuple(input_size[1:]), 8, 2, [16, 32], [1, 1], head_dim=8,
                  stochastic_depth_prob=0.0, num_classes=num_classes)  # fmt: skip


def ViT(num_classes: int = 10, input_size: Size = SIZE) -> nn.Module:
    """torchvision's VisionTransformer at a small size (it reshapes to its `hidden_dim`)."""
    return VisionTransformer(input_size[1], 4, 2, 2, 16, 32, num_classes=num_classes)


class Unverifiable(nn.Module):
    """Two units no tracer can see through, beside an ordinary one (the stem).

    `mid` feeds a per-position channel weighting (slimming shifts the positions, so the slimmed
    model computes something else) and `late` a reshape hard-wired to 24 channels (the slimmed
    model fails).
    """

    def __init__(self, num_classes: int = 10) -> None:
        super().__init__()
        self.stem = _stem(16)
        self.mid = nn.Conv2d(16, 16, 3, padding=1)
        self.late = nn.Conv2d(16, 24, 3, padding=1)
        self.head = nn.Linear(24, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = torch.relu(self.mid(self.stem(x)))
        x = x * torch.arange(1, x.shape[1] + 1, dtype=x.dtype).view(1, -1, 1, 1)
        x = torch.relu(self.late(x))
        return self.head(x.reshape(x.shape[0], 24, -1).mean(-1))


# every model here, by class name (`awkward:Grouped`): each takes num_classes (and input_size)
MODELS = (
    "Grouped", "ChunkCat", "Shuffle", "SENet", "Shared", "FreeScale", "GroupNormNet", "ConvNeXt",
    "FlattenLinear", "Windowed", "TinyViT", "Swin", "SwinV2", "MaxViT",
    "ViT",
)  # fmt: skip

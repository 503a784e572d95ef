"""CIFAR-style ResNet-20/56 (He et al. 2016) and VGG-16 with batch norm, for 32x32 inputs."""

from __future__ import annotations

from torch import Tensor, nn

from autoprune.errors import UsageError


class BasicBlock(nn.Module):
    """Two 3x3 conv-BN layers with an identity or 1x1 conv-BN ("option B") shortcut."""

    def __init__(self, in_channels: int, out_channels: int, stride: int) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(in_channels, out_channels, 3, stride, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(out_channels)
        self.conv2 = nn.Conv2d(out_channels, out_channels, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(out_channels)
        self.relu = nn.ReLU(inplace=True)
        # Option B (a projection) rather than option A (zero padding): a real layer lets the
        # dependency graph couple the block's output channels with the shortcut's.
        self.shortcut: nn.Module = nn.Identity()
        if stride != 1 or in_channels != out_channels:
            self.shortcut = nn.Sequential(
                nn.Conv2d(in_channels, out_channels, 1, stride, bias=False),
                nn.BatchNorm2d(out_channels),
            )

    def forward(self, x: Tensor) -> Tensor:
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return self.relu(out + self.shortcut(x))


class CifarResNet(nn.Module):
    """ResNet-(6n+2) for CIFAR: a 16-channel stem, then stages of 16, 32 and 64 channels."""

    def __init__(
        self,
        blocks_per_stage: int,
        num_classes: int = 10,
        input_size: tuple[int, int, int] = (3, 32, 32),
    ) -> None:
        super().__init__()
        self.stem = nn.Sequential(
            nn.Conv2d(input_size[0], 16, 3, 1, 1, bias=False),
            nn.BatchNorm2d(16),
            nn.ReLU(inplace=True),
        )
        layers: list[nn.Module] = []
        in_channels = 16
        for stage, width in enumerate((16, 32, 64)):
            for block in range(blocks_per_stage):
                stride = 2 if stage > 0 and block == 0 else 1
                layers.append(BasicBlock(in_channels, width, stride))
                in_channels = width
        self.layers = nn.Sequential(*layers)
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.flatten = nn.Flatten()
        self.fc = nn.Linear(64, num_classes)
        _init_weights(self)

    def forward(self, x: Tensor) -> Tensor:
        return self.fc(self.flatten(self.pool(self.layers(self.stem(x)))))


_VGG16_PLAN: tuple[int | str, ...] = (
    64, 64, "M", 128, 128, "M", 256, 256, 256, "M", 512, 512, 512, "M", 512, 512, 512, "M",
)  # fmt: skip


class CifarVGG(nn.Module):
    """VGG-16 with batch norm for 32x32 images: 13 conv-BN-ReLU layers, 5 max-pools, one linear."""

    def __init__(
        self, num_classes: int = 10, input_size: tuple[int, int, int] = (3, 32, 32)
    ) -> None:
        super().__init__()
        channels, height, width = input_size
        if height < 32 or width < 32:
            raise UsageError(
                f"vgg16 halves images five times and needs at least 32x32, got "
                f"{height}x{width}; pass --input-size 3x32x32 or larger"
            )
        layers: list[nn.Module] = []
        for item in _VGG16_PLAN:
            if isinstance(item, str):
                layers.append(nn.MaxPool2d(2))
            else:
                layers += [
                    nn.Conv2d(channels, item, 3, padding=1, bias=False),
                    nn.BatchNorm2d(item),
                    nn.ReLU(inplace=True),
                ]
                channels = item
        self.features = nn.Sequential(*layers)
        # At 32x32 the features are already 1x1; the pool lets larger inputs share the classifier.
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.flatten = nn.Flatten()
        self.classifier = nn.Linear(512, num_classes)
        _init_weights(self)

    def forward(self, x: Tensor) -> Tensor:
        return self.classifier(self.flatten(self.pool(self.features(x))))


def _init_weights(model: nn.Module) -> None:
    # He initialisation for ReLU networks, as in the ResNet paper; BN starts as the identity.
    for module in model.modules():
        if isinstance(module, nn.Conv2d):
            nn.init.kaiming_normal_(module.weight, mode="fan_out", nonlinearity="relu")
        elif isinstance(module, nn.BatchNorm2d):
            nn.init.ones_(module.weight)
            nn.init.zeros_(module.bias)
        elif isinstance(module, nn.Linear):
            nn.init.normal_(module.weight, 0.0, 0.01)
            nn.init.zeros_(module.bias)

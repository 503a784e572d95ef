"""LeNet-5 (Caffe variant, 20-50-500-10) and LeNet-300-100: the MNIST models of pruning papers."""

from __future__ import annotations

from torch import Tensor, nn

from autoprune.errors import UsageError


def _after_conv_pool(size: int, kernel: int = 5) -> int:
    """Spatial size after a valid `kernel` x `kernel` convolution and a 2x2 max-pool."""
    return (size - kernel + 1) // 2


class LeNet5(nn.Module):
    """Caffe's LeNet: conv(20,5) - pool - conv(50,5) - pool - fc(500) - relu - fc(classes).

    Caffe's prototxt has no non-linearity after the convolutions; we keep that so counts and
    accuracies compare with the papers (Han et al. 2015, ADMM, AutoPrune) that use it.
    """

    def __init__(self, num_classes: int = 10, input_size: tuple[int, int, int] = (1, 28, 28)):
        super().__init__()
        channels, height, width = input_size
        out_h = _after_conv_pool(_after_conv_pool(height))
        out_w = _after_conv_pool(_after_conv_pool(width))
        if out_h < 1 or out_w < 1:
            raise UsageError(
                f"lenet5 needs images of at least 16x16, got {height}x{width}; "
                "pass a larger --input-size"
            )
        self.features = nn.Sequential(
            nn.Conv2d(channels, 20, kernel_size=5),
            nn.MaxPool2d(2),
            nn.Conv2d(20, 50, kernel_size=5),
            nn.MaxPool2d(2),
        )
        # nn.Flatten (not x.view) so torch-pruning's tracer sees the conv -> linear coupling.
        self.flatten = nn.Flatten()
        self.classifier = nn.Sequential(
            nn.Linear(50 * out_h * out_w, 500),
            nn.ReLU(inplace=True),
            nn.Linear(500, num_classes),
        )

    def forward(self, x: Tensor) -> Tensor:
        return self.classifier(self.flatten(self.features(x)))


class LeNet300(nn.Module):
    """LeNet-300-100: the fully connected MNIST baseline (784-300-100-classes, ReLU)."""

    def __init__(self, num_classes: int = 10, input_size: tuple[int, int, int] = (1, 28, 28)):
        super().__init__()
        channels, height, width = input_size
        self.flatten = nn.Flatten()
        self.classifier = nn.Sequential(
            nn.Linear(channels * height * width, 300),
            nn.ReLU(inplace=True),
            nn.Linear(300, 100),
            nn.ReLU(inplace=True),
            nn.Linear(100, num_classes),
        )

    def forward(self, x: Tensor) -> Tensor:
        return self.classifier(self.flatten(x))

"""model.pt2: BatchNorm folded into the convolutions before it, outputs unchanged."""

from __future__ import annotations

from pathlib import Path

import torch
from torch import nn

from autoprune.export.program import export_program, fold_batchnorm, load_program
from autoprune.models import build_model


def _trained_bn(net: nn.Module) -> nn.Module:
    """Non-trivial BatchNorm statistics and affine parameters, as after training."""
    g = torch.Generator().manual_seed(0)
    for m in net.modules():
        if isinstance(m, nn.BatchNorm2d):
            m.running_mean.uniform_(-0.5, 0.5, generator=g)
            m.running_var.uniform_(0.5, 2.0, generator=g)
            m.weight.data.uniform_(0.5, 1.5, generator=g)
            m.bias.data.uniform_(-0.2, 0.2, generator=g)
    return net.eval()


def test_folding_removes_every_conv_batchnorm_pair_and_keeps_outputs(tmp_path: Path) -> None:
    net = _trained_bn(build_model("resnet20", num_classes=10, input_size=(3, 32, 32)))
    folded, n = fold_batchnorm(net, (3, 32, 32))
    bns = sum(isinstance(m, nn.BatchNorm2d) for m in net.modules())
    assert n == bns > 0
    assert not any(isinstance(m, nn.BatchNorm2d) for m in folded.modules())
    path = tmp_path / "model.pt2"
    info = export_program(net, (3, 32, 32), [0.5] * 3, [0.25] * 3, path, fold_bn=True)
    assert info == {"bn_folded": bns}
    x = torch.rand(3, 3, 32, 32)
    with torch.no_grad():
        want = net((x - 0.5) / 0.25)
        got = load_program(tmp_path / "model.pt2")(x)
    assert torch.allclose(got, want, atol=1e-5 * float(want.abs().max()))


def test_a_model_torch_fx_cannot_trace_is_exported_unfolded(tmp_path: Path) -> None:
    class Branchy(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.conv, self.bn = nn.Conv2d(1, 4, 3), nn.BatchNorm2d(4)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            y = self.bn(self.conv(x))
            return y.flatten(1) if x.shape[-1] > 4 else y  # control flow on a shape: fx refuses

    net = Branchy().eval()
    assert fold_batchnorm(net, (1, 8, 8)) == (net, 0)
    path = tmp_path / "m.pt2"
    assert export_program(net, (1, 8, 8), [0.0], [1.0], path, fold_bn=True) == {"bn_folded": 0}

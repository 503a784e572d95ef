"""model.pt2: BatchNorm folded, channels-last where faster, outputs unchanged, params recorded."""

from __future__ import annotations

from pathlib import Path

import torch
from torch import nn

from autoprune.cost.measure import count_params
from autoprune.export.fast import FastExportConfig, fastest_form
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
    fast = FastExportConfig(channels_last=False)
    info = export_program(net, (3, 32, 32), [0.5] * 3, [0.25] * 3, path, fast=fast)
    assert info == {
        "bn_folded": bns,
        "channels_last": False,
        "program_params": count_params(folded),
    }
    assert info["program_params"] < count_params(net)  # BatchNorm's parameters are gone
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
    info = export_program(net, (1, 8, 8), [0.0], [1.0], path, fast=FastExportConfig())
    assert info["bn_folded"] == 0
    assert info["program_params"] == count_params(net)


def test_channels_last_program_keeps_outputs_and_its_layout(tmp_path: Path) -> None:
    net = _trained_bn(build_model("resnet20", num_classes=10, input_size=(3, 32, 32)))
    path = tmp_path / "model.pt2"
    fast = FastExportConfig(channels_last=True)
    info = export_program(net, (3, 32, 32), [0.5] * 3, [0.25] * 3, path, fast=fast)
    assert info["channels_last"] is True
    program = load_program(path)
    conv = next(p for p in program.parameters() if p.dim() == 4 and p.shape[1] > 1)
    assert conv.is_contiguous(memory_format=torch.channels_last)
    x = torch.rand(2, 3, 32, 32)
    with torch.no_grad():
        want, got = net((x - 0.5) / 0.25), program(x)
    assert torch.allclose(got, want, atol=1e-5 * float(want.abs().max()))
    first = next(m for m in net.modules() if isinstance(m, nn.Conv2d))
    assert first.weight.is_contiguous()  # the model given is left as it was


def test_measured_layout_choice_is_recorded_and_the_faster_one() -> None:
    net = _trained_bn(build_model("resnet20", num_classes=10, input_size=(3, 32, 32)))
    model, info = fastest_form(net, (3, 32, 32), FastExportConfig(rounds=3))
    secs = info["layout_seconds"]
    assert info["channels_last"] == (secs["channels_last"] < 0.97 * secs["default"])
    first = next(m for m in model.modules() if isinstance(m, nn.Conv2d))
    assert first.weight.is_contiguous(memory_format=torch.channels_last) == info["channels_last"]

"""The model zoo: exact LeNet-5 counts, every model builds and runs, names and factories resolve."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
import torch_pruning as tp
from torch import nn

from autoprune.errors import UnknownNameError, UsageError
from autoprune.models import (
    MODELS,
    build_model,
    default_input_size,
    default_num_classes,
    list_models,
)

SMALL_INPUT = {"resnet20": (3, 16, 16), "resnet56": (3, 16, 16)}


@pytest.fixture
def user_models(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.syspath_prepend(str(Path(__file__).parent))


def _weights(model: nn.Module) -> int:
    return sum(m.weight.numel() for m in model.modules() if isinstance(m, (nn.Conv2d, nn.Linear)))


def _macs(model: nn.Module, input_size: tuple[int, int, int]) -> int:
    total = 0

    def count(module: nn.Module, _: tuple[torch.Tensor], out: torch.Tensor) -> None:
        nonlocal total
        per_output = module.weight[0].numel()  # in_channels/groups * kernel area (or in_features)
        total += out[0].numel() * per_output

    layers = [m for m in model.modules() if isinstance(m, (nn.Conv2d, nn.Linear))]
    handles = [m.register_forward_hook(count) for m in layers]
    with torch.no_grad():
        model.eval()(torch.zeros(1, *input_size))
    for handle in handles:
        handle.remove()
    return total


def test_lenet5_matches_the_caffe_counts() -> None:
    model = build_model("lenet5")
    assert _weights(model) == 430_500
    assert sum(p.numel() for p in model.parameters()) == 431_080
    assert _macs(model, (1, 28, 28)) == 2_293_000
    assert default_input_size("lenet5") == (1, 28, 28)
    assert default_num_classes("lenet5") == 10


def test_lenet5_sizes_its_classifier_from_the_input() -> None:
    model = build_model("lenet5", num_classes=7, input_size=(3, 32, 32))
    assert model.classifier[0].in_features == 50 * 5 * 5
    assert model(torch.zeros(2, 3, 32, 32)).shape == (2, 7)
    with pytest.raises(UsageError, match="at least 16x16"):
        build_model("lenet5", input_size=(1, 8, 8))


@pytest.mark.parametrize("name", MODELS.names())
def test_every_zoo_model_runs_a_forward_pass(name: str) -> None:
    size = SMALL_INPUT.get(name, default_input_size(name))
    model = build_model(name, num_classes=7, input_size=size)
    assert model(torch.randn(2, *size)).shape == (2, 7)


@pytest.mark.parametrize("name", ["resnet18", "mobilenet_v2"])
def test_torchvision_models_build_without_weights(name: str) -> None:
    model = build_model(name, num_classes=5, input_size=(3, 64, 64))
    assert model(torch.randn(2, 3, 64, 64)).shape == (2, 5)
    assert default_input_size(name) == (3, 224, 224)
    assert default_num_classes(name) == 1000


def test_torchvision_models_need_three_channels() -> None:
    with pytest.raises(UsageError, match="3-channel"):
        build_model("resnet18", input_size=(1, 64, 64))


def test_list_models_has_the_zoo_and_torchvision() -> None:
    names = list_models()
    assert {"lenet5", "lenet300", "resnet20", "resnet56", "vgg16"} <= set(names)
    assert {"resnet18", "mobilenet_v2", "densenet121", "efficientnet_b0"} <= set(names)
    assert names == sorted(names)


def test_unknown_model_suggests_a_close_name() -> None:
    with pytest.raises(UnknownNameError, match="resnet18"):
        build_model("resnet19")


@pytest.mark.parametrize(
    ("bad", "match"),
    [
        ({"num_classes": 0}, "num_classes must be a positive"),
        ({"input_size": (3, 32)}, "got \\(3, 32\\)"),
    ],
)
def test_bad_sizes_are_usage_errors(bad: dict[str, object], match: str) -> None:
    with pytest.raises(UsageError, match=match):
        build_model("resnet20", **bad)  # type: ignore[arg-type]


def test_resnet_shortcuts_couple_channels_in_the_dependency_graph() -> None:
    model = build_model("resnet20", input_size=(3, 16, 16))
    graph = tp.DependencyGraph().build_dependency(
        model, example_inputs=torch.zeros(1, 3, 16, 16), verbose=False
    )
    stem = model.stem[0]
    graph.get_pruning_group(stem, tp.prune_conv_out_channels, idxs=[0, 1, 2]).prune()
    # The stem's channels are added to every block output of stage 1 and enter stage 2's shortcut.
    assert model.layers[2].conv2.out_channels == 13
    assert model.layers[3].shortcut[0].in_channels == 13
    assert model(torch.zeros(2, 3, 16, 16)).shape == (2, 10)


def test_lenet5_conv_prunes_into_the_flattened_linear() -> None:
    model = build_model("lenet5")
    graph = tp.DependencyGraph().build_dependency(
        model, example_inputs=torch.zeros(1, 1, 28, 28), verbose=False
    )
    conv2 = model.features[2]
    graph.get_pruning_group(conv2, tp.prune_conv_out_channels, idxs=list(range(5))).prune()
    assert model.classifier[0].in_features == 45 * 16
    assert model(torch.zeros(1, 1, 28, 28)).shape == (1, 10)


def test_user_factory_gets_num_classes_and_input_size(user_models: None) -> None:
    assert default_input_size("user_models:tiny_net") == (1, 12, 12)
    assert default_num_classes("user_models:tiny_net") == 4
    model = build_model("user_models:tiny_net", num_classes=3, input_size=(2, 5, 5))
    assert model(torch.zeros(1, 2, 5, 5)).shape == (1, 3)


def test_user_factory_without_num_classes_is_checked(user_models: None) -> None:
    assert default_num_classes("user_models:fixed_net") == 10
    assert isinstance(build_model("user_models:fixed_net", num_classes=10), nn.Module)
    with pytest.raises(UsageError, match="add a num_classes parameter"):
        build_model("user_models:fixed_net", num_classes=3)


@pytest.mark.parametrize(
    ("spec", "message"),
    [
        ("no_such_module_xyz:net", "cannot import module"),
        ("user_models:missing", "has no attribute 'missing'"),
        ("user_models:NOT_CALLABLE", "not a callable"),
        ("user_models:not_a_module", "not a torch.nn.Module"),
        ("user_models:", "pkg.module:factory"),
        ("a:b:c", "pkg.module:factory"),
    ],
)
def test_user_factory_errors_are_one_line_usage_errors(
    user_models: None, spec: str, message: str
) -> None:
    with pytest.raises(UsageError, match=message) as info:
        build_model(spec, num_classes=10)
    assert "\n" not in str(info.value)

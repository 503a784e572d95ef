"""The model zoo: name -> network, for zoo names, torchvision names and `pkg.module:factory`.

Names resolve in this order:

1. the zoo registered here (`lenet5`, `lenet300`, `resnet20`, `resnet56`, `vgg16`, the CIFAR
   VGG-16 with BN). A zoo name shadows a torchvision name: torchvision's ImageNet VGG-16 is
   reachable as `torchvision.models:vgg16`;
2. `pkg.module:factory`: a user's own factory, called with `num_classes=` when it takes that
   keyword (or `**kwargs`) and with `input_size=` when it names that parameter;
3. any torchvision classification model (`resnet18`, `mobilenet_v2`, ...), built with
   `weights=None`: nothing is ever downloaded.
"""

from __future__ import annotations

import importlib
import inspect
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from autoprune.errors import UnknownNameError, UsageError
from autoprune.models.attention import pack_attention
from autoprune.models.cifar import CifarResNet, CifarVGG
from autoprune.models.lenet import LeNet5, LeNet300
from autoprune.registry import Registry

InputSize = tuple[int, int, int]
ModelFactory = Callable[[int, InputSize], nn.Module]

__all__ = [
    "MODELS",
    "InputSize",
    "ModelEntry",
    "build_model",
    "default_input_size",
    "default_num_classes",
    "list_models",
    "register_model",
]


@dataclass(frozen=True)
class ModelEntry:
    """How to build one named model, and the input and class count it is meant for."""

    factory: ModelFactory
    input_size: InputSize
    num_classes: int


MODELS: Registry[ModelEntry] = Registry("model")


def register_model(
    name: str, *, input_size: InputSize, num_classes: int = 10
) -> Callable[[ModelFactory], ModelFactory]:
    """Register `factory(num_classes, input_size)` under `name`."""

    def decorator(factory: ModelFactory) -> ModelFactory:
        MODELS.register(name)(ModelEntry(factory, input_size, num_classes))
        return factory

    return decorator


@register_model("lenet5", input_size=(1, 28, 28))
def _lenet5(num_classes: int, input_size: InputSize) -> nn.Module:
    return LeNet5(num_classes, input_size)


@register_model("lenet300", input_size=(1, 28, 28))
def _lenet300(num_classes: int, input_size: InputSize) -> nn.Module:
    return LeNet300(num_classes, input_size)


@register_model("resnet20", input_size=(3, 32, 32))
def _resnet20(num_classes: int, input_size: InputSize) -> nn.Module:
    return CifarResNet(3, num_classes, input_size)


@register_model("resnet56", input_size=(3, 32, 32))
def _resnet56(num_classes: int, input_size: InputSize) -> nn.Module:
    return CifarResNet(9, num_classes, input_size)


@register_model("vgg16", input_size=(3, 32, 32))
def _vgg16(num_classes: int, input_size: InputSize) -> nn.Module:
    return CifarVGG(num_classes, input_size)


# Builder arguments that torchvision's defaults get wrong for training from scratch: auxiliary
# heads make forward() return a tuple in train mode, and init_weights=None only warns.
_TV_EXTRA_KWARGS: dict[str, dict[str, Any]] = {
    "googlenet": {"aux_logits": False, "init_weights": True},
    "inception_v3": {"aux_logits": False, "init_weights": True},
}
_TV_INPUT_SIZE: dict[str, InputSize] = {"inception_v3": (3, 299, 299)}


def _tv_size_kwargs(name: str, height: int, width: int) -> dict[str, Any]:
    # Transformers bake the image size into their position embeddings; the CNNs pool it away.
    if name.startswith("vit_"):
        if height != width:
            raise UsageError(f"{name} needs square images, got {height}x{width}; pass HxH")
        return {"image_size": height}
    if name.startswith("maxvit_"):
        return {"input_size": (height, width)}
    return {}


def _torchvision_names() -> list[str]:
    import torchvision.models

    return list(torchvision.models.list_models(module=torchvision.models))


def _torchvision_entry(name: str) -> ModelEntry:
    import torchvision.models

    builder = torchvision.models.get_model_builder(name)

    def factory(num_classes: int, input_size: InputSize) -> nn.Module:
        channels, height, width = input_size
        if channels != 3:
            raise UsageError(
                f"torchvision model {name} takes 3-channel images, got input size "
                f"{'x'.join(map(str, input_size))}; use 3 channels (gray data is repeated to 3)"
            )
        kwargs = {**_TV_EXTRA_KWARGS.get(name, {}), **_tv_size_kwargs(name, height, width)}
        return builder(weights=None, num_classes=num_classes, **kwargs)

    return ModelEntry(factory, _TV_INPUT_SIZE.get(name, (3, 224, 224)), 1000)


def _takes(function: Callable[..., Any], keyword: str, *, via_kwargs: bool) -> bool:
    """Whether `function` accepts `keyword=` (optionally counting a `**kwargs` catch-all)."""
    try:
        params = inspect.signature(function).parameters
    except (TypeError, ValueError):  # builtins and some C extensions have no signature
        return False
    if keyword in params:
        return params[keyword].kind not in (
            inspect.Parameter.POSITIONAL_ONLY,
            inspect.Parameter.VAR_POSITIONAL,
        )
    return via_kwargs and any(p.kind is inspect.Parameter.VAR_KEYWORD for p in params.values())


def _signature_default(function: Callable[..., Any], keyword: str) -> Any:
    try:
        param = inspect.signature(function).parameters.get(keyword)
    except (TypeError, ValueError):
        return None
    return None if param is None or param.default is inspect.Parameter.empty else param.default


def _import_factory(spec: str) -> Callable[..., Any]:
    module_name, _, attribute = spec.partition(":")
    if not module_name or not attribute or ":" in attribute:
        raise UsageError(f"model {spec!r} is not of the form 'pkg.module:factory'")
    try:
        module = importlib.import_module(module_name)
    except ImportError as err:
        raise UsageError(
            f"cannot import module {module_name!r} for model {spec!r} ({err}); "
            "check the spelling and that its folder is on PYTHONPATH"
        ) from None
    factory = getattr(module, attribute, None)
    if factory is None:
        raise UsageError(
            f"module {module_name!r} has no attribute {attribute!r} (model {spec!r}); "
            "name a function or class that returns an nn.Module"
        )
    if not callable(factory):
        raise UsageError(f"{spec!r} is a {type(factory).__name__}, not a callable model factory")
    return factory


def _probe_classes(model: nn.Module, input_size: InputSize, spec: str) -> int:
    """Number of outputs of `model` on one blank image (for factories without num_classes)."""
    was_training = model.training
    model.eval()  # batch norm refuses a batch of one in train mode
    try:
        with torch.no_grad():
            out = model(torch.zeros(1, *input_size))
    except Exception as err:  # any failure of user code here means the sizes do not fit
        raise UsageError(
            f"model {spec!r} fails on a {'x'.join(map(str, input_size))} input ({err}); "
            "pass the input size it expects"
        ) from None
    finally:
        model.train(was_training)
    if not isinstance(out, torch.Tensor) or out.ndim != 2:
        raise UsageError(f"model {spec!r} must return a (batch, classes) tensor of logits")
    return int(out.shape[1])


def _factory_entry(spec: str, *, need_classes: bool) -> ModelEntry:
    factory = _import_factory(spec)
    default_size = _signature_default(factory, "input_size")
    input_size: InputSize = tuple(default_size) if _is_size(default_size) else (3, 224, 224)
    passes_classes = _takes(factory, "num_classes", via_kwargs=True)
    passes_size = _takes(factory, "input_size", via_kwargs=False)

    def call(kwargs: dict[str, Any]) -> nn.Module:
        model = factory(**kwargs)
        if not isinstance(model, nn.Module):
            raise UsageError(
                f"{spec!r} returned a {type(model).__name__}, not a torch.nn.Module; "
                "make the factory return the network"
            )
        return model

    def build(num_classes: int, size: InputSize) -> nn.Module:
        kwargs: dict[str, Any] = {"input_size": size} if passes_size else {}
        if passes_classes:
            kwargs["num_classes"] = num_classes
        model = call(kwargs)
        # Never drop num_classes silently: check what a factory without the argument outputs.
        if not passes_classes and (found := _probe_classes(model, size, spec)) != num_classes:
            raise UsageError(
                f"{spec!r} takes no num_classes argument and outputs {found} classes, but "
                f"{num_classes} are needed; add a num_classes parameter to the factory"
            )
        return model

    classes = _signature_default(factory, "num_classes")
    # Learning the default class count may mean building the model: only when it is asked for.
    if not need_classes:
        classes = 0
    elif not isinstance(classes, int) or isinstance(classes, bool):
        bare = call({"input_size": input_size} if passes_size else {})
        classes = _probe_classes(bare, input_size, spec)
    return ModelEntry(build, input_size, classes)


def _is_size(value: object) -> bool:
    return (
        isinstance(value, (tuple, list))
        and len(value) == 3
        and all(isinstance(v, int) and not isinstance(v, bool) and v > 0 for v in value)
    )


def _entry(name: str, *, need_classes: bool = True) -> ModelEntry:
    if name in MODELS:
        return MODELS.get(name)
    if ":" in name:
        return _factory_entry(name, need_classes=need_classes)
    if name in _torchvision_names():
        return _torchvision_entry(name)
    message = MODELS.unknown_message(name, extra=_torchvision_names())
    raise UnknownNameError(
        f"{message}; also any torchvision classification model, or 'pkg.module:factory'"
    )


def build_model(
    name: str, *, num_classes: int | None = None, input_size: InputSize | None = None
) -> nn.Module:
    """Build the network `name` with fresh weights, for `num_classes` and `input_size` (C, H, W).

    Both default to what the model was designed for (`default_num_classes`, `default_input_size`).
    """
    entry = _entry(name, need_classes=num_classes is None)
    if num_classes is None:
        num_classes = entry.num_classes
    elif isinstance(num_classes, bool) or not isinstance(num_classes, int) or num_classes < 1:
        raise UsageError(f"num_classes must be a positive integer, got {num_classes!r}")
    if input_size is None:
        input_size = entry.input_size
    elif not _is_size(input_size):
        raise UsageError(f"input_size must be three positive ints (C, H, W), got {input_size!r}")
    model = entry.factory(num_classes, tuple(input_size))  # type: ignore[arg-type]
    # nn.MultiheadAttention as the same math with an nn.Linear q/k/v projection: its heads and
    # the residual stream become prunable (`autoprune.models.attention`)
    return pack_attention(model)


def default_input_size(name: str) -> InputSize:
    """The (C, H, W) input `name` is designed for (3x224x224 for an unannotated factory)."""
    return _entry(name, need_classes=False).input_size


def default_num_classes(name: str) -> int:
    """The number of classes `name` is designed for (1000 for torchvision's ImageNet models)."""
    return _entry(name).num_classes


def list_models() -> list[str]:
    """Every name `build_model` accepts, except `pkg.module:factory` specs."""
    return sorted({*MODELS.names(), *_torchvision_names()})

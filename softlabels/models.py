"""Built-in model architectures, rebuilt from a JSON-able description.

An architecture is ``{"name": "mlp" | "cnn" | "timm" | "torchvision", "kwargs": {...}}`` (the
last two take the library's model name as ``kwargs["model"]``; see softlabels.vision.models). Checkpoints carry it, so a
checkpoint path alone is enough to rebuild its model. The registry is an explicit dict: nothing
registers itself on import.
"""

from __future__ import annotations

import math
from typing import Any

import torch
from torch import nn
from torch.nn.modules.lazy import LazyModuleMixin

from softlabels.errors import CheckpointError, ModelError


def mlp(
    in_shape: list[int], num_classes: int, hidden: list[int], dropout: float = 0.0
) -> nn.Module:
    """Flatten -> [Linear -> ReLU -> Dropout] * len(hidden) -> Linear."""
    layers: list[nn.Module] = [nn.Flatten()]
    width = math.prod(in_shape)
    for h in hidden:
        layers += [nn.Linear(width, h), nn.ReLU()]
        if dropout > 0:
            layers.append(nn.Dropout(dropout))
        width = h
    layers.append(nn.Linear(width, num_classes))
    return nn.Sequential(*layers)


def cnn(
    in_shape: list[int], num_classes: int, channels: list[int], fc: int, dropout: float = 0.0
) -> nn.Module:
    """[Conv3x3 -> ReLU -> MaxPool2] per channel count (pooling while the map is >= 2 wide),
    then Flatten -> Linear(fc) -> ReLU -> Dropout -> Linear."""
    if len(in_shape) != 3 or min(in_shape) < 1:
        hint = (
            f"add the channel axis: reshape the inputs to (N, 1, {in_shape[0]}, {in_shape[1]})"
            if len(in_shape) == 2
            else "give images shaped (N, C, H, W), or use the mlp model for other inputs"
        )
        raise ModelError(
            f"the built-in cnn takes images shaped (channels, height, width) (its first Conv2d "
            f"takes channels first), but these inputs are shaped {tuple(in_shape)}: {hint}"
        )
    layers: list[nn.Module] = []
    c, size = in_shape[0], min(in_shape[1:])
    for out in channels:
        layers += [nn.Conv2d(c, out, 3, padding=1), nn.ReLU()]
        if size >= 2:
            layers.append(nn.MaxPool2d(2))
            size //= 2
        c = out
    features = nn.Sequential(*layers)
    with torch.no_grad():
        flat = features(torch.zeros(1, *in_shape)).numel()
    head: list[nn.Module] = [nn.Flatten(), nn.Linear(flat, fc), nn.ReLU()]
    if dropout > 0:
        head.append(nn.Dropout(dropout))
    head.append(nn.Linear(fc, num_classes))
    return nn.Sequential(features, *head)


def timm(**kwargs: Any) -> nn.Module:
    """``timm.create_model(model, **kwargs)`` with random weights (softlabels.vision.models)."""
    from softlabels.vision.models import timm_architecture

    return timm_architecture(**kwargs)


def torchvision(**kwargs: Any) -> nn.Module:
    """``torchvision.models.get_model(model, **kwargs)`` with random weights."""
    from softlabels.vision.models import torchvision_architecture

    return torchvision_architecture(**kwargs)


ARCHITECTURES = {"mlp": mlp, "cnn": cnn, "timm": timm, "torchvision": torchvision}
MAX_PARAMETERS = 2**31  # 8 GiB of float32: far beyond any built-in model a checkpoint records


def build_model(arch: dict[str, Any]) -> nn.Module:
    name = arch.get("name") if isinstance(arch, dict) else None
    if name not in ARCHITECTURES:
        raise CheckpointError(
            f"unknown architecture {name!r}; built-in ones are {sorted(ARCHITECTURES)}"
        )
    kwargs = arch.get("kwargs", {})
    if not isinstance(kwargs, dict):
        raise CheckpointError(f"architecture kwargs must be a mapping, got {type(kwargs).__name__}")
    try:
        with torch.device("meta"):  # sizes only, nothing allocated: bound it before building
            size = sum(p.numel() for p in ARCHITECTURES[name](**kwargs).parameters())
    except (TypeError, ValueError, RuntimeError, OverflowError) as exc:
        raise CheckpointError(f"bad arguments for architecture {name!r}: {exc}") from exc
    if size > MAX_PARAMETERS:
        raise CheckpointError(
            f"architecture {name!r} with {kwargs} would have {size:,} parameters, over the "
            f"{MAX_PARAMETERS:,} this loader builds; the recorded architecture is not a real "
            f"model's"
        )
    try:
        return ARCHITECTURES[name](**kwargs)
    except (RuntimeError, MemoryError) as exc:
        raise CheckpointError(f"cannot build architecture {name!r} with {kwargs}: {exc}") from exc


def expected_input(module: nn.Module) -> str:
    """What the first layer with weights expects, in words (for error messages)."""
    for layer in module.modules():
        if isinstance(layer, LazyModuleMixin) and layer.has_uninitialized_params():
            return (
                f"its first layer, {type(layer).__name__}, is lazy: it sets its input size from "
                f"the first batch it sees"
            )
        if isinstance(layer, nn.Linear):
            return (
                f"its first Linear layer takes {layer.in_features} features of {layer.weight.dtype}"
            )
        if isinstance(layer, nn.Conv1d | nn.Conv2d | nn.Conv3d):
            return (
                f"its first {type(layer).__name__} takes {layer.in_channels} channels of "
                f"{layer.weight.dtype}"
            )
    return "its first layer's expectations are unknown"


def forward(
    module: nn.Module, x: torch.Tensor, *, name: str, error: type[ModelError] = ModelError
) -> torch.Tensor:
    """``module(x)``, with a user model's failure turned into one clear error that says which
    model failed, on what input, and what it expected. Output must be (batch, classes)."""
    try:
        out = module(x)
    except Exception as exc:
        raise error(
            f"model {name!r} failed on an input batch of shape {tuple(x.shape)} and dtype "
            f"{x.dtype}: {type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''} "
            f"({expected_input(module)})"
        ) from exc
    if not isinstance(out, torch.Tensor) or out.ndim != 2 or out.shape[0] != x.shape[0]:
        shape = tuple(out.shape) if isinstance(out, torch.Tensor) else type(out).__name__
        raise error(
            f"model {name!r} must return logits of shape (batch, classes); for a batch of "
            f"{x.shape[0]} it returned {shape}"
        )
    return out

"""Building a run's parts from its config: the student, the loss, and the class count."""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from softlabels.errors import ModelError, SoftLabelsError, SpecError
from softlabels.join import check_transfer
from softlabels.models import ARCHITECTURES, build_model, forward
from softlabels.store import StoreReader
from softlabels.transfer import TransferSet, import_callable
from softlabels.vision.models import is_vision_spec, load_vision_model, parse_spec
from trainer import modules
from trainer.config import LOSSES, TrainConfig


def architecture(
    config: TrainConfig, input_shape: tuple[int, ...], num_classes: int
) -> dict[str, Any] | None:
    """The JSON-able architecture of a built-in model, or None for module:function."""
    common = {"in_shape": list(input_shape), "num_classes": num_classes, "dropout": config.dropout}
    if config.model == "mlp":
        return {"name": "mlp", "kwargs": {**common, "hidden": list(config.hidden)}}
    if config.model == "cnn":
        return {
            "name": "cnn",
            "kwargs": {**common, "channels": list(config.channels), "fc": config.fc},
        }
    return None


_BUILT_IN = sorted(k for k in ARCHITECTURES if k not in ("timm", "torchvision"))  # by name alone


def build_student(
    config: TrainConfig, input_shape: tuple[int, ...], num_classes: int
) -> tuple[nn.Module, dict | None]:
    arch = architecture(config, input_shape, num_classes)
    if arch is not None:
        return build_model(arch), arch
    if is_vision_spec(config.model):
        return vision_student(config.model, input_shape, num_classes)
    if ":" not in config.model:
        raise SpecError(
            f"unknown model {config.model!r}: choose one of {', '.join(_BUILT_IN)}, "
            f"or module:function returning an nn.Module, or timm:NAME / torchvision:NAME"
        )
    module = import_callable(config.model)()
    if not isinstance(module, nn.Module):
        raise SoftLabelsError(
            f"model {config.model!r} returned {type(module).__name__}, not an nn.Module"
        )
    return module, None


def vision_student(
    spec: str, input_shape: tuple[int, ...], num_classes: int
) -> tuple[nn.Module, dict[str, Any]]:
    """A ``timm:NAME`` or ``torchvision:NAME`` student (random weights, or its ``weights=``
    file): ``num_classes`` defaults to the store's C, and a timm model's ``in_chans`` to the
    inputs' channels. Its checkpoint records the architecture, so it can teach in turn."""
    parsed = parse_spec(spec).with_defaults(num_classes=num_classes)
    if parsed.library == "timm" and len(input_shape) == 3 and input_shape[0] != 3:
        parsed = parsed.with_defaults(in_chans=input_shape[0])
    return load_vision_model(parsed), parsed.architecture()


def build_loss(config: TrainConfig, has_store: bool) -> nn.Module:
    """The loss module: ``LOSSES[config.loss]`` with a store, plain cross-entropy without."""
    return LOSSES[config.loss](config) if has_store else modules.HardCE()


def check_student(model: nn.Module, name: str, data: TransferSet, num_classes: int) -> None:
    """Run the student on two inputs: it must accept them and return (2, num_classes)."""
    x = torch.from_numpy(data.take(0, min(2, len(data))))
    was_training = model.training
    model.eval()  # no dropout draws, no batch-norm updates: the probe leaves no trace
    with torch.no_grad():
        out = forward(model, x, name=name)
    model.train(was_training)
    if out.shape[1] != num_classes:
        raise ModelError(
            f"student {name!r} returns {out.shape[1]} outputs, but there are {num_classes} classes"
        )


def resolve_num_classes(config: TrainConfig, data: TransferSet, store: StoreReader | None) -> int:
    """C from the store, else the config, else the transfer set's class names; never guessed
    from the labels present."""
    c = store.meta.num_classes if store is not None else config.num_classes or data.num_classes
    if c is None:
        raise SoftLabelsError(
            f"transfer set {data.name!r} does not name its classes, so the number of classes is "
            f"unknown; give it (num_classes=) or add class names to the data"
        )
    check_transfer(data, num_classes=c)
    return c

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


def build_student(
    config: TrainConfig, input_shape: tuple[int, ...], num_classes: int
) -> tuple[nn.Module, dict | None]:
    arch = architecture(config, input_shape, num_classes)
    if arch is not None:
        return build_model(arch), arch
    if ":" not in config.model:
        raise SpecError(
            f"unknown model {config.model!r}: choose one of {', '.join(sorted(ARCHITECTURES))}, "
            f"or module:function returning an nn.Module"
        )
    module = import_callable(config.model)()
    if not isinstance(module, nn.Module):
        raise SoftLabelsError(
            f"model {config.model!r} returned {type(module).__name__}, not an nn.Module"
        )
    return module, None


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

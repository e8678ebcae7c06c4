"""``timm:NAME`` and ``torchvision:NAME`` models as teachers and students.

SPEC: ``LIBRARY:NAME[,KEY=VALUE...]``, for example ``timm:resnet18,num_classes=10`` or
``timm:vit_tiny_patch16_224,num_classes=10,img_size=32,weights=vit.safetensors``. Each
KEY=VALUE is an argument of the library's model factory (``timm.create_model``,
``torchvision.models.get_model``); VALUE is read as an integer, a float, true/false/none, or
else a string. The one key of our own, ``weights``, names a local weights file: safetensors, or
a state_dict saved with ``torch.save`` (read with ``weights_only=True``, never unpickled). The
model is built with random weights and nothing is downloaded: ``pretrained`` is refused.

The architecture a store or checkpoint records is ``{"name": "timm" | "torchvision",
"kwargs": {"model": NAME, ...the arguments}}``; ``build`` rebuilds it (softlabels.models).
"""

from __future__ import annotations

import os
import pickle
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from softlabels.errors import CheckpointError, SpecError
from softlabels.vision._imports import import_timm, import_torchvision

LIBRARIES = ("timm", "torchvision")
WEIGHTS_KEY = "weights"
_REFUSED = ("pretrained", "pretrained_cfg", "pretrained_cfg_overlay", "checkpoint_path")


@dataclass(frozen=True)
class VisionSpec:
    library: str  # "timm" | "torchvision"
    model: str  # the library's model name
    kwargs: tuple[tuple[str, Any], ...]  # factory arguments, in SPEC order
    weights: str | None  # a local weights file

    def architecture(self) -> dict[str, Any]:
        return {"name": self.library, "kwargs": {"model": self.model, **dict(self.kwargs)}}

    def with_defaults(self, **defaults: Any) -> VisionSpec:
        """This SPEC with ``defaults`` added for the arguments it does not give."""
        given = dict(self.kwargs)
        extra = tuple((k, v) for k, v in defaults.items() if k not in given)
        return VisionSpec(self.library, self.model, self.kwargs + extra, self.weights)


def is_vision_spec(spec: str) -> bool:
    return spec.partition(":")[0] in LIBRARIES and bool(spec.partition(":")[2])


def parse_spec(spec: str) -> VisionSpec:
    """Parse ``LIBRARY:NAME[,KEY=VALUE...]`` (see the module docstring)."""
    library, _, rest = spec.partition(":")
    if library not in LIBRARIES or not rest:
        raise SpecError(f"{spec!r} is not a vision SPEC: use timm:NAME or torchvision:NAME")
    model, *pairs = rest.split(",")
    kwargs: list[tuple[str, Any]] = []
    weights = None
    for pair in pairs:
        key, eq, value = pair.partition("=")
        key = key.strip()
        if not eq or not key.isidentifier():
            raise SpecError(
                f"{spec!r}: {pair!r} is not KEY=VALUE (write e.g. {library}:{model},num_classes=10)"
            )
        if key in _REFUSED:
            raise SpecError(
                f"{spec!r}: {key!r} would download weights; build the model with random weights "
                f"and give a local file instead: {library}:{model},weights=PATH"
            )
        if key == WEIGHTS_KEY:
            weights = value
        elif key in dict(kwargs):
            raise SpecError(f"{spec!r} gives {key!r} twice")
        else:
            kwargs.append((key, _value(value)))
    return VisionSpec(library, model.strip(), tuple(kwargs), weights)


def _value(text: str) -> Any:
    for convert in (int, float):
        try:
            return convert(text)
        except ValueError:
            pass
    return {"true": True, "false": False, "none": None}.get(text.lower(), text)


def build(model: str, *, library: str, **kwargs: Any) -> nn.Module:
    """A randomly initialised ``model`` of ``library`` with the factory arguments ``kwargs``."""
    if library == "timm":
        timm = import_timm()
        if not timm.is_model(model):
            close = timm.list_models(f"*{model[:6]}*")[:5]
            raise SpecError(f"timm has no model {model!r} (similar names: {close})")
        factory = lambda: timm.create_model(model, pretrained=False, **kwargs)  # noqa: E731
    else:
        models = import_torchvision().models
        if model not in models.list_models():
            raise SpecError(
                f"torchvision has no classification model {model!r} (e.g. resnet18, "
                f"mobilenet_v3_small, efficientnet_b0, convnext_tiny, vit_b_16)"
            )
        factory = lambda: models.get_model(model, weights=None, **kwargs)  # noqa: E731
    try:
        return factory()
    except TypeError as exc:
        raise SpecError(f"bad arguments {kwargs} for {library} model {model!r}: {exc}") from exc


def timm_architecture(**kwargs: Any) -> nn.Module:
    """The ``timm`` entry of softlabels.models.ARCHITECTURES."""
    return build(library="timm", **kwargs)


def torchvision_architecture(**kwargs: Any) -> nn.Module:
    """The ``torchvision`` entry of softlabels.models.ARCHITECTURES."""
    return build(library="torchvision", **kwargs)


def load_vision_model(spec: VisionSpec) -> nn.Module:
    """The model ``spec`` names, with its weights file loaded if it gives one."""
    module = build(spec.model, library=spec.library, **dict(spec.kwargs))
    if spec.weights is not None:
        load_weights(module, spec.weights)
    return module


def load_weights(module: nn.Module, path: str) -> None:
    """Load a safetensors file or a weights-only ``torch.save`` state_dict into ``module``;
    every key must match (a plain state_dict, or one under "state_dict" or "model")."""
    if not os.path.isfile(path):
        raise CheckpointError(f"weights file {path!r} does not exist")
    if path.endswith(".safetensors"):
        from safetensors.torch import load_file

        try:
            state = load_file(path)
        except Exception as exc:
            raise CheckpointError(f"cannot read safetensors file {path!r}: {exc}") from exc
    else:
        try:
            state = torch.load(path, map_location="cpu", weights_only=True)
        except pickle.UnpicklingError as exc:
            raise CheckpointError(
                f"refusing to load {path!r}: it holds objects other than tensors and plain "
                f"data, which could run code on load; save the state_dict alone, or as "
                f"safetensors"
            ) from exc
        except Exception as exc:
            raise CheckpointError(f"cannot read weights file {path!r}: {exc}") from exc
        if isinstance(state, dict):
            state = next(
                (state[k] for k in ("state_dict", "model") if isinstance(state.get(k), dict)),
                state,
            )
    if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise CheckpointError(f"{path!r} does not hold a state_dict (a mapping of tensors)")
    try:
        result = module.load_state_dict(state, strict=False)
    except RuntimeError as exc:  # a shape that differs
        raise CheckpointError(f"weights in {path!r} do not fit the model: {exc}") from exc
    problems = []
    if result.missing_keys:
        problems.append(f"missing {result.missing_keys[:5]} ({len(result.missing_keys)} in all)")
    if result.unexpected_keys:
        extra = result.unexpected_keys
        problems.append(f"unexpected {extra[:5]} ({len(extra)} in all)")
    if problems:
        raise CheckpointError(
            f"weights in {path!r} do not fit {type(module).__name__}: " + "; ".join(problems)
        )

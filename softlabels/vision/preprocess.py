"""The preprocessing an image transfer set applies, recorded in the store so stage two feeds the
student exactly what the teacher saw.

Per image, from its decoded uint8 RGB pixels (H, W, 3): ``resize`` scales the shorter side to
that many pixels (the longer one to ``int(resize * long / short)``, PIL, ``interpolation``),
``crop`` cuts the centred ``crop`` x ``crop`` square (top-left at ``round((H - crop) / 2)``,
``round((W - crop) / 2)``), then each channel becomes ``(pixel / 255 - mean) / std`` in float32,
laid out (3, h, w). ``timm=NAME`` takes resize, crop, interpolation, mean and std from a timm
model's data config (crop = its input size, resize = floor(crop / crop_pct), as timm's eval
transform does); ``img_size=S`` overrides that input size.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, fields
from typing import Any

import numpy as np

from softlabels.errors import SpecError

INTERPOLATIONS = ("nearest", "bilinear", "bicubic")
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
_NAMED = {"imagenet-mean": IMAGENET_MEAN, "imagenet-std": IMAGENET_STD}


@dataclass(frozen=True)
class Preprocess:
    resize: int | None = None
    crop: int | None = None
    mean: tuple[float, float, float] = (0.0, 0.0, 0.0)
    std: tuple[float, float, float] = (1.0, 1.0, 1.0)
    interpolation: str = "bilinear"

    def __post_init__(self) -> None:
        for name in ("resize", "crop"):
            value = getattr(self, name)
            if value is not None and (isinstance(value, bool) or value < 1):
                raise SpecError(f"preprocessing {name} must be a positive integer, got {value!r}")
        if len(self.mean) != 3 or len(self.std) != 3 or min(self.std) <= 0:
            raise SpecError(
                f"preprocessing mean and std must be three numbers each, std > 0; got mean "
                f"{self.mean}, std {self.std}"
            )
        if self.interpolation not in INTERPOLATIONS:
            raise SpecError(
                f"interpolation must be one of {INTERPOLATIONS}, got {self.interpolation!r}"
            )

    @property
    def geometric(self) -> tuple[int | None, int | None, str]:
        """What changes the pixels before normalisation."""
        return self.resize, self.crop, self.interpolation

    def to_attr(self) -> dict[str, Any]:
        attr = asdict(self)
        attr["mean"], attr["std"] = list(self.mean), list(self.std)
        return attr

    @classmethod
    def from_attr(cls, attr: Any) -> Preprocess:
        if not isinstance(attr, dict) or set(attr) != {f.name for f in fields(cls)}:
            raise ValueError(f"transfer preprocess must be an object of {_keys()}, got {attr!r}")
        return cls(
            resize=attr["resize"],
            crop=attr["crop"],
            mean=tuple(float(v) for v in attr["mean"]),  # type: ignore[arg-type]
            std=tuple(float(v) for v in attr["std"]),  # type: ignore[arg-type]
            interpolation=str(attr["interpolation"]),
        )

    def differences(self, other: Preprocess) -> list[str]:
        """``field: mine vs other`` for each field that differs."""
        return [
            f"{f.name} {getattr(self, f.name)!r} vs {getattr(other, f.name)!r}"
            for f in fields(self)
            if getattr(self, f.name) != getattr(other, f.name)
        ]

    def normalise(self, pixels: np.ndarray) -> np.ndarray:
        """uint8 (B, h, w, 3) -> float32 (B, 3, h, w): (pixel / 255 - mean) / std."""
        x = pixels.astype(np.float32) / np.float32(255.0)
        x = (x - np.asarray(self.mean, np.float32)) / np.asarray(self.std, np.float32)
        return np.ascontiguousarray(x.transpose(0, 3, 1, 2))

    def normalise_chw(self, values: np.ndarray) -> np.ndarray:
        """float32 (B, 3, h, w) pixel values in [0, 255] (an augmented view of the pixels) ->
        float32 (B, 3, h, w): (value / 255 - mean) / std, per channel."""
        x = np.asarray(values, dtype=np.float32) / np.float32(255.0)
        mean = np.asarray(self.mean, np.float32)[:, None, None]
        x = (x - mean) / np.asarray(self.std, np.float32)[:, None, None]
        return np.ascontiguousarray(x, dtype=np.float32)


def _keys() -> list[str]:
    return [f.name for f in fields(Preprocess)]


def parse_preprocess(options: dict[str, str], spec: str) -> Preprocess:
    """The preprocessing of a transfer SPEC's ``?key=value,...`` options: ``timm``,
    ``img_size``, ``resize``, ``crop``, ``mean``, ``std`` (three numbers joined by ``/``, or
    ``imagenet``), ``interpolation``."""
    values: dict[str, Any] = {}
    if "timm" in options:
        values = timm_config(options["timm"], options.get("img_size"))
    elif "img_size" in options:
        raise SpecError(f"{spec!r}: img_size applies to timm=NAME only")
    for key in ("resize", "crop"):
        if key in options:
            values[key] = _int(options[key], key, spec)
    for key in ("mean", "std"):
        if key in options:
            values[key] = _triple(options[key], key, spec)
    if "interpolation" in options:
        values["interpolation"] = options["interpolation"]
    return Preprocess(**values)


def timm_config(model: str, img_size: str | None) -> dict[str, Any]:
    """resize, crop, mean, std and interpolation from timm's data config for ``model``."""
    from softlabels.vision._imports import import_timm

    timm = import_timm()
    from timm.data import resolve_data_config

    if not timm.is_model(model):
        raise SpecError(f"timm has no model {model!r} to take a data config from")
    overrides = {} if img_size is None else {"img_size": _int(img_size, "img_size", model)}
    config = resolve_data_config(
        overrides, pretrained_cfg=timm.models.get_pretrained_cfg(model).to_dict()
    )
    crop = int(config["input_size"][-1])
    interpolation = (
        config["interpolation"] if config["interpolation"] in INTERPOLATIONS else "bilinear"
    )
    return {
        "resize": math.floor(crop / config["crop_pct"]),
        "crop": crop,
        "mean": tuple(float(v) for v in config["mean"]),
        "std": tuple(float(v) for v in config["std"]),
        "interpolation": interpolation,
    }


def _int(text: str, key: str, spec: str) -> int:
    try:
        return int(text)
    except ValueError:
        raise SpecError(f"{spec!r}: {key} must be an integer, got {text!r}") from None


def _triple(text: str, key: str, spec: str) -> tuple[float, float, float]:
    if text == "imagenet":
        return _NAMED[f"imagenet-{key}"]
    try:
        parts = tuple(float(v) for v in text.split("/"))
    except ValueError:
        parts = ()
    if len(parts) != 3:
        raise SpecError(
            f"{spec!r}: {key} must be three numbers joined by '/' (e.g. 0.5/0.5/0.5) or "
            f"'imagenet', got {text!r}"
        )
    return parts  # type: ignore[return-value]

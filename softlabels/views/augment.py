"""Augmentation policies for views stores: sample a view's parameters, then apply them.

A policy does two separate things. ``sample(rng, input_shape)`` draws one view's parameters, a
float vector of ``len(param_names)`` values, and is the only place randomness enters;
``apply(x, params)`` is a pure function of one input and those parameters. A views store keeps
the parameters of every row (``view_params``), so ``apply(x_s, view_params[r])`` rebuilds row r's
input exactly, whatever drew it. ``view_rng(seed, sample, view)`` seeds each draw from the
(sample, view) pair alone, so any chunking, resume or process count draws the same parameters.

Built-in policies (``augment_spec`` parses their SPECs; ``policy_from_attr`` rebuilds them from a
store's ``views`` attribute):

    rrc-flip[:scale=LO-HI,ratio=LO-HI,flip=P]   random-resized crop, then a horizontal flip

A ``module:function`` SPEC calls a function the user names, returning a policy object; it is
imported only from a SPEC the user typed, never from a store's metadata. Such an object needs
``sample`` and ``apply``; ``name``, ``param_names`` and ``to_attr`` are optional (``UserPolicy``
fills them in: the SPEC, ``p0, p1, ...``, ``{"name": SPEC}``), and training rebuilds its views
only from the same SPEC (``distill train --augment``), checked against the stored description.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Protocol, runtime_checkable

import numpy as np

from softlabels.errors import SpecError

RRC_FLIP = "rrc-flip"
_CROP_ATTEMPTS = 10  # torchvision's RandomResizedCrop tries 10 boxes before a centre crop


@runtime_checkable
class Policy(Protocol):
    """An augmentation as two steps: draw parameters, then apply them (deterministically).
    A user's object needs only ``sample`` and ``apply``: ``check_policy`` completes the rest."""

    name: str
    param_names: tuple[str, ...]

    def sample(self, rng: np.random.Generator, input_shape: tuple[int, ...]) -> np.ndarray:
        """One view's parameters, shape (len(param_names),), float32-exact values."""
        ...

    def apply(self, x: np.ndarray, params: np.ndarray) -> np.ndarray:
        """The view of one float32 input ``x`` (the transfer set's input shape) under
        ``params``: float32, the same shape as ``x``."""
        ...

    def to_attr(self) -> dict[str, Any]:
        """A JSON description of the policy: ``{"name": ..., its arguments}``."""
        ...


def view_rng(seed: int, sample: int, view: int) -> np.random.Generator:
    """The generator of view ``view`` of transfer sample ``sample``: a function of the three
    numbers alone (numpy's SeedSequence over the list [seed, sample, view])."""
    return np.random.default_rng([seed, sample, view])


def image_hw(input_shape: tuple[int, ...]) -> tuple[int, int]:
    """(H, W) of an image input shaped (C, H, W), (H, W), or flat (H * W,) with H = W."""
    if len(input_shape) in (2, 3):
        return input_shape[-2], input_shape[-1]
    if len(input_shape) == 1 and math.isqrt(input_shape[0]) ** 2 == input_shape[0]:
        side = math.isqrt(input_shape[0])
        return side, side
    raise SpecError(
        f"the {RRC_FLIP} policy crops images shaped (C, H, W), (H, W) or flat squares (H*H,); "
        f"these inputs are shaped {input_shape}: give a module:function policy for them"
    )


@dataclass(frozen=True)
class RandomResizedCropFlip:
    """torchvision's RandomResizedCrop box draw, then a horizontal flip with probability ``flip``.

    Parameters (all integers, exact in float32): top, left, height, width of the crop box in
    input pixels, and flip (0 or 1). ``apply`` resizes the box to H x W by bilinear
    interpolation with half-pixel centres and no antialiasing (as torch's ``interpolate`` with
    align_corners=False, here in float32 numpy, so that a batch of views, ``apply_batch``, is
    bit for bit the views made one at a time), then reverses the columns if flip is 1.
    """

    scale: tuple[float, float] = (0.35, 1.0)
    ratio: tuple[float, float] = (3 / 4, 4 / 3)
    flip: float = 0.5
    name: str = RRC_FLIP
    param_names: tuple[str, ...] = ("top", "left", "height", "width", "flip")

    def __post_init__(self) -> None:
        lo, hi = self.scale
        if not 0 < lo <= hi <= 1:
            raise SpecError(f"{RRC_FLIP}: scale must satisfy 0 < lo <= hi <= 1, got {self.scale}")
        if not 0 < self.ratio[0] <= self.ratio[1] or not math.isfinite(self.ratio[1]):
            raise SpecError(f"{RRC_FLIP}: ratio must satisfy 0 < lo <= hi, got {self.ratio}")
        if not 0 <= self.flip <= 1:
            raise SpecError(f"{RRC_FLIP}: flip is a probability in [0, 1], got {self.flip}")

    def sample(self, rng: np.random.Generator, input_shape: tuple[int, ...]) -> np.ndarray:
        h, w = image_hw(input_shape)
        top, left, height, width = self._box(rng, h, w)
        flip = float(rng.random() < self.flip)
        return np.array([top, left, height, width, flip], dtype=np.float32)

    def _box(self, rng: np.random.Generator, h: int, w: int) -> tuple[int, int, int, int]:
        area = h * w
        log_ratio = (math.log(self.ratio[0]), math.log(self.ratio[1]))
        for _ in range(_CROP_ATTEMPTS):
            target = area * rng.uniform(*self.scale)
            aspect = math.exp(rng.uniform(*log_ratio))
            cw = round(math.sqrt(target * aspect))
            ch = round(math.sqrt(target / aspect))
            if 0 < cw <= w and 0 < ch <= h:
                return int(rng.integers(0, h - ch + 1)), int(rng.integers(0, w - cw + 1)), ch, cw
        # Fallback, as torchvision: the whole image, cut to the nearest allowed aspect ratio.
        if w / h < self.ratio[0]:
            cw, ch = w, round(w / self.ratio[0])
        elif w / h > self.ratio[1]:
            ch, cw = h, round(h * self.ratio[1])
        else:
            cw, ch = w, h
        return (h - ch) // 2, (w - cw) // 2, ch, cw

    def apply(self, x: np.ndarray, params: np.ndarray) -> np.ndarray:
        return self.apply_batch(np.asarray(x)[None], np.asarray(params)[None])[0]

    def apply_batch(self, xs: np.ndarray, params: np.ndarray) -> np.ndarray:
        """(R, *shape) float32 views of R inputs under their (R, 5) parameters, each exactly what
        ``apply`` gives it alone: elementwise float32 numpy, the same operations in the same
        order for every row (FORMAT.md, "Views stores", is this computation)."""
        xs = np.asarray(xs, dtype=np.float32)
        shape, r = xs.shape[1:], len(xs)
        h, w = image_hw(tuple(shape))
        p = np.asarray(params, dtype=np.float64).reshape(r, len(self.param_names))
        bad = self.bad_rows(p, tuple(shape))
        if len(bad):
            raise ValueError(f"{RRC_FLIP} parameters {p[bad[0]].tolist()} do not fit {shape}")
        top, left, height, width, flip = (p[:, k].astype(np.int64) for k in range(5))
        img = xs.reshape(r, -1, h, w)
        r0, r1, wr = _taps(h, height)  # (R, H) source rows inside the box, and weights
        c0, c1, wc = _taps(w, width)
        n, ch = np.arange(r)[:, None, None], np.arange(img.shape[1])[None, :, None]
        rows = img[n, ch, (top[:, None] + r0)[:, None, :]] * (1 - wr)[:, None, :, None]
        rows = rows + img[n, ch, (top[:, None] + r1)[:, None, :]] * wr[:, None, :, None]
        n4 = np.arange(r)[:, None, None, None]
        cols0 = (left[:, None] + c0)[:, None, None, :]
        cols1 = (left[:, None] + c1)[:, None, None, :]
        ch4, rr = np.arange(img.shape[1])[None, :, None, None], np.arange(h)[None, None, :, None]
        out = rows[n4, ch4, rr, cols0] * (1 - wc)[:, None, None, :]
        out = out + rows[n4, ch4, rr, cols1] * wc[:, None, None, :]
        out[flip == 1] = out[flip == 1][..., ::-1]
        return np.ascontiguousarray(out.reshape(xs.shape), dtype=np.float32)

    def bad_rows(self, params: np.ndarray, input_shape: tuple[int, ...]) -> np.ndarray:
        """Rows of (R, 5) ``params`` that are not a whole-pixel box inside the image with
        flip 0 or 1."""
        h, w = image_hw(input_shape)
        top, left, height, width, flip = params.T
        whole = (params == np.round(params)).all(axis=1) & np.isfinite(params).all(axis=1)
        inside = (top >= 0) & (left >= 0) & (height >= 1) & (width >= 1)
        inside &= (top + height <= h) & (left + width <= w)
        return np.flatnonzero(~(whole & inside & ((flip == 0) | (flip == 1))))

    def to_attr(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "scale": list(self.scale),
            "ratio": list(self.ratio),
            "flip": self.flip,
        }


def _taps(n_out: int, n_in: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Bilinear, half-pixel centres (align_corners=False): for each of R boxes of ``n_in``
    pixels and output pixel i, the two source pixels and the float32 weight of the second."""
    src = np.maximum((np.arange(n_out)[None, :] + 0.5) * (n_in[:, None] / n_out) - 0.5, 0)
    lo = np.floor(src).astype(np.int64)
    return lo, np.minimum(lo + 1, n_in[:, None] - 1), (src - lo).astype(np.float32)


BUILTIN_POLICIES = {RRC_FLIP: RandomResizedCropFlip}


def augment_spec(spec: str) -> Policy:
    """The policy an ``--augment`` SPEC names: ``rrc-flip[:KEY=VALUE,...]`` (keys ``scale`` and
    ``ratio`` take ``LO-HI``, ``flip`` a probability) or ``module:function``, called with no
    arguments and returning a policy object."""
    name, _, args = spec.partition(":")
    if name in BUILTIN_POLICIES:
        return RandomResizedCropFlip(**_builtin_args(spec, args))
    from softlabels.transfer import import_callable  # imports only what the user typed

    if ":" not in spec:
        raise SpecError(
            f"unknown augmentation {spec!r}: use one of {sorted(BUILTIN_POLICIES)} "
            f"(e.g. 'rrc-flip:scale=0.35-1,flip=0.5') or module:function"
        )
    return check_policy(import_callable(spec)(), spec)


def _builtin_args(spec: str, args: str) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for item in filter(None, args.split(",")):
        key, eq, value = item.partition("=")
        try:
            if not eq or key not in ("scale", "ratio", "flip") or key in out:
                raise ValueError(key)
            if key == "flip":
                out[key] = float(value)
            else:
                lo, hi = value.split("-")
                out[key] = (float(lo), float(hi))
        except ValueError as exc:
            raise SpecError(
                f"cannot parse {item!r} in --augment {spec!r}: use "
                f"'{RRC_FLIP}:scale=LO-HI,ratio=LO-HI,flip=P', each key at most once"
            ) from exc
    return out


@dataclass(frozen=True)
class UserPolicy:
    """A user's policy object that has ``sample`` and ``apply`` and maybe not the rest of the
    protocol, completed: ``name`` defaults to the SPEC that built it (or its class name),
    ``param_names`` to ``p0, p1, ...`` (as many as one ``sample`` draws, or the store's names),
    ``to_attr()`` to ``{"name": name}``. ``apply_batch`` is the object's own, if it has one."""

    inner: Any
    name: str
    param_names: tuple[str, ...] | None  # None until an input shape or a store tells

    def sample(self, rng: np.random.Generator, input_shape: tuple[int, ...]) -> np.ndarray:
        return self.inner.sample(rng, input_shape)

    def apply(self, x: np.ndarray, params: np.ndarray) -> np.ndarray:
        return self.inner.apply(x, params)

    @property
    def apply_batch(self) -> Any:
        return getattr(self.inner, "apply_batch", None)

    def to_attr(self) -> dict[str, Any]:
        own = getattr(self.inner, "to_attr", None)
        return own() if own is not None else {"name": self.name}


def check_policy(
    policy: Any,
    where: str,
    *,
    input_shape: tuple[int, ...] | None = None,
    param_names: tuple[str, ...] | None = None,
) -> Policy:
    """``policy`` if it has ``sample`` and ``apply``, completed as a ``UserPolicy`` where it
    lacks ``name``, ``param_names`` or ``to_attr``: its parameter names are then the store's
    (``param_names``), or ``p0..p{P-1}`` for the P values one draw gives on ``input_shape``
    (drawn from ``view_rng(0, 0, 0)``, which the policy must not mind). ``to_attr()`` must give
    a JSON object with a string ``name``."""
    inner = policy.inner if isinstance(policy, UserPolicy) else policy
    missing = [m for m in ("sample", "apply") if not callable(getattr(inner, m, None))]
    if missing:
        raise SpecError(
            f"{where} returned {type(inner).__name__}, which lacks {', '.join(missing)}: an "
            f"augmentation policy needs sample(rng, input_shape) and apply(x, params), and may "
            f"have name, param_names and to_attr() (see softlabels.views.augment.Policy)"
        )
    if not isinstance(policy, UserPolicy) and all(
        hasattr(policy, m) for m in ("name", "param_names", "to_attr")
    ):
        _check_attr(policy, where)
        return policy
    name = policy.name if isinstance(policy, UserPolicy) else getattr(inner, "name", None) or where
    names = getattr(inner, "param_names", None) or param_names
    if names is None and isinstance(policy, UserPolicy):
        names = policy.param_names
    if names is None and input_shape is not None:
        drawn = np.asarray(inner.sample(view_rng(0, 0, 0), tuple(input_shape)))
        names = tuple(f"p{i}" for i in range(drawn.size))
    completed = UserPolicy(inner, str(name), None if names is None else tuple(names))
    _check_attr(completed, where)
    return completed


def _check_attr(policy: Any, where: str) -> None:
    attr = policy.to_attr()
    if not isinstance(attr, dict) or not isinstance(attr.get("name"), str):
        raise SpecError(f"{where}: to_attr() must return a JSON object with a string 'name'")


def policy_from_attr(attr: dict[str, Any]) -> RandomResizedCropFlip:
    """A built-in policy from the ``policy`` object of a store's ``views`` attribute. Other
    policies are never rebuilt from metadata: pass their ``module:function`` SPEC again."""
    name = attr.get("name")
    if name not in BUILTIN_POLICIES:
        raise SpecError(
            f"the store's views were made by the policy {name!r}, which is not built in; give "
            f"its module:function SPEC again (--augment) to rebuild the views"
        )
    try:
        return RandomResizedCropFlip(
            scale=_pair(attr["scale"]), ratio=_pair(attr["ratio"]), flip=float(attr["flip"])
        )
    except (KeyError, TypeError, ValueError) as exc:
        raise SpecError(f"the store's {name!r} policy arguments are malformed: {attr!r}") from exc


def _pair(value: Any) -> tuple[float, float]:
    if not isinstance(value, list) or len(value) != 2:
        raise ValueError(f"expected [lo, hi], got {value!r}")
    return float(value[0]), float(value[1])

"""The tail of a sparse row: the mass at temperature T of the ids outside its support.

For the logits t_j of the n ids outside the support, f(b) = log sum_j exp(b * t_j) is the tail's
log-partition at inverse temperature b = 1/T. A sparse store keeps, per row and group, the
values L_a = T_a * f(1/T_a) at a few anchor temperatures T_a (in logit units); f(0) = log n is
known. f is convex in b (it is a cumulant generating function), which gives:

* the estimate: the polynomial in b through all the nodes (exact for a Gaussian tail, whose f
  is a quadratic), clamped into
* the bounds: between two nodes f lies under their chord and above the extensions of the
  neighbouring chords; beyond the last node (T below the smallest anchor) the last chord's
  extension is a lower bound, and a ceiling on the outside logits gives an upper one.

``check_tail`` refuses summaries no set of logits could produce.
"""

from __future__ import annotations

import numpy as np

# Relative slack for float32 storage when checking convexity and the support bound.
_SLACK = 1e-5


def nodes(tail: np.ndarray, anchors: tuple[float, ...], outside: int) -> tuple[np.ndarray, ...]:
    """(b, f): the nodes in increasing b, with b = 0 first. tail: (..., A) in logit units."""
    order = np.argsort(-np.asarray(anchors, dtype=np.float64))  # decreasing T = increasing b
    b = np.concatenate([[0.0], 1.0 / np.asarray(anchors, dtype=np.float64)[order]])
    f = np.asarray(tail, dtype=np.float64)[..., order] * b[1:]
    f0 = np.full(f.shape[:-1] + (1,), np.log(outside))
    return b, np.concatenate([f0, f], axis=-1)


def log_partition(
    tail: np.ndarray,
    anchors: tuple[float, ...],
    outside: int,
    temperature: float,
    ceiling: np.ndarray | None = None,
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(estimate, lower, upper) of f(1/T) for each row of ``tail`` (..., A).

    Between b = 0 and the largest anchor b: the polynomial through every node, clamped into the
    convexity bounds. Beyond it (T below the smallest anchor): the last chord's extension is a
    lower bound; ``ceiling`` (..., an upper bound on the outside logits, such as the smallest
    top logit) gives the upper bound f_last + ceiling * (b - b_last), and the estimate is the
    middle of the two (the lower bound alone without a ceiling)."""
    b, f = nodes(tail, anchors, outside)
    x = 1.0 / temperature
    slopes = np.diff(f, axis=-1) / np.diff(b)
    if x >= b[-1]:
        lower = f[..., -1] + slopes[..., -1] * (x - b[-1])
        if ceiling is None:
            return lower, lower, np.full_like(lower, np.inf)
        upper = np.maximum(lower, f[..., -1] + ceiling * (x - b[-1]))
        return (lower + upper) / 2, lower, upper
    i = int(np.searchsorted(b, x, side="right") - 1)  # x in [b_i, b_i+1)
    upper = f[..., i] + slopes[..., i] * (x - b[i])
    lower = np.full_like(upper, -np.inf)
    if i > 0:
        lower = np.maximum(lower, f[..., i] + slopes[..., i - 1] * (x - b[i]))
    if i + 1 < len(b) - 1:
        lower = np.maximum(lower, f[..., i + 1] + slopes[..., i + 1] * (x - b[i + 1]))
    return np.clip(_lagrange(b, f, x), lower, upper), lower, upper


def _lagrange(xs: np.ndarray, ys: np.ndarray, x: float) -> np.ndarray:
    out = np.zeros(ys.shape[:-1])
    for j, xj in enumerate(xs):
        basis = np.prod([(x - xm) / (xj - xm) for m, xm in enumerate(xs) if m != j])
        out = out + ys[..., j] * basis
    return out


def tail_values(outside_logits: np.ndarray, anchors: tuple[float, ...]) -> np.ndarray:
    """(..., A) float64: T_a * logsumexp(t / T_a) over the last axis, -inf entries excluded."""
    top = outside_logits.max(axis=-1, keepdims=True)
    out = []
    for t in anchors:
        s = np.exp((outside_logits - top) / t).sum(axis=-1)
        out.append(top[..., 0] + t * np.log(s))
    return np.stack(out, axis=-1)


def check_tail(
    tail: np.ndarray, anchors: tuple[float, ...], outside: int, ceiling: np.ndarray | None
) -> np.ndarray:
    """Rows (first axis) whose tail summary no logits could produce: not finite, not convex in
    b, or, given ``ceiling`` (..., the smallest logit in the top of the support, for a group
    whose support is its own top), claiming logits above it."""
    bad = ~np.isfinite(tail).all(axis=-1)
    b, f = nodes(np.where(np.isfinite(tail), tail, 0.0), anchors, outside)
    slopes = np.diff(f, axis=-1) / np.diff(b)
    scale = 1.0 + np.abs(f).max(axis=-1, keepdims=True)
    slack = _SLACK * scale[..., 0] / np.diff(b).min()
    bad |= (np.diff(slopes, axis=-1) < -slack[..., None]).any(axis=-1)
    if ceiling is not None:
        # every outside logit <= ceiling  =>  T * f(1/T) <= T log n + ceiling
        limit = np.asarray(anchors) * np.log(outside) + ceiling[..., None]
        bad |= (tail > limit + _SLACK * (1.0 + np.abs(limit))).any(axis=-1)
    while bad.ndim > 1:
        bad = bad.any(axis=-1)
    return bad

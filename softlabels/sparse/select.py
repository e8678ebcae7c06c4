"""Stage one's half of a sparse store: from dense logits to a row's stored support.

Per row, from the members' logits z_m (float32, all C classes):

1. values: rounded to the store's value encoding; everything below uses the rounded logits, so
   a reader recomputes every derived number (the ranking, the inclusion probabilities) exactly;
2. the ranking logits zbar = sum_m w_m z_m (the geometric ensemble, or the single teacher);
3. the top ``top_k`` ids of zbar (ties go to the lower id);
4. optionally ``sample`` more ids, drawn without replacement from the rest by systematic
   sampling with inclusion probabilities pi_j = min(1, c * exp(zbar_j / T_q)), sum pi = sample,
   and one uniform per row from (seed, sample_index), so any process reproduces it;
5. the tail: for each group, T_a * logsumexp(z / T_a) over the ids outside the support.

All of it runs in float64 numpy on the CPU: the arrays are bitwise reproducible, whatever
device ran the teachers.
"""

from __future__ import annotations

import numpy as np

from softlabels import schema
from softlabels.schema import SparseSpec
from softlabels.sparse.tail import tail_values

_BLOCK_VALUES = 1 << 23  # rows per block: about this many float64 logits at a time
_GOLDEN = np.uint64(0x9E3779B97F4A7C15)


def sparsify(
    member_logits: np.ndarray,
    sample_index: np.ndarray,
    *,
    weights: tuple[float, ...],
    combine: str,
    spec: SparseSpec,
    dtype: str,
) -> dict[str, np.ndarray]:
    """The sparse arrays of these rows (all but ``sample_index`` and ``labels``), by name.

    member_logits: (R, M, C) float32, every member's logits; sample_index: (R,) int64."""
    r, m, c = member_logits.shape
    block = max(1, _BLOCK_VALUES // (m * c))
    parts = [
        _sparsify_block(
            member_logits[i : i + block], sample_index[i : i + block], weights, combine, spec, dtype
        )
        for i in range(0, r, block)
    ]
    return {name: np.concatenate([p[name] for p in parts]) for name in parts[0]}


def _sparsify_block(
    z: np.ndarray,
    sample_index: np.ndarray,
    weights: tuple[float, ...],
    combine: str,
    spec: SparseSpec,
    dtype: str,
) -> dict[str, np.ndarray]:
    out: dict[str, np.ndarray] = {}
    zhat, stored, offsets = round_values(z, spec.value_step, dtype)
    if offsets is not None:
        out[schema.VALUE_OFFSETS] = offsets
    zbar = ranking_logits(zhat, weights)
    top = top_ids(zbar, spec.top_k)
    ids = top
    if spec.sample:
        sampled, log_scale = sample_ids(
            zbar, top, spec.sample, spec.proposal_temperature, spec.seed, sample_index
        )
        ids = np.concatenate([top, sampled], axis=1)
        out[schema.INCLUSION_LOG_SCALE] = log_scale
    out[schema.ID_GAPS] = encode_ids(ids, spec.top_k)
    out[schema.VALUES] = np.take_along_axis(stored, ids[:, None, :], axis=2)
    out[schema.TAIL] = tails(zhat, zbar, ids, combine, spec.tail_temperatures)
    return out


def round_values(
    z: np.ndarray, step: float | None, dtype: str
) -> tuple[np.ndarray, np.ndarray, np.ndarray | None]:
    """(logits as a reader decodes them (float64), the stored values, per-(row, member)
    offsets or None). Fixed point: value = offset - step * code, offset = the row's max."""
    if step is None:
        stored = z.astype(dtype)
        return stored.astype(np.float64), stored, None
    offsets = z.max(axis=-1).astype(np.float32)
    codes = np.rint((offsets[..., None].astype(np.float64) - z) / step)
    codes = np.clip(codes, 0, schema.MAX_CODE).astype(np.uint16)
    return decode_fixed(codes, offsets, step), codes, offsets


def decode_fixed(codes: np.ndarray, offsets: np.ndarray, step: float) -> np.ndarray:
    """value = offset - step * code, in float64. codes (..., M, K), offsets (..., M)."""
    return offsets[..., None].astype(np.float64) - step * codes.astype(np.float64)


def ranking_logits(zhat: np.ndarray, weights: tuple[float, ...]) -> np.ndarray:
    """zbar = sum_m w_m z_m (R, C) float64: what the support is chosen by."""
    if zhat.shape[1] == 1:
        return zhat[:, 0]
    return np.einsum("rmc,m->rc", zhat, np.asarray(weights, dtype=np.float64))


def top_ids(zbar: np.ndarray, k: int) -> np.ndarray:
    """(R, k) int64: the ids of the k largest zbar in each row, ascending; ties to lower ids."""
    c = zbar.shape[1]
    kth = np.partition(zbar, c - k, axis=1)[:, c - k : c - k + 1]
    above = zbar > kth
    tied = zbar == kth
    room = k - above.sum(axis=1, keepdims=True)
    take = above | (tied & (np.cumsum(tied, axis=1) <= room))
    return np.nonzero(take)[1].reshape(len(zbar), k).astype(np.int64)


def sample_ids(
    zbar: np.ndarray,
    top: np.ndarray,
    sample: int,
    proposal_temperature: float,
    seed: int,
    sample_index: np.ndarray,
) -> tuple[np.ndarray, np.ndarray]:
    """(ids (R, S) ascending, log_scale (R,) float32): S ids outside ``top`` by systematic
    sampling with pi_j = min(1, exp(log_scale + zbar_j / T_q)) summing to S."""
    r, c = zbar.shape
    lw = zbar / proposal_temperature
    np.put_along_axis(lw, top, -np.inf, axis=1)
    log_scale = capped_log_scale(lw, sample).astype(np.float32)
    pi = inclusion(lw, log_scale)
    cum = np.cumsum(pi, axis=1)
    cum *= sample / cum[:, -1:]
    u = uniforms(seed, sample_index)
    span = sample + 1.0  # rows laid end to end on one increasing axis
    shift = np.arange(r)[:, None] * span
    points = (u[:, None] + np.arange(sample)[None, :] + shift).ravel()
    flat = np.searchsorted((cum + shift).ravel(), points, side="right")
    ids = (flat.reshape(r, sample) - np.arange(r)[:, None] * c).astype(np.int64)
    if (np.diff(ids, axis=1) <= 0).any() or ids.min() < 0 or ids.max() >= c:
        raise RuntimeError("systematic sampling drew a repeated id; please report this")
    return ids, log_scale


def inclusion(log_weight: np.ndarray, log_scale: np.ndarray) -> np.ndarray:
    """pi = min(1, exp(log_scale + log_weight)), float64; 0 where log_weight is -inf."""
    return np.minimum(1.0, np.exp(log_scale.astype(np.float64)[:, None] + log_weight))


def capped_log_scale(log_weight: np.ndarray, sample: int) -> np.ndarray:
    """log c per row such that sum_j min(1, c * exp(log_weight_j)) = sample."""
    top = log_weight.max(axis=1, keepdims=True)
    w = np.exp(log_weight - top)
    total = w.sum(axis=1, keepdims=True)
    largest = -np.sort(-np.partition(w, w.shape[1] - sample, axis=1)[:, -sample:], axis=1)
    capped_mass = np.concatenate([np.zeros((len(w), 1)), np.cumsum(largest, axis=1)[:, :-1]], 1)
    c = (sample - np.arange(sample)[None, :]) / (total - capped_mass)  # c if m ids are capped
    first = np.argmax(c * largest <= 1.0, axis=1)  # fewest capped ids that make every pi <= 1
    return np.log(c[np.arange(len(w)), first]) - top[:, 0]


def uniforms(seed: int, sample_index: np.ndarray) -> np.ndarray:
    """One uniform in [0, 1) per row: splitmix64(splitmix64(seed) xor sample_index) >> 11."""
    key = _splitmix64(np.array([seed], dtype=np.uint64))[0]
    bits = _splitmix64(np.asarray(sample_index).astype(np.uint64) ^ key)
    return (bits >> np.uint64(11)).astype(np.float64) * 2.0**-53


def _splitmix64(x: np.ndarray) -> np.ndarray:
    with np.errstate(over="ignore"):
        z = x + _GOLDEN
        z = (z ^ (z >> np.uint64(30))) * np.uint64(0xBF58476D1CE4E5B9)
        z = (z ^ (z >> np.uint64(27))) * np.uint64(0x94D049BB133111EB)
        return z ^ (z >> np.uint64(31))


def encode_ids(ids: np.ndarray, top_k: int) -> np.ndarray:
    """(R, K) int32 gaps: each segment (top, then sampled) starts with its first id and goes
    on with differences to the previous id (>= 1: ids are ascending within a segment)."""
    gaps = ids.copy()
    gaps[:, 1:] = ids[:, 1:] - ids[:, :-1]
    if ids.shape[1] > top_k:
        gaps[:, top_k] = ids[:, top_k]
    return gaps.astype(np.int32)


def decode_ids(gaps: np.ndarray, top_k: int) -> np.ndarray:
    """(R, K) int64 ids from ``encode_ids``'s gaps."""
    g = gaps.astype(np.int64)
    return np.concatenate(
        [np.cumsum(g[:, :top_k], axis=1), np.cumsum(g[:, top_k:], axis=1)], axis=1
    )


def tails(
    zhat: np.ndarray, zbar: np.ndarray, ids: np.ndarray, combine: str, anchors: tuple[float, ...]
) -> np.ndarray:
    """(R, G, A) float32 tail summaries: one per member, then, for a geometric ensemble of
    several members, one for zbar."""
    groups = [zhat[:, i] for i in range(zhat.shape[1])]
    if schema.tail_groups(combine, zhat.shape[1]) > zhat.shape[1]:
        groups.append(zbar)
    out = []
    for logits in groups:
        outside = logits.copy()
        np.put_along_axis(outside, ids, -np.inf, axis=1)
        out.append(tail_values(outside, anchors))
    return np.stack(out, axis=1).astype(np.float32)

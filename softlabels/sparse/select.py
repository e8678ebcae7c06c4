"""Stage one's half of a sparse store: from dense logits to a row's stored support.

Per row, from the members' logits z_m (float32, all C classes):

1. values: rounded to the store's value encoding; everything below uses the rounded logits, so
   a reader recomputes every derived number (the ranking, the inclusion probabilities) exactly
   (with raw selection, format version 6, steps 3 and 5 use the raw logits instead, and only
   the kept ids' values must fit the fixed-point range);
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
import torch

from softlabels import schema
from softlabels.errors import SparseValueRangeError
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
    if spec.raw:  # version 6: rank and sum the raw logits; only the kept values are coded
        zhat, stored, offsets = round_values(z, spec.value_step, dtype, check=False)
        chosen = z.astype(np.float64)
    else:
        zhat, stored, offsets = round_values(z, spec.value_step, dtype)
        chosen = zhat
    if offsets is not None:
        out[schema.VALUE_OFFSETS] = offsets
    zbar = ranking_logits(zhat, weights)
    chosen_bar = ranking_logits(chosen, weights) if spec.raw else zbar
    top = top_ids(chosen_bar, spec.top_k)
    ids = top
    if spec.sample:  # the inclusion probabilities come from the decoded zbar, as readers see it
        sampled, log_scale = sample_ids(
            zbar, top, spec.sample, spec.proposal_temperature, spec.seed, sample_index
        )
        ids = np.concatenate([top, sampled], axis=1)
        out[schema.INCLUSION_LOG_SCALE] = log_scale
    values = np.take_along_axis(stored, ids[:, None, :], axis=2)
    if spec.raw and spec.value_step is not None:
        values = _checked_codes(values, z, offsets, ids, spec.value_step)
    out[schema.ID_GAPS] = encode_ids(ids, spec.top_k)
    out[schema.VALUES] = values
    with np.errstate(invalid="ignore"):  # a row with nothing outside: refused just below
        out[schema.TAIL] = tails(chosen, chosen_bar, ids, combine, spec.tail_temperatures)
    if spec.raw:
        refuse_empty_tails(out[schema.TAIL], sample_index)
    return out


def refuse_empty_tails(tail: np.ndarray, sample_index: np.ndarray) -> None:
    """Raw selection keeps masked (-inf) logits out of the codes, so a row can have no finite
    logit outside its support: a tail of no mass, which readers refuse. Refuse it here."""
    bad = ~np.isfinite(tail).all(axis=(1, 2))
    if bad.any():
        rows = np.asarray(sample_index)[bad]
        raise SparseValueRangeError(
            f"every logit outside the kept ids is -inf at transfer rows {rows[:20].tolist()}"
            + (f" and {len(rows) - 20} more" if len(rows) > 20 else "")
            + ": a sparse store needs some mass outside its ids; keep fewer ids (top_k), or "
            "write a dense store"
        )


def _checked_codes(
    codes: np.ndarray, z: np.ndarray, offsets: np.ndarray, ids: np.ndarray, step: float
) -> np.ndarray:
    """The kept ids' codes as uint16, or the range error ``round_values`` raises."""
    if codes.max() > schema.MAX_CODE:
        kept = np.take_along_axis(z, ids[:, None, :], axis=2)
        raise SparseValueRangeError(range_message(float((offsets[..., None] - kept).max()), step))
    return codes.astype(np.uint16)


def range_message(span: float, step: float) -> str:
    return (
        f"logits span {span:.4g} below a row's largest, more than {schema.MAX_CODE} steps of "
        f"{step:g}: use a value step of at least {span / schema.MAX_CODE:.3g}, or store the "
        f"values as floats (value_step None, --value-step 0)"
    )


def round_values(
    z: np.ndarray, step: float | None, dtype: str, *, check: bool = True
) -> tuple[np.ndarray, np.ndarray, np.ndarray | None]:
    """(logits as a reader decodes them (float64), the stored values, per-(row, member)
    offsets or None). Fixed point: value = offset - step * code, offset = the row's max.
    ``check=False`` (raw selection, which codes only the kept ids and checks those itself in
    ``_checked_codes``): no range check, and the codes stay float64."""
    if step is None:
        stored = z.astype(dtype)
        return stored.astype(np.float64), stored, None
    offsets = z.max(axis=-1).astype(np.float32)
    codes = np.rint((offsets[..., None].astype(np.float64) - z) / step)
    if check:
        if codes.max() > schema.MAX_CODE:
            span = float((offsets[..., None] - z).max())
            raise SparseValueRangeError(range_message(span, step))
        codes = codes.astype(np.uint16)
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
    sampling with pi_j = min(1, exp(log_scale + zbar_j / T_q)) summing to S (see
    ``draw_probabilities`` for the float32 rounding of log_scale). Row by row, so a row's ids
    depend on its own logits, the seed and its transfer position only."""
    lw = zbar / proposal_temperature
    np.put_along_axis(lw, top, -np.inf, axis=1)
    log_scale = capped_log_scale(lw, sample).astype(np.float32)
    pi = draw_probabilities(lw, log_scale, sample)
    u = uniforms(seed, sample_index)
    return systematic_rows(pi, u, sample), log_scale


def systematic_rows(pi: np.ndarray, u: np.ndarray, sample: int) -> np.ndarray:
    """``systematic`` for every row at once: (R, S) int64. The cumulative sums run along each
    row as ``np.cumsum`` does for one row, and the search compares exactly, so each row's ids
    are those ``systematic(pi[i], u[i], sample)`` draws; rows whose rounding needs its repair
    take it row by row."""
    cum = np.cumsum(pi, axis=1)
    points = np.minimum(u[:, None] + np.arange(sample), np.nextafter(cum[:, -1:], -np.inf))
    ids = torch.searchsorted(torch.from_numpy(cum), torch.from_numpy(points), right=True).numpy()
    bad = (np.diff(ids, axis=1) <= 0).any(axis=1) | (ids[:, -1] >= pi.shape[1])
    for i in np.flatnonzero(bad):
        ids[i] = systematic(pi[i], float(u[i]), sample)
    return ids.astype(np.int64)


def inclusion(log_weight: np.ndarray, log_scale: np.ndarray) -> np.ndarray:
    """pi = min(1, exp(log_scale + log_weight)), float64; 0 where log_weight is -inf."""
    return np.minimum(1.0, np.exp(log_scale.astype(np.float64)[:, None] + log_weight))


def draw_probabilities(log_weight: np.ndarray, log_scale: np.ndarray, sample: int) -> np.ndarray:
    """The probabilities the draw uses: ``inclusion`` as a reader recomputes it from the
    float32 scale, with the ids below 1 rescaled so each row sums to exactly ``sample`` (a
    relative change of about 1e-7); ids at 1 stay at exactly 1."""
    pi = inclusion(log_weight, log_scale)
    capped = pi >= 1.0
    room = sample - capped.sum(axis=1)
    free = np.where(capped, 0.0, pi).sum(axis=1)
    scale = np.divide(room, free, out=np.zeros_like(free), where=free > 0)
    return np.where(capped, 1.0, np.minimum(pi * scale[:, None], 1.0))


def systematic(pi: np.ndarray, u: float, sample: int) -> np.ndarray:
    """The ids j whose interval [S_j-1, S_j) of the cumulative sums S of ``pi`` holds one of
    u, u + 1, ..., u + sample - 1: each id is drawn with probability pi_j <= 1, none twice."""
    cum = np.cumsum(pi)
    points = np.minimum(u + np.arange(sample), np.nextafter(cum[-1], -np.inf))
    ids = np.searchsorted(cum, points, side="right")
    if (np.diff(ids) <= 0).any():  # an interval longer than 1 by rounding: take the next id
        for k in range(1, sample):
            if ids[k] <= ids[k - 1]:
                ids[k] = ids[k - 1] + 1 + int(np.argmax(pi[ids[k - 1] + 1 :] > 0))
    if ids[-1] >= len(pi) or (np.diff(ids) <= 0).any():
        raise RuntimeError("systematic sampling could not draw distinct ids; please report this")
    return ids


def capped_log_scale(log_weight: np.ndarray, sample: int) -> np.ndarray:
    """log c per row such that sum_j min(1, c * exp(log_weight_j)) = sample.

    With m of the ``sample`` largest weights capped at 1, c = (sample - m) / (the other
    weights' sum); that sum is the rest outside the largest plus a suffix sum of the largest,
    never a difference of two near-equal numbers."""
    n = log_weight.shape[1]
    top = log_weight.max(axis=1, keepdims=True)
    w = np.exp(log_weight - top)
    where = np.argpartition(w, n - sample, axis=1)[:, n - sample :]
    largest = -np.sort(-np.take_along_axis(w, where, axis=1), axis=1)  # (R, S) descending
    rest = w.copy()
    np.put_along_axis(rest, where, 0.0, axis=1)
    suffix = np.cumsum(largest[:, ::-1], axis=1)[:, ::-1]  # sum of largest[m:]
    c = (sample - np.arange(sample)[None, :]) / (rest.sum(axis=1, keepdims=True) + suffix)
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

"""Stage one's sparsification in torch, on the teachers' device, a batch at a time.

The same definitions as ``softlabels.sparse.select`` (the spec's executable reference, in
numpy): rounded values, ranking logits, the top ids with ties to the lower id, the systematic
draw and the tails at the anchors, all in float64. Only the order of floating-point sums
differs from numpy's, so ``log_scale`` and ``tail`` may differ from the reference in their last
float32 bit, and, in a row where that moves a sampling point across an interval's edge, one
sampled id (FORMAT.md, "Sparse stores", states the tolerances a reader applies). On one device
the result is a pure function of the row: a resumed run, any worker count and torchrun give
bitwise-equal stores. A store with raw selection (format version 6, ``SparseSpec.raw``: a
sparse token store's default) goes to ``softlabels.sparse.raw`` instead.

Memory: the rows are processed in small blocks (``_BLOCK_ROWS``, ``_BLOCK_VALUES``), so a
batch of (rows, M, V) float32 logits is the largest thing held.
"""

from __future__ import annotations

import math

import numpy as np
import torch

from softlabels import schema
from softlabels.errors import SparseValueRangeError
from softlabels.schema import SparseSpec
from softlabels.sparse.ops import fixed_codes, ranking_logits, sample_ids, to_numpy, top_ids
from softlabels.sparse.raw import raw_block
from softlabels.sparse.select import encode_ids, range_message

# Rows per block: at least _BLOCK_ROWS, else about _BLOCK_VALUES float64 logits (2 MiB). Small
# blocks keep the dozen float64 temporaries of a block in cache and reuse their memory; on 2
# CPU cores, 64 MiB blocks were 1.7x (top-k) to 3.5x (with sampled ids) slower at V = 32k.
_BLOCK_VALUES = 1 << 18
# Raw selection's temporaries are float32 and fewer: 4 MiB blocks, a quarter of the calls
_RAW_BLOCK_VALUES = 1 << 20
_BLOCK_ROWS = 8


def sparsify_torch(
    member_logits: torch.Tensor,
    sample_index: np.ndarray,
    *,
    weights: tuple[float, ...],
    combine: str,
    spec: SparseSpec,
    dtype: str,
) -> dict[str, np.ndarray]:
    """The sparse arrays of these rows (all but ``sample_index`` and ``labels``), by name, as
    ``softlabels.sparse.select.sparsify`` makes them, computed where ``member_logits`` lives.

    member_logits: (R, M, C) float32 on any device; sample_index: (R,) int64."""
    r, m, c = member_logits.shape
    budget = _RAW_BLOCK_VALUES if spec.raw else _BLOCK_VALUES
    block = max(_BLOCK_ROWS, budget // (m * c))
    parts = [
        _block(
            member_logits[i : i + block], sample_index[i : i + block], weights, combine, spec, dtype
        )
        for i in range(0, r, block)
    ]
    return {name: np.concatenate([p[name] for p in parts]) for name in parts[0]}


def _block(
    z: torch.Tensor,
    sample_index: np.ndarray,
    weights: tuple[float, ...],
    combine: str,
    spec: SparseSpec,
    dtype: str,
) -> dict[str, np.ndarray]:
    if spec.raw:
        return raw_block(z, sample_index, weights, combine, spec, dtype)
    if z.shape[1] == 1 and spec.value_step is not None and not spec.sample:
        return _one_fixed_point_member(z[:, 0], spec)
    out: dict[str, np.ndarray] = {}
    zhat, stored, offsets = round_values(z.float(), spec.value_step, dtype)
    if offsets is not None:
        out[schema.VALUE_OFFSETS] = offsets.cpu().numpy()
    zbar = ranking_logits(zhat, weights)
    if stored.shape[1] == 1 and spec.value_step is not None:
        ids = top_ids_by_code(stored[:, 0], spec.top_k)
    else:
        ids = top_ids(_ranking_key(zbar, stored), spec.top_k)
    if spec.sample:
        sampled, log_scale = sample_ids(zbar, ids, spec, sample_index)
        ids = torch.cat([ids, sampled], dim=1)
        out[schema.INCLUSION_LOG_SCALE] = log_scale.cpu().numpy()
    values = torch.gather(stored, 2, ids[:, None, :].expand(-1, stored.shape[1], -1))  # (R, M, K)
    ids_np = ids.cpu().numpy()
    out[schema.ID_GAPS] = encode_ids(ids_np, spec.top_k)
    out[schema.VALUES] = to_numpy(values, dtype if spec.value_step is None else "uint16")
    out[schema.TAIL] = tails(zhat, zbar, ids, combine, spec.tail_temperatures)
    return out


def _one_fixed_point_member(z: torch.Tensor, spec: SparseSpec) -> dict[str, np.ndarray]:
    """``_block`` for one teacher, fixed-point values and top ids only (a language model's usual
    store), in about a third of the passes over the (R, C) logits: the decoded logits are never
    formed. Same results: the codes and the top ids exactly, the tails from a per-row histogram
    of the codes (the decoded logits outside the support are offset - step * code, so each
    distinct code's exp is taken once and weighted by its count; a float64 sum in another
    order, within one float32 ulp of the reference once stored).

    z: (R, C) float32."""
    step, k = spec.value_step, spec.top_k
    assert step is not None  # the caller's condition
    r, c = z.shape
    offsets, lowest = z.max(dim=1).values, z.min(dim=1).values
    largest_code = _largest_code(offsets, lowest, step)
    codes = fixed_codes(z, offsets, step)
    key = torch.add(torch.arange(c, dtype=torch.float64, device=z.device), codes, alpha=c)
    ids = torch.topk(key, k, dim=1, largest=False, sorted=False).indices  # code, then id
    ids = torch.sort(ids, dim=1).values
    values = torch.gather(codes, 1, ids)
    bins = largest_code + 2  # every code, and one bin past them for the support
    counts = _code_counts(codes, ids, bins)  # (R, bins - 1): outside the support only
    return {
        schema.VALUE_OFFSETS: offsets[:, None].cpu().numpy(),
        schema.ID_GAPS: encode_ids(ids.cpu().numpy(), k),
        schema.VALUES: to_numpy(values[:, None], "uint16"),
        schema.TAIL: _histogram_tails(counts, offsets, step, spec.tail_temperatures),
    }


def _code_counts(codes: torch.Tensor, ids: torch.Tensor, bins: int) -> torch.Tensor:
    """(R, bins - 1) float64: how many ids outside ``ids`` have each code (the support is
    counted in the last bin, then dropped)."""
    index = codes.to(torch.int64).scatter_(1, ids, bins - 1)
    ones = torch.ones((), dtype=torch.float64, device=codes.device).expand(index.shape)
    counts = torch.zeros((len(codes), bins), dtype=torch.float64, device=codes.device)
    return counts.scatter_add_(1, index, ones)[:, :-1]


def _histogram_tails(
    counts: torch.Tensor, offsets: torch.Tensor, step: float, anchors: tuple[float, ...]
) -> np.ndarray:
    """(R, 1, A) float32: T * logsumexp(zhat / T) over the ids that ``counts`` counts, where a
    code q decodes to offset - step * q; -inf for a row with no id outside its support."""
    present = counts > 0
    empty = ~present.any(dim=1)
    first = torch.argmax(present.to(torch.int8), dim=1)  # the smallest code: the largest logit
    grid = torch.arange(counts.shape[1], dtype=torch.float64, device=counts.device)
    shifted = torch.sub(grid[None, :], first[:, None].double()).mul_(-step).clamp_(max=0.0)
    top = offsets.double() - step * first.double()  # exact, as the reference's max
    out = []
    for t in anchors:
        total = (counts * torch.exp(shifted / t)).sum(dim=1)
        out.append(torch.where(empty, -math.inf, top + t * torch.log(total)))
    return torch.stack(out, dim=1)[:, None, :].float().cpu().numpy()


def _largest_code(offsets: torch.Tensor, lowest: torch.Tensor, step: float) -> int:
    """The largest code of the rows (that of their smallest logits); refuses rows whose logits
    span more than MAX_CODE steps below their largest."""
    span = float((offsets.double() - lowest.double()).max())  # exact, as the codes
    largest = round(span / step)  # half to even, as the codes' round
    if largest > schema.MAX_CODE:
        raise SparseValueRangeError(range_message(span, step))
    return largest


def round_values(
    z: torch.Tensor, step: float | None, dtype: str
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None]:
    """(decoded logits float64, stored values, per-(row, member) float32 offsets or None), as
    ``select.round_values``: value = offset - step * code, offset = the row's max."""
    if step is None:
        stored = z.to(getattr(torch, dtype))
        return stored.double(), stored, None
    offsets = z.max(dim=-1).values  # float32
    codes = fixed_codes(z, offsets, step)
    _largest_code(offsets, z.min(dim=-1).values, step)
    zhat = torch.mul(codes, -step).add_(offsets[..., None])
    return zhat, codes, offsets


def _ranking_key(zbar: torch.Tensor, stored: torch.Tensor) -> torch.Tensor:
    """What the top ids are chosen by: zbar, or, for one member with float values, the stored
    values themselves (exactly zbar's order and ties, in half the bytes)."""
    return stored[:, 0].float() if stored.shape[1] == 1 else zbar


def top_ids_by_code(codes: torch.Tensor, k: int) -> torch.Tensor:
    """(R, k) ascending ids of one member's k smallest fixed-point codes (its k largest
    logits), ties to the lower id: the k largest of -(code * C + id), one int64 key per id,
    whose order is the reference's (code, then id) exactly."""
    c = codes.shape[1]
    ladder = torch.arange(c, device=codes.device, dtype=torch.int64)
    key = codes.to(torch.int64).mul_(-c).sub_(ladder)  # -(code * C + id): codes < 2^16
    best = torch.topk(key, k, dim=1, sorted=False).values
    return torch.sort(torch.remainder(best.neg_(), c), dim=1).values


def tails(
    zhat: torch.Tensor,
    zbar: torch.Tensor,
    ids: torch.Tensor,
    combine: str,
    anchors: tuple[float, ...],
) -> np.ndarray:
    """(R, G, A) float32 tail summaries: per member, then zbar for a geometric ensemble."""
    groups = [zhat[:, i] for i in range(zhat.shape[1])]
    if schema.tail_groups(combine, zhat.shape[1]) > zhat.shape[1]:
        groups.append(zbar)
    out = [tail_values(g.scatter(1, ids, -math.inf), anchors) for g in groups]  # a copy each
    return torch.stack(out, dim=1).float().cpu().numpy()


def tail_values(outside: torch.Tensor, anchors: tuple[float, ...]) -> torch.Tensor:
    """(R, A) float64: T_a * logsumexp(t / T_a) over each row, -inf entries excluded.

    For anchors that halve one another (8, 4, 2, 1: the default), exp(x / T) is the square of
    exp(x / 2T): one exp at the largest anchor and a multiplication for each of the others
    (relative error a few float64 ulps, far below the float32 the tail is stored in)."""
    top = outside.max(dim=1, keepdim=True).values
    shifted = outside - top
    sums: dict[float, torch.Tensor] = {}
    e = torch.empty_like(shifted)
    previous: float | None = None
    for t in sorted(anchors, reverse=True):
        if previous == 2 * t:
            e.mul_(e)
        else:
            torch.div(shifted, t, out=e).exp_()
        sums[t], previous = e.sum(dim=1), t
    out = [top[:, 0] + t * torch.log(sums[t]) for t in anchors]
    return torch.stack(out, dim=1)

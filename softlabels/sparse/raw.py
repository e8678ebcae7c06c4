"""Raw selection (format version 6) in torch: the top ids are the teacher's own top-k and the
tails are sums over its raw float32 logits, so only the K kept ids are ever coded.

Per block of rows: one ``torch.topk`` of k + 1 over the ranking logits gives the top ids, the
row's largest logit (the fixed-point offset of one teacher) and the largest logit outside the
ids (the tails' shift, so every sum is at least 1 and none underflows); the tails are one exp
per logit at the largest anchor, the other anchors by squaring, with the kept ids zeroed
(K writes per row, no copy of the row). A store with sampled ids still decodes every logit,
because its inclusion probabilities are defined on the decoded ranking logits a reader sees.

The reference is ``softlabels.sparse.select`` (float64 numpy): the ids, codes and sampled ids
agree exactly; the tails, summed here in float32, agree within FORMAT.md's tolerance.
"""

from __future__ import annotations

import math

import numpy as np
import torch

from softlabels import schema
from softlabels.errors import NonFiniteLogitsError, SparseValueRangeError
from softlabels.schema import SparseSpec
from softlabels.sparse.ops import (
    fixed_codes,
    ranking_logits,
    sample_ids,
    to_numpy,
    top_ids_and_values,
)
from softlabels.sparse.select import encode_ids, range_message, refuse_empty_tails

_LOG2E = 1 / math.log(2)


def raw_block(
    z: torch.Tensor,
    sample_index: np.ndarray,
    weights: tuple[float, ...],
    combine: str,
    spec: SparseSpec,
    dtype: str,
) -> dict[str, np.ndarray]:
    """The sparse arrays of these rows by raw selection. z: (R, M, C) float32."""
    m = z.shape[1]
    ranking = z[:, 0] if m == 1 else ranking_logits(z.double(), weights)
    ids, largest = top_ids_and_values(ranking, spec.top_k)
    _refuse_nonfinite(largest[:, 0], sample_index)
    out: dict[str, np.ndarray] = {}
    offsets = None
    if spec.value_step is not None:  # one teacher's offset is its largest logit, found above
        offsets = largest[:, :1].float() if m == 1 else z.max(dim=-1).values
        out[schema.VALUE_OFFSETS] = offsets.cpu().numpy()
    if spec.sample:
        decoded = _decoded(z, offsets, spec.value_step, dtype)
        sampled, log_scale = sample_ids(ranking_logits(decoded, weights), ids, spec, sample_index)
        out[schema.INCLUSION_LOG_SCALE] = log_scale.cpu().numpy()
        ids = torch.cat([ids, sampled], dim=1)
    kept = torch.gather(z, 2, ids[:, None, :].expand(-1, m, -1))  # (R, M, K) raw
    out[schema.ID_GAPS] = encode_ids(ids.cpu().numpy(), spec.top_k)
    out[schema.VALUES] = _values(kept, offsets, spec.value_step, dtype)
    groups = [ranking] if m == 1 else [z[:, i] for i in range(m)]
    if schema.tail_groups(combine, m) > m:
        groups.append(ranking)
    shift = None if spec.sample else largest[:, spec.top_k]  # the largest logit left out
    tails = [
        outside_tails(g, ids, spec.tail_temperatures, shift if g is ranking else None)
        for g in groups
    ]
    out[schema.TAIL] = torch.stack(tails, dim=1).float().cpu().numpy()
    refuse_empty_tails(out[schema.TAIL], sample_index)
    return out


def _refuse_nonfinite(largest: torch.Tensor, sample_index: np.ndarray) -> None:
    """Refuse rows whose largest ranking logit is NaN or +Inf: ``torch.topk`` ranks NaN above
    every number, so one NaN or +Inf logit anywhere in a row (of any member) shows here."""
    bad = ~torch.isfinite(largest)
    if bool(bad.any()):
        rows = sample_index[bad.cpu().numpy()]
        raise NonFiniteLogitsError(
            f"the teachers produced NaN or Inf logits at transfer rows {rows[:20].tolist()}"
            + (f" and {len(rows) - 20} more" if len(rows) > 20 else "")
            + ": a sparse store cannot hold them; check the teacher on those inputs (at fp32)"
        )


def _values(
    kept: torch.Tensor, offsets: torch.Tensor | None, step: float | None, dtype: str
) -> np.ndarray:
    """The stored values of the kept logits: fixed-point codes (refusing a kept logit more than
    MAX_CODE steps below its row's largest), or the logits in ``dtype``."""
    if step is None or offsets is None:
        return to_numpy(kept.to(getattr(torch, dtype)), dtype)
    codes = fixed_codes(kept, offsets, step)
    if codes.numel() and float(codes.max()) > schema.MAX_CODE:
        span = float((offsets[..., None].double() - kept).max())
        raise SparseValueRangeError(range_message(span, step))
    return to_numpy(codes, "uint16")


def _decoded(
    z: torch.Tensor, offsets: torch.Tensor | None, step: float | None, dtype: str
) -> torch.Tensor:
    """Every logit as a reader decodes it (float64), for the inclusion probabilities; codes
    outside the kept ids are not range-checked (they are never stored)."""
    if step is None or offsets is None:
        return z.to(getattr(torch, dtype)).double()
    return fixed_codes(z, offsets, step).mul_(-step).add_(offsets[..., None].double())


def outside_tails(
    g: torch.Tensor, ids: torch.Tensor, anchors: tuple[float, ...], shift: torch.Tensor | None
) -> torch.Tensor:
    """(R, A) float64: T_a * log sum over the ids outside ``ids`` of exp(g / T_a), summed in
    g's dtype; -inf for a row with nothing outside. ``shift``: the largest logit outside the
    ids, when the caller knows it (else found here).

    For anchors that halve one another (8, 4, 2, 1: the default), exp(x / T) is the square of
    exp(x / 2T): one exp at the largest anchor and a multiplication for each of the others."""
    if shift is None:
        shift = g.scatter(1, ids, -math.inf).max(dim=1).values
    finite = torch.isfinite(shift)
    s = torch.where(finite, shift, torch.zeros_like(shift))[:, None]
    e = torch.empty_like(g)
    sums: dict[float, torch.Tensor] = {}
    previous: float | None = None
    for t in sorted(anchors, reverse=True):
        if previous == 2 * t:
            e.mul_(e)
        else:  # exp((g - s) / t) as exp2 of one fused multiply-add: 3x faster than exp on x86
            c = _LOG2E / t
            torch.add(s * -c, g, alpha=c, out=e).exp2_()
            e.scatter_(1, ids, 0.0)
        sums[t], previous = e.sum(dim=1).double(), t
    base = s[:, 0].double()
    out = [torch.where(finite, base + t * torch.log(sums[t]), -math.inf) for t in anchors]
    return torch.stack(out, dim=1)

"""Torch building blocks shared by both selections of ``softlabels.sparse.device``: the ranking
logits, the top ids (ties to the lower id) and the systematic draw of sampled ids, each as the
numpy reference ``softlabels.sparse.select`` defines it."""

from __future__ import annotations

import math

import numpy as np
import torch

from softlabels.schema import SparseSpec
from softlabels.sparse.select import systematic, uniforms


def to_numpy(t: torch.Tensor, dtype: str) -> np.ndarray:
    return t.cpu().numpy().astype(dtype, copy=False)


def fixed_codes(z: torch.Tensor, offsets: torch.Tensor, step: float) -> torch.Tensor:
    """round((offset - z) / step) in float64, half to even: the fixed-point code of every logit
    in ``z`` (..., C) below its row's ``offsets`` (...), unchecked against MAX_CODE."""
    return torch.sub(offsets[..., None].double(), z).div_(step).round_()


def ranking_logits(zhat: torch.Tensor, weights: tuple[float, ...]) -> torch.Tensor:
    """zbar = sum_m w_m z_m (R, C) float64."""
    if zhat.shape[1] == 1:
        return zhat[:, 0]
    w = torch.tensor(weights, dtype=torch.float64, device=zhat.device)
    return torch.einsum("rmc,m->rc", zhat, w)


def top_ids(zbar: torch.Tensor, k: int) -> torch.Tensor:
    """(R, k) int64 ids of the k largest zbar per row, ascending; ties to the lower ids."""
    return top_ids_and_values(zbar, k)[0]


def top_ids_and_values(zbar: torch.Tensor, k: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(ids, values): the k largest zbar's ids per row, ascending, ties to the lower ids; and
    the k + 1 largest values in descending order (values[:, k] is the largest value outside
    the ids, when k < C).

    ``torch.topk`` of k + 1: where the (k+1)-th value is below the k-th, the top k are
    unambiguous and are its first k ids. In a row with a tie across the k-th place, the ids
    above the k-th value are kept and the rest of the k are the lowest ids of the tied ones."""
    c = zbar.shape[1]
    values, ids = torch.topk(zbar, min(k + 1, c), dim=1, sorted=True)
    top = ids[:, :k].clone()
    if k < c:
        straddle = torch.nonzero(values[:, k] == values[:, k - 1])[:, 0]
        if len(straddle):
            top[straddle] = _tied_top(zbar[straddle], values[straddle], ids[straddle], k)
    return torch.sort(top, dim=1).values, values


def _tied_top(z: torch.Tensor, values: torch.Tensor, ids: torch.Tensor, k: int) -> torch.Tensor:
    """The top k of rows whose k-th and (k+1)-th values tie: those above the tied value, then
    the lowest tied ids (found as the largest of -id among the tied)."""
    kth = values[:, k - 1 : k]
    above = values[:, :k] > kth  # (R, k): every value above kth is among topk's first k
    room = k - above.sum(dim=1, keepdim=True)
    ladder = torch.arange(z.shape[1], device=z.device, dtype=torch.int64)
    minus_id = torch.where(z == kth, -ladder, torch.iinfo(torch.int64).min)
    lowest = -torch.topk(minus_id, k, dim=1, sorted=True).values  # tied ids, ascending
    rank = torch.arange(k, device=z.device)[None, :]
    big = torch.iinfo(torch.int64).max
    candidates = torch.cat(
        [torch.where(above, ids[:, :k], big), torch.where(rank < room, lowest, big)], dim=1
    )
    return torch.sort(candidates, dim=1).values[:, :k]


def sample_ids(
    zbar: torch.Tensor, top: torch.Tensor, spec: SparseSpec, sample_index: np.ndarray
) -> tuple[torch.Tensor, torch.Tensor]:
    """(ids (R, S) ascending, log_scale (R,) float32), as ``select.sample_ids``."""
    s = spec.sample
    lw = (zbar / spec.proposal_temperature).scatter(1, top, -math.inf)
    log_scale = capped_log_scale(lw, s).float()
    pi = draw_probabilities(lw, log_scale, s)
    u = torch.from_numpy(uniforms(spec.seed, sample_index)).to(zbar.device)
    return systematic_rows(pi, u, s), log_scale


def capped_log_scale(log_weight: torch.Tensor, sample: int) -> torch.Tensor:
    """log c per row with sum_j min(1, c * exp(log_weight_j)) = sample (``select``'s rule)."""
    top = log_weight.max(dim=1, keepdim=True).values
    w = torch.exp(log_weight - top)
    largest, where = torch.topk(w, sample, dim=1, sorted=True)  # (R, S) descending
    rest = w.scatter(1, where, 0.0).sum(dim=1, keepdim=True)
    suffix = torch.flip(torch.cumsum(torch.flip(largest, [1]), dim=1), [1])
    counts = sample - torch.arange(sample, device=w.device, dtype=torch.float64)
    c = counts[None, :] / (rest + suffix)
    first = torch.argmax((c * largest <= 1.0).to(torch.int8), dim=1)
    rows = torch.arange(len(w), device=w.device)
    return torch.log(c[rows, first]) - top[:, 0]


def draw_probabilities(
    log_weight: torch.Tensor, log_scale: torch.Tensor, sample: int
) -> torch.Tensor:
    """``select.draw_probabilities``: pi from the float32 scale, the ids below 1 rescaled so
    each row sums to ``sample``."""
    pi = torch.clamp(torch.exp(log_scale.double()[:, None] + log_weight), max=1.0)
    capped = pi >= 1.0
    room = sample - capped.sum(dim=1)
    free = torch.where(capped, 0.0, pi).sum(dim=1)
    scale = torch.where(free > 0, room / torch.where(free > 0, free, 1.0), 0.0)
    return torch.where(capped, 1.0, torch.clamp(pi * scale[:, None], max=1.0))


def systematic_rows(pi: torch.Tensor, u: torch.Tensor, sample: int) -> torch.Tensor:
    """``select.systematic_rows`` in torch; the rare row whose rounding needs the repair is
    drawn by the reference ``systematic`` on the CPU."""
    cum = torch.cumsum(pi, dim=1)
    last = torch.nextafter(cum[:, -1:], torch.tensor(-math.inf, dtype=cum.dtype, device=cum.device))
    points = torch.minimum(u[:, None] + torch.arange(sample, device=pi.device), last)
    ids = torch.searchsorted(cum, points.contiguous(), right=True)
    bad = (torch.diff(ids, dim=1) <= 0).any(dim=1) | (ids[:, -1] >= pi.shape[1])
    for i in torch.nonzero(bad)[:, 0].tolist():
        row = systematic(pi[i].cpu().numpy(), float(u[i]), sample)
        ids[i] = torch.from_numpy(row).to(ids.device)
    return ids

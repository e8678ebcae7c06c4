"""Stage two's half of a sparse store: decode rows, check them, replay them at any T.

A replayed row is a distribution over its K ids plus one bucket, "every other id":

    log_probs[j] = log p_T(id_j)        the target mass on stored id j
    log_tail     = log P_T(outside)     the mass on all the other ids together

For the top ids p_T is exact: softmax over the support, normalised by the support's partition
plus the tail's (``tail.log_partition``). The estimators differ in the sampled ids:

* ``bucket`` (the default): sampled ids get their exact p_T and the bucket keeps the outside
  mass. The bucket's shape inside a loss is the student's own: biased in the tail, by at most
  the tail's mass, but without noise.
* ``importance``: the outside mass is spread over the sampled ids in proportion to their
  Horvitz-Thompson excess p_j (1 - pi_j) / pi_j, whose expectation is the outside mass; the
  bucket is empty. A ratio estimator: total mass exactly 1, bias O(1/S).
* ``ht``: sampled ids get p_j / pi_j, the bucket is empty: unbiased for every id, but the
  total mass is only 1 on average.

The unbiased estimators pay in variance, which grows as the replay temperature moves above the
proposal's T_q (the sampled ids were drawn for T_q; at a higher T their weights p_j / pi_j
spread out). At T = 4 on a 1000-class teacher drawn at T_q = 1, their gradients point 80
degrees away and students lose accuracy; at T = 1 on a language model, the bucket's tail shape
(the student's own) costs the student 42% in perplexity and both unbiased estimators match the
dense store (BENCHMARKS.md). So the default is ``importance`` at T <= T_q on a store with
sampled ids, and ``bucket`` otherwise.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import NamedTuple

import numpy as np
import torch

from softlabels import schema
from softlabels.errors import MismatchError, StoreFormatError
from softlabels.schema import StoreMeta
from softlabels.sparse import tail as tails
from softlabels.sparse.select import decode_fixed, decode_ids, inclusion

ESTIMATORS = ("bucket", "importance", "ht")


class SparseTargets(NamedTuple):
    """Sparse soft targets at one temperature; the default collate batches them."""

    ids: torch.Tensor  # (B, K) int64 class ids
    log_probs: torch.Tensor  # (B, K) float32 log target mass of each id
    log_tail: torch.Tensor  # (B,) float32 log target mass of every id not in ``ids``

    def to(self, device: torch.device | str, non_blocking: bool = False) -> SparseTargets:
        return SparseTargets(*(t.to(device, non_blocking=non_blocking) for t in self))

    def pin_memory(self) -> SparseTargets:
        return SparseTargets(*(t.pin_memory() for t in self))

    def take(self, idx: torch.Tensor | slice) -> SparseTargets:
        """The rows at ``idx`` (an index tensor or a slice)."""
        return SparseTargets(self.ids[idx], self.log_probs[idx], self.log_tail[idx])

    @staticmethod
    def cat(parts: list[SparseTargets]) -> SparseTargets:
        return SparseTargets(*(torch.cat(list(column)) for column in zip(*parts, strict=True)))


@dataclass(frozen=True)
class Decoded:
    """Sparse rows as numbers: ids, the members' logits on them, and the rest (float64)."""

    ids: np.ndarray  # (B, K) int64
    values: np.ndarray  # (B, M, K) member logits
    ranking: np.ndarray  # (B, K) zbar = sum_m w_m z_m
    tail: np.ndarray  # (B, G, A)
    inclusion: np.ndarray  # (B, K) pi: 1 for the top ids


def default_estimator(meta: StoreMeta, temperature: float) -> str:
    """``importance`` at T <= T_q on a store with sampled ids, else ``bucket`` (see the module
    docstring for why)."""
    sp = meta.sparse
    if sp is not None and sp.sample and temperature <= sp.proposal_temperature:
        return "importance"
    return "bucket"


def decode(arrays: dict[str, np.ndarray], meta: StoreMeta) -> Decoded:
    sp = meta.sparse
    assert sp is not None  # callers dispatch on the layout
    ids = decode_ids(arrays[schema.ID_GAPS], sp.top_k)
    if sp.value_step is None:
        values = arrays[schema.VALUES].astype(np.float64)
    else:
        values = decode_fixed(arrays[schema.VALUES], arrays[schema.VALUE_OFFSETS], sp.value_step)
    w = np.asarray(meta.weights, dtype=np.float64)
    ranking = values[:, 0] if values.shape[1] == 1 else np.einsum("bmk,m->bk", values, w)
    pi = np.ones(ids.shape)
    if sp.sample:
        scale = arrays[schema.INCLUSION_LOG_SCALE]
        pi[:, sp.top_k :] = inclusion(ranking[:, sp.top_k :] / sp.proposal_temperature, scale)
    return Decoded(ids, values, ranking, arrays[schema.TAIL].astype(np.float64), pi)


def problems(d: Decoded, meta: StoreMeta, offset: int) -> list[str]:
    """What makes these rows impossible (a hostile or corrupt store); empty if none."""
    sp = meta.sparse
    assert sp is not None
    c, out = meta.num_classes, []
    slack = raw_slack(d.values, meta)

    def rows(bad: np.ndarray) -> str:
        return str((np.flatnonzero(bad)[:10] + offset).tolist())

    bad = (d.ids < 0).any(1)
    if bad.any():
        out.append(f"negative ids at rows {rows(bad)}")
    bad = (d.ids >= c).any(1)
    if bad.any():
        out.append(f"ids >= num_classes {c} at rows {rows(bad)}")
    top, sampled = d.ids[:, : sp.top_k], d.ids[:, sp.top_k :]
    bad = (np.diff(top, axis=1) <= 0).any(1) | (np.diff(sampled, axis=1) <= 0).any(1)
    if bad.any():
        out.append(f"ids not strictly ascending within a segment at rows {rows(bad)}")
    if sp.sample:
        both = np.sort(d.ids, axis=1)
        bad = (np.diff(both, axis=1) == 0).any(1)
        if bad.any():
            out.append(f"sampled ids repeating top ids at rows {rows(bad)}")
        bad = d.ranking[:, sp.top_k :].max(1) > d.ranking[:, : sp.top_k].min(1) + 2 * slack
        if bad.any():
            out.append(f"sampled ids ranking above the top ids at rows {rows(bad)}")
        bad = ~((d.inclusion > 0) & (d.inclusion <= 1)).all(1)
        if bad.any():
            out.append(f"inclusion probabilities outside (0, 1] at rows {rows(bad)}")
    ceiling = d.ranking[:, : sp.top_k].min(1) + slack
    groups = d.tail.shape[1]
    for g in range(groups):
        own = g == groups - 1 and (meta.num_members == 1 or groups > meta.num_members)
        bad = tails.check_tail(
            d.tail[:, g], sp.tail_temperatures, c - sp.k, ceiling if own else None
        )
        if bad.any():
            out.append(f"tail summaries (group {g}) no logits could produce at rows {rows(bad)}")
    return out


def raw_slack(values: np.ndarray, meta: StoreMeta, member: int | None = None) -> np.ndarray | float:
    """How far a raw logit may sit above its decoded value: 0 for decoded selection (versions
    2 to 5: the ids and tails were chosen from the decoded values themselves); for raw
    selection (version 6), half a fixed-point step, or float16's rounding: 2^-11 of the row's
    largest sum_m w_m |value_mj| (of |value_mj| for one ``member``), plus 2^-25 for subnormals.
    values: (R, M, K) decoded member values; returns a scalar or (R,)."""
    sp = meta.sparse
    if sp is None or not sp.raw:
        return 0.0
    if sp.value_step is not None:
        return sp.value_step / 2
    if meta.dtype == "float16":
        magnitude = np.abs(values[:, member]) if member is not None else _weighted_abs(values, meta)
        return magnitude.max(axis=1) * 2.0**-11 + 2.0**-25
    return 0.0


def _weighted_abs(values: np.ndarray, meta: StoreMeta) -> np.ndarray:
    w = np.asarray(meta.weights, dtype=np.float64)
    return np.einsum("rmk,m->rk", np.abs(values), w)


def check(d: Decoded, meta: StoreMeta, offset: int, path: str) -> None:
    found = problems(d, meta, offset)
    if found:
        raise StoreFormatError(
            f"{path!r} is not a valid sparse store: {'; '.join(found)}; regenerate it"
        )


def replay(
    d: Decoded,
    meta: StoreMeta,
    temperature: float,
    *,
    member: int | None = None,
    estimator: str | None = None,
) -> SparseTargets:
    """The soft targets of decoded rows at ``temperature`` (see the module docstring)."""
    sp = meta.sparse
    assert sp is not None
    problem = sp.replay_problem(temperature)
    if problem:
        raise MismatchError(problem)
    estimator = estimator or default_estimator(meta, temperature)
    if estimator not in ESTIMATORS:
        raise ValueError(f"estimator must be one of {ESTIMATORS}, got {estimator!r}")
    if estimator != "bucket" and not sp.sample:
        raise ValueError(
            f"estimator {estimator!r} reweights sampled ids, and this store keeps its top "
            f"{sp.top_k} ids only: use 'bucket', or a store written with sampled ids"
        )
    outside = meta.num_classes - sp.k

    def group(logits: np.ndarray, g: int, member: int | None) -> tuple[np.ndarray, np.ndarray]:
        z = logits / temperature
        # bounds the outside logits below T_min (raw selection: up to the values' rounding)
        ceiling = logits[:, : sp.top_k].min(1) + raw_slack(d.values, meta, member)
        f = tails.log_partition(d.tail[:, g], sp.tail_temperatures, outside, temperature, ceiling)[
            0
        ]
        log_z = np.logaddexp(_logsumexp(z), f)
        return z - log_z[:, None], f - log_z

    m = meta.num_members
    if member is not None:
        log_p, log_out = group(d.values[:, member], member, member)
    elif meta.combine == schema.COMBINE_ARITHMETIC:
        parts = [group(d.values[:, i], i, i) for i in range(m)]
        with np.errstate(divide="ignore"):
            log_w = np.log(np.asarray(meta.weights, dtype=np.float64))
        log_p = _logsumexp(
            np.stack([lp + lw for (lp, _), lw in zip(parts, log_w, strict=True)], -1)
        )
        log_out = _logsumexp(
            np.stack([lo + lw for (_, lo), lw in zip(parts, log_w, strict=True)], -1)
        )
    else:  # single teacher, or geometric: the weighted mean logits, the last tail group
        log_p, log_out = group(d.ranking, d.tail.shape[1] - 1, None)
    if sp.sample and estimator != "bucket":
        log_p, log_out = _spread(log_p, log_out, d.inclusion, sp.top_k, estimator)
    return SparseTargets(
        torch.from_numpy(d.ids),
        torch.from_numpy(log_p.astype(np.float32)),
        torch.from_numpy(log_out.astype(np.float32)),
    )


@np.errstate(divide="ignore", invalid="ignore")  # pi = 0 only in an unchecked, invalid row
def _spread(
    log_p: np.ndarray, log_out: np.ndarray, pi: np.ndarray, top_k: int, estimator: str
) -> tuple[np.ndarray, np.ndarray]:
    p = np.exp(log_p)
    s = slice(top_k, None)
    excess = p[:, s] * (1.0 - pi[:, s]) / pi[:, s]
    if estimator == "ht":
        p[:, s] += excess
        return _log(p), np.full(len(p), -np.inf)
    total = excess.sum(1)
    spread = total > 0
    share = np.where(spread[:, None], excess / np.where(spread, total, 1.0)[:, None], 0.0)
    p[:, s] += share * np.exp(log_out)[:, None]
    return _log(p), np.where(spread, -np.inf, log_out)


def _log(x: np.ndarray) -> np.ndarray:
    with np.errstate(divide="ignore"):
        return np.log(x)


def _logsumexp(x: np.ndarray) -> np.ndarray:
    top = np.max(x, axis=-1)
    safe = np.where(np.isfinite(top), top, 0.0)
    with np.errstate(divide="ignore"):
        return safe + np.log(np.exp(x - safe[..., None]).sum(-1))

"""Ensemble combination rules, shared by stage one (writing ``logits``) and stage two (replay).

For members with logits z_m (shape (B, M, C)) and weights w_m summing to one:

* geometric:  p_T = softmax(sum_m w_m z_m / T). The normalised weighted geometric mean of the
  members' softmax(z_m / T) is exactly this, at every T, so the stored mean logits suffice.
* arithmetic: p_T = sum_m w_m softmax(z_m / T). This depends on T in a way no single logit
  vector reproduces, so it is replayed from ``member_logits``.

All math runs in float64 (stage one) or float32 (training), never in float16.
"""

from __future__ import annotations

import math

import torch

from softlabels.errors import SoftLabelsError
from softlabels.schema import COMBINE_ARITHMETIC, COMBINE_GEOMETRIC, COMBINE_SINGLE


def normalise_weights(
    weights: list[float] | tuple[float, ...] | None, members: int
) -> tuple[float, ...]:
    """Uniform weights by default; otherwise check the count and rescale to sum to one."""
    if weights is None or len(weights) == 0:
        return tuple(1.0 / members for _ in range(members))
    if len(weights) != members:
        raise SoftLabelsError(
            f"--weights has {len(weights)} values but there are {members} teachers"
        )
    if any(not math.isfinite(w) or w < 0 for w in weights) or sum(weights) <= 0:
        raise SoftLabelsError(
            f"--weights {list(weights)} must be finite, non-negative, and not all zero"
        )
    total = float(sum(weights))
    return tuple(float(w) / total for w in weights)


def combine_log_probs(
    member_logits: torch.Tensor, weights: torch.Tensor, combine: str, temperature: float = 1.0
) -> torch.Tensor:
    """Log of the ensemble's soft targets at ``temperature``.

    member_logits: (B, M, C); weights: (M,). Returns (B, C) log-probabilities.
    """
    z = member_logits / temperature
    w = weights.to(z.dtype)
    if combine == COMBINE_GEOMETRIC or combine == COMBINE_SINGLE:
        return torch.log_softmax(torch.einsum("bmc,m->bc", z, w), dim=-1)
    if combine == COMBINE_ARITHMETIC:
        # log sum_m w_m softmax(z_m) = logsumexp_m(log w_m + log_softmax(z_m)); -inf for w_m = 0.
        return torch.logsumexp(torch.log_softmax(z, dim=-1) + torch.log(w)[None, :, None], dim=1)
    raise SoftLabelsError(f"unknown combine rule {combine!r}")


def combined_logits(
    member_logits: torch.Tensor, weights: torch.Tensor, combine: str
) -> torch.Tensor:
    """The ``logits`` array for a store: the combined teacher at T = 1, shape (B, C).

    Geometric: the weighted mean logits themselves (not re-centred), so softmax(logits / T) is
    the ensemble at every T. Arithmetic: log of the mean probabilities at T = 1.
    """
    if combine == COMBINE_ARITHMETIC:
        return combine_log_probs(member_logits, weights, combine, 1.0)
    return torch.einsum("bmc,m->bc", member_logits, weights.to(member_logits.dtype))


def replay_log_probs(
    logits: torch.Tensor,
    member_logits: torch.Tensor | None,
    combine: str,
    weights: torch.Tensor,
    temperature: float,
) -> torch.Tensor:
    """The stored teacher's log soft targets at ``temperature``, exact for every combine rule.

    logits: (B, C) from the store; member_logits: (B, M, C) or None. An arithmetic ensemble is
    replayed from its members; geometric and single teachers from ``logits``.
    """
    if combine == COMBINE_ARITHMETIC:
        if member_logits is None:
            raise SoftLabelsError("an arithmetic ensemble needs member_logits to replay at T != 1")
        return combine_log_probs(member_logits, weights, combine, temperature)
    return torch.log_softmax(logits / temperature, dim=-1)

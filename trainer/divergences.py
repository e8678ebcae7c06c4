"""Reverse KL and the generalised Jensen-Shannon divergence as KD terms, dense and sparse.

With p = p_T the teacher's soft targets and q = q_T = softmax(z / T) the student's:

    forward KL   KL(p || q) = sum_c p_c (log p_c - log q_c)            (mass-covering)
    reverse KL   KL(q || p) = sum_c q_c (log q_c - log p_c)            (mode-seeking)
    JSD(beta)    beta KL(p || m) + (1 - beta) KL(q || m),  m = beta p + (1 - beta) q

JSD follows TRL's ``generalized_jsd_loss``: beta = 0 is the forward KL, beta = 1 the reverse KL
(the limits TRL special-cases), beta = 0.5 the symmetric Jensen-Shannon divergence. Each term is
scaled by T^2, as the forward KL in ``trainer.losses`` is, and averaged over rows.

Sparse targets (K ids and a tail bucket, ``trainer.sparse_losses``): both distributions are
coarse-grained to the K stored ids plus one bucket for every other id, q's bucket being
Q = sum of q off the ids, and the divergence is taken between those K + 1-cell distributions.
All three are f-divergences, so coarse-graining never increases them: the sparse value is a
lower bound of the full one, equal when the tail is a single id, and exact on the stored ids
(no sampling noise). Reverse KL and JSD take the bucket form only: the ``importance`` and
``ht`` estimators reweight sampled ids for the forward KL's expectation, and are refused.

Zero masses: a cell where the teacher's p is 0 and the student's q is not (a store whose bucket
is empty, or a dense teacher with -inf logits) makes KL(q || p) infinite; there log p is taken
as ``LOG_FLOOR`` (e^-100, under float32's smallest normal), so the reverse KL stays finite and
pushes q there toward 0. Cells where the weighting mass is 0 contribute 0 (0 log 0 = 0).
"""

from __future__ import annotations

import math

import torch
from torch import nn

from softlabels.sparse import SparseTargets
from trainer.losses import check_temperature, check_weight, hard_cross_entropy

DIVERGENCES = ("forward-kl", "reverse-kl", "jsd")
LOG_FLOOR = -100.0

Target = torch.Tensor | SparseTargets


def cells(student_logits: torch.Tensor, target: Target, temperature: float):
    """(log p, log q), both (B, n): over the C classes for a dense target, over the K ids plus
    the bucket (last column) for a sparse one."""
    log_q = torch.log_softmax(student_logits.float() / temperature, dim=-1)
    if not isinstance(target, SparseTargets):
        return target.float(), log_q
    ids = target.ids
    log_q_ids = log_q.gather(1, ids)
    log_q_out = torch.logsumexp(log_q.scatter(1, ids, float("-inf")), dim=1)  # log Q, exact
    log_p = torch.cat([target.log_probs.float(), target.log_tail.float()[:, None]], 1)
    return log_p, torch.cat([log_q_ids, log_q_out[:, None]], 1)


def _kl(log_a: torch.Tensor, log_b: torch.Tensor) -> torch.Tensor:
    """(B,) KL(a || b) = sum a (log a - log b), with 0 where a = 0 (and a gradient of 0 there:
    both logs are replaced before the product, so no 0 * inf enters the graph)."""
    mass = log_a > float("-inf")
    la = torch.where(mass, log_a, torch.zeros_like(log_a))
    lb = torch.where(mass, log_b, torch.zeros_like(log_b))
    return torch.where(mass, la.exp() * (la - lb), torch.zeros_like(la)).sum(1)


def divergence(
    student_logits: torch.Tensor,
    target: Target,
    *,
    kind: str,
    temperature: float,
    beta: float = 0.5,
) -> torch.Tensor:
    """(B,) the divergence ``kind`` between the target p_T and the student's q_T, per row,
    without the T^2 factor. target: (B, C) teacher log-probabilities at T, or
    ``SparseTargets`` (ids + bucket, see the module docstring). beta: JSD's weight on p."""
    check_temperature(temperature)
    check_weight("beta", beta)
    if kind not in DIVERGENCES:
        raise ValueError(f"divergence must be one of {DIVERGENCES}, got {kind!r}")
    log_p, log_q = cells(student_logits, target, temperature)
    if kind == "jsd" and beta == 0.0:
        kind = "forward-kl"
    if kind == "jsd" and beta == 1.0:
        kind = "reverse-kl"
    if kind == "forward-kl":
        return _kl(log_p, log_q)
    if kind == "reverse-kl":
        return _kl(log_q, log_p.clamp(min=LOG_FLOOR))
    log_m = torch.logaddexp(log_p + math.log(beta), log_q + math.log1p(-beta))
    return beta * _kl(log_p, log_m) + (1 - beta) * _kl(log_q, log_m)


class DivergenceKD(nn.Module):
    """alpha * CE(y, q_1) + (1 - alpha) * T^2 * D(p_T, q_T), batchmean (CE over labelled rows),
    with D the reverse KL or JSD(beta) (module docstring; the forward KL is ``HintonKD``).

    forward(student_logits (B, C), target (B, C) teacher log-probabilities at ``temperature``
    or ``SparseTargets``, labels (B,) int64, -1 for none) -> the scalar loss.
    """

    def __init__(
        self, alpha: float, *, temperature: float, divergence: str, beta: float = 0.5
    ) -> None:
        super().__init__()
        check_weight("alpha", alpha)
        check_weight("beta", beta)
        check_temperature(temperature)
        if divergence not in DIVERGENCES:
            raise ValueError(f"divergence must be one of {DIVERGENCES}, got {divergence!r}")
        self.alpha, self.temperature, self.kind, self.jsd_beta = (
            alpha,
            temperature,
            divergence,
            beta,
        )
        self.target_temperature = temperature

    def rows(self, student_logits: torch.Tensor, target: Target) -> torch.Tensor:
        """(B,) T^2 * D per row."""
        d = divergence(
            student_logits, target, kind=self.kind, temperature=self.temperature, beta=self.jsd_beta
        )
        return d * self.temperature**2

    def forward(
        self, student_logits: torch.Tensor, target: Target, labels: torch.Tensor | None = None
    ) -> torch.Tensor:
        if self.alpha > 0 and labels is None:
            raise ValueError(f"DivergenceKD with alpha={self.alpha} needs labels (-1 for none)")
        loss = self.rows(student_logits, target).mean() * (1 - self.alpha)
        if self.alpha > 0:
            loss = loss + self.alpha * hard_cross_entropy(student_logits, labels)
        return loss

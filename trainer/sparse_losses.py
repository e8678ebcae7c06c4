"""KD losses on sparse targets: KL over a row's stored ids plus one bucket for all the others.

A sparse target (``softlabels.sparse.SparseTargets``) gives the teacher's mass p_j on K ids and
P on every other id together. The student's distribution is coarse-grained the same way, q_j on
the ids and Q = 1 - sum_j q_j, and the loss is

    T^2 * [ sum_j p_j log(p_j / q_j) + P log(P / Q) ]        (batchmean)

Its gradient w.r.t. the student's logit z_c is T * (q_c * mass - t_c) with mass = sum_j p_j + P
(1, except for the Horvitz-Thompson estimator) and t_c = p_c on the ids, P * q_c / Q elsewhere:
inside the bucket the target takes the student's own shape. This is a lower bound on the full
KL (coarse-graining never increases KL) and equals it when the tail is all in one id.

Only the student's logits are (B, C); the targets stay (B, K).
"""

from __future__ import annotations

import torch

from softlabels.sparse import SparseTargets
from trainer.losses import (
    IGNORE_LABEL,
    PrecomputedGrad,
    add_hard_ce,
    check_temperature,
    check_weight,
)


def _outside(log_q: torch.Tensor, ids: torch.Tensor) -> torch.Tensor:
    """log Q: the student's log-mass on the ids not in ``ids``, (B,)."""
    return torch.logsumexp(log_q.scatter(1, ids, float("-inf")), dim=1)


def _xlogy_ratio(p: torch.Tensor, log_p: torch.Tensor, log_q: torch.Tensor) -> torch.Tensor:
    """p * (log p - log q), with 0 where p = 0."""
    return torch.where(p > 0, p * (log_p - log_q), torch.zeros_like(p))


class _SparseHinton(PrecomputedGrad):
    """alpha * CE(y, q_1) + beta * T^2 * KL over ids + bucket, one node (see ``_Hinton``).

    Few passes over the (B, C) logits: the softmax, the row max (for log q on the ids without
    underflow), and the gradient q * (mass - P / Q) with the ids' entries written over it; the
    KL itself needs only (B, K) numbers, and Q = 1 - sum of q on the ids (summed exactly over
    the other ids in the rare rows where that difference loses precision)."""

    @staticmethod
    def forward(
        ctx,
        z: torch.Tensor,
        ids: torch.Tensor,
        log_p: torch.Tensor,
        log_tail: torch.Tensor,
        labels: torch.Tensor,
        temperature: float,
        alpha: float,
        beta: float,
    ) -> torch.Tensor:
        b = z.shape[0]
        s = z / temperature if temperature != 1.0 else z
        q = torch.softmax(s, dim=-1)
        log_norm = s.amax(1, keepdim=True) - q.amax(1, keepdim=True).log()  # logsumexp(s)
        log_q_ids = s.gather(1, ids) - log_norm
        q_ids = q.gather(1, ids)
        outside = 1.0 - q_ids.double().sum(1)
        log_out = _log_outside(s, log_norm, outside, ids)
        p, tail = log_p.exp(), log_tail.exp()
        d = log_tail - log_out  # log(P / Q); -inf for an empty bucket
        kl = (p * (log_p - log_q_ids)).nan_to_num_(0.0).sum() + (tail * d).nan_to_num_(0.0).sum()
        loss = kl * (beta * temperature**2 / b)
        ratio = d.exp()  # P / Q
        mass = p.sum(1) + tail
        scale = beta * temperature / b
        coef = (mass - ratio) * scale  # (B,): the gradient is q * coef off the ids
        at_ids = (q_ids * mass[:, None] - p) * scale  # (B, K): and this on them
        if alpha > 0 and temperature == 1.0:  # q_1 = q_T: CE's gradient alpha (q - onehot) / n
            known = labels != IGNORE_LABEL  # joins the same pass over q
            n = int(known.sum())
            if n:
                w = known.to(q.dtype) * (alpha / n)
                coef, at_ids = coef + w, at_ids + q_ids * w[:, None]
                rows = known.nonzero()[:, 0]
                y = labels[rows]
                loss = loss - (s[rows, y] - log_norm[rows, 0]).sum() * (alpha / n)
        grad = q * coef[:, None]
        grad.scatter_(1, ids, at_ids)
        if alpha > 0 and temperature == 1.0:
            if n:
                minus = torch.full((len(rows),), -alpha / n, dtype=grad.dtype)
                grad.index_put_((rows, y), minus, accumulate=True)
        elif alpha > 0:
            loss = loss + add_hard_ce(z, None, labels, temperature, alpha, grad)
        ctx.save_for_backward(grad)
        return loss


def _log_outside(
    s: torch.Tensor, log_norm: torch.Tensor, outside: torch.Tensor, ids: torch.Tensor
) -> torch.Tensor:
    """log Q from Q = 1 - sum_j q_j over the ids (float64); rows where that difference would
    lose precision (Q < 1e-3) are summed over the other ids exactly instead."""
    log_out = outside.clamp(min=1e-300).log().to(s.dtype)
    if float(outside.min()) < 1e-3:
        rows = (outside < 1e-3).nonzero()[:, 0]
        log_q = s[rows] - log_norm[rows]
        log_out[rows] = _outside(log_q, ids[rows])
    return log_out


def sparse_hinton_loss(
    student_logits: torch.Tensor,
    labels: torch.Tensor,
    target: SparseTargets,
    temperature: float,
    alpha: float,
    beta: float,
) -> torch.Tensor:
    """alpha * CE(y, q_1) + beta * T^2 * KL(p_T || q_T) over the ids plus the tail bucket."""
    check_weight("alpha", alpha)
    check_weight("beta", beta)
    check_temperature(temperature)
    return _SparseHinton.apply(
        student_logits.float(),
        target.ids,
        target.log_probs.float(),
        target.log_tail.float(),
        labels,
        temperature,
        alpha,
        beta,
    )


def sparse_soft_cross_entropy(
    student_logits: torch.Tensor, target: SparseTargets, temperature: float
) -> torch.Tensor:
    """T^2 * -(sum_j p_j log q_j + P log Q), batchmean: the sparse ``soft_cross_entropy``."""
    check_temperature(temperature)
    log_q = torch.log_softmax(student_logits.float() / temperature, dim=-1)
    p, tail = target.log_probs.float().exp(), target.log_tail.float().exp()
    ce = -(p * log_q.gather(1, target.ids)).sum(1)
    ce = ce - torch.where(tail > 0, tail * _outside(log_q, target.ids), torch.zeros_like(tail))
    return ce.mean() * temperature**2


def sparse_kl(log_probs: torch.Tensor, target: SparseTargets) -> torch.Tensor:
    """KL(target || q) over ids + bucket, batchmean, for (B, C) student log-probabilities."""
    p, tail = target.log_probs.exp(), target.log_tail.exp()
    kl = _xlogy_ratio(p, target.log_probs, log_probs.gather(1, target.ids)).sum()
    kl = kl + _xlogy_ratio(tail, target.log_tail, _outside(log_probs, target.ids)).sum()
    return kl / len(log_probs)


def top1(target: SparseTargets) -> torch.Tensor:
    """(B,) the id with the largest target mass in each row."""
    return target.ids.gather(1, target.log_probs.argmax(1, keepdim=True))[:, 0]

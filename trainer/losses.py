"""Distillation losses. Every function takes student logits (B, C), runs its softmax in float32,
and returns a scalar averaged over the batch ("batchmean").

Teacher soft targets arrive as log-probabilities at temperature T, ``teacher_log_probs`` =
log p_T, exactly what ``StoreReader.soft_targets(rows, T)`` and ``SoftTargetDataset`` return, so
one code path serves single teachers and replayed ensembles. Labels equal to -1 mean "no hard
label" and are ignored.

The modules in ``trainer.modules`` (``HintonKD``, ``SoftCE``, ``LogitMatching``) wrap these
functions, and their sparse forms in ``trainer.sparse_losses``, for users' own training loops.

Notation: z student logits, v teacher logits, q_T = softmax(z / T), p_T the teacher's soft
targets, C the number of classes.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

IGNORE_LABEL = -1


def check_temperature(temperature: float) -> None:
    if not (math.isfinite(temperature) and temperature > 0):
        raise ValueError(f"temperature must be a finite number > 0, got {temperature}")


def check_weight(name: str, value: float) -> None:
    if not (math.isfinite(value) and 0.0 <= value <= 1.0):
        raise ValueError(f"{name} must be in [0, 1], got {value}")


def hard_cross_entropy(student_logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """CE(y, q_1), averaged over the labelled rows; 0 when no row has a label."""
    total = F.cross_entropy(
        student_logits.float(), labels, ignore_index=IGNORE_LABEL, reduction="sum"
    )
    return total / (labels != IGNORE_LABEL).sum().clamp(min=1)  # keeps the graph when all -1


class _KDKL(torch.autograd.Function):
    """T^2 * KL(p_T || q_T), batchmean, with its gradient written out: T * (q_T - p_T) / B.

    One fused node instead of autograd's chain through log_softmax and kl_div: on a small
    student the KD term's per-op overhead is most of what an offline KD step adds to a CE step.
    """

    @staticmethod
    def forward(ctx, z: torch.Tensor, log_p: torch.Tensor, temperature: float) -> torch.Tensor:
        log_q = torch.log_softmax(z / temperature, dim=-1)
        p = log_p.exp()
        kl = (p * (log_p - log_q)).sum()
        ctx.save_for_backward(log_q, p)
        ctx.scale = temperature / z.shape[0]
        return kl * (temperature**2 / z.shape[0])

    @staticmethod
    def backward(ctx, grad: torch.Tensor) -> tuple[torch.Tensor | None, None, None]:
        log_q, p = ctx.saved_tensors
        return (log_q.exp() - p) * (ctx.scale * grad), None, None


def kd_kl(
    student_logits: torch.Tensor, teacher_log_probs: torch.Tensor, temperature: float
) -> torch.Tensor:
    """T^2 * KL(p_T || q_T), batchmean.

    The T^2 factor keeps the gradient's magnitude independent of T (Hinton et al. 2015): the
    gradient w.r.t. z_i is T * (q_i - p_i), which for large T and zero-mean logits tends to
    (z_i - v_i) / C.
    """
    check_temperature(temperature)
    return _KDKL.apply(student_logits.float(), teacher_log_probs.float(), temperature)


def soft_cross_entropy(
    student_logits: torch.Tensor, teacher_log_probs: torch.Tensor, temperature: float
) -> torch.Tensor:
    """T^2 * H(p_T, q_T) = T^2 * -sum_c p_c log q_c, batchmean. Differs from ``kd_kl`` by the
    teacher's entropy, a constant, so the gradients are equal."""
    check_temperature(temperature)
    log_q = F.log_softmax(student_logits.float() / temperature, dim=-1)
    p = teacher_log_probs.float().exp()
    return -(p * log_q).sum(dim=-1).mean() * temperature**2


def logit_matching(student_logits: torch.Tensor, teacher_logits: torch.Tensor) -> torch.Tensor:
    """Caruana's logit matching: (1 / 2C) * ||(z - mean z) - (v - mean v)||^2, batchmean.

    Its gradient, (z - v) / C for zero-mean logits, is the high-temperature limit of ``kd_kl``.
    Centring removes any per-row constant, so ``teacher_logits`` may equally be the teacher's
    log-probabilities at T = 1 (v - logsumexp v).
    """
    z = student_logits.float()
    v = teacher_logits.float()
    diff = (z - z.mean(-1, keepdim=True)) - (v - v.mean(-1, keepdim=True))
    return (diff**2).sum(-1).mean() / (2 * z.shape[-1])


class PrecomputedGrad(torch.autograd.Function):
    """A fused loss whose forward saves its own gradient w.r.t. its first input: backward only
    scales it (the other inputs need no gradient)."""

    @staticmethod
    def backward(ctx, g: torch.Tensor) -> tuple[torch.Tensor | None, ...]:
        (grad,) = ctx.saved_tensors
        return (grad * g,) + (None,) * (len(ctx.needs_input_grad) - 1)


class _Hinton(PrecomputedGrad):
    """alpha * CE(y, q_1) + beta * T^2 * KL(p_T || q_T), batchmean over rows (CE over labelled
    rows), as one autograd node whose gradient is computed with the loss:
    beta * T * (q_T - p_T) / B  +  alpha * (q_1 - onehot(y)) / n_labelled.

    On a small student, autograd's per-node overhead is most of what a KD step adds to a CE
    step; one node keeps an offline KD step within a few percent of a CE step.
    """

    @staticmethod
    def forward(
        ctx,
        z: torch.Tensor,
        log_p: torch.Tensor,
        labels: torch.Tensor,
        temperature: float,
        alpha: float,
        beta: float,
    ) -> torch.Tensor:
        b = z.shape[0]
        log_q = torch.log_softmax(z / temperature, dim=-1)
        p = log_p.exp()
        loss = torch.dot(p.view(-1), (log_p - log_q).view(-1)) * (beta * temperature**2 / b)
        grad = (log_q.exp() - p).mul_(beta * temperature / b)
        loss = loss + add_hard_ce(z, log_q, labels, temperature, alpha, grad)
        ctx.save_for_backward(grad)
        return loss


def add_hard_ce(
    z: torch.Tensor,
    log_q: torch.Tensor | None,
    labels: torch.Tensor,
    temperature: float,
    alpha: float,
    grad: torch.Tensor,
) -> torch.Tensor:
    """alpha * CE(y, q_1) over the labelled rows, adding its gradient alpha * (q_1 -
    onehot(y)) / n_labelled to ``grad`` in place. ``log_q`` is log_softmax(z / T), if known."""
    known = labels != IGNORE_LABEL
    n = int(known.sum()) if alpha > 0 else 0
    if not n:
        return torch.zeros((), dtype=z.dtype)
    b = z.shape[0]
    if n == b:  # every row labelled: the whole batch at once
        log_s = log_q if temperature == 1.0 and log_q is not None else torch.log_softmax(z, -1)
        ce = F.nll_loss(log_s, labels, reduction="sum")
        g_ce = log_s.exp()
        g_ce.scatter_add_(1, labels[:, None], torch.full((b, 1), -1.0, dtype=z.dtype))
        grad.add_(g_ce, alpha=alpha / n)
        return ce * (alpha / n)
    rows = known.nonzero()[:, 0]  # only the labelled rows (often few, with a store)
    y = labels[rows]
    if temperature == 1.0 and log_q is not None:
        log_s = log_q[rows]
    else:
        log_s = torch.log_softmax(z[rows], dim=-1)
    ce = F.nll_loss(log_s, y, reduction="sum")
    g_ce = log_s.exp()
    g_ce.scatter_add_(1, y[:, None], torch.full((n, 1), -1.0, dtype=z.dtype))
    grad.index_add_(0, rows, g_ce, alpha=alpha / n)
    return ce * (alpha / n)


def hinton_loss(
    student_logits: torch.Tensor,
    labels: torch.Tensor,
    teacher_log_probs: torch.Tensor,
    temperature: float,
    alpha: float,
    beta: float,
) -> torch.Tensor:
    """alpha * CE(y, q_1) + beta * T^2 * KL(p_T || q_T). The ``distill`` CLI uses this form, with
    ``--alpha`` on the hard-label term and ``--beta`` defaulting to 1 - alpha. Labels -1 are
    ignored by the CE term (0 when no row has a label)."""
    check_weight("alpha", alpha)
    check_weight("beta", beta)
    check_temperature(temperature)
    return _Hinton.apply(
        student_logits.float(), teacher_log_probs.float(), labels, temperature, alpha, beta
    )


def hinton_loss_common(
    student_logits: torch.Tensor,
    labels: torch.Tensor,
    teacher_log_probs: torch.Tensor,
    temperature: float,
    alpha: float,
) -> torch.Tensor:
    """The common form (1 - alpha) * CE + alpha * T^2 * KL: here alpha weighs the soft term."""
    check_weight("alpha", alpha)
    return hinton_loss(student_logits, labels, teacher_log_probs, temperature, 1.0 - alpha, alpha)

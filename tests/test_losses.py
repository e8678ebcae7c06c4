from __future__ import annotations

import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra.numpy import arrays

from trainer import losses

S = torch.tensor([[1.0, 2.0, 3.0], [0.5, -0.5, 0.0]])
V = torch.tensor([[3.0, 2.0, 1.0], [0.0, 0.0, 0.0]])
Y = torch.tensor([2, 0])


def teacher_lp(v: torch.Tensor, t: float) -> torch.Tensor:
    return F.log_softmax(v / t, dim=-1)


def test_kd_kl_hand_computed():
    # Row 1 at T=2: p = softmax([1.5, 1, .5]) and q = softmax([.5, 1, 1.5]) are mirror images, so
    # log p - log q = [1, 0, -1], so KL = p0 - p2.  Row 2: the teacher is uniform.
    p = np.exp([1.5, 1.0, 0.5]) / np.exp([1.5, 1.0, 0.5]).sum()
    kl1 = p[0] - p[2]
    q2 = np.exp([0.25, -0.25, 0.0]) / np.exp([0.25, -0.25, 0.0]).sum()
    kl2 = float(np.sum(np.full(3, 1 / 3) * (np.log(1 / 3) - np.log(q2))))
    want = 4 * (kl1 + kl2) / 2
    assert float(losses.kd_kl(S, teacher_lp(V, 2.0), 2.0)) == pytest.approx(want, rel=1e-6)
    assert want == pytest.approx(0.68176490, rel=1e-6)


def test_kd_kl_matches_timm_form():
    for t in (0.5, 1.0, 4.0, 20.0):
        ref = (
            F.kl_div(
                F.log_softmax(S / t, -1),
                F.log_softmax(V / t, -1),
                reduction="batchmean",
                log_target=True,
            )
            * t**2
        )
        assert float(losses.kd_kl(S, teacher_lp(V, t), t)) == pytest.approx(float(ref), rel=1e-6)


def test_alpha_one_at_t1_is_plain_cross_entropy():
    got = losses.hinton_loss(S, Y, teacher_lp(V, 1.0), 1.0, alpha=1.0, beta=0.0)
    assert float(got) == pytest.approx(float(F.cross_entropy(S, Y)), rel=1e-7)
    # hand value: CE row 1 = logsumexp(1,2,3) - 3, row 2 = logsumexp(.5,-.5,0) - .5
    want = (
        math.log(math.exp(1) + math.exp(2) + math.exp(3))
        - 3
        + math.log(math.exp(0.5) + math.exp(-0.5) + 1)
        - 0.5
    ) / 2
    assert float(got) == pytest.approx(want, rel=1e-6)


def test_hinton_forms_agree():
    a = losses.hinton_loss(S, Y, teacher_lp(V, 4.0), 4.0, alpha=0.3, beta=0.7)
    b = losses.hinton_loss_common(S, Y, teacher_lp(V, 4.0), 4.0, alpha=0.7)
    assert float(a) == pytest.approx(float(b))
    ce, kd = F.cross_entropy(S, Y), losses.kd_kl(S, teacher_lp(V, 4.0), 4.0)
    assert float(a) == pytest.approx(float(0.3 * ce + 0.7 * kd), rel=1e-6)


def test_all_labels_ignored_gives_zero_ce_and_a_gradient():
    s = S.clone().requires_grad_(True)
    loss = losses.hinton_loss(
        s, torch.tensor([-1, -1]), teacher_lp(V, 2.0), 2.0, alpha=0.5, beta=0.5
    )
    assert float(loss.detach()) == pytest.approx(
        0.5 * float(losses.kd_kl(S, teacher_lp(V, 2.0), 2.0))
    )
    loss.backward()
    assert torch.isfinite(s.grad).all()


def test_soft_ce_differs_from_kl_by_teacher_entropy():
    t = 3.0
    lp = teacher_lp(V, t)
    entropy = float(-(lp.exp() * lp).sum(-1).mean()) * t**2
    assert float(losses.soft_cross_entropy(S, lp, t)) == pytest.approx(
        float(losses.kd_kl(S, lp, t)) + entropy, rel=1e-6
    )


def test_logit_matching_hand_computed():
    # Centred: S1 -> [-1,0,1], V1 -> [1,0,-1]: diff [-2,0,2], sq 8. S2 -> [.5,-.5,0] vs 0: sq .5.
    assert float(losses.logit_matching(S, V)) == pytest.approx((8 + 0.5) / 2 / (2 * 3))


@pytest.mark.parametrize("bad", [0.0, -1.0, float("nan"), float("inf")])
def test_bad_temperature(bad):
    with pytest.raises(ValueError, match="temperature must be a finite number > 0"):
        losses.kd_kl(S, teacher_lp(V, 1.0), bad)


@pytest.mark.parametrize("bad", [-0.1, 1.5, float("nan")])
def test_bad_weights(bad):
    with pytest.raises(ValueError, match=r"alpha must be in \[0, 1\]"):
        losses.hinton_loss(S, Y, teacher_lp(V, 1.0), 1.0, alpha=bad, beta=0.5)


def test_high_temperature_limit_is_logit_matching():
    """For zero-mean logits, d(T^2 KL)/dz -> (z - v) / C as T grows (Hinton et al. 2015, sec. 2.1)."""
    torch.manual_seed(0)
    z = torch.randn(4, 10)
    v = torch.randn(4, 10)
    z, v = z - z.mean(1, keepdim=True), v - v.mean(1, keepdim=True)
    errors = []
    for t in (10.0, 100.0, 1000.0):
        zz = z.clone().double().requires_grad_(True)
        losses.kd_kl(zz, teacher_lp(v.double(), t), t).backward()
        # batchmean divides by B, so the per-row gradient is B * grad
        errors.append(float((zz.grad * 4 - (z - v).double() / 10).abs().max()))
    # the gap shrinks like 1/T: ten times smaller per decade of T
    assert errors[1] < errors[0] / 9 and errors[2] < errors[1] / 9
    assert errors[2] < 5e-4
    zz = z.clone().requires_grad_(True)
    losses.logit_matching(zz, v).backward()
    torch.testing.assert_close(zz.grad * 4, (z - v) / 10)


logits_strategy = arrays(
    np.float32,
    st.tuples(st.integers(1, 5), st.integers(2, 8)),
    elements=st.floats(-1e4, 1e4, width=32),
)


@settings(max_examples=80, deadline=None)
@given(s=logits_strategy, data=st.data(), t=st.floats(0.5, 100))
def test_kd_properties(s, data, t):
    v = data.draw(arrays(np.float32, s.shape, elements=st.floats(-1e4, 1e4, width=32)))
    s_t, v_t = torch.from_numpy(s), torch.from_numpy(v)
    kd = losses.kd_kl(s_t, teacher_lp(v_t, t), t)
    assert torch.isfinite(kd) and float(kd) >= -1e-4 * t**2
    same = losses.kd_kl(s_t, teacher_lp(s_t, t), t)
    assert abs(float(same)) <= 1e-5 * t**2
    g = s_t.clone().requires_grad_(True)
    losses.hinton_loss(
        g, torch.zeros(len(s), dtype=torch.long), teacher_lp(v_t, t), t, 0.5, 0.5
    ).backward()
    assert torch.isfinite(g.grad).all()


# --------------------------------------------------------------------------------------------
# --loss dispatch through the training path: train() must train with the loss it was asked for.


def fixed_student() -> torch.nn.Module:
    """A student that does not depend on the global seed: its logits are known to the test."""
    layer = torch.nn.Linear(64, 10)
    g = torch.Generator().manual_seed(1234)
    with torch.no_grad():
        layer.weight.copy_(torch.randn(10, 64, generator=g) * 0.2)
        layer.bias.copy_(torch.randn(10, generator=g))
    return torch.nn.Sequential(torch.nn.Flatten(), layer)


def _expected_first_loss(store_path, loss: str, t: float, alpha: float, beta: float) -> float:
    """The loss of ``fixed_student`` over the whole digits training split, computed here from the
    store's raw arrays (read with zarr, not the reader) and the formulas written out in float64."""
    import zarr

    from softlabels.transfer import as_transfer

    data = as_transfer("digits", "train")
    g = zarr.open_group(str(store_path), mode="r")
    index = np.asarray(g["sample_index"][:])
    members = np.empty_like(np.asarray(g["member_logits"][:], dtype=np.float64))
    members[index] = np.asarray(g["member_logits"][:], dtype=np.float64)  # transfer order
    weights = np.asarray(g.attrs["weights"], dtype=np.float64)
    with torch.no_grad():
        z = fixed_student()(torch.from_numpy(data.take(0, len(data)))).double().numpy()
    y = data.label_array()

    def log_softmax(a: np.ndarray) -> np.ndarray:
        a = a - a.max(-1, keepdims=True)
        return a - np.log(np.exp(a).sum(-1, keepdims=True))

    def teacher_log_p(temp: float) -> np.ndarray:  # arithmetic ensemble replayed at temp
        p = (weights[None, :, None] * np.exp(log_softmax(members / temp))).sum(1)
        return np.log(p)

    log_q = log_softmax(z / t)
    log_p = teacher_log_p(t)
    kl = (np.exp(log_p) * (log_p - log_q)).sum(-1).mean() * t**2
    ce_soft = -(np.exp(log_p) * log_q).sum(-1).mean() * t**2
    hard = -log_softmax(z)[np.arange(len(y)), y].mean()
    if loss == "hinton":
        return alpha * hard + beta * kl
    if loss == "soft_only":
        return kl
    if loss == "soft_ce":
        return ce_soft
    assert loss == "logits"
    v = teacher_log_p(1.0)
    diff = (z - z.mean(-1, keepdims=True)) - (v - v.mean(-1, keepdims=True))
    return (diff**2).sum(-1).mean() / (2 * z.shape[-1])


LOSS_CASES = [
    # (loss, alpha, beta): beta=None means 1 - alpha
    ("hinton", 0.3, None),
    ("hinton", 0.3, 0.5),
    ("soft_only", 0.3, None),
    ("soft_ce", 0.3, None),
    ("logits", 0.3, None),
]


def test_loss_cases_cover_every_loss_and_differ(digits_store):
    from trainer.config import LOSSES

    assert {name for name, _, _ in LOSS_CASES} == set(LOSSES)
    values = [
        _expected_first_loss(digits_store, n, 4.0, a, 1 - a if b is None else b)
        for n, a, b in LOSS_CASES
    ]
    for i in range(len(values)):
        for j in range(i):
            assert abs(values[i] - values[j]) > 1e-3 * abs(values[i]), (LOSS_CASES[i], values)


@pytest.mark.parametrize("loss,alpha,beta", LOSS_CASES)
def test_train_uses_the_loss_it_is_given(digits_store, tmp_path, loss, alpha, beta):
    """One epoch of one batch (every row): its train_loss is the chosen loss of the untrained
    student, so a --loss that dispatched to the wrong function (or ignored alpha, beta or T)
    gives another number."""
    from trainer.train import TrainConfig, train

    run = train(
        TrainConfig(
            out=str(tmp_path / "run"),
            store=str(digits_store),
            eval_split=None,
            model="tests.test_losses:fixed_student",
            loss=loss,
            temperature=4.0,
            alpha=alpha,
            beta=beta,
            epochs=1,
            batch_size=4096,
            progress=False,
        )
    )
    want = _expected_first_loss(digits_store, loss, 4.0, alpha, 1 - alpha if beta is None else beta)
    assert run.final["train_loss"] == pytest.approx(want, rel=2e-5)


def test_train_loss_streams_the_same_targets(digits_store, tmp_path):
    """The streamed source (a memory budget below the store's size) feeds the same targets."""
    from trainer.train import TrainConfig, train

    run = train(
        TrainConfig(
            out=str(tmp_path / "run"),
            store=str(digits_store),
            eval_split=None,
            model="tests.test_losses:fixed_student",
            loss="soft_ce",
            temperature=2.0,
            epochs=1,
            batch_size=4096,
            memory_budget_mb=0.01,
            progress=False,
        )
    )
    assert run.final["train_loss"] == pytest.approx(
        _expected_first_loss(digits_store, "soft_ce", 2.0, 0.1, 0.9), rel=2e-5
    )


def test_fused_kd_gradient_matches_autograd_of_the_plain_formula():
    """kd_kl's hand-written backward equals autograd through log_softmax and kl_div."""
    torch.manual_seed(0)
    z = torch.randn(5, 7, dtype=torch.float64, requires_grad=True)
    log_p = torch.log_softmax(torch.randn(5, 7, dtype=torch.float64) * 3, -1)
    for t in (0.5, 1.0, 4.0):
        assert torch.autograd.gradcheck(losses._KDKL.apply, (z, log_p, t))
        plain = F.kl_div(F.log_softmax(z / t, -1), log_p, reduction="batchmean", log_target=True)
        (g_plain,) = torch.autograd.grad(plain * t**2, z)
        (g_fused,) = torch.autograd.grad(losses._KDKL.apply(z, log_p, t), z)
        torch.testing.assert_close(g_fused, g_plain)

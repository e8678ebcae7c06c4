"""Reverse KL and generalised JSD KD terms (``trainer.divergences``): each checked, dense and
sparse (ids + tail bucket), against float64 formulas written here; TRL's beta limits; the
sparse value a lower bound of the dense one; the chunked loss equal to the plain one; and
``train_lm``/``distill train-lm --loss``."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from torch import nn

from softlabels.sparse import SparseTargets
from tests.test_lm_chunked import _grads
from trainer.divergences import DivergenceKD, divergence
from trainer.lm.chunked import ChunkedHeadLoss
from trainer.modules import HintonKD


def _softmax64(x: np.ndarray) -> np.ndarray:
    e = np.exp(x - x.max(1, keepdims=True))
    return e / e.sum(1, keepdims=True)


def _reference(p: np.ndarray, q: np.ndarray, kind: str, beta: float) -> np.ndarray:
    """(B,) the divergence between rows of probabilities p (teacher) and q (student), float64."""

    def kl(a: np.ndarray, b: np.ndarray) -> np.ndarray:
        return np.where(a > 0, a * np.log(np.where(a > 0, a, 1) / b), 0.0).sum(1)

    if kind == "forward-kl":
        return kl(p, q)
    if kind == "reverse-kl":
        return kl(q, p)
    m = beta * p + (1 - beta) * q
    return beta * kl(p, m) + (1 - beta) * kl(q, m)


def _coarse(p: np.ndarray, ids: np.ndarray) -> np.ndarray:
    """(B, K + 1): p on each row's ids, then the rest in one cell."""
    on = np.take_along_axis(p, ids, 1)
    return np.concatenate([on, 1 - on.sum(1, keepdims=True)], 1)


def _case(seed: int, b: int = 6, c: int = 20, k: int = 5, scale: float = 2.0):
    rng = np.random.default_rng(seed)
    z = rng.normal(size=(b, c)) * scale  # student logits
    v = rng.normal(size=(b, c)) * scale  # teacher logits
    ids = np.stack([rng.permutation(c)[:k] for _ in range(b)])
    return z, v, ids


def _sparse(p: np.ndarray, ids: np.ndarray) -> SparseTargets:
    cells = _coarse(p, ids)
    return SparseTargets(
        torch.from_numpy(ids),
        torch.from_numpy(np.log(cells[:, :-1])).float(),
        torch.from_numpy(np.log(cells[:, -1])).float(),
    )


@pytest.mark.parametrize("kind", ["forward-kl", "reverse-kl", "jsd"])
@pytest.mark.parametrize("temperature", [1.0, 2.5])
@pytest.mark.parametrize("beta", [0.1, 0.5, 0.9])
def test_dense_and_sparse_against_float64(kind, temperature, beta):
    z, v, ids = _case(0)
    p, q = _softmax64(v / temperature), _softmax64(z / temperature)
    log_p = torch.from_numpy(np.log(p)).float()
    got = divergence(
        torch.from_numpy(z).float(), log_p, kind=kind, temperature=temperature, beta=beta
    )
    np.testing.assert_allclose(got.numpy(), _reference(p, q, kind, beta), rtol=2e-4, atol=1e-6)
    got = divergence(
        torch.from_numpy(z).float(), _sparse(p, ids), kind=kind, temperature=temperature, beta=beta
    )
    want = _reference(_coarse(p, ids), _coarse(q, ids), kind, beta)
    np.testing.assert_allclose(got.numpy(), want, rtol=2e-4, atol=1e-6)


@pytest.mark.parametrize("kind", ["reverse-kl", "jsd"])
@pytest.mark.parametrize("sparse", [False, True])
def test_the_loss_and_its_gradient_against_float64_autograd(kind, sparse):
    """alpha CE + (1 - alpha) T^2 D, and d/dz, against the same written in float64 torch."""
    z, v, ids = _case(1)
    t, alpha, beta = 2.0, 0.3, 0.7
    labels = torch.tensor([3, -1, 0, 7, -1, 19])
    p = _softmax64(v / t)
    target = _sparse(p, ids) if sparse else torch.from_numpy(np.log(p)).float()
    z32 = torch.from_numpy(z).float().requires_grad_()
    loss = DivergenceKD(alpha, temperature=t, divergence=kind, beta=beta)(z32, target, labels)
    loss.backward()

    z64 = torch.from_numpy(z).requires_grad_()
    q = torch.softmax(z64 / t, 1)
    pt = torch.from_numpy(p)
    if sparse:
        idx = torch.from_numpy(ids)
        qi, pi = q.gather(1, idx), pt.gather(1, idx)
        q = torch.cat([qi, 1 - qi.sum(1, keepdim=True)], 1)
        pt = torch.cat([pi, 1 - pi.sum(1, keepdim=True)], 1)
    if kind == "reverse-kl":
        d = (q * (q / pt).log()).sum(1)
    else:
        m = beta * pt + (1 - beta) * q
        d = beta * (pt * (pt / m).log()).sum(1) + (1 - beta) * (q * (q / m).log()).sum(1)
    known = labels >= 0
    ce = -torch.log_softmax(z64, 1)[known].gather(1, labels[known][:, None]).mean()
    want = alpha * ce + (1 - alpha) * t * t * d.mean()
    want.backward()
    assert float(loss.detach()) == pytest.approx(float(want.detach()), rel=1e-5)
    torch.testing.assert_close(z32.grad.double(), z64.grad, rtol=1e-4, atol=1e-6)


def test_jsd_follows_trl_beta_limits_and_formula():
    """beta = 0 is the forward KL, beta = 1 the reverse KL (TRL's special cases); in between,
    TRL's mixture written as it writes it: logsumexp of log q + log(1 - beta), log p + log beta."""
    z, v, _ = _case(2)
    zt, log_p = torch.from_numpy(z).float(), torch.log_softmax(torch.from_numpy(v), 1).float()
    forward = HintonKD(0.0, temperature=1.0)(zt, log_p)
    assert float(
        divergence(zt, log_p, kind="jsd", temperature=1.0, beta=0.0).mean()
    ) == pytest.approx(float(forward), rel=1e-5)
    rev = divergence(zt, log_p, kind="reverse-kl", temperature=1.0)
    torch.testing.assert_close(divergence(zt, log_p, kind="jsd", temperature=1.0, beta=1.0), rev)
    beta = 0.3
    s, t = torch.log_softmax(torch.from_numpy(z), 1), torch.log_softmax(torch.from_numpy(v), 1)
    b = torch.tensor(beta, dtype=torch.float64)
    mix = torch.logsumexp(torch.stack([s + torch.log(1 - b), t + torch.log(b)]), 0)
    kl_t = torch.nn.functional.kl_div(mix, t, reduction="none", log_target=True).sum(1)
    kl_s = torch.nn.functional.kl_div(mix, s, reduction="none", log_target=True).sum(1)
    trl = beta * kl_t + (1 - beta) * kl_s
    got = divergence(zt, log_p, kind="jsd", temperature=1.0, beta=beta)
    torch.testing.assert_close(got.double(), trl, rtol=1e-4, atol=1e-6)


@settings(max_examples=40, deadline=None)
@given(
    seed=st.integers(0, 2**31 - 1),
    kind=st.sampled_from(["forward-kl", "reverse-kl", "jsd"]),
    beta=st.floats(0.0, 1.0),
    k=st.integers(1, 19),
    temperature=st.sampled_from([0.5, 1.0, 3.0]),
)
def test_the_bucket_bounds_the_full_divergence_and_is_it_for_one_id_tails(
    seed, kind, beta, k, temperature
):
    """Coarse-graining never increases an f-divergence: sparse <= dense, equal at K = C - 1."""
    z, v, ids = _case(seed, c=20, k=k)
    log_p = torch.log_softmax(torch.from_numpy(v) / temperature, 1)
    p = log_p.exp().numpy()
    zt = torch.from_numpy(z).float()
    dense = divergence(zt, log_p.float(), kind=kind, temperature=temperature, beta=beta)
    sparse = divergence(zt, _sparse(p, ids), kind=kind, temperature=temperature, beta=beta)
    assert (sparse <= dense * (1 + 1e-4) + 1e-5).all()
    assert (sparse >= -1e-6).all() and torch.isfinite(sparse).all()
    full = np.stack([np.random.default_rng(seed).permutation(20)[:19]] * len(z))
    one_id = divergence(zt, _sparse(p, full), kind=kind, temperature=temperature, beta=beta)
    torch.testing.assert_close(one_id, dense, rtol=1e-3, atol=1e-5)


def test_an_empty_bucket_and_zero_mass_ids_stay_finite():
    """A store keeping every id (log P = -inf) and ids with no target mass: finite losses and
    gradients, the reverse KL taking log p = -100 where p = 0."""
    z = torch.randn(3, 4, generator=torch.Generator().manual_seed(0)).requires_grad_()
    ids = torch.tensor([[0, 1, 2, 3]] * 3)
    log_probs = torch.log(torch.tensor([[0.5, 0.5, 0.0, 0.0]] * 3))
    target = SparseTargets(ids, log_probs, torch.full((3,), float("-inf")))
    for kind in ("forward-kl", "reverse-kl", "jsd"):
        z.grad = None
        loss = DivergenceKD(0.0, temperature=1.0, divergence=kind)(z, target)
        loss.backward()
        assert torch.isfinite(loss) and torch.isfinite(z.grad).all()
    q = torch.softmax(z.detach().double(), 1)
    want = (q * q.log()).sum(1) - (q[:, :2] * math.log(0.5)).sum(1) + 100 * q[:, 2:].sum(1)
    got = divergence(z.detach(), target, kind="reverse-kl", temperature=1.0)
    torch.testing.assert_close(got.double(), want, rtol=1e-5, atol=1e-5)


@settings(max_examples=25, deadline=None)
@given(
    seed=st.integers(0, 2**31 - 1),
    n=st.integers(1, 30),
    chunk=st.integers(1, 13),
    kind=st.sampled_from(["reverse-kl", "jsd"]),
    sparse=st.booleans(),
    alpha=st.sampled_from([0.0, 0.4]),
)
def test_the_chunked_loss_equals_the_plain_one(seed, n, chunk, kind, sparse, alpha):
    g = torch.Generator().manual_seed(seed)
    torch.manual_seed(seed)
    head = nn.Linear(8, 20)
    hidden = torch.randn(n, 8, generator=g)
    labels = torch.randint(-1, 20, (n,), generator=g)
    v = torch.randn(n, 20, generator=g, dtype=torch.float64) * 2
    p = torch.softmax(v / 2.0, 1).numpy()
    ids = np.stack([torch.randperm(20, generator=g)[:4].numpy() for _ in range(n)])
    target = _sparse(p, ids) if sparse else torch.from_numpy(np.log(p)).float()
    module = DivergenceKD(alpha, temperature=2.0, divergence=kind, beta=0.4)

    def plain(hid, lin, tgt, lab):
        return module(lin(hid), tgt, lab)

    want = _grads(plain, hidden, head, target, labels)
    got = _grads(ChunkedHeadLoss(module, chunk_rows=chunk), hidden, head, target, labels)
    for a, b in zip(got, want, strict=True):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-6)


@pytest.fixture(scope="module")
def lm(tmp_path_factory):
    pytest.importorskip("transformers")
    from softlabels.lm.generate import generate_tokens
    from softlabels.lm.text import load_text
    from softlabels.schema import SparseSpec
    from tests.lm_helpers import tiny_gpt, train_tokenizer, write_corpus

    root = tmp_path_factory.mktemp("losses")
    tokenizer = train_tokenizer(root / "tokenizer.json")
    corpus = write_corpus(root / "corpus")
    seqs = load_text(str(corpus), str(tokenizer))
    teacher = tiny_gpt(root / "teacher", seqs.vocab_size)
    stores = {
        name: generate_tokens(
            [f"hf:{teacher}"],
            seqs,
            root / f"{name}.zarr",
            max_length=16,
            sparse=spec,
            progress=False,
        )
        for name, spec in (("top", SparseSpec(top_k=8)), ("sampled", SparseSpec(top_k=4, sample=4)))
    }
    yield {"seqs": seqs, "stores": stores, "corpus": corpus, "tokenizer": tokenizer}
    for store in stores.values():
        store.close()


def _train(lm, store: str, **options):
    from trainer.lm.students import gpt_student
    from trainer.lm.train import LMConfig, train_lm

    torch.manual_seed(0)
    student = gpt_student(lm["seqs"].vocab_size, max_length=16, width=16, layers=1)
    config = LMConfig(epochs=1, batch_size=8, device="cpu", **options)
    return train_lm(student, lm["stores"][store], lm["seqs"], config)[-1]["train_loss"]


def test_train_lm_takes_each_loss_and_jsd_at_beta_0_is_the_forward_kl(lm):
    """alpha = 0: the KD term alone, through the chunked head (the built-in GPT-2)."""
    forward = _train(lm, "top", alpha=0.0)
    assert _train(lm, "top", alpha=0.0, loss="jsd", jsd_beta=0.0) == pytest.approx(
        forward, rel=1e-4
    )
    values = [_train(lm, "top", alpha=0.0, loss=loss) for loss in ("reverse-kl", "jsd")]
    # a random teacher and student are close: to second order in p - q, the reverse KL is the
    # forward KL and JSD(1/2) a quarter of it (each half-weighted KL to the midpoint, 1/8)
    assert values[0] != forward and values[0] == pytest.approx(forward, rel=0.2)
    assert values[1] == pytest.approx(forward / 4, rel=0.2)
    assert math.isfinite(_train(lm, "sampled", loss="reverse-kl"))  # the bucket, by default


def test_losses_and_estimators_that_do_not_go_together_are_refused(lm):
    from softlabels.errors import SoftLabelsError

    with pytest.raises(SoftLabelsError, match="'importance' estimator reweights"):
        _train(lm, "sampled", loss="reverse-kl", estimator="importance")
    with pytest.raises(SoftLabelsError, match="loss must be one of"):
        _train(lm, "top", loss="kl")
    with pytest.raises(SoftLabelsError, match=r"jsd_beta must be in \[0, 1\]"):
        _train(lm, "top", loss="jsd", jsd_beta=1.5)


def test_distill_train_lm_takes_loss_and_jsd_beta(lm, tmp_path):
    from click.testing import CliRunner

    from trainer.cli import main as distill

    args = ["train-lm", "--store", str(lm["stores"]["top"].path), "--text", str(lm["corpus"])]
    args += ["--tokenizer", str(lm["tokenizer"]), "--width", "16", "--layers", "1"]
    result = CliRunner().invoke(
        distill, [*args, "--loss", "jsd", "--jsd-beta", "0.3", "--out", str(tmp_path / "a")]
    )
    assert result.exit_code == 0, result.output
    result = CliRunner().invoke(distill, [*args, "--loss", "reverse", "--out", str(tmp_path / "b")])
    assert result.exit_code == 2 and "forward-kl" in result.output

"""Padded heads: a student and a store whose heads differ only above the tokenizer's size (576
against 512 rows over a 512-token tokenizer) distil over the tokenizer's ids; anything else is
still refused."""

from __future__ import annotations

import numpy as np
import pytest
import torch

pytest.importorskip("transformers")

from softlabels.errors import MismatchError  # noqa: E402
from softlabels.lm.generate import generate_tokens  # noqa: E402
from softlabels.lm.models import load_hf  # noqa: E402
from softlabels.lm.text import load_text  # noqa: E402
from softlabels.schema import SparseSpec  # noqa: E402
from softlabels.sparse import SparseTargets  # noqa: E402
from tests.lm_helpers import tiny_llama, wordlevel_tokenizer, write_corpus  # noqa: E402
from trainer.lm.train import LMConfig, evaluate_lm, train_lm  # noqa: E402
from trainer.lm.vocab import HeadFit  # noqa: E402
from trainer.modules import HintonKD  # noqa: E402

U, PADDED = 512, 576


@pytest.fixture(scope="module")
def lm(tmp_path_factory):
    root = tmp_path_factory.mktemp("padded")
    tokenizer = wordlevel_tokenizer(root / "tokenizer.json", U)
    seqs = load_text(str(write_corpus(root / "corpus")), str(tokenizer))
    stores = {}

    def store(head: int, sparse: bool):  # made on first use
        if (head, sparse) not in stores:
            teacher = tiny_llama(root / f"llama{head}", U, head=head, context=32)
            out = root / f"{head}-{sparse}.zarr"
            spec = SparseSpec(top_k=8) if sparse else None
            stores[head, sparse] = generate_tokens(
                [f"hf:{teacher}"], seqs, out, max_length=16, sparse=spec, progress=False
            )
        return stores[head, sparse]

    yield {"seqs": seqs, "store": store}
    for opened in stores.values():
        opened.close()


def _kl64(z: np.ndarray, v_log_p: np.ndarray, t: float) -> float:
    """T^2 * KL(p || softmax(z / T)), batchmean, in float64."""
    s = z / t
    log_q = (
        s - np.log(np.exp(s - s.max(1, keepdims=True)).sum(1, keepdims=True)) - s.max(1)[:, None]
    )
    p = np.exp(v_log_p)
    return float((p * (v_log_p - log_q)).sum(1).mean() * t * t)


def test_dense_targets_are_conditioned_on_the_tokenizer_ids():
    g = torch.Generator().manual_seed(0)
    v = torch.randn(5, PADDED, generator=g, dtype=torch.float64) * 3
    z = torch.randn(5, U, generator=g, dtype=torch.float64) * 3
    t = 2.0
    fit = HeadFit(vocab=U, teacher=PADDED, student=U)
    target = fit.target(torch.log_softmax(v / t, 1).float())
    expected = (v[:, :U] / t) - torch.logsumexp(v[:, :U] / t, 1, keepdim=True)
    np.testing.assert_allclose(target.numpy(), expected.numpy(), atol=1e-5)
    loss = HintonKD(0.0, temperature=t)(fit.logits(z.float(), sparse=False), target)
    assert float(loss) == pytest.approx(_kl64(z.numpy(), expected.numpy(), t), rel=1e-4)


def test_sparse_targets_drop_the_padded_ids_and_keep_the_rest_in_proportion():
    # row 0: ids 3, 530 (padded), 7 and a tail; row 1: no padded id
    p = np.array([[0.5, 0.2, 0.1], [0.4, 0.3, 0.2]])
    tail = 1 - p.sum(1)
    ids = torch.tensor([[3, 530, 7], [1, 2, 9]])
    target = SparseTargets(ids, torch.tensor(np.log(p)).float(), torch.tensor(np.log(tail)).float())
    fit = HeadFit(vocab=U, teacher=PADDED, student=U)
    out = fit.target(target)
    kept = np.array([[0.5, 0.0, 0.1], [0.4, 0.3, 0.2]])
    mass = kept.sum(1) + tail
    np.testing.assert_allclose(out.log_probs.exp().numpy(), kept / mass[:, None], atol=1e-6)
    np.testing.assert_allclose(out.log_tail.exp().numpy(), tail / mass, atol=1e-6)
    z = torch.randn(2, U, generator=torch.Generator().manual_seed(1))
    fitted = fit.logits(z, sparse=True)
    assert fitted.shape == (2, PADDED) and torch.equal(fitted[:, :U], z)
    assert float(torch.softmax(fitted, 1)[:, U:].sum()) == 0.0
    # the bucket loss on the fitted rows, against float64: ids 3, 7 | 1, 2, 9 and the rest
    loss = HintonKD(0.0, temperature=1.0)(fitted, out)
    q = torch.softmax(z.double(), 1).numpy()
    total = 0.0
    for r, row in enumerate([[3, 7], [1, 2, 9]]):
        pr = (kept[r][kept[r] > 0]) / mass[r]
        qr = q[r, row]
        tail_p, tail_q = tail[r] / mass[r], 1 - qr.sum()
        total += (pr * np.log(pr / qr)).sum() + tail_p * np.log(tail_p / tail_q)
    assert float(loss) == pytest.approx(total / 2, rel=1e-4)


@pytest.mark.parametrize(
    ("teacher", "student", "sparse"), [(PADDED, U, False), (PADDED, U, True), (U, PADDED, True)]
)
def test_padded_heads_train_and_evaluate_over_the_tokenizer_ids(
    lm, tmp_path, teacher, student, sparse
):
    store = lm["store"](teacher, sparse)
    folder = tiny_llama(tmp_path / "student", U, head=student, context=32)
    losses = []
    for chunk_rows in (0, 7):  # the full logits, then the chunked head and loss
        model = load_hf(f"hf:{folder}").train()
        config = LMConfig(epochs=1, batch_size=8, loss_chunk_rows=chunk_rows, device="cpu")
        history = train_lm(model, store, lm["seqs"], config)
        losses.append(history[-1]["train_loss"])
    assert np.isfinite(losses).all() and losses[0] == pytest.approx(losses[1], rel=1e-4)
    metrics = evaluate_lm(model, lm["seqs"], teacher=store)
    assert metrics["teacher_kl"] > 0 and np.isfinite(metrics["teacher_kl"])


def test_heads_that_differ_below_the_tokenizer_size_are_refused(lm, tmp_path):
    folder = tiny_llama(tmp_path / "student", U, head=500, context=32)  # smaller than U
    with pytest.raises(MismatchError, match=r"predicts 500 tokens .* 576.*512 ids"):
        train_lm(load_hf(f"hf:{folder}"), lm["store"](PADDED, False), lm["seqs"], LMConfig())

"""``trainer.lm.chunked.ChunkedHeadLoss``: the head and the loss a chunk of rows at a time give
the unchunked loss and gradients (hidden rows, head weight and bias) to 1e-5, for dense and
sparse targets, CE alone, unlabelled rows and chunks that do not divide the rows."""

from __future__ import annotations

import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from torch import nn

from softlabels.sparse import SparseTargets
from trainer.lm.chunked import ChunkedHeadLoss
from trainer.modules import HardCE, HintonKD


def _targets(kind: str, n: int, v: int, k: int, t: float, g: torch.Generator):
    if kind == "dense":
        return torch.log_softmax(
            torch.randn(n, v, generator=g, dtype=torch.float64) * 2, -1
        ).float()
    if kind == "sparse":
        ids = torch.stack([torch.randperm(v, generator=g)[:k].sort().values for _ in range(n)])
        mass = torch.softmax(torch.randn(n, k + 1, generator=g), -1)  # K ids and the tail
        return SparseTargets(ids, mass[:, :k].log(), mass[:, k].log())
    return None


def _grads(loss_fn, hidden, head, target, labels):
    hidden = hidden.clone().requires_grad_()
    head.zero_grad()
    value = loss_fn(hidden, head, target, labels)
    value.backward()
    bias = head.bias.grad.clone() if head.bias is not None else None
    return value.detach(), hidden.grad, head.weight.grad.clone(), bias


@settings(max_examples=40, deadline=None)
@given(
    seed=st.integers(0, 2**31 - 1),
    n=st.integers(1, 40),
    chunk=st.integers(1, 17),
    kind=st.sampled_from(["dense", "sparse", "ce"]),
    alpha=st.sampled_from([0.0, 0.3, 1.0]),
    temperature=st.sampled_from([1.0, 2.0, 4.0]),
    bias=st.booleans(),
    unlabelled=st.floats(0.0, 1.0),
)
def test_chunked_equals_unchunked(seed, n, chunk, kind, alpha, temperature, bias, unlabelled):
    g = torch.Generator().manual_seed(seed)
    h, v = 12, 30
    torch.manual_seed(seed)
    head = nn.Linear(h, v, bias=bias)
    hidden = torch.randn(n, h, generator=g)
    labels = torch.randint(0, v, (n,), generator=g)
    labels[torch.rand(n, generator=g) < unlabelled] = -1
    target = _targets(kind, n, v, 5, temperature, g)
    module = HardCE() if kind == "ce" else HintonKD(alpha, temperature=temperature)

    def plain(hid, lin, tgt, lab):
        return module(lin(hid), tgt, lab)

    want = _grads(plain, hidden, head, target, labels)
    got = _grads(ChunkedHeadLoss(module, chunk_rows=chunk), hidden, head, target, labels)
    for a, b in zip(got, want, strict=True):
        if b is None:
            assert a is None
        else:
            torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-6)


def test_hand_computed_two_rows_in_two_chunks():
    """CE of two rows, one per chunk: head = identity on 2 classes, logits [0, 0] and [ln 3, 0];
    labels 0 and 1: losses ln 2 and ln 4, mean ln(8) / 2; d/dhidden = softmax - onehot, / 2."""
    head = nn.Linear(2, 2, bias=False)
    with torch.no_grad():
        head.weight.copy_(torch.eye(2))
    hidden = torch.tensor([[0.0, 0.0], [float(torch.log(torch.tensor(3.0))), 0.0]])
    hidden.requires_grad_()
    value = ChunkedHeadLoss(HardCE(), chunk_rows=1)(hidden, head, None, torch.tensor([0, 1]))
    torch.testing.assert_close(value, torch.log(torch.tensor(8.0)) / 2)
    value.backward()
    expected = torch.tensor([[0.5 - 1, 0.5], [0.75, 0.25 - 1]]) / 2
    torch.testing.assert_close(hidden.grad, expected)


def test_a_tied_head_gets_both_gradients():
    """GPT-2 ties its head to the token embedding: the chunked head's gradient is added to the
    embedding's, as autograd does for the unchunked one."""
    torch.manual_seed(0)
    emb = nn.Embedding(20, 8)
    head = nn.Linear(8, 20, bias=False)
    head.weight = emb.weight
    ids, labels = torch.randint(0, 20, (9,)), torch.randint(0, 20, (9,))
    module = HintonKD(0.5, temperature=2.0)
    target = torch.log_softmax(torch.randn(9, 20), -1)
    grads = []
    for loss_fn in (lambda h: module(head(h), target, labels),
                    lambda h: ChunkedHeadLoss(module, chunk_rows=4)(h, head, target, labels)):  # fmt: skip
        emb.zero_grad()
        loss_fn(torch.tanh(emb(ids))).backward()
        grads.append(emb.weight.grad.clone())
    torch.testing.assert_close(grads[0], grads[1], rtol=1e-5, atol=1e-6)


def test_train_lm_takes_the_chunked_loss_and_trains_as_the_full_logits_do(tmp_path, monkeypatch):
    import pytest

    pytest.importorskip("transformers")
    import trainer.lm.chunked as chunked
    from softlabels.lm.generate import generate_tokens
    from softlabels.lm.text import load_text
    from softlabels.schema import SparseSpec
    from tests.lm_helpers import tiny_gpt, train_tokenizer, write_corpus
    from trainer.lm.students import load_student
    from trainer.lm.train import LMConfig, train_lm

    seqs = load_text(str(write_corpus(tmp_path / "c")), str(train_tokenizer(tmp_path / "t.json")))
    teacher = f"hf:{tiny_gpt(tmp_path / 'teacher', seqs.vocab_size)}"
    store = generate_tokens(
        [teacher], seqs, tmp_path / "s.zarr", max_length=16, sparse=SparseSpec(top_k=8, sample=4),
        progress=False,
    )  # fmt: skip
    calls = []
    real = chunked._ChunkedHead.apply
    monkeypatch.setattr(chunked._ChunkedHead, "apply", lambda *a: calls.append(1) or real(*a))
    results = []
    for rows in (7, 0):
        torch.manual_seed(0)
        student = load_student("gpt", vocab_size=store.meta.num_classes, max_length=16)
        config = LMConfig(epochs=2, batch_size=4, alpha=0.3, temperature=2.0, loss_chunk_rows=rows)
        history = train_lm(student, store, seqs, config)
        results.append(([h["train_loss"] for h in history], student.state_dict()))
        assert (len(calls) > 0) == (rows > 0)
        calls.clear()
    (chunk_losses, chunk_state), (full_losses, full_state) = results
    torch.testing.assert_close(
        torch.tensor(chunk_losses), torch.tensor(full_losses), rtol=1e-4, atol=0
    )
    # Adam amplifies float rounding in near-zero gradients, so weights after training are not
    # compared; one step's gradients through the whole student are, to 1e-5:
    batch = next(iter(_loader(store, seqs)))
    torch.manual_seed(0)
    student = load_student("gpt", vocab_size=store.meta.num_classes, max_length=16).eval()
    module = HintonKD(0.3, temperature=2.0)  # eval(): no dropout draws, gradients all the same
    grads = []
    for use_chunks in (True, False):
        student.zero_grad()
        if use_chunks:
            rows = batch.select(student.hidden_states(batch.ids, attention_mask=batch.mask))
            loss = ChunkedHeadLoss(module, chunk_rows=5)(
                rows, student.head, batch.target, batch.labels
            )
        else:
            logits = batch.select(student(batch.ids, attention_mask=batch.mask))
            loss = module(logits, batch.target, batch.labels)
        loss.backward()
        grads.append({n: p.grad.clone() for n, p in student.named_parameters()})
    for name, grad in grads[0].items():
        torch.testing.assert_close(grad, grads[1][name], rtol=1e-5, atol=1e-6, msg=name)
    store.close()


def _loader(store, seqs):
    from torch.utils.data import DataLoader

    from softlabels.lm.dataset import TokenTargetDataset, collate_tokens

    data = TokenTargetDataset(store, seqs.window(16, "window"), temperature=2.0)
    return DataLoader(data, batch_size=4, collate_fn=collate_tokens)

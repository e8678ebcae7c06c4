"""train-lm's learning-rate schedule and gradient accumulation: two half batches make the step
of one full batch, and the schedule sets the learning rate of every optimizer step."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

pytest.importorskip("transformers")

from softlabels.errors import SoftLabelsError  # noqa: E402
from softlabels.lm.dataset import TokenTargetDataset, collate_tokens  # noqa: E402
from softlabels.lm.generate import generate_tokens  # noqa: E402
from softlabels.lm.text import load_text  # noqa: E402
from tests.lm_helpers import CORPUS, bigram_student, tiny_gpt, train_tokenizer  # noqa: E402
from trainer.lm.chunked import ChunkedHeadLoss  # noqa: E402
from trainer.lm.schedule import lr_factor, share  # noqa: E402
from trainer.lm.students import load_student  # noqa: E402
from trainer.lm.train import LMConfig, train_lm  # noqa: E402
from trainer.modules import HintonKD  # noqa: E402


@pytest.fixture(scope="module")
def small(tmp_path_factory):
    """Eight documents of unequal lengths (so two half batches hold unequal rows), one with a
    prompt mask's worth of masked rows, and a dense store of them."""
    root = tmp_path_factory.mktemp("schedule")
    tokenizer = train_tokenizer(root / "tokenizer.json")
    docs = root / "docs.txt"
    docs.write_text("\n".join(CORPUS[:8]) + "\n")
    seqs = load_text(str(docs), str(tokenizer))
    teacher = tiny_gpt(root / "teacher", seqs.vocab_size)
    store = generate_tokens([f"hf:{teacher}"], seqs, root / "s.zarr", max_length=64, progress=False)
    yield {"seqs": seqs, "store": store, "vocab": seqs.vocab_size}
    store.close()


def test_lr_factor_by_hand():
    kw = {"total": 7, "warmup_steps": 3}
    assert [lr_factor(s, schedule="constant", **kw) for s in (0, 2, 3, 6)] == [0.25, 0.75, 1, 1]
    cosine = [lr_factor(s, schedule="cosine", **kw) for s in (3, 5, 7)]
    assert cosine == pytest.approx([1.0, 0.5, 0.0])  # (1 + cos(pi * (s - 3) / 4)) / 2
    assert lr_factor(7, schedule="cosine", min_lr_ratio=0.1, **kw) == pytest.approx(0.1)


def _gradient(student, batches, *, chunked: bool) -> dict[str, torch.Tensor]:
    """The gradient of one optimizer step over ``batches`` weighted by ``share``."""
    student.zero_grad(set_to_none=True)
    base = HintonKD(0.3, temperature=2.0)
    for batch in batches:
        part_fn, factor = share(base, batch, batches)
        if chunked:
            rows = batch.select(student.hidden_states(batch.ids, attention_mask=batch.mask))
            part = ChunkedHeadLoss(part_fn, chunk_rows=7)
            loss = part(rows, student.head, batch.target, batch.labels) * factor
        else:
            logits = batch.select(student(batch.ids, attention_mask=batch.mask)).float()
            loss = part_fn(logits, batch.target, batch.labels) * factor
        loss.backward()
    return {n: p.grad.clone() for n, p in student.named_parameters() if p.grad is not None}


@pytest.mark.parametrize("chunked", [False, True])
def test_two_half_batches_give_the_gradient_of_one_full_batch(small, chunked):
    torch.manual_seed(0)
    student = load_student("gpt", vocab_size=small["vocab"], max_length=64, width=16, layers=1)
    student.eval()  # no dropout: both sides see the same network
    ds = TokenTargetDataset(small["store"], small["seqs"], temperature=2.0)
    items = [ds[i] for i in range(8)]
    halves = [collate_tokens(items[:3]), collate_tokens(items[3:])]  # 3 + 5 sequences
    assert len(ds) == 8 and len(halves[0].labels) != len(halves[1].labels)
    full = _gradient(student, [collate_tokens(items)], chunked=chunked)
    accumulated = _gradient(student, halves, chunked=chunked)
    naive = {n: 0.0 for n in full}  # the mean of the two halves' losses, for contrast
    for half in halves:
        grads = _gradient(student, [half], chunked=chunked)
        naive = {n: naive[n] + grads[n] / 2 for n in full}
    for name, g in full.items():
        torch.testing.assert_close(accumulated[name], g, rtol=1e-5, atol=1e-7)
    assert any(not torch.allclose(naive[n], full[n], rtol=1e-3, atol=1e-6) for n in full)


def test_train_lm_accumulates_and_schedules(small, tmp_path):
    def run(batch_size: int, accumulation: int) -> list[dict]:
        torch.manual_seed(0)
        student = bigram_student(vocab_size=small["vocab"], max_length=64)  # no dropout
        config = LMConfig(
            batch_size=batch_size,
            accumulation=accumulation,
            schedule="cosine",
            warmup_steps=1,
            epochs=3,
            lr=1e-2,
            temperature=2.0,
        )
        return train_lm(student, small["store"], small["seqs"], config)

    whole = run(8, 1)  # one step per epoch
    parts = run(4, 2)  # the same steps, each in two micro-batches
    # the first step's loss is the full batch's, however it is cut
    assert parts[0]["train_loss"] == pytest.approx(whole[0]["train_loss"], rel=1e-5)
    # three steps, one of warmup (at lr / 2), then a cosine over the two others
    for history in (whole, parts):
        assert [h["lr"] for h in history] == pytest.approx([1e-2, 5e-3, 0.0])
        assert all(math.isfinite(h["train_loss"]) for h in history)


def test_schedule_options_are_checked(small):
    student = load_student("gpt", vocab_size=small["vocab"], max_length=64, width=16)
    for bad, match in (
        ({"schedule": "linear"}, "schedule must be one of"),
        ({"accumulation": 0}, "accumulation must be at least 1"),
        ({"warmup_steps": -1}, "warmup steps must be >= 0"),
    ):
        with pytest.raises(SoftLabelsError, match=match):
            train_lm(student, small["store"], small["seqs"], LMConfig(**bad))
    np.testing.assert_array_equal(small["seqs"].offsets[:1], [0])


@pytest.mark.bitwise
def test_a_resumed_run_keeps_its_schedule(small, tmp_path, monkeypatch):
    """Interrupted after its first epoch (checkpoint written) and resumed, a cosine run with
    accumulation ends bitwise as the uninterrupted run: the scheduler is in the checkpoint."""
    from softlabels import faults

    config = LMConfig(
        batch_size=2, accumulation=2, schedule="cosine", warmup_steps=1, epochs=3, lr=1e-2
    )

    def student():
        torch.manual_seed(0)
        return bigram_student(vocab_size=small["vocab"], max_length=64)

    whole = student()
    expected = train_lm(whole, small["store"], small["seqs"], config)
    monkeypatch.setattr(faults, "_passes", {})
    monkeypatch.setenv("SOFTLABELS_FAULT", "epoch_end:1:enospc")
    with pytest.raises(OSError):
        train_lm(student(), small["store"], small["seqs"], config, checkpoint=tmp_path / "c.pt")
    monkeypatch.delenv("SOFTLABELS_FAULT")
    resumed = student()
    history = train_lm(resumed, small["store"], small["seqs"], config, checkpoint=tmp_path / "c.pt")
    assert [h["lr"] for h in history] == [h["lr"] for h in expected]
    assert [h["train_loss"] for h in history] == [h["train_loss"] for h in expected]
    for a, b in zip(whole.parameters(), resumed.parameters(), strict=True):
        assert torch.equal(a, b)

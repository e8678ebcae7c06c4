"""TokenTargetDataset, SequenceSampler and collate_tokens: users' own LM loops, streaming reads
across chunk edges, and prompt loss masks."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from torch.utils.data import DataLoader

pytest.importorskip("transformers")

from softlabels import SoftTargetDataset  # noqa: E402
from softlabels.errors import MismatchError, SoftLabelsError  # noqa: E402
from softlabels.lm.dataset import (  # noqa: E402
    SequenceSampler,
    TokenTargetDataset,
    collate_tokens,
)
from softlabels.lm.generate import generate_tokens  # noqa: E402
from softlabels.lm.text import load_text  # noqa: E402
from softlabels.schema import SparseSpec  # noqa: E402
from tests.helpers import FLOAT32  # noqa: E402
from tests.lm_helpers import tiny_gpt, train_tokenizer, write_corpus  # noqa: E402
from trainer import HintonKD  # noqa: E402
from trainer.lm.students import gpt_student  # noqa: E402


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    """A sparse token store in 37-row chunks (sequences of 12 cross chunk edges)."""
    root = tmp_path_factory.mktemp("ds")
    tokenizer = train_tokenizer(root / "tokenizer.json")
    seqs = load_text(str(write_corpus(root / "corpus")), str(tokenizer))
    teacher = f"hf:{tiny_gpt(root / 'gpt', seqs.vocab_size)}"
    spec = SparseSpec(top_k=8, sample=4, value_step=None)
    store = generate_tokens(
        [teacher], seqs, root / "s.zarr", max_length=12, sparse=spec, chunk_rows=37, progress=False
    )
    yield {"store": store, "seqs": seqs, "root": root, "tokenizer": tokenizer, "teacher": teacher}
    store.close()


def test_items_are_the_stores_rows_joined_across_chunk_edges(setup):
    store, seqs = setup["store"], setup["seqs"]
    ds = SoftTargetDataset(store, seqs, temperature=2.0)  # token sequences: a token dataset
    assert isinstance(ds, TokenTargetDataset)
    windows = seqs.window(12, "window")
    assert len(ds) == len(windows)
    crossing = [
        s
        for s in range(len(windows))
        if windows.offsets[s] // 37 != (windows.offsets[s + 1] - 1) // 37
    ]
    assert crossing  # the test covers the join
    labels = windows.next_tokens()
    for s in range(len(ds)):
        a, b = windows.offsets[s], windows.offsets[s + 1]
        ids, y, target, keep = ds[s]
        want = store.soft_targets(np.arange(a, b), 2.0)
        np.testing.assert_array_equal(ids.numpy(), windows.ids[a:b])
        np.testing.assert_array_equal(y.numpy(), labels[a:b])
        assert bool(keep.all())
        # the dataset replays whole chunks and slices them, this reference only rows a..b:
        # other groups of rows, so the ids agree exactly and the float32 values to rounding
        np.testing.assert_array_equal(target.ids.numpy(), want.ids.numpy())
        np.testing.assert_allclose(target.log_probs.numpy(), want.log_probs.numpy(), **FLOAT32)
        np.testing.assert_allclose(target.log_tail.numpy(), want.log_tail.numpy(), **FLOAT32)
    with pytest.raises(IndexError):
        ds[len(ds)]


def test_the_sampler_visits_every_sequence_once_chunk_group_by_chunk_group(setup):
    ds = TokenTargetDataset(setup["store"], setup["seqs"], temperature=2.0)
    sampler = SequenceSampler(ds, buffer_chunks=2, seed=3)
    first = list(sampler)
    assert sorted(first) == list(range(len(ds)))
    sampler.set_epoch(1)
    assert list(sampler) != first
    chunk_of = (ds.seqs.offsets[:-1] // 37)[first]  # each visited sequence's first chunk
    for c in set(chunk_of.tolist()):
        where = np.flatnonzero(chunk_of == c)
        # a chunk's sequences come within its group: between them, at most 2 chunks appear
        assert len(set(chunk_of[where.min() : where.max() + 1].tolist())) <= 2
    assert len(set(chunk_of[: len(first) // 2].tolist())) < len(set(chunk_of.tolist()))


def test_one_epoch_reads_each_chunk_at_most_twice(setup, monkeypatch):
    """Streaming: the targets come a chunk at a time from a bounded cache, never all at once."""
    ds = TokenTargetDataset(setup["store"], setup["seqs"], temperature=2.0, cache_chunks=2)
    reads = []
    original = type(setup["store"]).read_verified_chunk
    monkeypatch.setattr(
        type(setup["store"]),
        "read_verified_chunk",
        lambda self, c: reads.append(c) or original(self, c),
    )
    for _ in DataLoader(
        ds, 4, sampler=SequenceSampler(ds, buffer_chunks=1), collate_fn=collate_tokens
    ):
        assert len(ds._cache) <= 2
    assert set(reads) == set(range(setup["store"].meta.num_chunks))
    assert max(reads.count(c) for c in set(reads)) <= 2


@pytest.mark.bitwise
def test_batches_are_the_same_with_worker_processes(setup):
    ds = TokenTargetDataset(setup["store"].path, setup["seqs"], temperature=2.0)

    def batches(workers: int) -> list:
        loader = DataLoader(
            ds,
            4,
            sampler=SequenceSampler(ds, seed=1),
            collate_fn=collate_tokens,
            num_workers=workers,
        )
        return list(loader)

    for one, two in zip(batches(0), batches(2), strict=True):
        np.testing.assert_array_equal(one.ids.numpy(), two.ids.numpy())
        np.testing.assert_array_equal(one.labels.numpy(), two.labels.numpy())
        np.testing.assert_array_equal(one.target.log_probs.numpy(), two.target.log_probs.numpy())


def test_a_users_loop_takes_a_loss_from_a_batch(setup):
    ds = TokenTargetDataset(setup["store"], setup["seqs"], temperature=2.0)
    batch = next(iter(DataLoader(ds, 4, collate_fn=collate_tokens)))
    student = gpt_student(setup["store"].meta.num_classes, max_length=12)
    logits = batch.select(student(batch.ids, attention_mask=batch.mask))
    assert logits.shape[0] == int(batch.mask.sum()) == len(batch.labels) == len(batch.target.ids)
    loss = HintonKD(0.5, temperature=2.0)(logits, batch.target, batch.labels)
    loss.backward()
    assert torch.isfinite(loss)


def test_other_sequences_are_refused(setup):
    with pytest.raises(MismatchError, match="not the store's sequences"):
        TokenTargetDataset(setup["store"], setup["seqs"].window(5, "truncate"), temperature=2.0)
    shifted = setup["seqs"]
    shifted = type(shifted)(
        shifted.name, shifted.split, np.roll(shifted.ids, 1), shifted.offsets, shifted.tokenizer
    )
    with pytest.raises(MismatchError, match="fingerprints differ"):
        TokenTargetDataset(setup["store"], shifted, temperature=2.0)


def test_a_classifier_store_is_refused_with_a_pointer(setup, digits_store):
    with pytest.raises(SoftLabelsError, match="not a token store"):
        SoftTargetDataset(str(digits_store), setup["seqs"], temperature=2.0)


def test_prompt_tokens_take_no_loss(setup, tmp_path):
    docs = tmp_path / "train.jsonl"
    rows = [
        {"prompt": "the quick brown fox", "text": "jumps over the lazy dog"},
        {"prompt": "a", "text": "second answer here"},
    ]
    docs.write_text("\n".join(json.dumps(r) for r in rows) + "\n")
    seqs = load_text(str(docs), str(setup["tokenizer"]), prompt_field="prompt")
    plain = load_text(str(docs), str(setup["tokenizer"]))  # the text alone
    assert seqs.loss_mask is not None and plain.loss_mask is None
    for s in range(len(seqs)):
        a, b = seqs.offsets[s], seqs.offsets[s + 1]
        doc = seqs.ids[a:b]
        answer = plain.ids[plain.offsets[s] : plain.offsets[s + 1]]
        prompt = len(doc) - len(answer)
        assert prompt > 0 and np.array_equal(doc[prompt:], answer)
        # row t takes a loss exactly when it predicts an answer token (t + 1 >= prompt)
        np.testing.assert_array_equal(seqs.loss_mask[a:b], np.arange(b - a) >= prompt - 1)
    store = generate_tokens(
        [setup["teacher"]], seqs, tmp_path / "p.zarr", max_length=64, progress=False
    )
    ds = TokenTargetDataset(store, seqs, temperature=1.0)
    batch = collate_tokens([ds[0], ds[1]])
    kept = int(seqs.loss_mask.sum())
    assert int(batch.loss.sum()) == len(batch.labels) == len(batch.target) == kept
    assert int(batch.mask.sum()) == seqs.num_tokens > kept
    # the kept labels are the answers' tokens (and -1 at each document's end)
    answers = [plain.ids[plain.offsets[s] + 0 : plain.offsets[s + 1]] for s in range(2)]
    want = np.concatenate([np.append(a, -1) for a in answers])
    np.testing.assert_array_equal(batch.labels.numpy(), want)
    # truncating keeps each row's mask
    cut = seqs.window(6, "truncate")
    np.testing.assert_array_equal(cut.loss_mask[:6], seqs.loss_mask[:6])
    with pytest.raises(SoftLabelsError, match="needs .jsonl"):
        load_text(str(write_corpus(tmp_path / "c")), str(setup["tokenizer"]), prompt_field="p")
    store.close()


def test_a_token_store_shared_over_http_trains_as_the_local_one(setup, tmp_path):
    """Share a store as a directory behind a URL: the dataset reads it as it reads the local."""
    import functools
    import shutil
    import threading
    from http.server import ThreadingHTTPServer

    from tests.test_remote import _Handler

    shutil.copytree(setup["store"].path, tmp_path / "lm.zarr")
    handler = functools.partial(_Handler, directory=str(tmp_path))
    httpd = ThreadingHTTPServer(("127.0.0.1", 0), handler)
    threading.Thread(target=httpd.serve_forever, daemon=True).start()
    try:
        url = f"http://127.0.0.1:{httpd.server_address[1]}/lm.zarr"
        remote = TokenTargetDataset(url, setup["seqs"], temperature=3.0)
        local = TokenTargetDataset(setup["store"], setup["seqs"], temperature=3.0)
        for s in (0, len(local) // 2, len(local) - 1):
            for a, b in zip(remote[s][2], local[s][2], strict=True):
                np.testing.assert_array_equal(a.numpy(), b.numpy())
    finally:
        httpd.shutdown()


def test_store_fingerprint_is_over_the_windowed_sequences(setup):
    """FORMAT.md: SHA-256 over the windowed sequences' ids, then their offsets [0, ..., N], as
    little-endian int64; not over the documents before windowing."""
    import hashlib

    store, seqs = setup["store"], setup["seqs"]
    windows = seqs.window(12, "window")
    assert len(windows) > len(seqs) and windows.offsets[0] == 0
    assert windows.offsets[-1] == store.meta.num_samples
    data = windows.ids.astype("<i8").tobytes() + windows.offsets.astype("<i8").tobytes()
    assert store.meta.transfer.fingerprint == "sha256:" + hashlib.sha256(data).hexdigest()
    assert store.meta.transfer.fingerprint != seqs.fingerprint()
    assert store.labels()[-1] == -1  # the final row ends the last sequence

from __future__ import annotations

import numpy as np
import pytest
import zarr

from softlabels.errors import ChecksumError, IncompleteStoreError, MismatchError
from softlabels.store import open_store
from softlabels.transfer import load_transfer
from tests.conftest import make_store
from trainer.data import InMemoryTargets, StreamingTargets, make_target_source, open_joined_store


def pairs(source, epoch: int) -> dict[int, bytes]:
    out = {}
    for b in source.batches(epoch):
        for i, pos in enumerate(b.positions):
            assert int(pos) not in out, "a sample was served twice in one epoch"
            out[int(pos)] = b.logits[i].tobytes() + b.member_logits[i].tobytes()
    return out


def test_streaming_and_in_memory_serve_the_same_pairs(tmp_path):
    path = make_store(tmp_path / "s.zarr", chunk_rows=100)
    with open_store(path) as store:
        memory = InMemoryTargets(store, batch_size=32, seed=3)
        stream = StreamingTargets(store, batch_size=32, seed=3, buffer_chunks=2)
        for epoch in (0, 1):
            a, b = pairs(memory, epoch), pairs(stream, epoch)
            assert len(a) == 1438 and a == b
        rows = store.read(0, 1438)
    # and each pair is the stored row of that transfer position
    a = pairs(memory, 0)
    for pos in (0, 717, 1437):
        assert a[pos][:40] == rows.logits[list(rows.sample_index).index(pos)].tobytes()


def test_streaming_shuffles_chunks_and_batches_are_full(tmp_path):
    path = make_store(tmp_path / "s.zarr", chunk_rows=100)
    with open_store(path) as store:
        stream = StreamingTargets(store, batch_size=32, seed=0, buffer_chunks=3)
        sizes = [len(b.positions) for b in stream.batches(0)]
        first = next(iter(stream.batches(0))).positions
        other = next(iter(stream.batches(1))).positions
    assert sizes[:-1] == [32] * (len(sizes) - 1) and sum(sizes) == 1438
    assert not np.array_equal(first, other)
    assert len(np.unique(first // 100)) > 1  # a batch mixes rows from several chunks


def test_budget_picks_streaming(digits_store):
    with open_store(digits_store) as store:
        assert isinstance(make_target_source(store, 1438, 32, 0, 10**9), InMemoryTargets)
        src = make_target_source(store, 1438, 32, 0, 100_000)
        assert isinstance(src, StreamingTargets) and src.buffer_chunks == 1


def test_join_follows_sample_index_not_row_order(tmp_path):
    """Permute the rows on disk (consistently with sample_index): targets stay with their inputs."""
    path = make_store(tmp_path / "p.zarr", teachers=("tests.helpers:teacher_a",), chunk_rows=2000)
    with open_store(path) as s:
        rows = s.read(0, 1438)
    perm = np.random.default_rng(0).permutation(1438)
    g = zarr.open_group(str(path), mode="r+")
    for name, arr in (
        ("logits", rows.logits),
        ("sample_index", rows.sample_index),
        ("labels", rows.labels),
    ):
        g[name][:] = arr[perm]
    from softlabels.store import chunk_checksum

    with open_store(path) as s:
        g.attrs["checksums"] = [chunk_checksum(s.read(0, 1438))]
    with open_joined_store(str(path), load_transfer("digits")) as s:
        memory = InMemoryTargets(s, 64, 0)
    np.testing.assert_array_equal(memory.logits, rows.logits)


@pytest.mark.parametrize(("transfer", "split", "message"), [
    ("digits", "test", "split: store has 'train', transfer set is 'test'.*N: store has 1438 rows, transfer set has 359.*fingerprint"),
    ("tests.helpers:tiny_dataset", "train", "N: store has 1438 rows, transfer set has 40"),
])  # fmt: skip
def test_join_refusals(digits_store, transfer, split, message):
    with pytest.raises(MismatchError, match=message):
        open_joined_store(str(digits_store), load_transfer(transfer, split))


def test_join_refuses_same_size_different_content(tmp_path, digits_store):
    x = load_transfer("digits").take(0, 1438).copy()
    x[7, 0, 3, 3] += 0.5
    np.savez(tmp_path / "edited.npz", x=x, y=load_transfer("digits").labels)
    with pytest.raises(MismatchError, match="fingerprint: store has sha256:") as info:
        open_joined_store(str(digits_store), load_transfer(str(tmp_path / "edited.npz")))
    assert "split" not in str(info.value) and "N:" not in str(info.value)


def test_join_refuses_class_count(tmp_path, digits_store):
    np.savez(tmp_path / "c.npz", x=load_transfer("digits").take(0, 1438), y=load_transfer("digits").labels,
             class_names=np.array([str(i) for i in range(12)]))  # fmt: skip
    with pytest.raises(
        MismatchError, match="class count: store has 10 classes, transfer set .* has 12"
    ):
        open_joined_store(str(digits_store), load_transfer(str(tmp_path / "c.npz")))


def test_join_refuses_incomplete_and_corrupt(tmp_path):
    path = make_store(tmp_path / "i.zarr", teachers=("tests.helpers:teacher_a",))
    g = zarr.open_group(str(path), mode="r+")
    g.attrs["complete"] = False
    with pytest.raises(IncompleteStoreError, match="not complete"):
        open_joined_store(str(path), load_transfer("digits"))
    g.attrs["complete"] = True
    g["logits"][3, 3] = 99.0
    with (
        open_joined_store(str(path), load_transfer("digits")) as s,
        pytest.raises(ChecksumError, match="chunk 0 .* corrupt"),
    ):
        InMemoryTargets(s, 64, 0)

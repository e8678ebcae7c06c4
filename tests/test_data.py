from __future__ import annotations

import numpy as np
import pytest
import torch
import zarr

from softlabels.errors import ChecksumError, IncompleteStoreError, MismatchError
from softlabels.store import open_store
from softlabels.transfer import load_transfer
from tests.conftest import make_store
from tests.helpers import FLOAT32, reseal
from tests.test_ensemble import direct_arithmetic
from trainer.data import InMemoryTargets, StreamingTargets, join, make_target_source


def open_joined_store(path: str, transfer):
    return join(path, transfer)


def pairs(source, epoch: int) -> dict[int, np.ndarray]:
    out = {}
    for positions, targets in source.batches(epoch):
        for i, pos in enumerate(positions):
            assert int(pos) not in out, "a sample was served twice in one epoch"
            out[int(pos)] = targets[i].numpy().copy()
    return out


def in_order(served: dict[int, np.ndarray]) -> np.ndarray:
    return np.stack([served[pos] for pos in sorted(served)])


def test_streaming_and_in_memory_serve_the_same_pairs(tmp_path):
    path = make_store(tmp_path / "s.zarr", chunk_rows=100)
    with open_store(path) as store:
        memory = InMemoryTargets(store, 4.0, batch_size=32, seed=3)
        stream = StreamingTargets(store, 4.0, batch_size=32, seed=3, buffer_chunks=2)
        for epoch in (0, 1):
            a, b = pairs(memory, epoch), pairs(stream, epoch)
            assert len(a) == 1438 and a.keys() == b.keys()
            # replayed from the same stored rows, but in other groups (the whole store; a
            # buffer of chunks), so equal to float32 rounding rather than bitwise
            np.testing.assert_allclose(in_order(a), in_order(b), **FLOAT32)
        rows = store.read(0, 1438)
    # and each pair is the arithmetic ensemble at T = 4 of that transfer position's stored row
    a = pairs(memory, 0)
    for pos in (0, 717, 1437):
        row = list(rows.sample_index).index(pos)
        want = np.log(direct_arithmetic(rows.member_logits[row : row + 1], np.full(3, 1 / 3), 4.0))
        np.testing.assert_allclose(a[pos], want[0], rtol=1e-5, atol=1e-6)


def test_streaming_shuffles_chunks_and_batches_are_full(tmp_path):
    path = make_store(tmp_path / "s.zarr", chunk_rows=100)
    with open_store(path) as store:
        stream = StreamingTargets(store, 1.0, batch_size=32, seed=0, buffer_chunks=3)
        sizes = [len(p) for p, _ in stream.batches(0)]
        first = next(iter(stream.batches(0)))[0]
        other = next(iter(stream.batches(1)))[0]
    assert sizes[:-1] == [32] * (len(sizes) - 1) and sum(sizes) == 1438
    assert not np.array_equal(first, other)
    assert len(np.unique(first // 100)) > 1  # a batch mixes rows from several chunks


def test_budget_picks_streaming(digits_store):
    with open_store(digits_store) as store:
        assert isinstance(make_target_source(store, 2.0, 1438, 32, 0, 10**9), InMemoryTargets)
        src = make_target_source(store, 2.0, 1438, 32, 0, 100_000)
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
    reseal(g)
    with open_joined_store(str(path), load_transfer("digits")) as s:
        memory = InMemoryTargets(s, 1.0, 64, 0)
    np.testing.assert_allclose(
        memory.targets.numpy(),
        torch.log_softmax(torch.from_numpy(rows.logits), 1).numpy(),
        atol=1e-6,
    )


SPLIT_AND_SIZE = (
    "split: store has 'train', transfer set is 'test'.*N: store has 1438 rows, transfer set has 359"
)


@pytest.mark.parametrize(
    ("transfer", "split", "message"),
    [
        ("digits", "test", SPLIT_AND_SIZE),
        ("tests.helpers:tiny_dataset", "train", "N: store has 1438 rows, transfer set has 40"),
    ],
)
def test_join_refusals(digits_store, transfer, split, message):
    with pytest.raises(MismatchError, match=message):
        open_joined_store(str(digits_store), load_transfer(transfer, split))


def test_join_refuses_same_size_different_content(tmp_path, digits_store):
    x = load_transfer("digits").take(0, 1438).copy()
    x[7, 0, 3, 3] += 0.5
    np.savez(tmp_path / "edited.npz", x=x, y=load_transfer("digits").labels)
    with pytest.raises(MismatchError, match="fingerprint: store was made from 'digits'") as info:
        open_joined_store(str(digits_store), load_transfer(str(tmp_path / "edited.npz")))
    assert "split" not in str(info.value) and "N:" not in str(info.value)


def test_join_refuses_class_count(tmp_path, digits_store):
    digits = load_transfer("digits")
    names = np.array([str(i) for i in range(12)])
    np.savez(tmp_path / "c.npz", x=digits.take(0, 1438), y=digits.labels, class_names=names)
    with pytest.raises(
        MismatchError, match="class count: 10 classes, but transfer set .* names 12"
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
        InMemoryTargets(s, 1.0, 64, 0)

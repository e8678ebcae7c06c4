"""Joins on stores whose rows are not in position order (issue 22, §5 and §6).

Every store here is written through the public ``StoreWriter`` with a permuted ``sample_index``
(row r holds transfer position ``PERM[r]``), and every expected target is computed in float64 in
the test from the logits the test chose for each *position*. A dataset or reader that joined by
row order would hand position i the targets of position ``PERM[i]``, which differ by value.
Token and views stores fix their row order in FORMAT.md (``sample_index[r] = r`` and ``r // V``):
for them the test is that a store breaking that rule is refused, never joined by row order, and
that each item's targets are the right ones by value on a valid store.
"""

from __future__ import annotations

import hashlib

import numpy as np
import pytest
import torch
import zarr

from softlabels import SoftTargetDataset, schema
from softlabels.errors import MismatchError, SoftLabelsError, StoreFormatError
from softlabels.generate import generate
from softlabels.lm.dataset import TokenTargetDataset
from softlabels.lm.text import TokenSequences
from softlabels.schema import SparseSpec, StoreMeta, TeacherInfo, TokenSpec, TransferInfo
from softlabels.store import Rows, StoreWriter, chunk_checksum, open_store
from softlabels.transfer import TransferSet
from softlabels.views.augment import RandomResizedCropFlip
from softlabels.views.dataset import ViewTargetDataset
from softlabels.views.transfer import view_input
from tests.helpers import reseal, teacher_a, teacher_b

N, C, M = 11, 7, 2
PERM = np.array([7, 2, 10, 0, 5, 9, 1, 4, 8, 3, 6])  # row r holds position PERM[r]
RNG = np.random.default_rng(2201)
X = RNG.normal(size=(N, 3)).astype(np.float32)
Y = RNG.integers(0, C, size=N)
# (N, M, C) member logits *by position*, multiples of 1/4 so that float32 holds them exactly
Z = np.round(RNG.normal(scale=2.0, size=(N, M, C)) * 4) / 4
W = (0.25, 0.75)


def _log_softmax(z: np.ndarray) -> np.ndarray:
    z = z - z.max(-1, keepdims=True)
    return z - np.log(np.exp(z).sum(-1, keepdims=True))


def arithmetic_targets(z: np.ndarray, t: float) -> np.ndarray:
    """(R, C) float64 log Σ_m w_m softmax(z_m / T)."""
    p = np.exp(_log_softmax(z / t))
    return np.log(np.einsum("rmc,m->rc", p, np.asarray(W)))


def _transfer() -> TransferSet:
    return TransferSet(name="perm", split="train", inputs=X, labels=Y, class_names=None)


def _meta(**kw) -> StoreMeta:
    return StoreMeta(
        num_samples=N,
        num_classes=C,
        class_names=tuple(f"c{i}" for i in range(C)),
        combine="arithmetic",
        weights=W,
        teachers=tuple(
            TeacherInfo(name=f"t{m}", spec=None, architecture=None, sha256=f"{m}" * 64)
            for m in range(M)
        ),
        transfer=TransferInfo("perm", "train", N, _transfer().fingerprint()),
        dtype="float32",
        chunk_rows=3,
        created_at="2026-01-01T00:00:00+00:00",
        producer="tests",
        **kw,
    )


def write_permuted(path, **kw) -> None:
    """The store of ``Z`` with its rows in ``PERM`` order, written chunk by chunk."""
    meta = _meta(**kw)
    with StoreWriter.create(path, meta, compress=False) as writer:
        for chunk in range(meta.num_chunks):
            a, b = meta.chunk_bounds(chunk)
            pos = PERM[a:b]
            members = Z[pos].astype(np.float32)
            combined = arithmetic_targets(Z[pos], 1.0).astype(np.float32)
            writer.write_chunk(chunk, Rows.dense(combined, members, pos, Y[pos], start=a))
        writer.finalize()


@pytest.fixture(params=["zarr", "h5"])
def dense(request, tmp_path):
    path = tmp_path / f"perm.{request.param}"
    write_permuted(path)
    return path


def test_the_store_rows_are_really_permuted(dense):
    with open_store(dense) as s:
        np.testing.assert_array_equal(s.sample_index(), PERM)
        np.testing.assert_array_equal(s.read(0, N).labels, Y[PERM])


@pytest.mark.parametrize("t", [1.0, 3.0])
def test_soft_target_dataset_joins_a_permuted_dense_store(dense, t):
    ds = SoftTargetDataset(str(dense), _transfer(), temperature=t)
    want = arithmetic_targets(Z, t)  # by position
    for i in range(N):
        x, y, target = ds[i]
        np.testing.assert_array_equal(x.numpy(), X[i])
        assert y == Y[i]
        np.testing.assert_allclose(target.numpy(), want[i], rtol=1e-5, atol=1e-5)


def test_soft_targets_of_positions_on_a_permuted_store(dense):
    """An int array means transfer positions, whatever the row order (§6)."""
    positions = np.array([4, 0, 10, 4, 7])
    with open_store(dense) as s:
        got = s.soft_targets(positions, 2.0).numpy()
        np.testing.assert_allclose(got, arithmetic_targets(Z[positions], 2.0), atol=1e-5)
        member = s.soft_targets(positions, 2.0, member=1).numpy()
        np.testing.assert_allclose(member, _log_softmax(Z[positions, 1] / 2.0), atol=1e-5)
        # store rows are another thing, asked for by name
        by_row = s.soft_targets(s.read_rows(positions), 2.0).numpy()
        np.testing.assert_allclose(by_row, arithmetic_targets(Z[PERM[positions]], 2.0), atol=1e-5)
        s.load()  # the loaded (position-sorted) copy gives the same answers
        np.testing.assert_array_equal(s.soft_targets(positions, 2.0).numpy(), got)
        with pytest.raises(IndexError, match="outside"):
            s.soft_targets(np.array([-1]), 2.0)  # never wraps around to the last position
        with pytest.raises(IndexError, match="outside"):
            s.soft_targets(np.array([N]), 2.0)


def test_soft_target_dataset_joins_a_permuted_sparse_store(tmp_path):
    """Top-k with float values: at an anchor temperature (T = 1) the tail is exact to float32,
    so the replayed log-probs on the ids are the dense ones."""
    path = tmp_path / "perm-sparse.zarr"
    spec = SparseSpec(top_k=3, tail_temperatures=(1.0, 2.0), value_step=None)
    write_permuted(path, sparse=spec)
    ds = SoftTargetDataset(str(path), _transfer(), temperature=1.0)
    want = arithmetic_targets(Z, 1.0)
    zbar = np.einsum("nmc,m->nc", Z, np.asarray(W))  # the ranking logits
    for i in range(N):
        _, y, target = ds[i]
        assert y == Y[i]
        ids = np.sort(np.argsort(-zbar[i], kind="stable")[:3])
        np.testing.assert_array_equal(np.sort(target.ids.numpy()), ids)
        np.testing.assert_allclose(
            target.log_probs.numpy(), want[i, target.ids.numpy()], rtol=1e-5, atol=1e-5
        )
        rest = np.setdiff1d(np.arange(C), ids)
        tail = np.log(np.exp(want[i, rest]).sum())
        np.testing.assert_allclose(float(target.log_tail), tail, rtol=1e-5, atol=1e-5)


# -- token stores: rows MUST be in token order ---------------------------------------------------

V = 6
TOKEN_IDS = np.array([1, 4, 2, 5, 0, 3, 3, 1, 2], dtype=np.int64)
OFFSETS = np.array([0, 3, 7, 9], dtype=np.int64)  # three sequences, lengths 3, 4, 2
TOKEN_LOGITS = np.round(np.random.default_rng(7).normal(scale=2.0, size=(9, V)) * 4) / 4


def _sequences() -> TokenSequences:
    return TokenSequences(name="toks", split="train", ids=TOKEN_IDS, offsets=OFFSETS)


def write_token_store(
    path, sample_index: np.ndarray, labels: np.ndarray | None = None, first: int = 0
) -> None:
    seqs = _sequences()
    meta = StoreMeta(
        num_samples=9,
        num_classes=V,
        class_names=tuple(str(i) for i in range(V)),
        combine="single",
        weights=(1.0,),
        teachers=(TeacherInfo(name="t", spec=None, architecture=None, sha256="0" * 64),),
        transfer=TransferInfo("toks", "train", 9, seqs.fingerprint()),
        dtype="float32",
        chunk_rows=4,  # the second sequence crosses the chunk edge
        created_at="2026-01-01T00:00:00+00:00",
        producer="tests",
        tokens=TokenSpec(
            tokenizer=None, tokenizer_vocab_size=None, max_length=4, window="window", pad_id=0
        ),
    )
    labels = seqs.next_tokens() if labels is None else labels
    position = np.array([first, 1, 2, 0, 1, 2, 3, 0, 1], dtype=np.int32)
    with StoreWriter.create(path, meta, compress=False) as writer:
        for chunk in range(meta.num_chunks):
            a, b = meta.chunk_bounds(chunk)
            rows = Rows.dense(
                TOKEN_LOGITS[a:b].astype(np.float32), None, sample_index[a:b], labels[a:b], a
            ).replace(
                **{
                    schema.INPUT_IDS: TOKEN_IDS[a:b].astype(np.int32),
                    schema.POSITION: position[a:b],
                }
            )
            writer.write_chunk(chunk, rows)
        writer.finalize()


def test_token_dataset_items_are_their_tokens_targets_by_value(tmp_path):
    path = tmp_path / "tok.zarr"
    write_token_store(path, np.arange(9))
    ds = SoftTargetDataset(str(path), _sequences(), temperature=2.0)
    assert isinstance(ds, TokenTargetDataset) and len(ds) == 3
    for s in range(3):
        a, b = OFFSETS[s], OFFSETS[s + 1]
        ids, labels, target, _ = ds[s]
        np.testing.assert_array_equal(ids.numpy(), TOKEN_IDS[a:b])
        np.testing.assert_array_equal(labels.numpy()[:-1], TOKEN_IDS[a + 1 : b])
        assert int(labels[-1]) == -1  # a sequence's last row has no next token
        np.testing.assert_allclose(
            target.numpy(), _log_softmax(TOKEN_LOGITS[a:b] / 2.0), rtol=1e-5, atol=1e-6
        )


def test_token_store_not_in_token_order_is_refused(tmp_path):
    """A token store whose sample_index is a permutation (its rows otherwise well formed, its
    checksums and attributes digest resealed) is refused, not joined by row order."""
    path = tmp_path / "tok-perm.zarr"
    write_token_store(path, np.array([0, 1, 2, 3, 4, 5, 6, 8, 7]))
    with pytest.raises(MismatchError, match="token order"):
        SoftTargetDataset(str(path), _sequences(), temperature=2.0)


def test_token_store_final_row_label_is_minus_one(tmp_path):
    """FORMAT.md: row N - 1 ends the last sequence, so its label MUST be -1; a store whose final
    row names a next token (an off-by-one writer) is refused, and so is one whose row 0 does not
    start a sequence."""
    good = tmp_path / "good.zarr"
    write_token_store(good, np.arange(9))
    with open_store(good) as s:
        assert s.labels()[-1] == -1 and s.scan_chunks()[3] == []
    labels = _sequences().next_tokens()
    labels[-1] = 3
    bad = tmp_path / "bad.zarr"
    write_token_store(bad, np.arange(9), labels=labels)
    with open_store(bad) as s:
        with pytest.raises(StoreFormatError, match="final row 8 has label 3, not -1"):
            s.soft_targets(np.arange(9), 1.0)
        assert any("final row 8" in p for p in s.scan_chunks()[3])
    with pytest.raises(StoreFormatError, match="final row"):
        SoftTargetDataset(str(bad), _sequences(), temperature=1.0)[2]
    shifted = tmp_path / "shifted.zarr"
    write_token_store(shifted, np.arange(9), first=1)
    with open_store(shifted) as s, pytest.raises(StoreFormatError, match="row 0 has position 1"):
        s.read_verified_chunk(0)


# -- views stores: row r MUST be view r % V of sample r // V -------------------------------------

VIEWS = 3


@pytest.fixture(scope="module")
def views_setup(tmp_path_factory):
    rng = np.random.default_rng(5)
    inputs = rng.normal(size=(7, 64)).astype(np.float32)
    labels = rng.integers(0, 10, size=7)
    base = TransferSet(name="v7", split="test", inputs=inputs, labels=labels, class_names=None)
    path = tmp_path_factory.mktemp("views") / "v.zarr"
    generate(
        [teacher_a(), teacher_b()],
        base,
        path,
        weights=[0.25, 0.75],
        combine="arithmetic",
        views=VIEWS,
        augment=RandomResizedCropFlip(),
        chunk_rows=4,
        progress=False,
    ).close()
    return path, base


def test_view_dataset_items_are_their_views_targets_by_value(views_setup):
    path, base = views_setup
    ds = SoftTargetDataset(str(path), base, temperature=2.0)
    assert isinstance(ds, ViewTargetDataset)
    with open_store(path) as s:
        params = s.read(0, s.meta.num_samples).arrays[schema.VIEW_PARAMS]
        policy = RandomResizedCropFlip()
        for epoch in (0, 1):
            ds.set_epoch(epoch)
            for i in range(len(ds)):
                x, y, target = ds[i]
                row = int(ds.views.rows(epoch)[i])
                sample = row // VIEWS
                assert sample == i and y == base.labels[i]
                view = view_input(base.take(i, i + 1)[0], params[row], policy)
                np.testing.assert_array_equal(x.numpy(), view)
                with torch.no_grad():
                    v = torch.from_numpy(view)[None].double()
                    z = np.stack([t.double()(v)[0].numpy() for t in (teacher_a(), teacher_b())])
                p = np.exp(_log_softmax(z / 2.0))
                want = np.log(0.25 * p[0] + 0.75 * p[1])
                np.testing.assert_allclose(target.numpy(), want, rtol=1e-4, atol=1e-5)
        # an int array means positions here too: each position's V rows, in view order
        got = s.soft_targets(np.array([5, 1]), 2.0).numpy()
        rows = np.array([15, 16, 17, 3, 4, 5])
        np.testing.assert_array_equal(got, s.soft_targets(s.read_rows(rows), 2.0).numpy())
        assert s.rows_at(np.array([5, 1])).sample_index.tolist() == [5, 5, 5, 1, 1, 1]


def _reseal_sample_index(path, index: np.ndarray) -> None:
    """Rewrite a Zarr store's sample_index and recompute its checksums and attributes digest,
    as a producer that broke the row rule would."""
    group = zarr.open_group(str(path), mode="r+")
    group[schema.SAMPLE_INDEX][:] = index
    with open_store(path) as s:
        sums = [chunk_checksum(s.read_chunk(c)) for c in range(s.meta.num_chunks)]
    group.attrs[schema.ATTR_CHECKSUMS] = sums
    reseal(group)


def test_views_store_not_in_sample_order_is_refused(views_setup, tmp_path):
    import shutil

    path, base = views_setup
    moved = tmp_path / "moved.zarr"
    shutil.copytree(path, moved)
    index = np.repeat(np.arange(7), VIEWS)
    index[[0, 1, 2, 3, 4, 5]] = [1, 1, 1, 0, 0, 0]  # samples 0 and 1 swapped
    _reseal_sample_index(moved, index)
    with pytest.raises((StoreFormatError, SoftLabelsError), match="sample_index|row"):
        SoftTargetDataset(str(moved), base, temperature=2.0)


def test_token_fingerprint_is_over_the_windowed_ids_then_offsets():
    """FORMAT.md: SHA-256 over the (windowed) ids, then the offsets [0, ..., N], as <i8."""
    seqs = _sequences()
    h = hashlib.sha256(TOKEN_IDS.astype("<i8").tobytes() + OFFSETS.astype("<i8").tobytes())
    assert seqs.fingerprint() == "sha256:" + h.hexdigest()
    windowed = seqs.window(2, "window")  # [1 4][2] [5 0][3 3] [1 2]
    assert windowed.offsets.tolist() == [0, 2, 3, 5, 7, 9]
    h = hashlib.sha256(TOKEN_IDS.astype("<i8").tobytes() + windowed.offsets.astype("<i8").tobytes())
    assert windowed.fingerprint() == "sha256:" + h.hexdigest()

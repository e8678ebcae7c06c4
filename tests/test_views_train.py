"""Stage two for views stores: one stored view per sample per epoch, rebuilt from its stored
parameters; the (input, target) pairs do not depend on the batch size, the DataLoader's
workers or the world size."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from click.testing import CliRunner
from torch.utils.data import DataLoader

from softlabels.dataset import SoftTargetDataset
from softlabels.distributed import Dist
from softlabels.errors import SoftLabelsError
from softlabels.store import open_store
from softlabels.transfer import load_transfer
from softlabels.views.dataset import StoredViews, ViewTargetDataset, view_choice
from softlabels.views.transfer import load_views_policy, view_input
from tests.test_views import views_store
from trainer.cli import main as distill
from trainer.data import (
    StreamingViewTargets,
    ViewTargets,
    make_view_source,
    store_nbytes_in_memory,
)
from trainer.train import TrainConfig, train

V = 4


@pytest.fixture(scope="module")
def store(tmp_path_factory):
    """Four views of each of the 359 digits test samples (two teachers, 100-row chunks)."""
    return views_store(tmp_path_factory.mktemp("vt") / "v.zarr", views=V)


def test_each_epoch_every_sample_takes_one_of_its_own_views(store):
    with open_store(store) as s:
        views = StoredViews(s, "digits", seed=3)
        n = views.num_samples
        rows = views.rows(0)
        assert rows.shape == (n,) and (rows // V == np.arange(n)).all()
        np.testing.assert_array_equal(rows % V, view_choice(3, 0, 0, n, V))
        assert not np.array_equal(views.rows(1), rows)  # a new draw each epoch
        np.testing.assert_array_equal(views.rows(0), rows)  # the same draw, asked again
        counts = np.bincount(np.concatenate([views.rows(e) % V for e in range(20)]), minlength=V)
        assert counts.min() > 0.2 * counts.sum() / V  # every view is used
        two = StoredViews(s, "digits", seed=3, views_per_epoch=2)
        assert two.rows(0).shape == (2 * n,) and np.array_equal(two.rows(0)[:n], rows)


@pytest.mark.bitwise
def test_a_rows_input_is_rebuilt_from_its_stored_parameters(store):
    base = load_transfer("digits", "test")
    with open_store(store) as s:
        views = StoredViews(s, base)
        policy = load_views_policy(s.meta)
        rows = np.array([0, 5, 17, 4 * 100 + 3])
        stored = np.concatenate(
            [
                s.read_verified_chunk(int(r) // 100).arrays["view_params"][[int(r) % 100]]
                for r in rows
            ]
        )
        want = np.stack(
            [
                view_input(base.take(int(r) // V, int(r) // V + 1)[0], p, policy)
                for r, p in zip(rows, stored, strict=True)
            ]
        )
        np.testing.assert_array_equal(views.inputs(rows), want)
        assert not np.array_equal(want[0], base.take(0, 1)[0])  # an augmented view, not the input


def _pairs(ds: ViewTargetDataset, epoch: int, batch: int, workers: int) -> dict[int, tuple]:
    """Sample -> (input, target) as a DataLoader delivers them in ``epoch``."""
    ds.set_epoch(epoch)
    order = torch.randperm(len(ds), generator=torch.Generator().manual_seed(batch))
    loader = DataLoader(ds, batch, sampler=order.tolist(), num_workers=workers)
    out, seen = {}, iter(order.tolist())
    for x, _, target in loader:
        for k in range(len(x)):
            out[next(seen)] = (x[k].numpy(), target[k].numpy())
    return out


@pytest.mark.bitwise
def test_pairs_are_bit_identical_whatever_the_batch_size_and_workers(store):
    ds = SoftTargetDataset(str(store), "digits", temperature=4.0)  # a views store: one view each
    assert isinstance(ds, ViewTargetDataset) and len(ds) == 359
    one = _pairs(ds, 2, batch=1, workers=0)
    other = _pairs(ds, 2, batch=37, workers=2)
    assert one.keys() == other.keys() == set(range(359))
    for i in one:
        np.testing.assert_array_equal(one[i][0], other[i][0])
        np.testing.assert_array_equal(one[i][1], other[i][1])
    with open_store(store) as s:  # the target is the stored view's own
        row = int(ds.views.rows(2)[7])
        np.testing.assert_array_equal(one[7][1], s.soft_targets(s.read_rows([row]), 4.0)[0].numpy())


@pytest.mark.bitwise
def test_pairs_are_the_same_whatever_the_world_size(store):
    """The trainer's source: two ranks together take exactly the rows one process takes."""
    with open_store(store) as s:
        views = StoredViews(s, "digits", seed=1)
        alone = ViewTargets(s, views, 4.0, 16, seed=1)
        ranks = [ViewTargets(s, views, 4.0, 8, seed=1, shard=Dist(r, 2)) for r in range(2)]

        def pairs(source: ViewTargets) -> dict[int, np.ndarray]:
            return {
                int(r) // V: (int(r), t.numpy())
                for rows, target in source.batches(5)
                for r, t in zip(rows, target, strict=True)
            }

        single = pairs(alone)
        both = pairs(ranks[0]) | pairs(ranks[1])
        assert single.keys() == both.keys() == set(range(359))
        for sample, (row, target) in single.items():
            assert both[sample][0] == row
            np.testing.assert_array_equal(both[sample][1], target)


def test_distill_train_learns_from_a_views_store(store, tmp_path):
    result = CliRunner().invoke(
        distill,
        [
            "train",
            "--store",
            str(store),
            "--split",
            "test",
            "--eval-split",
            "test",
            "--epochs",
            "3",
            "--views-per-epoch",
            "2",
            "--out",
            str(tmp_path / "run"),
            "--quiet",
        ],
    )
    assert result.exit_code == 0, result.output
    assert (tmp_path / "run" / "model.pt").exists()


def test_train_on_views_matches_the_dataset_pairs(store, tmp_path):
    """The trainer sees, for each sample, the row the dataset would serve in that epoch."""
    run = train(
        TrainConfig(
            out=str(tmp_path / "r"),
            store=str(store),
            split="test",
            eval_split=None,
            epochs=1,
            progress=False,
        )
    )
    assert run.history[0]["train_loss"] > 0
    with open_store(store) as s:
        ds = ViewTargetDataset(s, "digits", temperature=4.0)
        views = StoredViews(s, "digits", seed=0)
        np.testing.assert_array_equal(ds.views.rows(0), views.rows(0))


def _served(source, epoch: int) -> tuple[list[np.ndarray], dict[int, np.ndarray]]:
    """The rows of each batch, and each row's target (log p_T)."""
    batches, targets = [], {}
    for rows, t in source.batches(epoch):
        batches.append(rows)
        for r, row_t in zip(rows.tolist(), t.numpy(), strict=True):
            targets.setdefault(r, row_t)
            np.testing.assert_array_equal(targets[r], row_t)  # a row served twice: same target
    return batches, targets


@pytest.mark.parametrize("per_epoch, buffer", [(1, 1), (2, 1), (1, 3)])
def test_a_views_store_over_the_memory_budget_streams_the_same_pairs(store, per_epoch, buffer):
    """Over the budget, the views source reads a chunk or two at a time (never every row's
    targets): each epoch it serves exactly the rows StoredViews draws, duplicates included,
    each with the target the in-memory source gives it, in full batches but the last."""
    with open_store(store) as s:
        views = StoredViews(s, "digits", seed=5, views_per_epoch=per_epoch)
        whole = make_view_source(s, views, 4.0, 64, 5, 2**30)
        budget = int(store_nbytes_in_memory(s) / s.meta.num_chunks * 3 * buffer) + 1
        streamed = make_view_source(s, views, 4.0, 64, 5, budget)
        assert isinstance(whole, ViewTargets) and isinstance(streamed, StreamingViewTargets)
        assert streamed.buffer_chunks == buffer  # chunks read together
        for epoch in (0, 1):
            batches, got = _served(streamed, epoch)
            rows = np.concatenate(batches)
            np.testing.assert_array_equal(np.sort(rows), np.sort(views.rows(epoch)))
            assert [len(b) for b in batches[:-1]] == [64] * (len(batches) - 1)
            _, want = _served(whole, epoch)
            assert sorted(got) == sorted(want)
            for r in got:
                np.testing.assert_allclose(got[r], want[r], rtol=1e-6, atol=1e-6)
            assert not np.array_equal(rows, np.sort(rows))  # shuffled, not in store order


def test_distill_train_streams_a_views_store_over_its_memory_budget(store, tmp_path):
    config = TrainConfig(
        out=str(tmp_path / "r"), store=str(store), split="test", eval_split=None, epochs=1,
        progress=False, memory_budget_mb=0.05,
    )  # fmt: skip
    run = train(config)
    assert np.isfinite(run.history[0]["train_loss"]) and run.history[0]["train_loss"] > 0


def test_views_refusals(store, digits_test_store, tmp_path):
    with pytest.raises(SoftLabelsError, match="views per epoch must be at least 1"):
        TrainConfig(out="x", views_per_epoch=0).validate()
    with pytest.raises(SoftLabelsError, match=r"views per epoch \(2\) applies to a views store"):
        train(
            TrainConfig(
                out=str(tmp_path / "p"),
                store=str(digits_test_store),
                split="test",
                eval_split=None,
                views_per_epoch=2,
                progress=False,
            )
        )
    with (
        open_store(digits_test_store) as plain,
        pytest.raises(SoftLabelsError, match="holds no views"),
    ):
        StoredViews(plain, "digits")
    with pytest.raises(SoftLabelsError, match="evaluate against a plain store"):
        train(
            TrainConfig(
                out=str(tmp_path / "r"),
                store=str(store),
                eval_store=str(store),
                split="test",
                eval_split="test",
                epochs=1,
                progress=False,
            )
        )

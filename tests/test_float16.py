"""float16 dense stores (issue 22, §6; FORMAT.md "Combine rules"): ``logits`` is the float64
combine of the float32 member logits, rounded to float32 and then to float16, and
``member_logits`` are rounded separately, so the combine of the stored float16 members can
differ from ``logits`` by one float16 ulp of the larger member logit. Readers use the stored
``logits``."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from softlabels.store import open_store
from softlabels.transfer import load_transfer
from tests.conftest import make_store
from tests.helpers import forward_in_batches, teacher_a, teacher_b, teacher_batches

W = (0.3, 0.7)


@pytest.fixture(scope="module")
def f16(tmp_path_factory):
    path = tmp_path_factory.mktemp("f16") / "g.zarr"
    make_store(
        path,
        teachers=("tests.helpers:teacher_a", "tests.helpers:teacher_b"),
        combine="geometric",
        weights=W,
        dtype="float16",
    )
    return path


@pytest.mark.bitwise
def test_float16_logits_are_the_float64_combine_rounded_once(f16):
    with open_store(f16) as s:
        rows = s.load()
        n = s.meta.num_samples
        x = torch.from_numpy(load_transfer("digits", "train").take(0, n))
        members = forward_in_batches(
            [teacher_a(), teacher_b()], x, teacher_batches(n, s.meta.chunk_rows)
        )  # (N, M, C) float32, as the writer's teachers ran
        want = np.einsum("nmc,m->nc", members.astype(np.float64), np.asarray(W))
        order = np.argsort(rows.sample_index)
        stored = rows.logits
        assert stored.dtype == np.float16
        want16 = want.astype(np.float32).astype(np.float16)[rows.sample_index]
        np.testing.assert_array_equal(stored, want16)
        np.testing.assert_array_equal(rows.member_logits, members.astype(np.float16)[order])


def test_recombined_float16_members_differ_by_one_ulp_and_readers_use_logits(f16):
    with open_store(f16) as s:
        rows = s.load()  # by position
        stored = rows.logits
        again = np.einsum("nmc,m->nc", rows.member_logits.astype(np.float64), np.asarray(W))
        again16 = again.astype(np.float32).astype(np.float16)
        gap = np.abs(stored.astype(np.float64) - again16.astype(np.float64))
        # one float16 ulp of the larger member logit (more than one ulp of logits itself where
        # the members cancel), in a good share of the entries
        ulp = np.spacing(np.abs(rows.member_logits).max(1)).astype(np.float64)
        assert (gap <= ulp).all() and (gap == ulp).any()
        differ = np.flatnonzero((gap > 0).any(1))
        assert len(differ) > s.meta.num_samples // 10
        for t in (1.0, 4.0):
            got = s.soft_targets(differ, t).numpy()
            want = torch.log_softmax(torch.from_numpy(stored[differ]).double() / t, 1).numpy()
            np.testing.assert_allclose(got, want, rtol=1e-6, atol=1e-6)
            recombined = torch.log_softmax(torch.from_numpy(again16[differ]).double() / t, 1)
            assert np.abs(recombined.numpy() - got).max() > 1e-5  # 10x the tolerance above

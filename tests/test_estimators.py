"""The sparse estimators pinned by value (issue 22, §5): hand-made sparse rows, written through
the public ``StoreWriter`` and read back through ``soft_targets``, against an independent
float64 formula written here from FORMAT.md ("Estimators").

Each row's logits are chosen on all C ids, so at an anchor temperature (T = 1, T = 4) the tail
is exact (up to float32 storage) and the replayed distribution is the true softmax on the ids
plus its outside mass P. The estimators are then, with π_j = min(1, exp(s + zbar_j / T_q)):

* ``bucket``: p_j on every id, P in the bucket;
* ``ht``: p_j on the top ids, p_j / π_j on the sampled ids, nothing in the bucket;
* ``importance``: p_j on the top ids, p_j + P · e_j / Σ e on the sampled ids, where
  e_j = p_j (1 − π_j) / π_j, nothing in the bucket.

For an arithmetic ensemble they apply to the mixture Σ_m w_m p_m (FORMAT.md says so), which
differs from mixing per-member estimates for ``importance``.
"""

from __future__ import annotations

import numpy as np
import pytest

from softlabels import schema
from softlabels.schema import SparseSpec, StoreMeta, TeacherInfo, TransferInfo
from softlabels.store import Rows, StoreWriter, open_store

C, TOP, SAMPLE, TQ = 10, 2, 2, 2.0
ANCHORS = (1.0, 4.0)
LOG_SCALE = np.array([-1.25, -0.5], dtype=np.float32)  # s per row, exact in float32
# row 0: one teacher; ids chosen by hand: top [1, 6] (the two largest), sampled [3, 8]
SINGLE = np.array(
    [
        [0.25, 2.5, -1.0, 0.5, 0.0, -0.5, 1.75, 1.0, -0.25, -2.0],
        [-1.5, 0.75, 3.0, 0.25, -0.75, 2.25, 0.0, -0.5, 1.25, -1.0],
    ]
)
SINGLE_IDS = np.array([[1, 6, 3, 8], [2, 5, 0, 7]])
# two members, weights (0.25, 0.75): zbar decides the ids; member logits multiples of 1/4
MEMBERS = np.stack(
    [
        SINGLE,
        np.array(
            [
                [0.5, 2.0, -0.5, 1.0, -1.0, 0.0, 2.5, 2.25, 0.25, -1.25],
                [-0.5, 1.5, 2.0, -0.25, 0.5, 2.75, -1.0, 0.0, 1.0, -2.0],
            ]
        ),
    ],
    axis=1,
)  # (2, M, C)
WEIGHTS = (0.25, 0.75)


def _ranking(z: np.ndarray, weights) -> np.ndarray:
    return np.einsum("rmc,m->rc", z, np.asarray(weights))


def _ids(zbar: np.ndarray, sampled: list[list[int]]) -> np.ndarray:
    top = np.sort(np.argsort(-zbar, axis=1, kind="stable")[:, :TOP], axis=1)
    return np.concatenate([top, np.asarray(sampled)], axis=1)


def _log_softmax(z: np.ndarray) -> np.ndarray:
    z = z - z.max(-1, keepdims=True)
    return z - np.log(np.exp(z).sum(-1, keepdims=True))


def write_sparse(path, z: np.ndarray, weights, ids: np.ndarray, step: float | None) -> None:
    """Hand-made sparse rows: (R, M, C) logits on every id, the row's K ids, one tail group
    per member (arithmetic) or the teacher's, exact tails at the anchors."""
    rows, members = z.shape[:2]
    spec = SparseSpec(
        top_k=TOP,
        sample=SAMPLE,
        proposal_temperature=TQ,
        seed=0,
        tail_temperatures=ANCHORS,
        value_step=step,
    )
    meta = StoreMeta(
        num_samples=rows,
        num_classes=C,
        class_names=tuple(str(i) for i in range(C)),
        combine="single" if members == 1 else "arithmetic",
        weights=tuple(weights),
        teachers=tuple(
            TeacherInfo(name=f"t{m}", spec=None, architecture=None, sha256=f"{m}" * 64)
            for m in range(members)
        ),
        transfer=TransferInfo("hand", "train", rows, "sha256:" + "0" * 64),
        dtype="float32",
        chunk_rows=rows,
        created_at="2026-01-01T00:00:00+00:00",
        producer="tests",
        sparse=spec,
    )
    on_ids = np.take_along_axis(z, ids[:, None, :], axis=2)  # (R, M, K)
    outside = np.ones((rows, C), bool)
    np.put_along_axis(outside, ids, False, axis=1)
    tail = np.stack(
        [
            [
                [t * np.log(np.exp(z[r, m][outside[r]] / t).sum()) for t in ANCHORS]
                for m in range(members)
            ]
            for r in range(rows)
        ]
    ).astype(np.float32)
    gaps = np.concatenate(
        [np.diff(ids[:, :TOP], axis=1, prepend=0), np.diff(ids[:, TOP:], axis=1, prepend=0)],
        axis=1,
    ).astype(np.int32)
    arrays = {
        schema.ID_GAPS: gaps,
        schema.TAIL: tail,
        schema.INCLUSION_LOG_SCALE: LOG_SCALE[:rows],
        schema.SAMPLE_INDEX: np.arange(rows, dtype=np.int64),
        schema.LABELS: np.full(rows, -1, dtype=np.int64),
    }
    if step is None:
        arrays[schema.VALUES] = on_ids.astype(np.float32)
    else:
        offsets = on_ids.max(axis=2)
        arrays[schema.VALUES] = np.round((offsets[..., None] - on_ids) / step).astype(np.uint16)
        arrays[schema.VALUE_OFFSETS] = offsets.astype(np.float32)
    with StoreWriter.create(path, meta, compress=False) as writer:
        writer.write_chunk(0, Rows(arrays, 0))
        writer.finalize()


def expected(z: np.ndarray, weights, ids: np.ndarray, t: float, estimator: str):
    """(log p on the ids, log bucket) in float64, from the logits on every id."""
    p = np.einsum("rmc,m->rc", np.exp(_log_softmax(z / t)), np.asarray(weights))  # mixture
    on = np.take_along_axis(p, ids, axis=1)
    bucket = 1.0 - on.sum(1)
    zbar = np.take_along_axis(_ranking(z, weights), ids[:, TOP:], axis=1)
    pi = np.minimum(1.0, np.exp(LOG_SCALE[: len(z), None].astype(np.float64) + zbar / TQ))
    sampled = on[:, TOP:]
    if estimator == "bucket":
        return np.log(on), np.log(bucket)
    if estimator == "ht":
        out = on.copy()
        out[:, TOP:] = sampled / pi
        return np.log(out), np.full(len(z), -np.inf)
    excess = sampled * (1 - pi) / pi
    out = on.copy()
    out[:, TOP:] = sampled + bucket[:, None] * excess / excess.sum(1, keepdims=True)
    return np.log(out), np.full(len(z), -np.inf)


CASES = {
    "single-float": (SINGLE[:, None], (1.0,), SINGLE_IDS, None),
    "arithmetic-fixed": (
        MEMBERS,
        WEIGHTS,
        _ids(_ranking(MEMBERS, WEIGHTS), [[0, 8], [1, 4]]),
        0.25,
    ),
}


@pytest.mark.parametrize("case", sorted(CASES))
@pytest.mark.parametrize("t", ANCHORS)
@pytest.mark.parametrize("estimator", ["bucket", "ht", "importance"])
def test_estimators_against_float64_formula(tmp_path, case, t, estimator):
    z, weights, ids, step = CASES[case]
    zbar = _ranking(z, weights)
    # the hand-chosen sampled ids rank below the top ones, as a valid store's must
    assert (np.take_along_axis(zbar, ids[:, TOP:], 1).max(1) < zbar.max(1)).all()
    path = tmp_path / "hand.zarr"
    write_sparse(path, z, weights, ids, step)
    want_p, want_tail = expected(z, weights, ids, t, estimator)
    with open_store(path) as s:
        got = s.soft_targets(np.arange(len(z)), t, estimator=estimator)
    np.testing.assert_array_equal(got.ids.numpy(), ids)
    np.testing.assert_allclose(got.log_probs.numpy(), want_p, rtol=2e-6, atol=2e-6)
    np.testing.assert_allclose(got.log_tail.numpy(), want_tail, rtol=2e-6, atol=2e-6)
    if estimator == "importance":  # a ratio estimator: mass exactly 1
        np.testing.assert_allclose(np.exp(got.log_probs.numpy()).sum(1), 1.0, rtol=1e-6)


def test_importance_spreads_the_mixtures_bucket_not_each_members():
    """The per-member alternative gives other numbers on these rows: the test above tells the
    two apart."""
    z, weights, ids, _ = CASES["arithmetic-fixed"]
    mixture, _ = expected(z, weights, ids, 1.0, "importance")
    per_member = np.log(
        sum(
            w * np.exp(expected(z[:, m : m + 1], (1.0,), ids, 1.0, "importance")[0])
            for m, w in enumerate(weights)
        )
    )
    assert np.abs(mixture - per_member).max() > 1e-3


def test_default_estimator_is_importance_up_to_tq_and_bucket_above(tmp_path):
    z, weights, ids, step = CASES["single-float"]
    path = tmp_path / "hand.zarr"
    write_sparse(path, z, weights, ids, step)
    with open_store(path) as s:
        at_tq = s.soft_targets(np.arange(2), 1.0)  # T = 1 <= T_q = 2
        above = s.soft_targets(np.arange(2), 4.0)
    np.testing.assert_allclose(
        at_tq.log_probs.numpy(), expected(z, weights, ids, 1.0, "importance")[0], rtol=2e-6
    )
    np.testing.assert_allclose(
        above.log_probs.numpy(), expected(z, weights, ids, 4.0, "bucket")[0], rtol=2e-6
    )


def _member_tail_below_smallest_anchor(z: np.ndarray, ids: np.ndarray, t: float) -> np.ndarray:
    """FORMAT.md, below the smallest anchor, for one member group (R, C) logits: the middle of
    the last chord's extension and max(it, f_last + (1/T - b_last) * the member's smallest
    logit on the top ids), from exact log-partitions at the nodes b = 0, 1/4, 1."""
    outside = np.ones(z.shape, bool)
    np.put_along_axis(outside, ids, False, axis=1)
    rest = [z[r][outside[r]] for r in range(len(z))]
    f_last = np.array([np.log(np.exp(v).sum()) for v in rest])  # b = 1 (T = 1)
    f_prev = np.array([np.log(np.exp(v / 4).sum()) for v in rest])  # b = 1/4 (T = 4)
    x = 1 / t
    lower = f_last + (f_last - f_prev) / 0.75 * (x - 1)
    ceiling = np.take_along_axis(z, ids[:, :TOP], axis=1).min(1)
    upper = np.maximum(lower, f_last + ceiling * (x - 1))
    return (lower + upper) / 2


def test_arithmetic_members_below_the_smallest_anchor(tmp_path):
    """At T = 1/2, below the smallest anchor (1): each member group's tail uses that member's own
    smallest logit on the top ids (no bound for a member: here an outside logit exceeds it),
    and the members are mixed after."""
    z, weights, ids, step = CASES["arithmetic-fixed"]
    assert z[0, 1, 7] > np.take_along_axis(z[:, 1], ids[:, :TOP], 1)[0].min()  # not a bound
    path = tmp_path / "hand.zarr"
    write_sparse(path, z, weights, ids, step)
    t = 0.5
    p, tail = 0.0, 0.0
    for m, w in enumerate(weights):
        v = np.take_along_axis(z[:, m], ids, axis=1) / t
        f = _member_tail_below_smallest_anchor(z[:, m], ids, t)
        log_z = np.logaddexp(np.log(np.exp(v).sum(1)), f)
        p = p + w * np.exp(v - log_z[:, None])
        tail = tail + w * np.exp(f - log_z)
    with open_store(path) as s:
        got = s.soft_targets(np.arange(2), t, estimator="bucket")
    np.testing.assert_allclose(got.log_probs.numpy(), np.log(p), rtol=2e-6, atol=2e-6)
    np.testing.assert_allclose(got.log_tail.numpy(), np.log(tail), rtol=2e-6, atol=2e-6)

"""``softlabels.sparse.device``: stage one's torch sparsification equals the numpy reference
(``softlabels.sparse.select``, the spec's executable form) row for row, ties, fixed point,
float16, sampled ids and every combine rule included."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from softlabels import schema
from softlabels.errors import SparseValueRangeError
from softlabels.schema import SparseSpec
from softlabels.sparse.device import sparsify_torch, tail_values, top_ids
from softlabels.sparse.select import sparsify
from softlabels.sparse.tail import tail_values as reference_tail_values

EXACT = (schema.ID_GAPS, schema.VALUES, schema.VALUE_OFFSETS)
ANCHORS = np.asarray(schema.DEFAULT_TAIL_TEMPERATURES)


def _both(z: np.ndarray, spec: SparseSpec, combine: str, dtype: str = "float32"):
    m = z.shape[1]
    w = tuple(float(x) for x in np.arange(1, m + 1) / np.arange(1, m + 1).sum())
    index = np.arange(len(z), dtype=np.int64) * 3 + 1
    options = {"weights": w, "combine": combine, "spec": spec, "dtype": dtype}
    return sparsify(z, index, **options), sparsify_torch(torch.from_numpy(z), index, **options)


def _assert_same(expected: dict, got: dict) -> None:
    assert sorted(expected) == sorted(got)
    for name, want in expected.items():
        assert got[name].dtype == want.dtype and got[name].shape == want.shape, name
        if name in EXACT:
            np.testing.assert_array_equal(got[name], want, err_msg=name)
        else:  # float32 results of float64 sums taken in another order: within one ulp
            np.testing.assert_allclose(got[name], want, rtol=2.4e-7, atol=0, err_msg=name)


@settings(max_examples=60, deadline=None)
@given(
    seed=st.integers(0, 2**32 - 1),
    rows=st.integers(1, 6),
    members=st.integers(1, 3),
    classes=st.integers(6, 70),
    ties=st.booleans(),
    step=st.sampled_from([None, 0.25, 1 / 16]),
    combine=st.sampled_from(["arithmetic", "geometric"]),
    selection=st.sampled_from(["decoded", "raw"]),
    data=st.data(),
)
def test_equals_the_numpy_reference(
    seed, rows, members, classes, ties, step, combine, selection, data
):
    """Both selections; raw selection's tails are summed in float32, so they are held to
    FORMAT.md's tolerance (``assert_within_format``) rather than one ulp."""
    rng = np.random.default_rng(seed)
    z = rng.normal(0, 3, (rows, members, classes)).astype(np.float32)
    if ties:  # quarter-integers: many equal logits at the top-k boundary
        z = np.round(z * 2) / 4
    top_k = data.draw(st.integers(1, classes - 2))
    sample = data.draw(st.integers(0, min(8, classes - top_k - 1)))
    spec = SparseSpec(
        top_k=top_k,
        sample=sample,
        value_step=step,
        proposal_temperature=1.5,
        selection=selection,
    )
    combine = "single" if members == 1 else combine
    expected, got = _both(z, spec, combine)
    if selection == "raw":
        assert_within_format(expected, got)
    else:
        _assert_same(expected, got)


def assert_within_format(expected: dict, got: dict, anchors=ANCHORS) -> None:
    """Raw selection: the ids, codes, offsets and inclusion scales exactly; each tail within
    2^-16 (T_a + |L|) of the float64 reference L (FORMAT.md, "Raw selection")."""
    assert sorted(expected) == sorted(got)
    for name, want in expected.items():
        assert got[name].dtype == want.dtype and got[name].shape == want.shape, name
        if name != schema.TAIL:
            np.testing.assert_array_equal(got[name], want, err_msg=name)
    want = expected[schema.TAIL].astype(np.float64)
    err = np.abs(got[schema.TAIL] - want)
    assert (err <= 2.0**-16 * (anchors + np.abs(want))).all(), err.max()


def test_float16_values_and_a_wide_row_equal_the_reference():
    rng = np.random.default_rng(0)
    z = rng.normal(0, 4, (3, 2, 5000)).astype(np.float32)
    spec = SparseSpec(top_k=40, sample=12, value_step=None)
    expected, got = _both(z, spec, "geometric", dtype="float16")
    assert got[schema.VALUES].dtype == np.float16
    _assert_same(expected, got)


def test_one_fixed_point_teacher_over_a_wide_vocabulary_equals_the_reference():
    """The language-model path (one teacher, fixed point, top ids only: its tails come from a
    histogram of the codes), on wide rows with and without ties at the k-th place, and a row
    whose span is all but the largest the codes hold."""
    rng = np.random.default_rng(3)
    z = rng.normal(0, 2, (5, 1, 6000)).astype(np.float32)
    z[1] = np.round(z[1] * 4) / 4  # many ties across the 64th place
    z[2, 0, :3000] = 0.0  # half the row tied
    z[3, 0, 7] = z[3, 0].min() + 4000.0  # a span of 64,000 steps of 1/16
    spec = SparseSpec(top_k=64, value_step=1 / 16)
    expected, got = _both(z, spec, "single")
    _assert_same(expected, got)
    assert got[schema.TAIL].shape == (5, 1, 4)


def test_top_ids_break_ties_to_the_lower_id():
    zbar = torch.tensor(
        [
            [1.0, 3.0, 2.0, 3.0, 2.0, 2.0, 0.0],  # top 3: 3, 3, then the lowest 2 (id 2)
            [5.0, 5.0, 5.0, 5.0, 5.0, 5.0, 5.0],  # all tied: ids 0, 1, 2
            [0.0, 1.0, 2.0, 3.0, 4.0, 5.0, 6.0],  # no tie: 4, 5, 6
        ],
        dtype=torch.float64,
    )
    assert top_ids(zbar, 3).tolist() == [[1, 2, 3], [0, 1, 2], [4, 5, 6]]


def test_tails_by_squaring_equal_the_reference_exps():
    rng = np.random.default_rng(1)
    outside = rng.normal(0, 5, (4, 300))
    outside[:, :10] = -np.inf  # the support
    anchors = (1.0, 2.0, 4.0, 8.0)
    got = tail_values(torch.from_numpy(outside), anchors).numpy()
    want = reference_tail_values(outside, anchors)
    np.testing.assert_allclose(got, want, rtol=1e-13)
    # hand value: row of logits [0, log 3] at T = 1 is log(1 + 3) = log 4
    two = torch.tensor([[0.0, np.log(3.0), -np.inf]], dtype=torch.float64)
    np.testing.assert_allclose(tail_values(two, (1.0,)).numpy(), [[np.log(4.0)]], rtol=1e-15)


def test_a_span_too_wide_for_the_codes_is_refused_naming_the_step():
    z = np.zeros((1, 1, 10), np.float32)
    z[0, 0, 0] = 10_000.0
    spec = SparseSpec(top_k=2, value_step=1 / 16)
    with pytest.raises(SparseValueRangeError, match="value step of at least"):
        sparsify_torch(torch.from_numpy(z), np.zeros(1, np.int64), weights=(1.0,),
                       combine="single", spec=spec, dtype="float32")  # fmt: skip


@pytest.mark.bitwise
def test_generate_lm_sparsifies_each_batch_never_a_chunk(tmp_path, monkeypatch):
    """Stage one for token stores hands the sparsifier one batch's rows at a time (here 2
    sequences of at most 16 tokens, in chunks of 64 rows), and the store equals the one that
    ``convert --top-k`` makes from the dense store of the same run."""
    pytest.importorskip("transformers")
    import softlabels.lm.generate as lm_generate
    from softlabels.lm.generate import generate_tokens
    from softlabels.lm.text import load_text
    from softlabels.store import open_store
    from softlabels.tools import convert_store
    from tests.lm_helpers import tiny_gpt, train_tokenizer, write_corpus

    seqs = load_text(str(write_corpus(tmp_path / "c")), str(train_tokenizer(tmp_path / "t.json")))
    teacher = f"hf:{tiny_gpt(tmp_path / 'teacher', seqs.vocab_size)}"
    shapes: list[tuple[int, ...]] = []
    real = lm_generate.sparsify_torch

    def spy(z, *args, **kwargs):
        shapes.append(tuple(z.shape))
        return real(z, *args, **kwargs)

    monkeypatch.setattr(lm_generate, "sparsify_torch", spy)
    spec = SparseSpec(top_k=8, sample=4)
    common = {"max_length": 16, "chunk_rows": 64, "batch_size": 2, "progress": False}
    sparse = generate_tokens([teacher], seqs, tmp_path / "s.zarr", sparse=spec, **common)
    dense = generate_tokens([teacher], seqs, tmp_path / "d.zarr", **common)
    assert shapes and max(s[0] for s in shapes) <= 2 * 16 and shapes[0][2] == seqs.vocab_size
    assert sum(s[0] for s in shapes) == sparse.meta.num_samples
    convert_store(dense.path, tmp_path / "c.zarr", sparse=spec)
    with open_store(tmp_path / "c.zarr") as converted:
        assert converted.meta.checksums == sparse.meta.checksums
    sparse.close()
    dense.close()

"""Raw selection (format version 6, ``softlabels.sparse.raw``): a sparse token store's top ids
are the teacher's own top-k and its tails sum the raw logits. The torch path equals the numpy
reference (ids, codes, sampled ids exactly; tails within FORMAT.md's 2^-16 (T + |L|): the
hypothesis test in tests/test_sparse_device.py covers every combine rule), a real
teacher's store holds exactly its top-k, and the schema keeps version 6 apart from 5."""

from __future__ import annotations

import math
from dataclasses import replace

import numpy as np
import pytest
import torch

from softlabels import schema
from softlabels.errors import SoftLabelsError, SparseValueRangeError, StoreFormatError
from softlabels.lm.generate import generate_tokens
from softlabels.lm.models import sequence_logits
from softlabels.lm.text import load_text
from softlabels.schema import SparseSpec, StoreMeta
from softlabels.sparse import replay
from softlabels.sparse.device import sparsify_torch
from softlabels.sparse.select import decode_ids, sparsify
from softlabels.store import open_store
from softlabels.teachers import load_teacher
from softlabels.verify import verify_store
from tests.lm_helpers import tiny_llama, train_tokenizer, write_corpus
from tests.test_sparse_device import assert_within_format

EXACT = (schema.ID_GAPS, schema.VALUES, schema.VALUE_OFFSETS, schema.INCLUSION_LOG_SCALE)
ANCHORS = np.asarray(schema.DEFAULT_TAIL_TEMPERATURES)


def _both(z: np.ndarray, spec: SparseSpec, combine: str, dtype: str = "float32"):
    index = np.arange(len(z), dtype=np.int64) * 5 + 2
    options = {"weights": (1.0,), "combine": combine, "spec": spec, "dtype": dtype}
    return sparsify(z, index, **options), sparsify_torch(torch.from_numpy(z), index, **options)


def test_wide_rows_peaked_flat_and_far_apart_stay_within_the_tail_tolerance():
    """128k-wide rows at several scales, and a row whose outside logits sit 10^4 below its top
    (beyond the fixed-point range, which only the kept ids must fit): every tail within
    2^-16 (T + |L|) of the float64 reference, the ids and codes exact."""
    rng = np.random.default_rng(1)
    z = rng.normal(0, 1, (6, 1, 131072)).astype(np.float32)
    z[1] *= 30
    z[2] *= 0.01
    z[3] = -1e4
    z[3, 0, :80] = rng.normal(0, 1, 80)
    z[4, 0, :200] = np.float32(2.5)  # ties across the 64th place
    spec = SparseSpec(top_k=64, selection="raw")
    expected, got = _both(z, spec, "single")
    assert_within_format(expected, got)
    assert np.isfinite(got[schema.TAIL]).all()


def test_the_top_ids_are_the_raw_top_k_where_rounding_would_tie_them():
    """Logits 4.00 and 4.01 share a code at step 1/16: decoded selection keeps the lower id
    (the smaller logit), raw selection the larger logit, as torch.topk does."""
    z = np.zeros((1, 1, 6), np.float32)
    z[0, 0] = [4.0, -3.0, 4.01, -5.0, 9.0, -1.0]
    index = np.zeros(1, np.int64)
    kw = {"weights": (1.0,), "combine": "single", "dtype": "float32"}
    decoded = sparsify(z, index, spec=SparseSpec(top_k=2, selection="decoded"), **kw)
    raw = sparsify(z, index, spec=SparseSpec(top_k=2, selection="raw"), **kw)
    assert decode_ids(decoded[schema.ID_GAPS], 2).tolist() == [[0, 4]]
    assert decode_ids(raw[schema.ID_GAPS], 2).tolist() == [[2, 4]]
    torch_raw = sparsify_torch(
        torch.from_numpy(z), index, spec=SparseSpec(top_k=2, selection="raw"), **kw
    )
    assert decode_ids(torch_raw[schema.ID_GAPS], 2).tolist() == [[2, 4]]
    # the tail: T log(exp(4.0/T) + exp(-3/T) + exp(-5/T) + exp(-1/T)), by hand, at every anchor
    outside = np.array([4.0, -3.0, -5.0, -1.0], np.float32).astype(np.float64)
    want = [t * math.log(np.exp(outside / t).sum()) for t in schema.DEFAULT_TAIL_TEMPERATURES]
    np.testing.assert_allclose(torch_raw[schema.TAIL][0, 0], want, rtol=2**-20)
    # codes: offset 9.0, values round((9 - z) / (1/16)) for ids 2 and 4
    assert torch_raw[schema.VALUES].tolist() == [[[round((9.0 - np.float32(4.01)) * 16), 0]]]


def test_only_the_kept_ids_must_fit_the_fixed_point_range():
    z = np.full((1, 1, 50), -1e4, np.float32)
    z[0, 0, :5] = [3.0, 2.0, 1.0, 0.0, -1.0]
    index = np.zeros(1, np.int64)
    kw = {"weights": (1.0,), "combine": "single", "dtype": "float32"}
    with pytest.raises(SparseValueRangeError, match="value step"):
        sparsify_torch(
            torch.from_numpy(z), index, spec=SparseSpec(top_k=4, selection="decoded"), **kw
        )
    raw = sparsify_torch(
        torch.from_numpy(z), index, spec=SparseSpec(top_k=4, selection="raw"), **kw
    )
    assert raw[schema.VALUES].max() == 48  # (3 - 0) * 16
    z[0, 0, 3] = -5000.0  # kept in the top 5: beyond 65535 steps of 1/16 below the top
    with pytest.raises(SparseValueRangeError, match="at least"):
        sparsify_torch(torch.from_numpy(z), index, spec=SparseSpec(top_k=5, selection="raw"), **kw)


@pytest.fixture(scope="module")
def llama(tmp_path_factory):
    root = tmp_path_factory.mktemp("raw")
    tokenizer = train_tokenizer(root / "tokenizer.json")
    seqs = load_text(str(write_corpus(root / "corpus")), str(tokenizer))
    teacher = f"hf:{tiny_llama(root / 'llama', seqs.vocab_size, head=seqs.vocab_size + 40)}"
    return {"seqs": seqs, "teacher": teacher, "root": root}


def test_a_llama_store_holds_its_teachers_top_k_and_raw_tails(llama, tmp_path):
    """generate-lm writes version 6 by default: at every row (37-row chunks, so sequences
    cross chunk edges) the stored top ids are the teacher's top 8 of its padded head,
    and the tails its float64 log-partitions outside them; the store verifies."""
    out = tmp_path / "raw.zarr"
    kw = {"max_length": 12, "chunk_rows": 37, "progress": False}
    store = generate_tokens(
        [llama["teacher"]], llama["seqs"], out, sparse=SparseSpec(top_k=8), **kw
    )
    seqs = llama["seqs"].window(12, "window")
    module = load_teacher(llama["teacher"]).module
    logits = np.concatenate(
        [sequence_logits(module, [seqs.sequence(s)])[0] for s in range(len(seqs))]
    ).astype(np.float64)
    with store:
        meta = store.meta
        assert meta.format_version == schema.RAW_TOKENS_FORMAT_VERSION and meta.sparse.raw
        assert _on_disk(out)["sparse"]["selection"] == "raw"
        rows = store.load()
    ids = decode_ids(rows.arrays[schema.ID_GAPS], 8)
    order = np.argsort(-logits, axis=1, kind="stable")
    want = np.sort(order[:, :8], axis=1)
    # the re-run batches differently from the writer, so its logits differ by float32 noise:
    # ids are compared exactly where the 8th and 9th logits stand clear of that noise, and the
    # rows compared must be nearly all of them
    ranked = np.take_along_axis(logits, order[:, 7:9], axis=1)
    clear = ranked[:, 0] - ranked[:, 1] > 1e-4
    assert clear.mean() > 0.95
    np.testing.assert_array_equal(ids[clear], want[clear])
    outside = logits.copy()
    np.put_along_axis(outside, ids, -np.inf, axis=1)
    top = outside.max(1, keepdims=True)
    exact = np.stack(
        [top[:, 0] + t * np.log(np.exp((outside - top) / t).sum(1)) for t in ANCHORS], 1
    )
    tail = rows.arrays[schema.TAIL][:, 0].astype(np.float64)
    # the re-run forward pass batches differently from the writer: allow its float32 noise
    np.testing.assert_allclose(tail, exact, rtol=1e-5, atol=1e-4)
    report = verify_store(str(out))
    assert report.ok, report.render()


def test_a_version_5_store_resumes_as_version_5(llama, tmp_path):
    """A sparse token store written with decoded selection (version 5) is finished in its own
    selection by a resumed run that leaves the choice to the writer."""
    out = tmp_path / "v5.zarr"
    kw = {"max_length": 12, "chunk_rows": 37, "progress": False}
    decoded = SparseSpec(top_k=8, selection="decoded")
    generate_tokens([llama["teacher"]], llama["seqs"], out, sparse=decoded, **kw).close()
    with open_store(out) as store:
        assert store.meta.format_version == 5 and not store.meta.sparse.raw
        assert "selection" not in _on_disk(out)["sparse"]
        before = store.meta.checksums
    again = generate_tokens(
        [llama["teacher"]], llama["seqs"], out, sparse=SparseSpec(top_k=8), resume=True, **kw
    )
    with again:
        assert again.meta.format_version == 5 and again.meta.checksums == before


def _attrs(tmp_path, llama) -> dict:
    out = tmp_path / "s.zarr"
    kw = {"max_length": 12, "progress": False}
    generate_tokens(
        [llama["teacher"]], llama["seqs"], out, sparse=SparseSpec(top_k=4), **kw
    ).close()
    return _on_disk(out)


def _on_disk(path) -> dict:
    """The root attributes as plain zarr reads them."""
    import zarr

    return dict(zarr.open_group(str(path), mode="r").attrs)


def test_the_schema_keeps_version_6_and_raw_selection_together(llama, tmp_path):
    attrs = _attrs(tmp_path, llama)
    assert StoreMeta.from_attrs(attrs).sparse.raw
    v5 = attrs | {"format_version": 5}
    with pytest.raises(StoreFormatError, match="exactly when its format_version is 6"):
        StoreMeta.from_attrs(v5)
    no_selection = attrs | {
        "sparse": {k: v for k, v in attrs["sparse"].items() if k != "selection"}
    }
    with pytest.raises(StoreFormatError, match="exactly when its format_version is 6"):
        StoreMeta.from_attrs(no_selection)
    odd = attrs | {"sparse": attrs["sparse"] | {"selection": "decoded"}}
    with pytest.raises(StoreFormatError, match="must be 'raw' when present"):
        StoreMeta.from_attrs(odd)
    with pytest.raises(StoreFormatError, match="exactly when its format_version is 3, 5 or 6"):
        StoreMeta.from_attrs({k: v for k, v in attrs.items() if k != "tokens"})


def test_raw_selection_is_refused_for_a_classifier_store(tmp_path):
    from softlabels.generate import generate

    with pytest.raises(SoftLabelsError, match="token stores only"):
        generate(
            ["tests.helpers:teacher_a"],
            "digits",
            tmp_path / "c.zarr",
            sparse=SparseSpec(top_k=3, selection="raw"),
            progress=False,
        )


def test_readers_allow_the_rounding_of_a_raw_support(llama, tmp_path):
    """A geometric pair whose decoded zbar puts a sampled id just above the smallest top id
    (within 2s = one step): a valid version-6 row, an impossible version-5 one."""
    base = StoreMeta.from_attrs(_attrs(tmp_path, llama))
    spec_raw = SparseSpec(top_k=1, sample=1, selection="raw", value_step=0.25)
    meta = _meta(base, spec_raw)
    ids = np.array([[3, 7]])
    ranking = np.array([[1.0, 1.2]])  # sampled above top by 0.2 < 2 * 0.125
    tail = np.full((1, 3, 4), -50.0, np.float32)
    d = replay.Decoded(
        ids, np.zeros((1, 2, 2)), ranking, tail.astype(np.float64), np.ones((1, 2)) / 2
    )
    assert not [p for p in replay.problems(d, meta, 0) if "ranking above" in p]
    d5 = replay.Decoded(ids, d.values, ranking, d.tail, d.inclusion)
    meta5 = _meta(base, SparseSpec(top_k=1, sample=1, selection="decoded", value_step=0.25))
    assert [p for p in replay.problems(d5, meta5, 0) if "ranking above" in p]


def _meta(base: StoreMeta, spec: SparseSpec) -> StoreMeta:
    """``base`` as a geometric pair of its teacher, with ``spec``."""
    t = base.teachers[0]
    return replace(base, teachers=(t, t), weights=(0.5, 0.5), combine="geometric", sparse=spec)


def test_generate_lm_writes_version_6_or_on_request_version_5(llama, tmp_path):
    from click.testing import CliRunner

    from softlabels.cli import main as cli

    root = llama["root"]
    common = ["generate-lm", "--teacher", llama["teacher"], "--text", str(root / "corpus")]
    common += ["--tokenizer", str(root / "tokenizer.json"), "--max-length", "12", "--quiet"]
    common += ["--top-k", "4"]
    for extra, version in (([], 6), (["--selection", "decoded"], 5)):
        out = tmp_path / f"v{version}.zarr"
        res = CliRunner().invoke(cli, [*common, "--out", str(out), *extra])
        assert res.exit_code == 0, res.output
        with open_store(out) as store:
            assert store.meta.format_version == version
    help_text = " ".join(CliRunner().invoke(cli, ["generate-lm", "--help"]).output.split())
    assert "--selection [raw|decoded]" in help_text and "format version 6" in help_text


@pytest.mark.bitwise
def test_an_interrupted_version_6_store_resumes_bitwise_equal(llama, tmp_path, monkeypatch):
    """A run that fails at its sixth batch, resumed in the same process (the same threads),
    gives the arrays of an uninterrupted run byte for byte, sampled ids included."""
    import softlabels.lm.generate as gen

    kw = {"max_length": 12, "chunk_rows": 37, "progress": False}
    kw["sparse"] = SparseSpec(top_k=8, sample=2)
    teachers, seqs = [llama["teacher"]], llama["seqs"]
    generate_tokens(teachers, seqs, tmp_path / "whole.zarr", **kw).close()
    real, calls = gen._batch_rows, []

    def failing(*args, **kwargs):
        calls.append(1)
        if len(calls) == 6:
            raise RuntimeError("interrupted")
        return real(*args, **kwargs)

    monkeypatch.setattr(gen, "_batch_rows", failing)
    cut = tmp_path / "cut.zarr"
    with pytest.raises(RuntimeError, match="interrupted"):
        generate_tokens(teachers, seqs, cut, **kw)
    monkeypatch.setattr(gen, "_batch_rows", real)
    with open_store(cut, allow_incomplete=True) as partial:
        committed = partial.committed_chunks()
        assert committed.any() and not committed.all()
    generate_tokens(teachers, seqs, cut, resume=True, **kw).close()
    with open_store(tmp_path / "whole.zarr") as whole, open_store(cut) as resumed:
        assert resumed.meta.format_version == 6
        assert resumed.meta.checksums == whole.meta.checksums
        n = whole.meta.num_samples
        for name in whole.array_names():
            want = whole.read(0, n).arrays[name].tobytes()
            assert resumed.read(0, n).arrays[name].tobytes() == want, name


@pytest.mark.parametrize("bad", [math.nan, math.inf])
def test_a_nan_or_inf_logit_anywhere_in_a_row_is_refused_naming_the_row(bad):
    from softlabels.errors import NonFiniteLogitsError

    z = np.random.default_rng(0).normal(0, 1, (4, 2, 300)).astype(np.float32)
    z[2, 1, 250] = bad  # member 1, far below the top of member 0's ranking
    index = np.array([10, 11, 12, 13])
    spec = SparseSpec(top_k=8, selection="raw")
    with pytest.raises(NonFiniteLogitsError, match=r"transfer rows \[12\]"):
        sparsify_torch(
            torch.from_numpy(z), index, weights=(0.5, 0.5), combine="geometric", spec=spec,
            dtype="float32",
        )  # fmt: skip
    z[2, 1, 250] = -math.inf  # a masked id is a valid logit
    got = sparsify_torch(
        torch.from_numpy(z), index, weights=(0.5, 0.5), combine="geometric", spec=spec,
        dtype="float32",
    )  # fmt: skip
    assert np.isfinite(got[schema.TAIL]).all()


@pytest.mark.parametrize("implementation", ["numpy", "torch"])
def test_a_row_with_no_finite_logit_outside_its_ids_is_refused(implementation):
    """Raw selection never codes the logits outside the support, so -inf there is not a range
    error; but a row with nothing finite outside has a tail of no mass, which readers refuse:
    both writers refuse it first, naming the row."""
    z = np.full((3, 1, 40), -math.inf, np.float32)
    z[:, 0, :6] = np.arange(6, dtype=np.float32)
    z[0, 0, 30] = -2.0  # row 0 keeps one finite logit outside its top 4
    z[2, 0, 7] = -9.0
    index = np.array([5, 6, 7])
    spec = SparseSpec(top_k=6, selection="raw")
    run = sparsify if implementation == "numpy" else sparsify_torch
    z_in = z if implementation == "numpy" else torch.from_numpy(z)
    kw = {"weights": (1.0,), "combine": "single", "spec": spec, "dtype": "float32"}
    with pytest.raises(SparseValueRangeError, match=r"transfer rows \[6\]: a sparse store"):
        run(z_in, index, **kw)
    got = run(z_in[[0, 2]], index[[0, 2]], **kw)
    want = np.array([[-2.0] * 4, [-9.0] * 4])
    assert (np.abs(got[schema.TAIL][:, 0] - want) <= 2.0**-16 * (ANCHORS + 9)).all()


def test_a_null_selection_is_malformed_not_decoded(llama, tmp_path):
    attrs = _attrs(tmp_path, llama)
    null = attrs | {"sparse": attrs["sparse"] | {"selection": None}}
    with pytest.raises(StoreFormatError, match="must be 'raw' when present, got None"):
        StoreMeta.from_attrs(null)


def test_combine_pools_version_5_stores_into_version_5(llama, tmp_path):
    """Pooled sparse rows are copied as they are: decoded inputs make a decoded output, even
    when the caller leaves the selection to the writer."""
    from softlabels.tools import combine_stores

    kw = {"max_length": 12, "progress": False}
    paths = [tmp_path / "a.zarr", tmp_path / "b.zarr"]
    for p in paths:
        spec = SparseSpec(top_k=4, selection="decoded")
        generate_tokens([llama["teacher"]], llama["seqs"], p, sparse=spec, **kw).close()
    out = str(tmp_path / "pooled.zarr")
    meta = combine_stores(
        tuple(map(str, paths)), out, combine="arithmetic", sparse=SparseSpec(top_k=4)
    )
    assert meta.format_version == 5 and not meta.sparse.raw
    assert verify_store(out).ok


def test_float16_slack_covers_an_ensemble_whose_members_cancel(llama, tmp_path):
    """A geometric pair stored as float16, C = 2, top 1: the kept id's members are 1000.2 and
    -999.8 (raw zbar 0.2; float16 rounds them to 1000 and -1000, so the decoded zbar is 0);
    the other id has zbar 0.19, so its tail is 0.19 at every anchor, above the decoded
    ceiling 0. The row is valid: the slack is 2^-11 of the weighted |values| (0.49), not of
    |zbar|. Read as decoded selection (no slack), the same row is impossible."""
    base = StoreMeta.from_attrs(_attrs(tmp_path, llama))
    spec = SparseSpec(top_k=1, selection="raw", value_step=None)
    meta = replace(_meta(base, spec), dtype="float16", num_classes=2, class_names=("0", "1"))
    values = np.array([[[1000.2], [-999.8]]], np.float32).astype(np.float16).astype(np.float64)
    tail = np.full((1, 3, len(ANCHORS)), 0.19)
    d = replay.Decoded(np.array([[0]]), values, values.mean(axis=1), tail, np.ones((1, 1)))
    assert d.ranking[0, 0] == 0.0
    assert replay.problems(d, meta, 0) == []
    meta5 = replace(meta, sparse=replace(spec, selection="decoded"), tokens=None)
    assert [p for p in replay.problems(d, meta5, 0) if "tail summaries (group 2)" in p]


def test_plain_h5py_reads_a_version_6_store(llama, tmp_path):
    """The HDF5 container: root attributes are JSON strings, as FORMAT.md says; the version
    and the selection read with h5py and json alone, and the arrays have their layout."""
    import json

    import h5py

    out = tmp_path / "s.h5"
    spec = SparseSpec(top_k=4)
    kw = {"max_length": 12, "progress": False}
    generate_tokens([llama["teacher"]], llama["seqs"], out, sparse=spec, **kw).close()
    with h5py.File(out, "r") as f:
        attrs = {k: json.loads(v) for k, v in f.attrs.items()}
        assert attrs["format_version"] == 6 and attrs["sparse"]["selection"] == "raw"
        assert "class_names" not in attrs
        n = attrs["num_samples"]
        assert f["id_gaps"].shape == (n, 4) and f["id_gaps"].dtype == np.int32
        assert f["values"].dtype == np.uint16 and f["tail"].shape == (n, 1, 4)

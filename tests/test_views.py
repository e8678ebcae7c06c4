"""Views stores (format version 4): rows are (sample, view) pairs whose augmentation parameters
are stored, so every view replays exactly from (the sample's input, the row's parameters)."""

from __future__ import annotations

import re
import shutil
import signal
import subprocess
from dataclasses import dataclass
from pathlib import Path

import h5py
import numpy as np
import pytest
import torch
import zarr
from click.testing import CliRunner
from hypothesis import given, settings
from hypothesis import strategies as st

from softlabels import schema
from softlabels.cli import main
from softlabels.errors import (
    MismatchError,
    SoftLabelsError,
    SpecError,
    StoreFormatError,
)
from softlabels.schema import SparseSpec
from softlabels.store import open_store
from softlabels.store.rows import chunk_checksum
from softlabels.transfer import load_transfer
from softlabels.verify import verify_store
from softlabels.views.augment import RandomResizedCropFlip, augment_spec, policy_from_attr, view_rng
from softlabels.views.transfer import ViewTransfer, load_views_policy, view_input
from tests.conftest import make_store
from tests.faults_campaign import ENV, ROOT, generate_cmd
from tests.helpers import FLOAT32, child_env, reseal, teacher_a, teacher_b, torch_threads

TWO = ("tests.helpers:teacher_a", "tests.helpers:teacher_b")
RRC = RandomResizedCropFlip()


# -- a module:function policy, for the tests below (tests.test_views:brighten)
@dataclass(frozen=True)
class Brighten:
    """Multiplies the input by a gain of 1, 2 or 3."""

    name: str = "brighten"
    param_names: tuple[str, ...] = ("gain",)

    def sample(self, rng: np.random.Generator, input_shape: tuple[int, ...]) -> np.ndarray:
        return np.array([rng.integers(1, 4)], dtype=np.float32)

    def apply(self, x: np.ndarray, params: np.ndarray) -> np.ndarray:
        return (x * params[0]).astype(np.float32)

    def to_attr(self) -> dict:
        return {"name": "brighten", "gains": [1, 2, 3]}


def brighten() -> Brighten:
    return Brighten()


def not_a_policy() -> object:
    return object()


def views_store(path: Path, *, views: int = 2, split: str = "test", **kw) -> Path:
    kw.setdefault("augment", RRC)
    return make_store(path, teachers=TWO, split=split, views=views, chunk_rows=100, **kw)


@pytest.fixture(scope="module")
def store(tmp_path_factory) -> Path:
    """Two views of each of the 359 digits test samples, two teachers, chunks of 100 rows."""
    return views_store(tmp_path_factory.mktemp("views") / "v.zarr")


def copy(store: Path, tmp_path: Path) -> Path:
    out = tmp_path / "copy.zarr"
    shutil.copytree(store, out)
    return out


def tamper(path: Path, name: str, row: int, value) -> None:
    """Overwrite one row of one array, then rewrite that chunk's checksum to match."""
    group = zarr.open_group(str(path), mode="r+")
    group[name][row] = value
    with open_store(path) as s:
        chunk = row // s.meta.chunk_rows
        sums = list(s.meta.checksums)
        sums[chunk] = chunk_checksum(s.read_chunk(chunk))
    group.attrs["checksums"] = sums
    reseal(group)


# -- the policy: sampling and applying


@pytest.mark.bitwise
def test_params_depend_only_on_seed_sample_and_view():
    base = load_transfer("digits", "test")
    vt = ViewTransfer(base, RRC, views=3, seed=0)
    whole = vt.params(0, 30)
    assert np.array_equal(whole, np.concatenate([vt.params(0, 7), vt.params(7, 30)]))
    for r in (0, 5, 29):
        drawn = RRC.sample(view_rng(0, r // 3, r % 3), (1, 8, 8))
        assert np.array_equal(whole[r], drawn)
    # Pinned: numpy's SeedSequence([0, sample, view]) through torchvision's box draw.
    assert ViewTransfer(base, RRC, views=2, seed=0).params(0, 4).tolist() == [
        [0, 0, 7, 7, 1],
        [1, 1, 7, 6, 1],
        [0, 0, 8, 8, 0],
        [0, 1, 8, 7, 0],
    ]
    assert not np.array_equal(ViewTransfer(base, RRC, views=3, seed=1).params(0, 30), whole)


def test_crop_resize_flip_by_hand():
    x = np.arange(16, dtype=np.float32).reshape(1, 4, 4)
    # Box rows 1-2, columns 2-3 ([[6, 7], [10, 11]]) resized 2 -> 4 with align_corners=False:
    # output pixel i reads source (i + 0.5) / 2 - 0.5 = -0.25, 0.25, 0.75, 1.25, clamped to [0, 1]
    # -> weights 0, 0.25, 0.75, 1 of the second row (column); value = 6 + 4 w_row + w_col.
    w = np.array([0, 0.25, 0.75, 1], dtype=np.float32)
    expected = 6 + 4 * w[:, None] + w[None, :]
    out = RRC.apply(x, np.array([1, 2, 2, 2, 0], np.float32))
    assert out.dtype == np.float32 and out.shape == (1, 4, 4)
    np.testing.assert_array_equal(out[0], expected)
    flipped = RRC.apply(x, np.array([1, 2, 2, 2, 1], np.float32))
    np.testing.assert_array_equal(flipped[0], expected[:, ::-1])
    # The whole image unflipped is the identity; (H, W) and flat square inputs work the same.
    assert np.array_equal(RRC.apply(x, np.array([0, 0, 4, 4, 0], np.float32)), x)
    np.testing.assert_array_equal(
        RRC.apply(x[0], np.array([1, 2, 2, 2, 1], np.float32)), flipped[0]
    )
    flat = RRC.apply(x.reshape(16), np.array([1, 2, 2, 2, 0], np.float32))
    np.testing.assert_array_equal(flat, expected.reshape(16))
    with pytest.raises(ValueError, match="do not fit"):
        RRC.apply(x, np.array([3, 0, 2, 2, 0], np.float32))  # rows 3-4 of a 4-row image


def test_sampled_boxes_fit_and_the_fallback_is_a_centre_crop():
    for shape in ((1, 8, 8), (28, 28), (3, 6, 10), (784,)):
        params = np.stack([RRC.sample(view_rng(5, s, 0), shape) for s in range(200)])
        assert len(RRC.bad_rows(params.astype(np.float64), shape)) == 0
        assert set(params[:, 4].tolist()) == {0.0, 1.0}
    # Aspect ratios of 2..3 never fit a square at scale 1: torchvision's fallback keeps the whole
    # width and cuts the height to width / 2, centred: rows 2..5 of 8.
    wide = RandomResizedCropFlip(scale=(1, 1), ratio=(2, 3), flip=0.0)
    assert wide.sample(view_rng(0, 0, 0), (1, 8, 8)).tolist() == [2, 0, 4, 8, 0]


def test_augment_specs():
    assert augment_spec("rrc-flip") == RRC
    parsed = augment_spec("rrc-flip:scale=0.5-1,ratio=1-1,flip=0")
    assert parsed == RandomResizedCropFlip(scale=(0.5, 1.0), ratio=(1.0, 1.0), flip=0.0)
    assert policy_from_attr(parsed.to_attr()) == parsed  # rebuilt from a store's attribute
    assert augment_spec("tests.test_views:brighten") == Brighten()
    for spec, message in [
        ("crop", "unknown augmentation"),
        ("rrc-flip:size=3", "cannot parse 'size=3'"),
        ("rrc-flip:scale=0.5", "cannot parse"),
        ("rrc-flip:scale=0-1", "scale must satisfy"),
        ("rrc-flip:flip=2", "flip is a probability"),
        ("tests.test_views:not_a_policy", "lacks sample, apply"),
    ]:
        with pytest.raises(SpecError, match=message):
            augment_spec(spec)
    with pytest.raises(SpecError, match="flat squares"):
        RRC.sample(view_rng(0, 0, 0), (10,))
    with pytest.raises(SpecError, match="not built in; give its module:function SPEC"):
        policy_from_attr({"name": "brighten"})


# -- the store


def test_rows_are_the_teachers_on_the_stored_views(store):
    base = load_transfer("digits", "test")
    with open_store(store) as s:
        meta, rows = s.meta, s.read(0, s.meta.num_samples)
        policy = load_views_policy(meta)
    assert meta.format_version == 4 and meta.num_samples == 718 and meta.layout == "dense"
    assert meta.transfer.num_samples == 359 and meta.transfer.fingerprint == base.fingerprint()
    assert meta.views.views_per_sample == 2 and meta.views.input_shape == (1, 8, 8)
    assert meta.views.param_names == ("top", "left", "height", "width", "flip")
    assert policy == RRC
    r = np.arange(718)
    assert np.array_equal(rows.array(schema.VIEW), r % 2)
    assert np.array_equal(rows.sample_index, r // 2)
    assert np.array_equal(rows.labels, np.repeat(base.label_array(), 2))
    params = rows.array(schema.VIEW_PARAMS)
    assert params.dtype == np.float32 and params.shape == (718, 5)
    x = base.take(0, 359)
    views = np.stack([view_input(x[s], p, policy) for s, p in zip(r // 2, params, strict=True)])
    assert (np.abs(views - x[r // 2]).max(axis=(1, 2, 3)) > 0).mean() > 0.5  # real augmentation
    with torch.no_grad():
        xt = torch.from_numpy(views)
        expected = torch.stack([teacher_a()(xt), teacher_b()(xt)], dim=1).numpy()
    np.testing.assert_allclose(rows.member_logits, expected, rtol=0, atol=1e-5)


def test_root_attributes_on_disk(store):
    attrs = dict(zarr.open_group(str(store), mode="r").attrs)
    assert attrs["format_version"] == 4 and attrs["layout"] == "dense"
    assert attrs["num_samples"] == 718 and attrs["transfer"]["num_samples"] == 359
    assert attrs["views"] == {
        "views_per_sample": 2,
        "seed": 0,
        "policy": {"name": "rrc-flip", "scale": [0.35, 1.0], "ratio": [0.75, 4 / 3], "flip": 0.5},
        "param_names": ["top", "left", "height", "width", "flip"],
        "input_shape": [1, 8, 8],
    }


@pytest.mark.bitwise
def test_chunking_batching_and_backend_do_not_change_the_rows(store, tmp_path):
    other = make_store(
        tmp_path / "v.h5", teachers=TWO, split="test", views=2, augment=RRC, chunk_rows=77,
        batch_size=13,
    )  # fmt: skip
    with open_store(store) as a, open_store(other) as b:
        ra, rb = a.read(0, 718), b.read(0, 718)
        assert a.meta.views == b.meta.views
    assert ra.arrays.keys() == rb.arrays.keys()
    for name in ra.arrays:
        if name in (schema.LOGITS, schema.MEMBER_LOGITS):
            # the teachers ran other batches (13 rows, not 100), which may take other kernels:
            # the logits agree to float32 rounding; bitwise needs the same batches (below)
            np.testing.assert_allclose(ra.arrays[name], rb.arrays[name], **FLOAT32, err_msg=name)
        else:  # the views and their parameters do not depend on the batching at all
            assert ra.arrays[name].tobytes() == rb.arrays[name].tobytes(), name
    same = views_store(tmp_path / "same.h5")  # the same chunking in HDF5: the same checksums
    with open_store(store) as a, open_store(same) as b:
        assert a.meta.checksums == b.meta.checksums


# bitwise, but a killed or launched child process: too slow for make test's second run
def test_killed_then_resumed_is_bitwise_equal(tmp_path):
    run = {"teachers": TWO, "chunk_rows": 128, "batch_size": 32, "views": 2, "augment": RRC}
    reference = make_store(tmp_path / "ref.zarr", **run)
    killed = tmp_path / "killed.zarr"
    # Six arrays per chunk (logits, member_logits, view_params, view, sample_index, labels): the
    # 15th array write is chunk 2's view_params, with chunks 0 and 1 committed.
    res = subprocess.run(
        generate_cmd(killed, "--views", "2", "--augment", "rrc-flip"),
        env=child_env({**ENV, "SOFTLABELS_FAULT": "chunk_array:15"}),
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert res.returncode == -signal.SIGKILL, res.stderr[-2000:]
    with open_store(killed, allow_incomplete=True) as s:
        assert s.committed_chunks().tolist() == [True] * 2 + [False] * 21
    make_store(killed, resume=True, **run)
    with open_store(reference) as a, open_store(killed) as b:
        assert a.meta.checksums == b.meta.checksums
        ra, rb = a.read(0, 2874), b.read(0, 2874)
    assert ra.member_logits.tobytes() == rb.member_logits.tobytes()
    assert ra.array(schema.VIEW_PARAMS).tobytes() == rb.array(schema.VIEW_PARAMS).tobytes()
    with pytest.raises(MismatchError, match="different run.*views"):
        make_store(killed, resume=True, **{**run, "view_seed": 1})


# bitwise, but too slow for make test's second run (Makefile): not marked
def test_distributed_generate_equals_single_process(tmp_path):
    from tests.test_distributed import RANK_THREADS, generate_args, torchrun

    with torch_threads(RANK_THREADS):  # as each rank computes
        single = make_store(tmp_path / "one.zarr", chunk_rows=100, views=2, augment=RRC)
    res = torchrun(*generate_args(tmp_path / "dist.zarr", "--views", "2", "--augment", "rrc-flip"))
    assert res.returncode == 0, res.stderr[-3000:]
    with open_store(single) as a, open_store(tmp_path / "dist.zarr") as b:
        assert a.meta.views == b.meta.views and a.meta.checksums == b.meta.checksums
        assert a.read(0, 2874).logits.tobytes() == b.read(0, 2874).logits.tobytes()


def test_plain_zarr_and_h5py_read_the_view_arrays(store, tmp_path):
    from softlabels.tools import convert_store

    convert_store(str(store), str(tmp_path / "v.h5"))
    group = zarr.open_group(str(store), mode="r")
    params = np.asarray(group["view_params"][:])
    with open_store(store) as s:
        assert np.array_equal(params, s.read(0, 718).array(schema.VIEW_PARAMS))
    with h5py.File(tmp_path / "v.h5", "r") as f:
        assert np.array_equal(f["view_params"][:], params)
        assert f["view"][:5].tolist() == [0, 1, 0, 1, 0]
        assert f["view_params"].dtype == np.float32


def test_sparse_views_store(tmp_path):
    path = views_store(tmp_path / "s.zarr", sparse=SparseSpec(top_k=3))
    with open_store(path) as s:
        assert s.meta.format_version == 4 and s.meta.layout == "sparse"
        rows = s.read(0, 100)
        targets = s.soft_targets(rows, 2.0)
        assert targets.ids.shape == (100, 3)
        assert rows.array(schema.VIEW)[:4].tolist() == [0, 1, 0, 1]
    report = verify_store(str(path), transfer="digits", teachers=TWO, sample=32)
    assert report.ok, report.render()


# -- refusals


@pytest.mark.parametrize(
    "name, row, value, message",
    [
        (schema.VIEW, 5, 0, "view of row 5 is 0, expected 1"),
        (schema.SAMPLE_INDEX, 7, 4, "sample_index of row 7 is 4, expected 3"),
        (schema.VIEW_PARAMS, 9, [0, 0, 9, 8, 0], r"view_params of row 9 \(\[0.0, 0.0, 9.0"),
        (schema.VIEW_PARAMS, 11, [0, 0, 8, 8, 0.5], "view_params of row 11"),
    ],
)
def test_readers_refuse_rows_that_are_not_their_view(store, tmp_path, name, row, value, message):
    path = copy(store, tmp_path)
    tamper(path, name, row, value)
    with open_store(path) as s:
        with pytest.raises(StoreFormatError, match=message):
            s.read_verified_chunk(0)
        if name == schema.SAMPLE_INDEX:
            with pytest.raises(StoreFormatError, match="sample_index of row 7"):
                s.sample_index()
    report = verify_store(str(path))
    assert not report.ok and dict((n, ok) for n, ok, _ in report.checks)["checksums"]


def test_verify_teacher_catches_other_params_that_pass_checksums(store, tmp_path):
    report = verify_store(str(store), transfer="digits", teachers=TWO, sample=64)
    assert report.ok, report.render()
    path = copy(store, tmp_path)
    with open_store(path) as s:
        params = s.read(0, 718).array(schema.VIEW_PARAMS).copy()
    params[:, 4] = 1 - params[:, 4]  # flip every view the other way: still valid parameters
    group = zarr.open_group(str(path), mode="r+")
    group[schema.VIEW_PARAMS][:] = params
    with open_store(path) as s:
        group.attrs["checksums"] = [chunk_checksum(s.read_chunk(c)) for c in range(8)]
    reseal(group)
    report = verify_store(str(path), transfer="digits", teachers=TWO, sample=64)
    checks = {n: (ok, detail) for n, ok, detail in report.checks}
    assert checks["checksums"][0] and checks["views"][0] and checks["transfer"][0]
    assert not checks["teachers"][0] and "re-run logits differ" in checks["teachers"][1]


def test_format_version_and_views_attribute_go_together(store, tmp_path):
    path = copy(store, tmp_path)
    group = zarr.open_group(str(path), mode="r+")
    group.attrs["format_version"] = 2  # a version-2 reader would read view rows as samples
    with pytest.raises(StoreFormatError, match="'views' attribute exactly when.*4"):
        open_store(path)
    group.attrs["format_version"] = 4
    group.attrs["views"] = {**group.attrs["views"], "views_per_sample": 3}
    with pytest.raises(StoreFormatError, match=r"359 x 3 view\(s\) != num_samples 718"):
        open_store(path)
    group.attrs["views"] = {**group.attrs["views"], "views_per_sample": 0}
    with pytest.raises(StoreFormatError, match="views_per_sample must be an integer >= 1"):
        open_store(path)


def test_a_different_transfer_set_is_refused(store):
    report = verify_store(str(store), transfer="tests.helpers:tiny_dataset")
    detail = {n: d for n, _, d in report.checks}["transfer"]
    assert not report.ok and "2 views of each of 359 samples, transfer set has 40" in detail
    report = verify_store(str(store), transfer="digits")  # the store's own split: test
    assert report.ok, report.render()


def test_module_function_policy_is_rebuilt_only_from_its_spec(tmp_path):
    path = views_store(tmp_path / "b.zarr", views=3, augment=Brighten(), view_seed=4)
    with open_store(path) as s:
        meta, rows = s.meta, s.read(0, 30)
    assert meta.views.policy == {"name": "brighten", "gains": [1, 2, 3]}
    assert set(rows.array(schema.VIEW_PARAMS)[:, 0].tolist()) <= {1.0, 2.0, 3.0}
    with pytest.raises(SpecError, match="not built in"):
        load_views_policy(meta)
    with pytest.raises(MismatchError, match="not the one that made"):
        load_views_policy(meta, RRC)
    assert load_views_policy(meta, augment_spec("tests.test_views:brighten")) == Brighten()
    report = verify_store(str(path), transfer="digits", teachers=TWO, sample=16)
    assert not report.ok and "not built in" in {n: d for n, _, d in report.checks}["teachers"]
    report = verify_store(str(path), transfer="digits", teachers=TWO, augment=Brighten())
    assert report.ok, report.render()


def test_cli(store, tmp_path):
    runner = CliRunner()
    out = tmp_path / "c.zarr"
    base = ["generate", "--teacher", TWO[0], "--transfer", "digits", "--split", "test"]
    res = runner.invoke(main, [*base, "--out", str(out), "--views", "2"])
    assert res.exit_code == 2 and "--views and --augment go together" in res.output
    res = runner.invoke(main, [*base, "--out", str(out), "--augment", "rrc-flip"])
    assert res.exit_code == 2 and "--views and --augment go together" in res.output
    args = ["--views", "2", "--augment", "rrc-flip:flip=0", "--view-seed", "3", "--quiet"]
    res = runner.invoke(main, [*base, "--out", str(out), *args])
    assert res.exit_code == 0, res.output
    assert "718 rows" in res.output and "2 views per sample (rrc-flip)" in res.output
    with open_store(out) as s:
        assert s.meta.views.seed == 3 and s.meta.views.policy["flip"] == 0.0
        assert not s.read(0, 718).array(schema.VIEW_PARAMS)[:, 4].any()
    res = runner.invoke(main, ["inspect", str(out)])
    assert res.exit_code == 0 and "views           2 per sample" in res.output
    res = runner.invoke(
        main, ["verify", str(out), "--transfer", "digits", "--teacher", TWO[0], "--sample", "8"]
    )
    assert res.exit_code == 0 and "[ok] views" in res.output and "[ok] teachers" in res.output


def test_generate_needs_both_augment_and_views(tmp_path):
    with pytest.raises(SoftLabelsError, match="needs both an augmentation policy"):
        make_store(tmp_path / "x.zarr", teachers=TWO, views=2)
    with pytest.raises(SoftLabelsError, match="needs both an augmentation policy"):
        make_store(tmp_path / "x.zarr", teachers=TWO, augment=RRC)
    assert not (tmp_path / "x.zarr").exists()


# -- FORMAT.md


def _format_section() -> str:
    text = (ROOT / "FORMAT.md").read_text()
    return text.split("## Views stores (format version 4)")[1].split("\n## ")[0]


def test_format_md_names_the_views_layout():
    section = _format_section()
    for name in (schema.VIEW_PARAMS, schema.VIEW, schema.ATTR_VIEWS, *RRC.param_names):
        assert f"`{name}`" in section or f'"{name}"' in section, name
    spec = RRC.to_attr()
    for key in (*spec, "views_per_sample", "seed", "policy", "param_names", "input_shape"):
        assert f"`{key}`" in section or f'"{key}"' in section, key
    assert "`format_version` is 4" in section


@pytest.mark.bitwise
def test_format_md_numpy_view_matches_the_policy():
    """The spec's numpy rebuild of an rrc-flip view is the policy's, bit for bit, and agrees
    with torch's bilinear interpolate to float32 rounding."""
    import torch
    import torch.nn.functional as F

    code = re.search(r"```python\n(.*?)```", _format_section(), re.S).group(1)
    scope: dict = {}
    exec(code, scope)
    rng = np.random.default_rng(0)
    for shape in ((1, 8, 8), (28, 28), (3, 6, 10), (64,)):
        x = rng.random(shape, dtype=np.float32)
        for s in range(20):
            params = RRC.sample(view_rng(1, s, 0), shape)
            mine = scope["rrc_flip_view"](x, params)
            assert mine.shape == shape and mine.dtype == np.float32
            np.testing.assert_array_equal(mine, RRC.apply(x, params))
            top, left, height, width, flip = (int(v) for v in params)
            h, w = (shape[-2], shape[-1]) if len(shape) > 1 else (8, 8)
            box = torch.from_numpy(
                x.reshape(-1, h, w)[None, :, top : top + height, left : left + width].copy()
            )
            ref = F.interpolate(box, size=(h, w), mode="bilinear", align_corners=False)[0]
            ref = (ref.flip(-1) if flip else ref).numpy().reshape(shape)
            np.testing.assert_allclose(mine, ref, rtol=0, atol=2e-6)


@pytest.mark.bitwise
@settings(max_examples=40, deadline=None)
@given(
    rows=st.integers(1, 9),
    shape=st.sampled_from([(1, 8, 8), (28, 28), (3, 6, 10), (64,)]),
    seed=st.integers(0, 2**31),
)
def test_a_batch_of_views_is_each_view_made_alone(rows, shape, seed):
    """apply_batch, which stage one and stage two use, gives each row exactly apply's view."""
    rng = np.random.default_rng(seed)
    xs = rng.random((rows, *shape), dtype=np.float32)
    params = np.stack([RRC.sample(view_rng(seed, i, 0), shape) for i in range(rows)])
    batch = RRC.apply_batch(xs, params)
    for i in range(rows):
        np.testing.assert_array_equal(batch[i], RRC.apply(xs[i], params[i]))

"""Contract tests every backend passes, plus plain zarr / h5py reads from FORMAT.md."""

from __future__ import annotations

import re
from pathlib import Path

import h5py
import numpy as np
import pytest
import torch
import zarr

from softlabels import schema
from softlabels.ensemble import combine_log_probs
from softlabels.errors import (
    IncompleteStoreError,
    StoreExistsError,
    StoreFormatError,
    StoreNotFoundError,
)
from softlabels.store import Rows, StoreWriter, chunk_checksum, open_store
from softlabels.transfer import load_transfer
from tests.conftest import make_store
from tests.helpers import forward_in_batches, teacher_a, teacher_b, teacher_batches, teacher_c

ROOT = Path(__file__).resolve().parent.parent


def expected_members(chunk_rows: int, split: str = "train") -> np.ndarray:
    """The three teachers' logits through the batches of a writer with ``chunk_rows`` (and the
    default batch size): bitwise what it stores (tests/helpers.py)."""
    x = torch.from_numpy(load_transfer("digits", split).take(0, 10_000))
    teachers = [t() for t in (teacher_a, teacher_b, teacher_c)]
    return forward_in_batches(teachers, x, teacher_batches(len(x), chunk_rows))


class StoreContract:
    """Behaviour both backends must show. Subclasses set ``suffix``."""

    suffix = ""

    @pytest.fixture
    def store_path(self, tmp_path) -> Path:
        return make_store(tmp_path / f"s{self.suffix}", chunk_rows=300)

    @pytest.mark.bitwise
    def test_round_trip_values(self, store_path):
        members = expected_members(chunk_rows=300)
        with open_store(store_path) as s:
            assert s.meta.num_samples == 1438 and s.meta.num_chunks == 5
            rows = s.read(0, 1438)
        np.testing.assert_array_equal(rows.member_logits, members)
        np.testing.assert_array_equal(rows.sample_index, np.arange(1438))
        np.testing.assert_array_equal(rows.labels, load_transfer("digits").labels)
        w = torch.full((3,), 1 / 3, dtype=torch.float64)
        want = np.concatenate(  # combined a chunk at a time, as the writer combines them
            [
                combine_log_probs(torch.from_numpy(members[a:b]).double(), w, "arithmetic")
                .float()
                .numpy()
                for a, b in teacher_batches(1438, 300, batch_size=300)
            ]
        )
        np.testing.assert_array_equal(rows.logits, want)

    def test_attributes(self, store_path):
        with open_store(store_path) as s:
            m = s.meta
        assert m.format == "softlabels" and m.format_version == 1 and m.complete
        assert m.combine == "arithmetic" and m.weights == pytest.approx((1 / 3,) * 3)
        assert [t.name for t in m.teachers] == [
            "tests.helpers:teacher_a",
            "tests.helpers:teacher_b",
            "tests.helpers:teacher_c",
        ]
        assert m.transfer.fingerprint == load_transfer("digits").fingerprint()
        assert m.class_names == tuple(str(i) for i in range(10))
        assert len(m.checksums) == 5 and all(len(c) == 64 for c in m.checksums)

    def test_checksums_match_data(self, store_path):
        with open_store(store_path) as s:
            assert s.verify_checksums() == []
            assert chunk_checksum(s.read_chunk(2)) == s.meta.checksums[2]

    def test_no_journal_once_complete(self, store_path):
        if self.suffix == ".zarr":
            assert schema.COMMIT_JOURNAL not in set(
                zarr.open_group(str(store_path), mode="r").array_keys()
            )
        else:
            with h5py.File(store_path, "r") as f:
                assert schema.COMMIT_JOURNAL not in f

    def test_float16(self, tmp_path):
        path = make_store(tmp_path / f"h{self.suffix}", dtype="float16")
        with open_store(path) as s:
            rows = s.read(0, 1438)
        assert rows.logits.dtype == np.float16 and rows.member_logits.dtype == np.float16
        np.testing.assert_allclose(
            rows.member_logits, expected_members(chunk_rows=256), rtol=1e-3, atol=1e-3
        )

    @pytest.mark.bitwise
    def test_single_teacher_has_no_members(self, tmp_path):
        path = make_store(tmp_path / f"one{self.suffix}", teachers=("tests.helpers:teacher_a",))
        with open_store(path) as s:  # make_store's chunks of 256 rows
            assert s.meta.combine == "single" and not s.has_members
            logits = s.read(0, 1438).logits
        np.testing.assert_array_equal(logits, expected_members(chunk_rows=256)[:, 0])

    def test_incomplete_is_refused_then_committed_chunks_readable(self, tmp_path, store_path):
        with open_store(store_path) as s:
            meta, chunk0 = s.meta, s.read_chunk(0)
        path = tmp_path / f"partial{self.suffix}"
        with StoreWriter.create(path, meta) as w:
            w.write_chunk(0, chunk0)
        with pytest.raises(IncompleteStoreError, match="not complete"):
            open_store(path)
        with open_store(path, allow_incomplete=True) as s:
            assert s.committed_chunks().tolist() == [True, False, False, False, False]
            np.testing.assert_array_equal(s.read_chunk(0).logits, chunk0.logits)
            with pytest.raises(IncompleteStoreError, match=r"uncommitted chunks \[1\]"):
                s.read_chunk(1)

    def test_refuses_overwrite(self, store_path):
        with open_store(store_path) as s:
            meta = s.meta
        with pytest.raises(StoreExistsError, match="overwrite=True"):
            StoreWriter.create(store_path, meta)

    def test_missing_store(self, tmp_path):
        with pytest.raises(StoreNotFoundError, match="no store at"):
            open_store(tmp_path / f"nothing{self.suffix}")

    def test_write_chunk_must_be_whole(self, tmp_path, store_path):
        with open_store(store_path) as s:
            meta, rows = s.meta, s.read(0, 10)
        with (
            StoreWriter.create(tmp_path / f"w{self.suffix}", meta) as w,
            pytest.raises(ValueError, match="spans rows"),
        ):
            w.write_chunk(0, rows)


class TestZarr(StoreContract):
    suffix = ".zarr"


class TestHDF5(StoreContract):
    suffix = ".h5"


def test_unknown_suffix():
    with pytest.raises(StoreFormatError, match=r"\.zarr"):
        open_store("x.npy")


def test_future_version_refused(tmp_path):
    path = make_store(tmp_path / "v.zarr")
    zarr.open_group(str(path), mode="r+").attrs["format_version"] = 7
    with pytest.raises(StoreFormatError, match="version 7 is not supported"):
        open_store(path)


def test_shape_disagreement_refused(tmp_path):
    path = make_store(tmp_path / "v.h5")
    with h5py.File(path, "r+") as f:
        del f["labels"]
        f.create_dataset("labels", data=np.zeros(5, dtype=np.int64))
    with pytest.raises(StoreFormatError, match=r"'labels' has shape \(5,\), expected \(1438,\)"):
        open_store(path)


def test_missing_array_refused(tmp_path):
    path = make_store(tmp_path / "m.zarr")
    del zarr.open_group(str(path), mode="r+")["member_logits"]
    with pytest.raises(StoreFormatError, match="missing the array 'member_logits'"):
        open_store(path)


def test_h5_attrs_must_be_json(tmp_path):
    path = make_store(tmp_path / "j.h5")
    with h5py.File(path, "r+") as f:
        f.attrs["combine"] = "not json {"
    with pytest.raises(StoreFormatError, match="'combine' is not valid JSON"):
        open_store(path)


def test_duplicate_sample_index_refused(tmp_path):
    path = make_store(tmp_path / "d.zarr")
    with open_store(path) as s:
        index = s.read(0, s.meta.num_samples).sample_index
    index[5] = 4
    zarr.open_group(str(path), mode="r+")["sample_index"][:] = index
    with (
        open_store(path) as s,
        pytest.raises(StoreFormatError, match=r"repeats transfer positions \[4\]"),
    ):
        s.sample_index()


def _format_snippets() -> list[str]:
    text = (ROOT / "FORMAT.md").read_text()
    return re.findall(r"```python\n(.*?)```", text, flags=re.S)


def test_format_md_plain_reads(tmp_path, monkeypatch):
    """Run FORMAT.md's plain zarr, plain h5py and numpy snippets exactly as written."""
    monkeypatch.chdir(tmp_path)
    make_store(tmp_path / "data/digits/softlabels.zarr")
    make_store(tmp_path / "data/digits/softlabels.h5")
    zarr_code, h5_code, numpy_code = _format_snippets()[:3]
    scope: dict = {}
    exec(zarr_code, scope)
    assert scope["logits"].shape == (1438, 10) and scope["members"].shape == (1438, 3, 10)
    z_logits = scope["logits"]
    exec(h5_code, scope)
    np.testing.assert_array_equal(scope["logits"], z_logits)
    assert scope["attrs"]["num_classes"] == 10
    scope["T"] = 4.0
    exec(numpy_code, scope)
    with open_store("data/digits/softlabels.h5") as s:
        w = torch.tensor(s.meta.weights, dtype=torch.float64)
        want = combine_log_probs(
            torch.from_numpy(s.read(0, 1438).member_logits).double(), w, "arithmetic", 4.0
        ).exp()
    np.testing.assert_allclose(scope["targets"], want.numpy(), atol=1e-6)


def test_rows_stop():
    rows = Rows.dense(np.zeros((3, 2)), None, np.arange(3), np.zeros(3, dtype=np.int64), start=10)
    assert rows.stop == 13


# ---- issue: data loss at URLs, half-created stores -------------------------------------------


def test_memory_url_is_not_replaced_without_overwrite():
    url = "memory://bugs/once.zarr"
    make_store(url, teachers=("tests.helpers:teacher_a",))
    with open_store(url) as s:
        first = s.meta.created_at, s.meta.teachers
    with pytest.raises(StoreExistsError, match="already exists"):
        make_store(url, teachers=("tests.helpers:teacher_b",))
    with open_store(url) as s:
        assert (s.meta.created_at, s.meta.teachers) == first
    make_store(url, teachers=("tests.helpers:teacher_b",), overwrite=True)
    with open_store(url) as s:
        assert s.meta.teachers[0].name == "tests.helpers:teacher_b"


@pytest.mark.parametrize("suffix", [".zarr", ".h5"])
def test_kill_during_creation_leaves_nothing_at_the_path(tmp_path, suffix):
    """Creation is atomic: killed after building the staged store but before moving it into
    place, the path holds nothing, and the same command with --resume then creates it."""
    import os
    import subprocess
    import sys

    out = tmp_path / f"s{suffix}"
    cmd = [
        sys.executable,
        "-m",
        "softlabels.cli",
        "generate",
        "--teacher",
        "tests.helpers:teacher_a",
        "--transfer",
        "digits",
        "--out",
        str(out),
        "--quiet",
    ]
    env = {**os.environ, "SOFTLABELS_FAULT": "create_staged:1", "PYTHONPATH": str(ROOT)}
    res = subprocess.run(cmd, env=env, capture_output=True, timeout=120)
    assert res.returncode == -9, res.stderr
    assert not out.exists()
    with pytest.raises(StoreNotFoundError):
        open_store(out)
    res = subprocess.run([*cmd, "--resume"], env={**env, "SOFTLABELS_FAULT": ""}, timeout=120)
    assert res.returncode == 0
    with open_store(out) as s:
        assert s.meta.complete


def test_store_whose_arrays_have_not_arrived_reads_as_incomplete(tmp_path):
    """On an object store a move is per object: attributes may land before the arrays."""
    path = make_store(tmp_path / "p.zarr", teachers=("tests.helpers:teacher_a",))
    g = zarr.open_group(str(path), mode="r+")
    g.attrs["complete"] = False
    del g["labels"]
    with pytest.raises(IncompleteStoreError, match="still being created"):
        open_store(path, allow_incomplete=True)

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import zarr

from softlabels import schema
from softlabels.errors import (
    MismatchError,
    NonFiniteLogitsError,
    SoftLabelsError,
    StoreExistsError,
    StoreNotFoundError,
    TeacherError,
)
from softlabels.store import open_store
from tests.conftest import make_store

ROOT = Path(__file__).resolve().parent.parent


def test_refuses_existing_store_without_overwrite(tmp_path):
    path = make_store(tmp_path / "s.zarr")
    with pytest.raises(StoreExistsError, match="already exists; pass --overwrite"):
        make_store(path)
    make_store(path, overwrite=True)
    with open_store(path) as s:
        assert s.meta.complete


def test_overwrite_never_deletes_a_non_store(tmp_path):
    precious = tmp_path / "precious.zarr"
    precious.mkdir()
    (precious / "thesis.txt").write_text("years of work")
    with pytest.raises(StoreExistsError, match="not a soft-label store; refusing to delete"):
        make_store(precious, overwrite=True)
    assert (precious / "thesis.txt").read_text() == "years of work"


def test_nan_logits_name_the_rows(tmp_path):
    from softlabels.transfer import load_transfer

    x = load_transfer("digits").take(0, 1438)
    expected = np.flatnonzero(x.reshape(len(x), -1).sum(1) > 25)
    with pytest.raises(NonFiniteLogitsError, match="NaN or Inf logits at transfer rows") as info:
        make_store(
            tmp_path / "n.zarr",
            teachers=("tests.helpers:nan_teacher",),
            chunk_rows=5000,
            batch_size=5000,
        )
    assert str(expected[:20].tolist()) in str(info.value)


def test_teacher_output_must_be_batch_by_classes(tmp_path):
    with pytest.raises(
        TeacherError, match=r"must return logits of shape \(batch, classes\).*returned \(2,\)"
    ):
        make_store(tmp_path / "b.zarr", teachers=("tests.helpers:bad_shape_teacher",))


def test_members_must_agree_on_classes(tmp_path):
    with pytest.raises(
        MismatchError,
        match="disagree on the number of classes.*teacher_a: 10.*teacher_11_classes: 11",
    ):
        make_store(
            tmp_path / "c.zarr",
            teachers=("tests.helpers:teacher_a", "tests.helpers:teacher_11_classes"),
        )


def test_teacher_classes_must_match_transfer(tmp_path):
    with pytest.raises(
        MismatchError, match="teachers output 11 classes but transfer set 'digits' has 10"
    ):
        make_store(tmp_path / "d.zarr", teachers=("tests.helpers:teacher_11_classes",))


@pytest.mark.parametrize(
    ("kw", "message"),
    [
        ({"batch_size": 0}, "--batch-size must be at least 1"),
        ({"chunk_rows": 0}, "--chunk-rows must be at least 1"),
        ({"resume": True, "overwrite": True}, "contradict"),
        ({"combine": "single"}, "--combine single needs exactly one"),
    ],
)
def test_config_refusals(tmp_path, kw, message):
    with pytest.raises(SoftLabelsError, match=message):
        make_store(tmp_path / "x.zarr", **kw)
    assert not (tmp_path / "x.zarr").exists()


def test_resume_needs_a_store(tmp_path):
    with pytest.raises(StoreNotFoundError, match="nothing to resume"):
        make_store(tmp_path / "r.zarr", resume=True)


def test_resume_refuses_a_different_run(tmp_path):
    path = tmp_path / "r.zarr"
    make_store(path)
    zarr.open_group(str(path), mode="r+").attrs["complete"] = False
    with pytest.raises(MismatchError, match="different run.*chunk_rows"):
        make_store(path, resume=True, chunk_rows=128)


def test_weights_are_recorded(tmp_path):
    path = make_store(tmp_path / "w.h5", combine="geometric", weights=(1.0, 1.0, 2.0))
    with open_store(path) as s:
        assert s.meta.weights == (0.25, 0.25, 0.5) and s.meta.combine == "geometric"


def _generate_cmd(out: Path, *extra: str) -> list[str]:
    return [sys.executable, "-m", "softlabels.cli", "generate", "--teacher", "tests.helpers:slow_teacher",
            "--teacher", "tests.helpers:teacher_b", "--transfer", "digits", "--chunk-rows", "128",
            "--batch-size", "32", "--out", str(out), "--quiet", *extra]  # fmt: skip


def _committed(path: Path) -> int:
    try:
        journal = zarr.open_group(str(path), mode="r")[schema.COMMIT_JOURNAL][:]
    except Exception:
        return 0
    return int(journal.any(axis=1).sum())


@pytest.mark.parametrize("suffix", [".zarr", ".h5"])
def test_killed_then_resumed_is_bitwise_equal(tmp_path, suffix):
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    reference = tmp_path / f"ref{suffix}"
    subprocess.run(_generate_cmd(reference), check=True, env=env, cwd=ROOT)
    killed = tmp_path / f"killed{suffix}"
    proc = subprocess.Popen(_generate_cmd(killed), env=env, cwd=ROOT)
    # A chunk takes ~0.2 s (4 slow batches). Zarr: wait for 3 committed chunks. HDF5 cannot be
    # read while its writer holds it, so wait a fixed time past start-up instead.
    deadline = time.time() + 60
    if suffix == ".zarr":
        while _committed(killed) < 3 and time.time() < deadline:
            time.sleep(0.05)
    else:
        time.sleep(4.0)
    time.sleep(0.07)  # land somewhere inside a chunk
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    with pytest.raises(SoftLabelsError, match="not complete"):
        open_store(killed)
    with open_store(killed, allow_incomplete=True) as s:
        done = int(s.committed_chunks().sum())
    assert 0 < done < 12
    subprocess.run(_generate_cmd(killed, "--resume"), check=True, env=env, cwd=ROOT)
    with open_store(reference) as a, open_store(killed) as b:
        ra, rb = a.read(0, a.meta.num_samples), b.read(0, b.meta.num_samples)
        assert a.meta.checksums == b.meta.checksums
    assert ra.logits.tobytes() == rb.logits.tobytes()
    assert ra.member_logits.tobytes() == rb.member_logits.tobytes()

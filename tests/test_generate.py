from __future__ import annotations

import signal
import subprocess

import numpy as np
import pytest
import zarr

from softlabels.errors import (
    MismatchError,
    NonFiniteLogitsError,
    SoftLabelsError,
    StoreExistsError,
    TeacherError,
)
from softlabels.store import open_store
from tests.conftest import make_store
from tests.faults_campaign import ENV, ROOT, generate_cmd
from tests.helpers import child_env


def test_refuses_existing_store_without_overwrite(tmp_path):
    path = make_store(tmp_path / "s.zarr")
    with pytest.raises(StoreExistsError, match="already exists; pass overwrite=True to replace it"):
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
    with pytest.raises(MismatchError, match="class count: 11 classes, but transfer set 'digits'"):
        make_store(tmp_path / "d.zarr", teachers=("tests.helpers:teacher_11_classes",))


@pytest.mark.parametrize(
    ("kw", "message"),
    [
        ({"batch_size": 0}, "batch size must be at least 1"),
        ({"chunk_rows": 0}, "chunk rows must be at least 1"),
        ({"resume": True, "overwrite": True}, "contradict"),
        ({"combine": "single"}, "combine 'single' needs exactly one teacher"),
    ],
)
def test_config_refusals(tmp_path, kw, message):
    with pytest.raises(SoftLabelsError, match=message):
        make_store(tmp_path / "x.zarr", **kw)
    assert not (tmp_path / "x.zarr").exists()


def test_resume_is_idempotent(tmp_path):
    """A requeued job repeats its command line: --resume creates, finishes, or does nothing."""
    path = tmp_path / "r.zarr"
    make_store(path, resume=True)  # nothing there: created
    with open_store(path) as s:
        first = s.meta
    assert first.complete
    make_store(path, resume=True)  # complete and the same run: a no-op, not rewritten
    with open_store(path) as s:
        assert s.meta == first
    with pytest.raises(MismatchError, match="different run.*teachers"):
        make_store(path, resume=True, teachers=("tests.helpers:teacher_a",))


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


# bitwise, but a killed or launched child process: too slow for make test's second run
@pytest.mark.parametrize("suffix", [".zarr", ".h5"])
def test_killed_then_resumed_is_bitwise_equal(tmp_path, suffix):
    # The run of generate_cmd, in this process (only the killed run needs a process of its own,
    # which runs with this process's torch threads: child_env).
    run = {
        "teachers": ("tests.helpers:teacher_a", "tests.helpers:teacher_b"),
        "chunk_rows": 128,
        "batch_size": 32,
    }
    reference = make_store(tmp_path / f"ref{suffix}", **run)
    killed = tmp_path / f"killed{suffix}"
    # Killed by the fault point at its 14th array write: chunk 3's second of four arrays, with
    # chunks 0-2 committed. The kill is exact, so no timing is involved.
    res = subprocess.run(
        generate_cmd(killed),
        env=child_env({**ENV, "SOFTLABELS_FAULT": "chunk_array:14"}),
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert res.returncode == -signal.SIGKILL, res.stderr[-2000:]
    with pytest.raises(SoftLabelsError, match="not complete"):
        open_store(killed)
    with open_store(killed, allow_incomplete=True) as s:
        assert s.committed_chunks().tolist() == [True] * 3 + [False] * 9
    make_store(killed, resume=True, **run)
    with open_store(reference) as a, open_store(killed) as b:
        ra, rb = a.read(0, a.meta.num_samples), b.read(0, b.meta.num_samples)
        assert a.meta.checksums == b.meta.checksums
    assert ra.logits.tobytes() == rb.logits.tobytes()
    assert ra.member_logits.tobytes() == rb.member_logits.tobytes()

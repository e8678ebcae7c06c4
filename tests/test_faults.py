"""Faults: kills at named points and at random moments, disk full, readers during generation."""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

import numpy as np
import pytest

from softlabels import faults
from softlabels.errors import IncompleteStoreError, SoftLabelsError, StoreNotFoundError
from softlabels.store import open_store
from tests.conftest import make_store
from tests.faults_campaign import ENV, ROOT, campaign, generate_cmd
from tests.helpers import wait_for_signal


# bitwise, but too slow for make test (Makefile): make reliability runs it
@pytest.mark.reliability
def test_campaign_small(tmp_path):
    """Two named kill points of stage one (mid-chunk, inside finalize) and one of stage two."""
    res = campaign(tmp_path, random_trials=0, named=("chunk_array:2", "finalize_journal_deleted:1"))
    s = res["summary"]
    assert s["stage_one_killed"] == 2 and s["stage_one_survived"] == 2
    assert (
        s["half_written_chunks_accepted"] == 0 and s["killed_stores_accepted_by_plain_reader"] == 0
    )
    assert (
        s["stage_two_trials"] == 1 and s["stage_two_killed"] == 1 and s["stage_two_survived"] == 1
    )


@pytest.mark.bitwise
def test_disk_full_then_resume(tmp_path, monkeypatch):
    reference = make_store(tmp_path / "ref.zarr")
    path = tmp_path / "full.zarr"
    monkeypatch.setenv("SOFTLABELS_FAULT", "chunk_array:7:enospc")
    with pytest.raises(
        SoftLabelsError, match=r"disk is full.*No space left on device.*again with resume=True"
    ):
        make_store(path)
    monkeypatch.delenv("SOFTLABELS_FAULT")
    with pytest.raises(IncompleteStoreError):
        open_store(path)
    with open_store(path, allow_incomplete=True) as s:
        assert s.committed_chunks().tolist() == [True] + [False] * 5  # 7th array write: chunk 1
    make_store(path, resume=True)
    with open_store(reference) as a, open_store(path) as b:
        assert a.meta.checksums == b.meta.checksums


def test_disk_full_during_finalize(tmp_path, monkeypatch):
    monkeypatch.setenv("SOFTLABELS_FAULT", "finalize_checksums:1:enospc")
    path = tmp_path / "f.h5"
    with pytest.raises(OSError, match="No space left"):
        make_store(path)
    monkeypatch.delenv("SOFTLABELS_FAULT")
    make_store(path, resume=True)
    with open_store(path) as s:
        assert s.meta.complete and s.verify_checksums() == []


def _check_live_store(path: Path, committed: int, partial: int | None) -> None:
    """What a reader must see while the writer is paused: ``committed`` chunks, each verified
    against its journal entry; every other chunk refused, ``partial`` (half written) included."""
    with pytest.raises(IncompleteStoreError, match="not complete"):
        open_store(path)
    with open_store(path, allow_incomplete=True) as s:
        assert np.flatnonzero(s.committed_chunks()).tolist() == list(range(committed))
        for c in range(committed):
            assert np.isfinite(s.read_verified_chunk(c).logits).all()
        for c in {committed, s.meta.num_chunks - 1} | ({partial} - {None}):
            with pytest.raises(IncompleteStoreError, match="uncommitted"):
                s.read_chunk(c)


def test_reader_during_generation_sees_only_committed_chunks(tmp_path):
    """The writer pauses at fault points (signal, then wait for the go-ahead) while a reader looks:
    with the new store staged but not yet published (no store at the path), mid-chunk 2 (its 10th
    array write, 2 of chunk 2's 4 arrays on disk) and right after chunk 5's commit."""
    path = tmp_path / "live.zarr"
    pauses = [
        ("create_staged:1", None, None),
        ("chunk_array:10", 2, 2),
        ("chunk_committed:6", 6, None),
    ]
    spec = ",".join(
        f"{p}:signal={tmp_path / f'at-{i}'},{p}:wait={tmp_path / f'go-{i}'}"
        for i, (p, _, _) in enumerate(pauses)
    )
    proc = subprocess.Popen(generate_cmd(path), env={**ENV, "SOFTLABELS_FAULT": spec}, cwd=ROOT)
    try:
        for i, (_, committed, partial) in enumerate(pauses):
            wait_for_signal(tmp_path / f"at-{i}", proc)
            if committed is None:
                with pytest.raises(StoreNotFoundError):
                    open_store(path, allow_incomplete=True)
            else:
                _check_live_store(path, committed, partial)
            (tmp_path / f"go-{i}").touch()
        assert proc.wait(timeout=300) == 0
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    with open_store(path) as s:
        assert s.meta.complete and s.verify_checksums() == []


def test_fault_actions_signal_and_wait(tmp_path, monkeypatch):
    monkeypatch.setattr(faults, "_passes", {})
    sig, go, never = tmp_path / "sig", tmp_path / "go", tmp_path / "never"
    go.touch()
    spec = f"chunk_committed:2:signal={sig},chunk_committed:2:wait={go},chunk_array:1:wait={never}"
    monkeypatch.setenv("SOFTLABELS_FAULT", spec)
    monkeypatch.setenv("SOFTLABELS_FAULT_TIMEOUT", "0")
    faults.point("chunk_committed")
    faults.point("epoch_end")
    assert not sig.exists()
    faults.point("chunk_committed")  # 2nd pass: signals, then finds `go` and carries on
    assert sig.exists()
    with pytest.raises(RuntimeError, match="fault point chunk_array: .*never did not appear"):
        faults.point("chunk_array")
    monkeypatch.setenv("SOFTLABELS_FAULT", "epoch_end:1:explode")
    with pytest.raises(ValueError, match="unknown action 'explode'"):
        faults.point("epoch_end")


def test_environment_has_no_fault_set():
    assert "SOFTLABELS_FAULT" not in os.environ


def test_campaign_module_is_documented():
    text = (Path(ROOT) / "RELIABILITY.md").read_text()
    assert "python -m tests.faults_campaign" in text

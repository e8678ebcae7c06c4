"""Faults: kills at named points and at random moments, disk full, readers during generation."""

from __future__ import annotations

import os
import subprocess
import time
from pathlib import Path

import numpy as np
import pytest

from softlabels.errors import IncompleteStoreError, SoftLabelsError
from softlabels.store import open_store
from tests.conftest import make_store
from tests.faults_campaign import ENV, ROOT, campaign, generate_cmd


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


def test_disk_full_then_resume(tmp_path, monkeypatch):
    reference = make_store(tmp_path / "ref.zarr")
    path = tmp_path / "full.zarr"
    monkeypatch.setenv("SOFTLABELS_FAULT", "chunk_array:7:enospc")
    with pytest.raises(SoftLabelsError, match=r"No space left on device.*rerun with --resume"):
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


def test_reader_during_generation_sees_only_committed_chunks(tmp_path):
    path = tmp_path / "live.zarr"
    proc = subprocess.Popen(generate_cmd(path), env=ENV, cwd=ROOT)
    try:
        deadline = time.time() + 60
        seen = 0
        while time.time() < deadline and seen < 3:
            time.sleep(0.1)
            if not (path / "zarr.json").exists():
                continue
            with pytest.raises(IncompleteStoreError, match="not complete"):
                open_store(path)
            with open_store(path, allow_incomplete=True) as s:
                committed = np.flatnonzero(s.committed_chunks())
                for c in committed:
                    rows = s.read_verified_chunk(int(c))  # checksum against the journal entry
                    assert np.isfinite(rows.logits).all()
                pending = np.flatnonzero(~s.committed_chunks())
                if len(pending):
                    with pytest.raises(IncompleteStoreError, match="uncommitted"):
                        s.read_chunk(int(pending[-1]))
                seen = len(committed)
        assert seen >= 3
    finally:
        proc.wait(timeout=120)
    assert proc.returncode == 0


def test_environment_has_no_fault_set():
    assert "SOFTLABELS_FAULT" not in os.environ


def test_campaign_module_is_documented():
    text = (Path(ROOT) / "RELIABILITY.md").read_text()
    assert "python -m tests.faults_campaign" in text

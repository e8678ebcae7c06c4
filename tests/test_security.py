"""No pickle in stores, weights-only checkpoints, no import of what a store names, no writes
outside a store's path."""

from __future__ import annotations

import pickle
import sys
from pathlib import Path

import h5py
import pytest
import torch
import zarr

from softlabels.checkpoint import load_checkpoint, load_model
from softlabels.errors import CheckpointError, SoftLabelsError
from softlabels.summary import inspect_store
from softlabels.verify import verify_store
from tests.conftest import make_store
from trainer.train import TrainConfig, train

MARKER = Path("/tmp/softlabels-pwned-marker")


class Exploit:
    def __reduce__(self):
        return (MARKER.write_text, ("pwned",))


def test_malicious_checkpoint_is_refused(tmp_path):
    MARKER.unlink(missing_ok=True)
    path = tmp_path / "evil.pt"
    torch.save(
        {"format": "softlabels-checkpoint", "version": 1, "arch": {}, "model": Exploit()}, path
    )
    with pytest.raises(CheckpointError, match="refusing to load"):
        load_checkpoint(path)
    with pytest.raises(CheckpointError):
        load_model(path)
    assert not MARKER.exists()


@pytest.mark.filterwarnings("ignore:Detected pickle protocol")
def test_plain_pickle_checkpoint_is_refused(tmp_path):
    path = tmp_path / "raw.pt"
    path.write_bytes(pickle.dumps(Exploit()))
    with pytest.raises(CheckpointError):
        load_checkpoint(path)
    assert not MARKER.exists()


def test_no_pickle_in_stores(tmp_path):
    z = make_store(tmp_path / "s.zarr")
    for f in z.rglob("*"):
        if f.is_file():
            assert b"\x80\x04\x95" not in f.read_bytes()[:3], f  # pickle protocol 4 header
    h = make_store(tmp_path / "s.h5")
    with h5py.File(h) as f:
        assert all(isinstance(v, str) for v in f.attrs.values())
        assert all(f[k].dtype.kind in "fi" for k in f)


def test_store_metadata_is_never_imported(tmp_path, digits_test_store):
    """A store whose teacher spec names a module: inspect, verify and training never import it."""
    path = make_store(tmp_path / "named.zarr", teachers=("tests.helpers:teacher_a",))
    g = zarr.open_group(str(path), mode="r+")
    teachers = g.attrs["teachers"]
    teachers[0]["spec"] = "tests.evil_on_import:teacher"
    g.attrs["teachers"] = teachers
    inspect_store(str(path))
    assert verify_store(str(path), transfer="digits").ok
    train(
        TrainConfig(
            out=str(tmp_path / "run"), store=str(path), hidden=(8,), epochs=1, progress=False
        )
    )
    assert "tests.evil_on_import" not in sys.modules


def test_overwrite_does_not_follow_links_out(tmp_path):
    outside = tmp_path / "outside"
    outside.mkdir()
    (outside / "keep.txt").write_text("keep")
    link = tmp_path / "link.zarr"
    link.symlink_to(outside, target_is_directory=True)
    with pytest.raises(SoftLabelsError):
        make_store(link, overwrite=True)
    assert (outside / "keep.txt").read_text() == "keep"

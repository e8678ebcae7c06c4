"""No pickle in stores, weights-only checkpoints, no import of what a store names, no writes
outside a store's path."""

from __future__ import annotations

import json
import os
import pickle
import subprocess
import sys
from pathlib import Path

import h5py
import pytest
import torch
import zarr

from softlabels.checkpoint import load_checkpoint, load_model
from softlabels.errors import CheckpointError, SoftLabelsError
from tests.conftest import make_store
from tests.helpers import reseal

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


# A module that records its own import: a file on disk (its side effect) and sys.modules.
MARKER_MODULE = "softlabels_store_named_marker"
MARKER_SOURCE = """
from pathlib import Path

import torch

Path({marker!r}).write_text("imported")


def teacher():
    return torch.nn.Linear(64, 10)
"""

# Runs in a fresh interpreter. Phase "plain": inspect, verify and train on the store, through
# the API and the CLIs, while a meta-path finder records every attempt to import either module
# the store names (even one that raises and is caught, which sys.modules would not show); then
# report. Phase "control": import what the store names, as a careless reader would, and report
# again with the same three checks, which proves that they can fail.
CHILD = """
import json, sys
from pathlib import Path

NAMED = ({marker_module!r}, "tests.evil_on_import")
attempts = []


class Recorder:
    def find_spec(self, name, path=None, target=None):
        if name in NAMED:
            attempts.append(name)
        return None


sys.meta_path.insert(0, Recorder())
store, out, marker = sys.argv[1:4]

from click.testing import CliRunner

from softlabels.cli import main as softlabels
from softlabels.store import open_store
from softlabels.summary import inspect_store
from softlabels.transfer import import_callable
from softlabels.verify import verify_store
from trainer.cli import main as distill
from trainer.train import TrainConfig, train


def report(phase, **extra):
    print(json.dumps({{
        "phase": phase,
        "attempts": sorted(set(attempts)),
        "in_modules": sorted(n for n in NAMED if n in sys.modules),
        "marker": Path(marker).exists(),
        **extra,
    }}), flush=True)


inspect_store(store)
verified = verify_store(store, transfer="digits").ok
train(
    TrainConfig(
        out=out + "/api", store=store, eval_split=None, hidden=(8,), epochs=1, batch_size=512,
        progress=False,
    )
)
runner = CliRunner()
codes = [
    runner.invoke(softlabels, ["inspect", store]).exit_code,
    runner.invoke(softlabels, ["inspect", "--json", store]).exit_code,
    runner.invoke(softlabels, ["verify", store, "--transfer", "digits"]).exit_code,
    runner.invoke(
        distill,
        ["train", "--store", store, "--hidden", "8", "--epochs", "1", "--batch-size", "512",
         "--eval-split", "none", "--quiet", "--out", out + "/cli"],
    ).exit_code,
]
report("plain", verified=verified, codes=codes)

with open_store(store) as s:
    for t in s.meta.teachers:
        try:
            import_callable(t.spec)
        except Exception:
            pass
report("control")
"""


@pytest.fixture(scope="module")
def named_store_run(tmp_path_factory) -> dict[str, dict]:
    """The child's two reports, on a two-teacher store whose teacher specs name the marker
    module and tests.evil_on_import."""
    tmp = tmp_path_factory.mktemp("named")
    store = make_store(
        tmp / "named.zarr", teachers=("tests.helpers:teacher_a", "tests.helpers:teacher_b")
    )
    g = zarr.open_group(str(store), mode="r+")
    teachers = g.attrs["teachers"]
    teachers[0]["spec"] = f"{MARKER_MODULE}:teacher"
    teachers[1]["spec"] = "tests.evil_on_import:teacher"
    g.attrs["teachers"] = teachers
    reseal(g)  # as the producer of such a store would

    (tmp / "mods").mkdir()
    marker = tmp / "imported.txt"
    (tmp / "mods" / f"{MARKER_MODULE}.py").write_text(MARKER_SOURCE.format(marker=str(marker)))
    (tmp / "child.py").write_text(CHILD.format(marker_module=MARKER_MODULE))
    root = Path(__file__).resolve().parent.parent
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(root), str(tmp / "mods")])}
    res = subprocess.run(
        [sys.executable, str(tmp / "child.py"), str(store), str(tmp / "run"), str(marker)],
        cwd=root,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert res.returncode == 0, res.stderr[-3000:]
    reports = [json.loads(line) for line in res.stdout.splitlines() if line.startswith("{")]
    assert [r["phase"] for r in reports] == ["plain", "control"], res.stdout
    assert marker.read_text() == "imported"  # the control's import ran the module
    return {r["phase"]: r for r in reports}


def test_store_metadata_is_never_imported(named_store_run):
    """A store whose teacher specs name modules: inspect, verify and training (API and CLI)
    never import them, nor even try to."""
    got = named_store_run["plain"]
    assert got["verified"] and got["codes"] == [0, 0, 0, 0], got
    assert got["attempts"] == [] and got["in_modules"] == [] and not got["marker"], got


def test_the_import_checks_can_fail(named_store_run):
    """Control: importing what the store names, in the same interpreter, trips all three."""
    got = named_store_run["control"]
    assert got["attempts"] == [MARKER_MODULE, "tests.evil_on_import"], got
    assert got["in_modules"] == [MARKER_MODULE], got  # the raising one never lands there
    assert got["marker"], got


def test_overwrite_does_not_follow_links_out(tmp_path):
    outside = tmp_path / "outside"
    outside.mkdir()
    (outside / "keep.txt").write_text("keep")
    link = tmp_path / "link.zarr"
    link.symlink_to(outside, target_is_directory=True)
    with pytest.raises(SoftLabelsError):
        make_store(link, overwrite=True)
    assert (outside / "keep.txt").read_text() == "keep"

"""Nothing is lost by a replacement that fails: ``--overwrite`` builds the new store beside the
old one and swaps it in only when complete (generate, convert, combine), and ``distill
train-lm`` refuses a non-empty --out unless asked to resume or replace it."""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np
import pytest
import torch
from click.testing import CliRunner

import softlabels
from softlabels import faults
from softlabels.cli import main as softlabels_cli
from softlabels.store import backends
from softlabels.store.lease import lease_path
from tests.helpers import teacher_a

GOOD = ["--teacher", "tests.helpers:teacher_a", "--transfer", "digits", "--chunk-rows", "500"]
NAN = ["--teacher", "tests.helpers:nan_teacher", "--transfer", "digits", "--chunk-rows", "500"]


def _siblings(path: Path) -> list[str]:
    """Whatever else sits beside ``path``: staging, replacement or trash names."""
    return sorted(p.name for p in path.parent.iterdir() if p.name != path.name)


def _checksums(path: Path) -> tuple[str, ...]:
    with softlabels.open_store(path) as store:
        return tuple(store.meta.checksums)


@pytest.mark.parametrize("suffix", [".zarr", ".h5"])
def test_a_failed_overwrite_leaves_the_old_store_untouched(tmp_path, suffix):
    keep = tmp_path / f"keep{suffix}"
    res = CliRunner().invoke(softlabels_cli, ["generate", *GOOD, "--out", str(keep), "--quiet"])
    assert res.exit_code == 0, res.output
    before = _checksums(keep)
    res = CliRunner().invoke(
        softlabels_cli, ["generate", *NAN, "--out", str(keep), "--overwrite", "--quiet"]
    )
    assert res.exit_code != 0 and "NaN" in res.output, res.output
    assert _checksums(keep) == before
    res = CliRunner().invoke(softlabels_cli, ["verify", str(keep), "--transfer", "digits"])
    assert res.exit_code == 0, res.output
    assert _siblings(keep) == []  # the failed replacement is gone too


@pytest.mark.bitwise
def test_an_overwrite_that_succeeds_replaces_the_store(tmp_path):
    out = tmp_path / "s.zarr"
    x = torch.from_numpy(softlabels.transfer.as_transfer("digits", "train").take(0, 300))
    data = torch.utils.data.TensorDataset(x)
    softlabels.generate([teacher_a()], data, out, progress=False).close()
    other = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(64, 10))
    with softlabels.generate([other], data, out, overwrite=True, progress=False) as store:
        with torch.no_grad():
            expected = other(x[:256]).numpy()  # the writer's first batch of 256
        np.testing.assert_array_equal(store.read(0, 256).logits, expected)
        assert store.path == str(out)
    assert _siblings(out) == []


def test_a_kill_before_the_swap_keeps_the_old_store_and_a_rerun_replaces_it(tmp_path):
    """Killed with the replacement complete beside it: the old store still reads; the next
    --overwrite discards the stale replacement and finishes."""
    import subprocess
    import sys

    out = tmp_path / "s.zarr"
    res = CliRunner().invoke(softlabels_cli, ["generate", *GOOD, "--out", str(out), "--quiet"])
    assert res.exit_code == 0, res.output
    before = _checksums(out)
    args = ["generate", "--teacher", "tests.helpers:teacher_b", "--transfer", "digits"]
    args += ["--chunk-rows", "500", "--out", str(out), "--overwrite", "--quiet"]
    env = os.environ | {"SOFTLABELS_FAULT": "replace_complete:1"}
    cmd = [sys.executable, "-m", "softlabels.cli", *args]
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == -9, proc.stderr
    assert _checksums(out) == before
    stale_lease = Path(lease_path(out)).name  # the killed writer's: the rerun takes it over
    assert _siblings(out) == sorted([Path(backends.replacement_path(out)).name, stale_lease])
    res = CliRunner().invoke(softlabels_cli, args)
    assert res.exit_code == 0, res.output
    assert _checksums(out) != before and _siblings(out) == []
    res = CliRunner().invoke(
        softlabels_cli, ["verify", str(out), "--transfer", "digits", "--teacher", args[2]]
    )
    assert res.exit_code == 0, res.output


def test_a_failed_convert_overwrite_keeps_the_old_copy(tmp_path, monkeypatch):
    src, dst = tmp_path / "a.zarr", tmp_path / "b.h5"
    for out in (src, dst):
        res = CliRunner().invoke(softlabels_cli, ["generate", *GOOD, "--out", str(out), "--quiet"])
        assert res.exit_code == 0, res.output
    before = _checksums(dst)
    monkeypatch.setenv("SOFTLABELS_FAULT", "chunk_committed:2:enospc")
    monkeypatch.setattr(faults, "_passes", {})
    res = CliRunner().invoke(softlabels_cli, ["convert", str(src), str(dst), "--overwrite"])
    assert res.exit_code != 0
    assert _checksums(dst) == before and _siblings(dst) == ["a.zarr"]


# ---- distill train-lm --out ----------------------------------------------------------------


@pytest.fixture(scope="module")
def lm(tmp_path_factory):
    pytest.importorskip("transformers")
    from softlabels.lm.generate import generate_tokens
    from softlabels.lm.text import load_text
    from softlabels.schema import SparseSpec
    from tests.lm_helpers import tiny_gpt, train_tokenizer, write_corpus

    root = tmp_path_factory.mktemp("lmout")
    tokenizer = train_tokenizer(root / "tokenizer.json")
    corpus = write_corpus(root / "corpus")
    train = load_text(str(corpus), str(tokenizer))
    teacher = tiny_gpt(root / "teacher", train.vocab_size)
    store = generate_tokens(
        [f"hf:{teacher}"],
        train,
        root / "train.zarr",
        sparse=SparseSpec(top_k=8),
        max_length=16,
        progress=False,
    )
    yield {"store": store, "corpus": corpus, "tokenizer": tokenizer, "train": train}
    store.close()


def _train_lm(lm, out, *extra):
    from trainer.cli import main as distill

    args = ["train-lm", "--store", str(lm["store"].path), "--text", str(lm["corpus"])]
    args += ["--tokenizer", str(lm["tokenizer"]), "--eval-split", "none", "--out", str(out)]
    return CliRunner().invoke(distill, [*args, *extra])


def test_train_lm_refuses_a_non_empty_out(lm, tmp_path):
    out = tmp_path / "run"
    out.mkdir()
    (out / "notes.txt").write_text("mine")
    result = _train_lm(lm, out)
    assert result.exit_code != 0 and "is not empty" in result.output
    assert "--resume" in result.output and "--overwrite" in result.output
    assert (out / "notes.txt").read_text() == "mine" and sorted(os.listdir(out)) == ["notes.txt"]
    result = _train_lm(lm, out, "--overwrite")
    assert result.exit_code == 0, result.output
    assert not (out / "notes.txt").exists()
    assert (out / "student.safetensors").exists() or (out / "student").is_dir()
    assert _train_lm(lm, out, "--resume", "--overwrite").exit_code != 0


@pytest.mark.bitwise
def test_train_lm_resumes_after_a_failed_epoch_as_if_uninterrupted(lm, tmp_path, monkeypatch):
    from trainer.lm.students import load_student
    from trainer.lm.train import LMConfig, train_lm

    config = LMConfig(epochs=3, batch_size=4, seed=1)

    def student():
        torch.manual_seed(config.seed)
        return load_student("gpt", vocab_size=lm["store"].meta.num_classes, max_length=16)

    whole = student()
    expected = train_lm(whole, lm["store"], lm["train"], config, checkpoint=tmp_path / "a.pt")
    monkeypatch.setenv("SOFTLABELS_FAULT", "epoch_end:2:enospc")
    monkeypatch.setattr(faults, "_passes", {})
    with pytest.raises(OSError, match="No space left"):
        train_lm(student(), lm["store"], lm["train"], config, checkpoint=tmp_path / "b.pt")
    monkeypatch.delenv("SOFTLABELS_FAULT")
    resumed = student()  # a fresh student: every weight comes from the checkpoint
    history = train_lm(resumed, lm["store"], lm["train"], config, checkpoint=tmp_path / "b.pt")
    assert [h["train_loss"] for h in history] == [h["train_loss"] for h in expected]
    for (name, a), b in zip(whole.state_dict().items(), resumed.state_dict().values(), strict=True):
        assert torch.equal(a, b), name  # the same batches on the same machine
    other = LMConfig(epochs=3, batch_size=4, seed=1, lr=1e-3)
    with pytest.raises(softlabels.errors.MismatchError, match="other training options"):
        train_lm(student(), lm["store"], lm["train"], other, checkpoint=tmp_path / "b.pt")


def test_train_lm_cli_resume_continues_the_run(lm, tmp_path):
    out = tmp_path / "run"
    assert _train_lm(lm, out, "--epochs", "1").exit_code == 0
    first = json.loads((out / "metrics.json").read_text())
    result = _train_lm(lm, out, "--epochs", "1", "--resume")  # already done: nothing to train
    assert result.exit_code == 0, result.output
    assert json.loads((out / "metrics.json").read_text()) == first
    result = _train_lm(lm, out, "--epochs", "2", "--resume")
    assert result.exit_code != 0 and "other training options" in result.output

from __future__ import annotations

import json
from dataclasses import replace

import pytest
import torch
from click.testing import CliRunner

from softlabels.checkpoint import load_model
from softlabels.errors import SoftLabelsError
from trainer.cli import main as distill
from trainer.train import TrainConfig, train, train_sweep


def config(tmp_path, digits_store, digits_test_store, **kw) -> TrainConfig:
    base = TrainConfig(
        out=str(tmp_path / "run"),
        store=str(digits_store),
        eval_store=str(digits_test_store),
        hidden=(16,),
        epochs=3,
        batch_size=64,
        seed=1,
        progress=False,
    )
    return replace(base, **kw)


def untimed(history: list[dict]) -> list[dict]:
    return [{k: v for k, v in h.items() if k != "epoch_seconds"} for h in history]


def test_distill_run_outputs(tmp_path, digits_store, digits_test_store):
    result = train(config(tmp_path, digits_store, digits_test_store))
    out = tmp_path / "run"
    lines = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert [r["epoch"] for r in lines] == [1, 2, 3]
    assert {
        "eval_accuracy",
        "eval_nll",
        "eval_ece",
        "eval_teacher_agreement",
        "eval_kl_to_teacher",
    } <= set(lines[-1])
    assert lines[-1]["train_loss"] < lines[0]["train_loss"]
    assert (out / "curves.png").stat().st_size > 1000
    model, arch = load_model(out / "model.pt")
    assert arch == {
        "name": "mlp",
        "kwargs": {"in_shape": [1, 8, 8], "num_classes": 10, "dropout": 0.0, "hidden": [16]},
    }
    assert result.final == lines[-1]


@pytest.mark.bitwise
def test_resume_after_interruption_matches_uninterrupted(tmp_path, digits_store, digits_test_store):
    full = train(
        config(tmp_path, digits_store, digits_test_store, out=str(tmp_path / "full"), dropout=0.2)
    )
    part = config(
        tmp_path, digits_store, digits_test_store, out=str(tmp_path / "part"), dropout=0.2
    )
    # Simulate a kill after epoch 2 by running 2 epochs' worth, then rewriting the checkpoint's config.
    first = train(replace(part, epochs=2))
    ckpt = torch.load(tmp_path / "part" / "last.pt", weights_only=True)
    ckpt["config"]["epochs"] = 3
    torch.save(ckpt, tmp_path / "part" / "last.pt")
    resumed = train(replace(part, resume=True))
    assert untimed(first.history) == untimed(full.history[:2])
    assert untimed(resumed.history) == untimed(full.history)
    assert resumed.final["eval_accuracy"] == full.final["eval_accuracy"]


def test_refusals(tmp_path, digits_store, digits_test_store):
    c = config(tmp_path, digits_store, digits_test_store)
    train(c)
    with pytest.raises(SoftLabelsError, match="not empty; pass resume=True"):
        train(c)
    with pytest.raises(SoftLabelsError, match="different configuration"):
        train(replace(c, resume=True, temperature=2.0))
    with pytest.raises(SoftLabelsError, match="batch_size must be at least 1"):
        train(replace(c, batch_size=0))
    with pytest.raises(SoftLabelsError, match="temperature must be"):
        train(replace(c, temperature=float("nan")))


def test_sweep_and_logit_losses(tmp_path, digits_store, digits_test_store):
    runs = train_sweep(config(tmp_path, digits_store, digits_test_store, epochs=1), (2.0, 8.0))
    assert [r.config.temperature for r in runs] == [2.0, 8.0]
    assert (tmp_path / "run" / "T8" / "model.pt").exists()
    for loss in ("soft_ce", "logits", "soft_only"):
        r = train(
            config(
                tmp_path,
                digits_store,
                digits_test_store,
                epochs=2,
                loss=loss,
                out=str(tmp_path / loss),
            )
        )
        assert r.history[1]["train_loss"] < r.history[0]["train_loss"]


def test_cli_train_and_errors(tmp_path, digits_store, digits_test_store):
    runner = CliRunner()
    args = ["train", "--store", str(digits_store), "--hidden", "16", "--epochs", "1", "--quiet"]
    res = runner.invoke(distill, [*args, "--temperature", "1,4", "--out", str(tmp_path / "cli")])
    assert res.exit_code == 0, res.output
    assert "KD T=1" in res.output and "KD T=4" in res.output
    for bad, message in (
        (["--temperature", "0"], "temperatures must be finite numbers > 0"),
        (["--temperature", "nan"], "temperatures must be finite numbers > 0"),
        (["--alpha", "1.5"], "alpha must be in [0, 1]"),
        (["--batch-size", "0"], "Invalid value for '--batch-size': 0 is not in the range x>=1"),
    ):
        res = runner.invoke(distill, [*args, *bad, "--out", str(tmp_path / "bad")])
        assert res.exit_code != 0 and message in res.output, res.output
        assert not (tmp_path / "bad" / "model.pt").exists()
    res = runner.invoke(
        distill, [*args, "--transfer", "digits", "--split", "test", "--out", str(tmp_path / "m")]
    )
    assert (
        res.exit_code == 1
        and "does not match the store" in res.output
        and "Traceback" not in res.output
    )

"""Devices and precision for language models (stage one ``generate-lm`` / ``generate_tokens``,
stage two ``train-lm`` / ``train_lm``), as far as a CPU-only machine can test them: the options
and their errors, bf16 autocast on the CPU, the recorded runtime, resume refusals, and fp32
staying bitwise what it was."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
import torch
import zarr
from click.testing import CliRunner

pytest.importorskip("transformers")

from softlabels.cli import main as softlabels_cli  # noqa: E402
from softlabels.errors import MismatchError, SoftLabelsError  # noqa: E402
from softlabels.lm.generate import generate_tokens  # noqa: E402
from softlabels.lm.models import load_hf  # noqa: E402
from softlabels.lm.text import load_text  # noqa: E402
from softlabels.schema import SparseSpec  # noqa: E402
from softlabels.store import open_store  # noqa: E402
from softlabels.verify import rerun_tolerance  # noqa: E402
from tests.lm_helpers import tiny_gpt, train_tokenizer, write_corpus  # noqa: E402
from trainer.cli import main as distill_cli  # noqa: E402
from trainer.lm.students import gpt_student  # noqa: E402
from trainer.lm.train import LMConfig, train_lm  # noqa: E402

MAX_LENGTH = 16
NO_GPU = pytest.mark.skipif(torch.cuda.is_available(), reason="this machine has a GPU")


@pytest.fixture(scope="module")
def lm(tmp_path_factory):
    root = tmp_path_factory.mktemp("lmdevice")
    tokenizer = train_tokenizer(root / "tokenizer.json")
    corpus = write_corpus(root / "corpus")
    train = load_text(str(corpus), str(tokenizer))
    test = load_text(str(corpus), str(tokenizer), split="test")
    teacher = tiny_gpt(root / "teacher", train.vocab_size)
    common = {"max_length": MAX_LENGTH, "progress": False, "device": "cpu"}
    sparse = SparseSpec(top_k=8, sample=4)
    stores = {
        "sparse": generate_tokens(
            [f"hf:{teacher}"], train, root / "sparse.zarr", sparse=sparse, **common
        ),
        "eval": generate_tokens([f"hf:{teacher}"], test, root / "eval.zarr", **common),
    }
    yield {
        "root": root,
        "tokenizer": tokenizer,
        "corpus": corpus,
        "train": train,
        "test": test,
        "teacher": teacher,
        **stores,
    }
    for store in stores.values():
        store.close()


def _generate(lm, out, *extra):
    args = [
        "generate-lm",
        "--teacher",
        f"hf:{lm['teacher']}",
        "--text",
        str(lm["corpus"]),
        "--tokenizer",
        str(lm["tokenizer"]),
        "--max-length",
        str(MAX_LENGTH),
        "--out",
        str(out),
        "--quiet",
        *extra,
    ]
    return CliRunner().invoke(softlabels_cli, args)


def _train(lm, store, out, *extra):
    args = ["train-lm", "--store", str(store), "--text", str(lm["corpus"])]
    args += ["--tokenizer", str(lm["tokenizer"]), "--width", "32", "--layers", "1"]
    return CliRunner().invoke(distill_cli, [*args, "--out", str(out), *extra])


def _error_line(output: str, *, alone: bool = True) -> str:
    """The one ``Error:`` line, with no traceback; ``alone``: and nothing else (otherwise
    transformers' own bar while loading a teacher may precede it)."""
    lines = [line for line in output.splitlines() if line.strip()]
    errors = [line for line in lines if line.startswith("Error: ")]
    assert len(errors) == 1 and "Traceback" not in output, output
    assert not alone or lines == errors, output
    return errors[0]


def test_the_commands_explain_device_and_precision():
    for cli, command in ((softlabels_cli, "generate-lm"), (distill_cli, "train-lm")):
        res = CliRunner().invoke(cli, [command, "--help"])
        assert res.exit_code == 0, res.output
        text = " ".join(res.output.split())
        assert "--device" in text and "An absent device is an error" in text
        assert "--precision [fp32|bf16" in text and "autocast" in text
    res = CliRunner().invoke(softlabels_cli, ["generate-lm", "--help"])
    assert "[fp32|bf16|fp16]" in res.output  # teachers: fp16 too; students: fp32 or bf16


def test_bf16_store_records_its_runtime_and_stays_close_to_fp32(lm, tmp_path):
    res = _generate(lm, tmp_path / "bf16.zarr", "--device", "cpu", "--precision", "bf16")
    assert res.exit_code == 0, res.output
    res = _generate(lm, tmp_path / "fp32.zarr", "--device", "cpu")
    assert res.exit_code == 0, res.output
    with open_store(tmp_path / "bf16.zarr") as b, open_store(tmp_path / "fp32.zarr") as f:
        assert b.meta.runtime == {"device": "cpu", "precision": "bf16", "torch": torch.__version__}
        assert f.meta.runtime == {"device": "cpu", "precision": "fp32", "torch": torch.__version__}
        attrs = zarr.open_group(str(tmp_path / "bf16.zarr"), mode="r").attrs
        assert attrs["runtime"]["precision"] == "bf16"
        n = f.meta.num_samples
        low, full = b.read(0, n).logits, f.read(0, n).logits
    assert low.dtype == np.float32 and np.isfinite(low).all()
    assert (low != full).any()  # bf16 really ran
    # bf16 keeps 8 significant bits: the logits (|z| < 1 here) move by ~1e-3, far below the
    # tolerance FORMAT.md allows a bf16 re-run (relative 1e-4 + 3e-2)
    error = np.abs(low - full).max() / max(1.0, float(np.abs(full).max()))
    assert error < rerun_tolerance("float32", "bf16")
    # train-lm takes the same options, and trains from the bf16 store
    out = tmp_path / "run"
    res = _train(lm, tmp_path / "bf16.zarr", out, "--device", "cpu", "--precision", "bf16")
    assert res.exit_code == 0, res.output
    history = json.loads((out / "metrics.json").read_text())
    assert all(math.isfinite(r["train_loss"]) and math.isfinite(r["eval_ppl"]) for r in history)


@NO_GPU
def test_an_absent_device_is_a_one_line_error(lm, tmp_path):
    res = _generate(lm, tmp_path / "s.zarr", "--device", "cuda")
    assert res.exit_code != 0
    line = _error_line(res.output)
    assert "'cuda'" in line and "no CUDA GPU" in line
    assert not (tmp_path / "s.zarr").exists()
    res = _train(lm, lm["sparse"].path, tmp_path / "run", "--device", "cuda:1")
    assert res.exit_code != 0
    line = _error_line(res.output)
    assert "'cuda:1'" in line and "no CUDA GPU" in line
    assert not (tmp_path / "run").exists()  # refused before --out is made
    with pytest.raises(SoftLabelsError, match="'cuda'"):
        generate_tokens(
            [f"hf:{lm['teacher']}"], lm["train"], tmp_path / "t.zarr", max_length=8, device="cuda"
        )
    config = LMConfig(device="cuda", precision="bf16")
    with pytest.raises(SoftLabelsError, match="'cuda'"):
        train_lm(
            gpt_student(lm["sparse"].meta.num_classes, max_length=MAX_LENGTH),
            lm["sparse"],
            lm["train"],
            config,
        )


def test_resume_at_another_precision_is_refused(lm, tmp_path):
    out = tmp_path / "r.zarr"
    res = _generate(lm, out, "--precision", "bf16", "--chunk-rows", "256")
    assert res.exit_code == 0, res.output
    res = _generate(lm, out, "--precision", "bf16", "--chunk-rows", "256", "--resume")
    assert res.exit_code == 0, res.output  # the same run: nothing left to do
    res = _generate(lm, out, "--precision", "fp32", "--chunk-rows", "256", "--resume")
    assert res.exit_code == 1
    line = _error_line(res.output, alone=False)
    assert "runtime.precision: store has 'bf16', this run has 'fp32'" in line
    # an interrupted store, resumed at another precision, is refused too
    zarr.open_group(str(out), mode="r+").attrs["complete"] = False
    with pytest.raises(MismatchError, match="runtime.precision: store has 'bf16'"):
        generate_tokens(
            [f"hf:{lm['teacher']}"],
            lm["train"],
            out,
            max_length=MAX_LENGTH,
            chunk_rows=256,
            resume=True,
            progress=False,
            precision="fp16",
        )


def _history(lm, precision: str) -> list[dict]:
    torch.manual_seed(0)
    student = gpt_student(lm["sparse"].meta.num_classes, max_length=MAX_LENGTH, width=32, layers=1)
    config = LMConfig(epochs=2, device="cpu", precision=precision)
    history = train_lm(
        student, lm["sparse"], lm["train"], config, eval_seqs=lm["test"], eval_store=lm["eval"]
    )
    assert all(p.dtype == torch.float32 for p in student.parameters())  # autocast, not a cast
    return history


def test_train_lm_under_bf16_trains_and_differs_from_fp32(lm):
    bf16, fp32 = _history(lm, "bf16"), _history(lm, "fp32")
    keys = ("train_loss", "eval_ppl", "teacher_kl")
    for record in bf16:
        assert all(math.isfinite(record[k]) for k in keys), record
    assert bf16[-1]["train_loss"] < bf16[0]["train_loss"] * 1.05  # it learns
    assert [r["train_loss"] for r in bf16] != [r["train_loss"] for r in fp32]
    for a, b in zip(bf16, fp32, strict=True):  # ... but not far from fp32
        assert a["train_loss"] == pytest.approx(b["train_loss"], rel=0.05)
    with pytest.raises(SoftLabelsError, match="fp32 or bf16|'fp32', 'bf16'"):
        train_lm(
            gpt_student(lm["sparse"].meta.num_classes, max_length=MAX_LENGTH),
            lm["sparse"],
            lm["train"],
            LMConfig(device="cpu", precision="fp16"),
        )


def test_fp32_stores_are_bitwise_the_plain_forward_pass(lm, tmp_path):
    """precision="fp32" is what generate_tokens always computed: the default's store, and the
    teacher run by hand in the same batches (no autocast), bitwise."""
    common = {"max_length": MAX_LENGTH, "progress": False, "chunk_rows": 4096, "batch_size": 3}
    teacher = f"hf:{lm['teacher']}"
    default = generate_tokens([teacher], lm["train"], tmp_path / "d.zarr", **common)
    fp32 = generate_tokens(
        [teacher], lm["train"], tmp_path / "f.zarr", device="cpu", precision="fp32", **common
    )
    with default, fp32:
        assert default.meta.checksums == fp32.meta.checksums
        assert fp32.meta.runtime["precision"] == "fp32" and fp32.meta.runtime["device"] == "cpu"
        stored = fp32.read(0, fp32.meta.num_samples).logits
        pad_id = fp32.meta.tokens.pad_id
    seqs = lm["train"].window(MAX_LENGTH, "window")
    model, rows = load_hf(teacher), []
    with torch.inference_mode():
        for start in range(0, len(seqs), 3):  # one chunk: batches of 3 sequences from the first
            group = [seqs.sequence(i) for i in range(start, min(start + 3, len(seqs)))]
            ids = torch.full((len(group), max(map(len, group))), pad_id, dtype=torch.long)
            mask = torch.zeros_like(ids)
            for i, s in enumerate(group):
                ids[i, : len(s)], mask[i, : len(s)] = torch.from_numpy(s.astype(np.int64)), 1
            logits = model(ids, attention_mask=mask).numpy()
            rows += [logits[i, : len(s)] for i, s in enumerate(group)]
    assert np.array_equal(stored, np.concatenate(rows))

"""Language-model context and failures: a teacher or student asked to read past its context is
refused before anything is written (GPT-2's n_positions, a RoPE Llama's
max_position_embeddings), a teacher that fails mid-run leaves no store behind, and
generate-lm takes --combine and --weights."""

from __future__ import annotations

import pytest
import torch
from click.testing import CliRunner

pytest.importorskip("transformers")

from softlabels.cli import main as softlabels_cli  # noqa: E402
from softlabels.errors import MismatchError, TeacherError  # noqa: E402
from softlabels.lm.generate import generate_tokens  # noqa: E402
from softlabels.lm.models import CausalLM, load_hf  # noqa: E402
from softlabels.lm.text import load_text  # noqa: E402
from softlabels.store import open_store  # noqa: E402
from tests.lm_helpers import tiny_gpt, tiny_llama, train_tokenizer, write_corpus  # noqa: E402
from trainer.lm.train import LMConfig, evaluate_lm, train_lm  # noqa: E402


@pytest.fixture(scope="module")
def lm(tmp_path_factory):
    root = tmp_path_factory.mktemp("ctx")
    tokenizer = train_tokenizer(root / "tokenizer.json")
    corpus = write_corpus(root / "corpus")
    seqs = load_text(str(corpus), str(tokenizer))
    return {
        "root": root,
        "tokenizer": tokenizer,
        "corpus": corpus,
        "seqs": seqs,
        "gpt64": tiny_gpt(root / "gpt64", seqs.vocab_size),  # n_positions 64
        "llama32": tiny_llama(root / "llama32", seqs.vocab_size, context=32),
    }


def _generate_lm(lm, teacher, out, *extra):
    args = ["generate-lm", "--teacher", f"hf:{teacher}", "--text", str(lm["corpus"])]
    args += ["--tokenizer", str(lm["tokenizer"]), "--out", str(out), "--quiet", *extra]
    return CliRunner().invoke(softlabels_cli, args)


@pytest.mark.parametrize(
    ("model", "limit", "key"),
    [("gpt64", 64, "n_positions"), ("llama32", 32, "max_position_embeddings")],
)
def test_a_teacher_asked_past_its_context_is_refused_before_anything_is_written(
    lm, tmp_path, model, limit, key
):
    out = tmp_path / "s.zarr"
    result = _generate_lm(lm, lm[model], out, "--max-length", str(limit + 16), "--window", "pack")
    assert result.exit_code == 1 and "Traceback" not in result.output
    assert f"reads at most {limit} positions ({key} in its config)" in result.output
    assert f"run to {limit + 16} tokens" in result.output
    assert not out.exists() and list(tmp_path.iterdir()) == []
    assert (
        _generate_lm(lm, lm[model], out, "--max-length", str(limit), "--window", "pack").exit_code
        == 0
    )


class _FailsOnSecondBatch(torch.nn.Module):
    def __init__(self, inner: torch.nn.Module) -> None:
        super().__init__()
        self.inner, self.calls = inner, 0

    def forward(self, input_ids, attention_mask=None):
        self.calls += 1
        if self.calls == 3:  # the head-size probe, the first batch, then this
            raise IndexError("index out of range in self")
        return self.inner(input_ids, attention_mask=attention_mask)


def test_a_teacher_that_fails_mid_run_leaves_no_store(lm, tmp_path):
    teacher = _FailsOnSecondBatch(load_hf(f"hf:{lm['gpt64']}"))
    out = tmp_path / "s.zarr"
    with pytest.raises(TeacherError, match="IndexError: index out of range"):
        generate_tokens([teacher], lm["seqs"], out, max_length=16, batch_size=4, progress=False)
    assert not out.exists() and list(tmp_path.iterdir()) == []


def test_a_student_asked_past_its_context_is_refused(lm, tmp_path):
    store = generate_tokens(
        [f"hf:{lm['gpt64']}"], lm["seqs"], tmp_path / "s.zarr", max_length=48, window="pack",
        progress=False,
    )  # fmt: skip
    student = load_hf(f"hf:{lm['llama32']}")
    with pytest.raises(MismatchError, match=r"student 'student' reads at most 32 positions"):
        train_lm(student, store, lm["seqs"], LMConfig(epochs=1))
    long = lm["seqs"].window(48, "pack")
    with pytest.raises(MismatchError, match="max_position_embeddings in its config"):
        evaluate_lm(student, long)
    assert isinstance(student, CausalLM)
    store.close()


def test_generate_lm_combines_an_ensemble_with_weights(lm, tmp_path):
    other = tiny_gpt(lm["root"] / "gpt64b", lm["seqs"].vocab_size, seed=5)
    args = ["--teacher", f"hf:{other}", "--max-length", "16", "--combine", "geometric"]
    result = _generate_lm(lm, lm["gpt64"], tmp_path / "e.zarr", *args, "--weights", "1,3")
    assert result.exit_code == 0, result.output
    with open_store(tmp_path / "e.zarr") as store:
        assert store.meta.combine == "geometric" and store.meta.weights == (0.25, 0.75)
        rows = store.read(0, 5)
        expected = 0.25 * rows.member_logits[:, 0] + 0.75 * rows.member_logits[:, 1]
        torch.testing.assert_close(torch.from_numpy(rows.logits), torch.from_numpy(expected))


def test_quiet_silences_the_weight_loading_bars(lm, tmp_path, capfd):
    result = _generate_lm(lm, lm["gpt64"], tmp_path / "q.zarr", "--max-length", "16")
    assert result.exit_code == 0, result.output
    captured = capfd.readouterr()
    text = result.output + captured.err + captured.out + (result.stderr or "")
    assert "Loading weights" not in text and "%|" not in text

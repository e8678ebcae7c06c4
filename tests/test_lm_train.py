"""Stage two for language models: students (gpt, hf:DIR, module:function), saving them, and
the held-out metrics against the teacher."""

from __future__ import annotations

import json
import math
import shutil
from dataclasses import replace

import numpy as np
import pytest
import torch
from click.testing import CliRunner

pytest.importorskip("transformers")

from softlabels.errors import MismatchError, SoftLabelsError  # noqa: E402
from softlabels.lm.generate import generate_tokens  # noqa: E402
from softlabels.lm.models import load_hf, sequence_logits  # noqa: E402
from softlabels.lm.text import load_text  # noqa: E402
from softlabels.schema import SparseSpec  # noqa: E402
from tests.lm_helpers import tiny_gpt, train_tokenizer, write_corpus  # noqa: E402
from trainer.cli import main as distill  # noqa: E402
from trainer.lm.students import load_student  # noqa: E402
from trainer.lm.train import LMConfig, evaluate_lm, train_lm  # noqa: E402


@pytest.fixture(scope="module")
def lm(tmp_path_factory):
    root = tmp_path_factory.mktemp("lmtrain")
    tokenizer = train_tokenizer(root / "tokenizer.json")
    corpus = write_corpus(root / "corpus")
    train = load_text(str(corpus), str(tokenizer))
    test = load_text(str(corpus), str(tokenizer), split="test")
    teacher = tiny_gpt(root / "teacher", train.vocab_size)
    common = {"max_length": 16, "progress": False}
    stores = {
        "store": generate_tokens(
            [f"hf:{teacher}"], train, root / "train.zarr", sparse=SparseSpec(top_k=8), **common
        ),
        "dense": generate_tokens([f"hf:{teacher}"], test, root / "test.zarr", **common),
        "sparse": generate_tokens(
            [f"hf:{teacher}"],
            test,
            root / "test-sparse.zarr",
            sparse=SparseSpec(top_k=8, sample=4, value_step=None),
            **common,
        ),
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


def test_the_teacher_as_its_own_student_agrees_everywhere(lm):
    teacher, test = load_hf(f"hf:{lm['teacher']}"), lm["test"].window(16, "window")
    dense = evaluate_lm(teacher, test, teacher=lm["dense"])
    assert dense["teacher_agreement"] == 1.0 and abs(dense["teacher_kl"]) < 1e-5
    sparse = evaluate_lm(teacher, test, teacher=lm["sparse"])  # ids exact, tail shaped as q
    assert sparse["teacher_agreement"] == 1.0 and abs(sparse["teacher_kl"]) < 1e-4
    # the perplexity is the teacher's own, computed here by hand
    labels, nll, n = test.next_tokens(), 0.0, 0
    for s, logits in enumerate(
        sequence_logits(teacher, [test.sequence(i) for i in range(len(test))])
    ):
        y = labels[test.offsets[s] : test.offsets[s + 1]]
        log_p = torch.log_softmax(torch.from_numpy(logits).double(), -1).numpy()
        nll -= log_p[np.flatnonzero(y >= 0), y[y >= 0]].sum()
        n += int((y >= 0).sum())
    assert dense["eval_ppl"] == pytest.approx(math.exp(nll / n), rel=1e-5)
    other = load_hf(f"hf:{tiny_gpt(lm['root'] / 'other', lm['train'].vocab_size, seed=5)}")
    far = evaluate_lm(other, test, teacher=lm["dense"])
    assert far["teacher_kl"] > 0.01 and far["teacher_agreement"] < 1.0


def test_the_held_out_store_must_be_of_the_evaluated_sequences(lm):
    teacher = load_hf(f"hf:{lm['teacher']}")
    with pytest.raises(MismatchError):
        evaluate_lm(teacher, lm["train"].window(16, "window"), teacher=lm["dense"])


def test_kd_lowers_the_kl_to_the_teacher(lm):
    """A few epochs of sparse KD bring a student closer to the teacher than CE alone."""
    seqs, test = lm["train"].window(16, "window"), lm["test"].window(16, "window")
    results = {}
    for kd in (True, False):
        student = load_student("gpt", vocab_size=lm["train"].vocab_size, max_length=16, width=32)
        config = LMConfig(epochs=3, kd=kd, alpha=0.0 if kd else 1.0, temperature=1.0, lr=1e-2)
        history = train_lm(
            student, lm["store"], seqs, config, eval_seqs=test, eval_store=lm["dense"]
        )
        results[kd] = history[-1]
    assert results[True]["teacher_kl"] < results[False]["teacher_kl"]


def _train_cli(lm, out, *extra):
    args = ["train-lm", "--store", str(lm["store"].path), "--text", str(lm["corpus"])]
    args += ["--tokenizer", str(lm["tokenizer"]), "--out", str(out), *extra]
    return CliRunner().invoke(distill, args)


def test_an_hf_student_trains_saves_and_loads_back(lm, tmp_path):
    start = tiny_gpt(tmp_path / "student", lm["train"].vocab_size, seed=3)
    shutil.copy(lm["tokenizer"], start / "tokenizer.json")  # the same tokenizer: accepted
    result = _train_cli(
        lm, tmp_path / "run", "--student", f"hf:{start}", "--eval-store", str(lm["dense"].path)
    )
    assert result.exit_code == 0, result.output
    assert "agreement" in result.output
    saved = load_hf(f"hf:{tmp_path / 'run' / 'student'}")
    before = load_hf(f"hf:{start}")
    moved = [
        not torch.equal(a, b)
        for a, b in zip(saved.state_dict().values(), before.state_dict().values(), strict=True)
    ]
    assert any(moved)
    metrics = json.loads((tmp_path / "run" / "metrics.json").read_text())
    assert 0 <= metrics[-1]["teacher_agreement"] <= 1 and metrics[-1]["teacher_kl"] > 0


def test_a_student_with_another_tokenizer_is_refused(lm, tmp_path):
    start = tiny_gpt(tmp_path / "student", lm["train"].vocab_size)
    shutil.copy(train_tokenizer(tmp_path / "big.json", vocab_size=300), start / "tokenizer.json")
    result = _train_cli(lm, tmp_path / "run", "--student", f"hf:{start}")
    assert result.exit_code == 1 and "Traceback" not in result.output
    assert "sequences vs student: vocabulary size" in result.output


def test_a_module_function_student_is_saved_as_safetensors(lm, tmp_path):
    from safetensors.torch import load_file

    result = _train_cli(lm, tmp_path / "run", "--student", "tests.lm_helpers:bigram_student")
    assert result.exit_code == 0, result.output
    weights = load_file(str(tmp_path / "run" / "student.safetensors"))
    assert weights["table.weight"].shape == (lm["train"].vocab_size,) * 2
    assert not torch.equal(
        weights["table.weight"],
        load_student(
            "tests.lm_helpers:bigram_student", vocab_size=lm["train"].vocab_size, max_length=16
        ).table.weight,
    )


def test_student_specs_are_checked(lm):
    with pytest.raises(SoftLabelsError, match="none of 'gpt', 'hf:DIR' or 'module:function'"):
        load_student("nonsense", vocab_size=10, max_length=4)
    with pytest.raises(SoftLabelsError, match="must accept the keywords vocab_size="):
        load_student("tests.lm_helpers:write_corpus", vocab_size=10, max_length=4)
    with pytest.raises(SoftLabelsError, match="not an nn.Module"):
        load_student("tests.lm_helpers:not_a_module", vocab_size=10, max_length=4)
    # a head smaller than the tokenizer (a larger one is a padded head: test_lm_padded.py)
    wrong = load_student("gpt", vocab_size=lm["train"].vocab_size - 3, max_length=16)
    with pytest.raises(MismatchError, match="give the student the teachers' vocabulary size"):
        train_lm(wrong, lm["store"], lm["train"].window(16, "window"), LMConfig())


def test_distill_train_points_a_token_store_to_train_lm(lm):
    result = CliRunner().invoke(distill, ["train", "--store", str(lm["store"].path), "--out", "x"])
    assert result.exit_code == 1 and "Traceback" not in result.output
    assert "is a token store" in result.output and "distill train-lm" in result.output


def test_readme_language_model_loop_runs(tmp_path, monkeypatch):
    """The README's Python example, with the files it names made here and a tiny student."""
    import re
    from pathlib import Path

    text = (Path(__file__).parents[1] / "README.md").read_text()
    section = text[text.index("## Language models") :]
    code = re.search(r"```python\n(.*?)```", section, re.S).group(1)
    monkeypatch.chdir(tmp_path)
    train_tokenizer(tmp_path / "tokenizer.json")
    write_corpus(tmp_path / "corpus")
    vocab = load_text("corpus", "tokenizer.json").vocab_size
    tiny_gpt(tmp_path / "models" / "teacher", vocab)
    tiny_gpt(tmp_path / "models" / "student", vocab, seed=1)  # a plain AutoModelForCausalLM
    code = code.replace("max_length=256", "max_length=32")
    scope: dict = {}
    exec(compile(code, "README.md", "exec"), scope)
    assert torch.isfinite(scope["loss"]) and scope["loss"].grad_fn is not None
    assert isinstance(scope["batch"].target.ids, torch.Tensor)  # sparse targets, K per row
    before = load_hf(f"hf:{tmp_path / 'models' / 'student'}").state_dict()
    after = scope["student"].state_dict()
    assert any(not torch.equal(before[f"model.{k}"], v) for k, v in after.items())  # it trained


def test_targets_that_fit_are_read_once_per_run(lm, monkeypatch, tmp_path):
    """Within the memory budget every chunk is read and replayed once, whatever the epochs;
    over it, chunks stream and are read again each epoch."""
    reads: list[int] = []
    store = generate_tokens(
        [f"hf:{lm['teacher']}"],
        lm["train"],
        tmp_path / "s.zarr",
        max_length=16,
        chunk_rows=100,
        sparse=SparseSpec(top_k=8),
        progress=False,
    )
    assert store.meta.num_chunks > 10
    original = type(store).read_verified_chunk
    monkeypatch.setattr(
        type(store), "read_verified_chunk", lambda self, c: reads.append(c) or original(self, c)
    )
    seqs = lm["train"].window(16, "window")
    for budget, most in ((1 << 30, 1), (1, 4)):
        reads.clear()
        student = load_student("gpt", vocab_size=lm["train"].vocab_size, max_length=16, width=32)
        config = LMConfig(epochs=2, cache_bytes=budget, buffer_chunks=1)
        train_lm(student, store, seqs, config)
        assert set(reads) == set(range(store.meta.num_chunks))
        assert max(reads.count(c) for c in set(reads)) <= most
        if most > 1:
            assert len(reads) >= 2 * store.meta.num_chunks
    store.close()


# -- found in review


def test_train_lm_cuts_raw_sequences_as_the_store_did(lm):
    """The README's path: sequences straight from load_text, longer than the store's windows."""
    assert lm["train"].lengths().max() > 16  # the store cut them to 16
    student = load_student("gpt", vocab_size=lm["train"].vocab_size, max_length=16, width=32)
    history = train_lm(
        student, lm["store"], lm["train"], LMConfig(), eval_seqs=lm["test"], eval_store=lm["dense"]
    )
    assert np.isfinite(history[0]["eval_ppl"]) and "teacher_kl" in history[0]


def test_a_wrong_eval_store_is_refused_before_training(lm):
    student = load_student("gpt", vocab_size=lm["train"].vocab_size, max_length=16, width=32)
    calls = []
    student.register_forward_hook(lambda *a: calls.append(1))
    with pytest.raises(MismatchError, match="not the store's sequences|fingerprints differ"):
        train_lm(
            student,
            lm["store"],
            lm["train"],
            LMConfig(),
            eval_seqs=lm["test"],
            eval_store=lm["store"],
        )  # the train store given as the eval store
    assert len(calls) <= 1  # the vocabulary probe only: no training step ran


def test_an_estimator_the_store_cannot_use_is_refused_without_a_traceback(lm, tmp_path):
    result = _train_cli(lm, tmp_path / "r", "--estimator", "importance")  # a top-k-only store
    assert result.exit_code == 1 and "Traceback" not in result.output
    assert "keeps its top 8 ids only: use 'bucket'" in result.output


def test_a_corpus_without_a_test_split_names_the_way_out(lm, tmp_path):
    args = ["train-lm", "--store", str(lm["store"].path), "--text", str(lm["corpus"] / "train.txt")]
    args += ["--tokenizer", str(lm["tokenizer"]), "--out", str(tmp_path / "r")]
    result = CliRunner().invoke(distill, args)
    assert result.exit_code == 2 and "--eval-split none" in result.output
    result = CliRunner().invoke(distill, [*args, "--eval-split", "none"])
    assert result.exit_code == 0, result.output


def test_a_student_with_tied_weights_is_saved(lm, tmp_path):
    from safetensors.torch import load_model

    from tests.lm_helpers import tied_student

    spec = "tests.lm_helpers:tied_student"
    result = _train_cli(lm, tmp_path / "r", "--student", spec, "--eval-split", "none")
    assert result.exit_code == 0, result.output
    fresh = load_student(spec, vocab_size=lm["train"].vocab_size, max_length=16)
    load_model(fresh, str(tmp_path / "r" / "student.safetensors"))
    assert fresh.head.weight is fresh.embed.weight
    assert not torch.equal(
        fresh.embed.weight,
        tied_student(vocab_size=lm["train"].vocab_size, max_length=16).embed.weight,
    )


def test_prompts_longer_than_the_windows_train_or_say_why(lm, tmp_path):
    docs = tmp_path / "train.jsonl"
    long = " ".join(["the quick brown fox jumps over the lazy dog"] * 4)
    docs.write_text(
        "\n".join(json.dumps({"prompt": long, "text": f"answer {i}"}) for i in range(12))
    )
    seqs = load_text(str(docs), str(lm["tokenizer"]), prompt_field="prompt")
    store = generate_tokens(
        [f"hf:{lm['teacher']}"], seqs, tmp_path / "p.zarr", max_length=16, progress=False
    )
    cut = seqs.window(16, "window")
    assert (np.add.reduceat(cut.loss_mask, cut.offsets[:-1]) == 0).any()  # all-prompt windows
    student = load_student("gpt", vocab_size=lm["train"].vocab_size, max_length=16, width=32)
    history = train_lm(student, store, seqs, LMConfig(batch_size=1))
    assert np.isfinite(history[0]["train_loss"])
    empty = replace(seqs, loss_mask=np.zeros_like(seqs.loss_mask))  # nothing left to learn
    with pytest.raises(MismatchError, match="is not the one"):  # the store records its mask
        train_lm(student, store, empty, LMConfig())
    store.close()
    with generate_tokens(
        [f"hf:{lm['teacher']}"], empty, tmp_path / "q.zarr", max_length=16, progress=False
    ) as nothing:
        with pytest.raises(SoftLabelsError, match="no row takes a loss"):
            train_lm(student, nothing, empty, LMConfig())


def test_any_width_builds_a_student():
    for width in (8, 50, 100):
        model = load_student("gpt", vocab_size=30, max_length=8, width=width)
        assert model(torch.zeros((1, 3), dtype=torch.long)).shape == (1, 3, 30)


def test_a_student_with_a_shorter_context_than_the_store_is_refused(lm):
    short = load_student("gpt", vocab_size=lm["train"].vocab_size, max_length=8, width=32)
    with pytest.raises(MismatchError, match="cannot read sequences of 16 tokens"):
        train_lm(short, lm["store"], lm["train"], LMConfig())

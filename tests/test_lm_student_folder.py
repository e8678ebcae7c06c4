"""A trained student's folder carries the store's tokenizer, with the right special-token ids, so
``AutoTokenizer`` and ``AutoModelForCausalLM`` load it as a pair, and it serves as an ``hf:``
teacher that passes the tokenizer and BOS checks."""

from __future__ import annotations

import pytest
from click.testing import CliRunner

pytest.importorskip("transformers")

from softlabels.lm.generate import generate_tokens  # noqa: E402
from softlabels.lm.models import check_tokenizers, teacher_tokenizer  # noqa: E402
from softlabels.lm.text import load_text, load_tokenizer  # noqa: E402
from tests.lm_helpers import (  # noqa: E402
    CORPUS,
    llama_tokenizer,
    tiny_llama,
    train_tokenizer,
    transformers_tokenizer,
    write_corpus,
)
from trainer.cli import main as distill  # noqa: E402


@pytest.fixture(scope="module")
def lm(tmp_path_factory):
    root = tmp_path_factory.mktemp("student-folder")
    plain = train_tokenizer(root / "tokenizer.json")
    llama = llama_tokenizer(plain, root / "llama" / "tokenizer.json")
    return {
        "root": root,
        "corpus": write_corpus(root / "corpus"),
        # (tokenizer, the BOS it puts first, the BOS the student's config must name)
        "plain": (plain, None, 2),  # no BOS: GPT-2's convention, BOS = EOS
        "llama_file": (llama, 1, 1),
        "llama_folder": (transformers_tokenizer(llama, root / "llama-hf"), 1, 1),
        "vocab": load_tokenizer(str(plain)).vocab_size,
    }


@pytest.mark.parametrize("which", ["plain", "llama_file", "llama_folder"])
def test_the_student_folder_loads_with_its_tokenizer(lm, tmp_path, which):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tokenizer, bos, config_bos = lm[which]
    teacher = tiny_llama(tmp_path / "teacher", lm["vocab"], bos=bos)
    seqs = load_text(str(lm["corpus"]), str(tokenizer))
    store = tmp_path / "s.zarr"
    generate_tokens([f"hf:{teacher}"], seqs, store, max_length=16, progress=False).close()
    args = ["train-lm", "--store", str(store), "--text", str(lm["corpus"])]
    args += ["--tokenizer", str(tokenizer), "--width", "16", "--layers", "1"]
    result = CliRunner().invoke(distill, [*args, "--out", str(tmp_path / "run")])
    assert result.exit_code == 0, result.output
    folder = tmp_path / "run" / "student"

    tok = AutoTokenizer.from_pretrained(str(folder), local_files_only=True)
    reference = load_tokenizer(str(tokenizer))
    for doc in CORPUS[:8]:
        assert tok(doc)["input_ids"] == reference.encode(doc)
    assert (tok.bos_token_id, tok.eos_token_id, tok.pad_token_id) == (bos, 2, 0)
    model = AutoModelForCausalLM.from_pretrained(str(folder), local_files_only=True)
    config = model.config
    assert (config.bos_token_id, config.eos_token_id, config.pad_token_id) == (config_bos, 2, 0)
    assert model.get_output_embeddings().weight.shape[0] == lm["vocab"]

    # as an hf: teacher: its tokenizer is the sequences', and its BOS (if any) starts them
    assert teacher_tokenizer(f"hf:{folder}").difference(seqs.vocabulary) is None
    check_tokenizers({"student": teacher_tokenizer(f"hf:{folder}")}, seqs)
    again = load_text(str(lm["corpus"]), str(folder))
    assert again.fingerprint() == seqs.fingerprint()
    out = tmp_path / "again.zarr"
    generate_tokens([f"hf:{folder}"], again, out, max_length=16, progress=False).close()

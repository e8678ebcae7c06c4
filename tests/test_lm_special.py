"""Special tokens: documents are encoded with the special tokens their tokenizer adds (a
Llama-style BOS first), the store records the choice, a teacher whose BOS is missing is refused
by name, windows stay aligned, and a tokenizer file loads as the same file inside a folder."""

from __future__ import annotations

import shutil

import numpy as np
import pytest
from click.testing import CliRunner

pytest.importorskip("transformers")

from softlabels import schema  # noqa: E402
from softlabels.cli import main as softlabels_cli  # noqa: E402
from softlabels.errors import MismatchError  # noqa: E402
from softlabels.lm.generate import generate_tokens  # noqa: E402
from softlabels.lm.text import load_text, load_tokenizer  # noqa: E402
from softlabels.schema import TokenSpec  # noqa: E402
from softlabels.store import open_store  # noqa: E402
from tests.lm_helpers import (  # noqa: E402
    CORPUS,
    llama_tokenizer,
    tiny_gpt,
    tiny_llama,
    train_tokenizer,
    transformers_tokenizer,
    write_corpus,
)

BOS, EOS = 1, 2  # CORPUS's tokenizer: <unk> (id 1) stands in for <s>; <eos> is 2


@pytest.fixture(scope="module")
def lm(tmp_path_factory):
    root = tmp_path_factory.mktemp("special")
    plain = train_tokenizer(root / "tokenizer.json")
    llama = llama_tokenizer(plain, root / "llama" / "tokenizer.json")
    return {
        "root": root,
        "corpus": write_corpus(root / "corpus"),
        "plain": plain,
        "llama_file": llama,
        "llama_folder": transformers_tokenizer(llama, root / "llama-hf"),
        "llama": tiny_llama(root / "llama-model", load_tokenizer(str(plain)).vocab_size, bos=BOS),
    }


@pytest.mark.parametrize("which", ["llama_file", "llama_folder"])
def test_documents_start_with_the_bos_the_tokenizer_adds(lm, which):
    """A transformers folder used to encode without its special tokens: no <s>."""
    seqs = load_text(str(lm["corpus"]), str(lm[which]))
    bare = load_tokenizer(str(lm["plain"])).encode(CORPUS[0], False)
    assert seqs.sequence(0).tolist() == [BOS, *bare, EOS]
    assert (seqs.ids[seqs.offsets[:-1]] == BOS).all() and len(seqs) == len(CORPUS) - 8
    assert seqs.add_special_tokens is True and seqs.bos_id == BOS and seqs.eos_id == EOS
    off = load_text(str(lm["corpus"]), str(lm[which]), add_special_tokens=False)
    assert off.sequence(0).tolist() == [*bare, EOS] and off.bos_id is None
    assert off.num_tokens == seqs.num_tokens - len(seqs)


def test_a_prompt_takes_the_bos_and_its_answer_does_not(lm, tmp_path):
    path = tmp_path / "qa.jsonl"
    path.write_text('{"q": "the quick brown fox", "a": "a stitch in time"}\n')
    seqs = load_text(str(path), str(lm["llama_folder"]), prompt_field="q", text_field="a")
    tok = load_tokenizer(str(lm["plain"]))
    q, a = tok.encode("the quick brown fox", False), tok.encode("a stitch in time", False)
    assert seqs.sequence(0).tolist() == [BOS, *q, *a, EOS]
    # rows 0..len(q) predict a prompt token (BOS counts as one); the rest take a loss
    assert seqs.loss_mask.tolist() == [False] * len(q) + [True] * (len(a) + 2)


def test_the_store_records_the_special_tokens(lm, tmp_path):
    seqs = load_text(str(lm["corpus"]), str(lm["llama_folder"]))
    out = tmp_path / "s.zarr"
    generate_tokens([f"hf:{lm['llama']}"], seqs, out, max_length=32, progress=False)
    with open_store(out) as store:
        spec = store.meta.tokens
        assert (spec.add_special_tokens, spec.bos_id, spec.eos_id) == (True, BOS, EOS)
        stored = store.load().arrays[schema.INPUT_IDS]
        np.testing.assert_array_equal(stored, seqs.ids)
        assert (stored[seqs.offsets[:-1]] == BOS).all()
    import zarr

    attrs = zarr.open_group(str(out), mode="r").attrs["tokens"]
    assert attrs["add_special_tokens"] is True and attrs["bos_id"] == BOS


def test_a_store_without_the_new_keys_still_reads():
    """Stores written before add_special_tokens/bos_id/eos_id: unknown (None), written back
    byte for byte as they were."""
    old = {
        "tokenizer": None,
        "tokenizer_vocab_size": None,
        "max_length": 8,
        "window": "window",
        "special_tokens": {},
        "pad_id": 0,
        "shift": "row t predicts the token at t + 1",
    }
    spec = TokenSpec.from_attr(old)
    assert (spec.add_special_tokens, spec.bos_id, spec.eos_id) == (None, None, None)
    assert spec.to_attr() == old
    with pytest.raises(ValueError, match="add_special_tokens must be true, false or absent"):
        TokenSpec.from_attr({**old, "add_special_tokens": "yes"})


def test_a_teacher_whose_bos_is_missing_is_refused_by_name(lm, tmp_path):
    seqs = load_text(str(lm["corpus"]), str(lm["llama_folder"]), add_special_tokens=False)
    out = tmp_path / "s.zarr"
    with pytest.raises(MismatchError, match=r"BOS '<unk>' \(id 1\).*40 of 40 documents"):
        generate_tokens([f"hf:{lm['llama']}"], seqs, out, max_length=32, progress=False)
    assert not out.exists()
    args = ["generate-lm", "--teacher", f"hf:{lm['llama']}", "--text", str(lm["corpus"])]
    args += ["--tokenizer", str(lm["llama_folder"]), "--max-length", "32", "--quiet"]
    result = CliRunner().invoke(softlabels_cli, [*args, "--out", str(out), "--no-special-tokens"])
    assert result.exit_code == 1 and "Traceback" not in result.output
    assert "'<unk>' (id 1)" in result.output and not out.exists()
    assert CliRunner().invoke(softlabels_cli, [*args, "--out", str(out)]).exit_code == 0


def test_a_gpt2_style_bos_that_is_its_eos_is_not_asked_for(lm, tmp_path):
    """GPT-2 names <|endoftext|> as both; its tokenizer never puts it first."""
    gpt = tiny_gpt(
        tmp_path / "gpt", load_tokenizer(str(lm["plain"])).vocab_size
    )  # bos_token_id = eos_token_id = 2
    seqs = load_text(str(lm["corpus"]), str(lm["plain"]))
    generate_tokens([f"hf:{gpt}"], seqs, tmp_path / "s.zarr", max_length=32, progress=False)


@pytest.mark.parametrize("mode", ["window", "pack", "truncate"])
def test_windows_keep_the_bos_where_the_document_starts(lm, tmp_path, mode):
    """No BOS is inserted: a document's first window starts with it, later windows continue
    the text (as in the teacher's own training), and every row's label is the next token of
    the encoded text."""
    seqs = load_text(str(lm["corpus"]), str(lm["llama_folder"]))
    cut = seqs.window(5, mode)
    doc_starts = set(seqs.offsets[:-1].tolist())
    if mode == "truncate":
        assert (cut.ids[cut.offsets[:-1]] == BOS).all() and (cut.lengths() <= 5).all()
        return
    np.testing.assert_array_equal(cut.ids, seqs.ids)  # windows are cuts, nothing added
    for a in cut.offsets[:-1].tolist():
        assert (cut.ids[a] == BOS) == (a in doc_starts)
    labels = cut.next_tokens()
    inside = labels >= 0
    np.testing.assert_array_equal(labels[inside], seqs.ids[1:][inside[:-1]])
    out = tmp_path / "s.zarr"
    generate_tokens(
        [f"hf:{lm['llama']}"], seqs, out, max_length=5, window=mode, progress=False
    )  # the BOS check is on documents, so windows pass
    with open_store(out) as store:
        assert store.meta.num_samples == seqs.num_tokens
        np.testing.assert_array_equal(store.load().arrays[schema.INPUT_IDS], seqs.ids)


def test_a_tokenizer_file_and_the_same_file_in_a_folder_load_identically(lm, tmp_path):
    """Issue 23 §13: in a folder, the end-of-sequence token used to go unfound."""
    folder = tmp_path / "tok"
    folder.mkdir()
    shutil.copy(lm["plain"], folder / "tokenizer.json")
    a = load_text(str(lm["corpus"]), str(lm["plain"]))
    b = load_text(str(lm["corpus"]), str(folder))
    np.testing.assert_array_equal(a.ids, b.ids)
    np.testing.assert_array_equal(a.offsets, b.offsets)
    assert a.tokenizer == b.tokenizer and a.eos_id == b.eos_id == EOS
    assert a.fingerprint() == b.fingerprint() and a.vocabulary == b.vocabulary


def test_a_folder_whose_config_names_no_eos_finds_it_among_its_special_tokens(lm, tmp_path):
    from transformers import PreTrainedTokenizerFast

    tok = PreTrainedTokenizerFast(tokenizer_file=str(lm["plain"]))  # no special tokens named
    tok.save_pretrained(str(tmp_path / "tok"))
    info = load_tokenizer(str(tmp_path / "tok"))
    assert info.eos_id == EOS and info.pad_id == 0
    a = load_text(str(lm["corpus"]), str(lm["plain"]))
    b = load_text(str(lm["corpus"]), info)
    np.testing.assert_array_equal(a.ids, b.ids)

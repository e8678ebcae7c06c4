"""Token-sequence transfer sets: tokenising text, pre-tokenised files, windows, fingerprints."""

from __future__ import annotations

import json

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from softlabels.errors import SpecError
from softlabels.text import TokenSequences, load_text, load_tokenizer, load_tokens
from tests.lm_helpers import CORPUS, train_tokenizer, transformers_tokenizer, write_corpus


@pytest.fixture(scope="module")
def lm_files(tmp_path_factory):
    root = tmp_path_factory.mktemp("lm")
    tokenizer = train_tokenizer(root / "tokenizer.json")
    return {
        "corpus": write_corpus(root / "corpus"),
        "tokenizer": tokenizer,
        "hf_tokenizer": transformers_tokenizer(tokenizer, root / "hf-tokenizer"),
    }


def test_text_is_tokenised_document_by_document(lm_files):
    seqs = load_text(str(lm_files["corpus"]), str(lm_files["tokenizer"]))
    tok = load_tokenizer(str(lm_files["tokenizer"]))
    assert len(seqs) == len(CORPUS) - 8 and seqs.split == "train"
    first = tok.encode(CORPUS[0]) + [tok.eos_id]
    assert seqs.sequence(0).tolist() == first and tok.eos_id == tok.special_tokens["<eos>"]
    assert seqs.vocab_size == tok.vocab_size and seqs.tokenizer == tok.fingerprint
    test = load_text(str(lm_files["corpus"]), tok, split="test")
    assert len(test) == 8 and test.fingerprint() != seqs.fingerprint()


def test_the_transformers_directory_tokenises_the_same(lm_files):
    a = load_text(str(lm_files["corpus"]), str(lm_files["tokenizer"]))
    b = load_text(str(lm_files["corpus"]), str(lm_files["hf_tokenizer"]))
    np.testing.assert_array_equal(a.ids, b.ids)
    np.testing.assert_array_equal(a.offsets, b.offsets)
    assert b.tokenizer.startswith("sha256:") and b.vocab_size == a.vocab_size


def test_jsonl_documents_and_their_errors(lm_files, tmp_path):
    path = tmp_path / "docs.jsonl"
    path.write_text("\n".join(json.dumps({"body": d}) for d in CORPUS[:3]) + "\n")
    seqs = load_text(str(path), str(lm_files["tokenizer"]), text_field="body")
    assert len(seqs) == 3
    with pytest.raises(SpecError, match="line 1 has no string field 'text'"):
        load_text(str(path), str(lm_files["tokenizer"]))
    with pytest.raises(SpecError, match="one file, the 'train' split"):
        load_text(str(path), str(lm_files["tokenizer"]), text_field="body", split="test")


def test_next_tokens_follow_the_shift_convention():
    seqs = TokenSequences("t", "train", np.array([5, 6, 7, 8, 9]), np.array([0, 3, 5]))
    assert seqs.next_tokens().tolist() == [6, 7, -1, 9, -1]


@given(st.lists(st.integers(2, 30), min_size=1, max_size=12), st.integers(2, 9))
@settings(max_examples=50, deadline=None)
def test_windows_keep_or_cut_tokens_as_documented(lengths, max_length):
    offsets = np.concatenate([[0], np.cumsum(lengths)])
    seqs = TokenSequences("t", "train", np.arange(offsets[-1]), offsets)
    window = seqs.window(max_length, "window")
    assert window.num_tokens == seqs.num_tokens and window.lengths().max() <= max_length
    np.testing.assert_array_equal(window.ids, seqs.ids)
    assert set(seqs.offsets.tolist()) <= set(window.offsets.tolist())  # no window spans two docs
    trunc = seqs.window(max_length, "truncate")
    assert len(trunc) == len(seqs)
    assert trunc.lengths().tolist() == [min(n, max_length) for n in lengths]
    packed = seqs.window(max_length, "pack")
    assert (packed.lengths()[:-1] == max_length).all()
    np.testing.assert_array_equal(packed.starts, seqs.offsets[:-1])


def test_pre_tokenised_files(tmp_path):
    path = tmp_path / "tokens.npz"
    np.savez(
        path,
        input_ids_train=np.arange(10),
        offsets_train=np.array([0, 4, 10]),
        input_ids_test=np.arange(3),
        offsets_test=np.array([0, 3]),
    )
    assert len(load_tokens(str(path))) == 2 and load_tokens(str(path), split="test").num_tokens == 3
    bad = tmp_path / "bad.npz"
    np.savez(bad, input_ids=np.arange(10), offsets=np.array([0, 4, 9]))
    with pytest.raises(SpecError, match="offsets must rise strictly from 0 to len"):
        load_tokens(str(bad))
    with pytest.raises(SpecError, match="max_length must be at least 2"):
        load_tokens(str(path)).window(1)

"""Token-sequence transfer sets: tokenising text, pre-tokenised files, windows, fingerprints."""

from __future__ import annotations

import json

import h5py
import numpy as np
import pytest
import zarr
from hypothesis import given, settings
from hypothesis import strategies as st

from softlabels.errors import SpecError
from softlabels.lm.text import TokenSequences, Vocabulary, load_text, load_tokenizer, load_tokens
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


def _save_tokens(path, arrays):
    """``arrays`` (name -> array) at the top level of an .npz, .zarr or .h5 file."""
    if path.suffix == ".npz":
        np.savez(path, **arrays)
    elif path.suffix == ".zarr":
        group = zarr.open_group(str(path), mode="w")
        for name, array in arrays.items():
            group.create_array(name, data=array)
    else:
        with h5py.File(path, "w") as f:
            for name, array in arrays.items():
                f.create_dataset(name, data=array)
    return str(path)


SPLIT_ARRAYS = {
    "input_ids_train": np.array([5, 6, 7, 8, 9, 10, 11], dtype=np.int32),
    "offsets_train": np.array([0, 3, 7], dtype=np.int64),
    "input_ids_test": np.array([1, 2, 3], dtype=np.uint16),
    "offsets_test": np.array([0, 2, 3], dtype=np.int32),
}


@pytest.mark.parametrize("suffix", [".zarr", ".h5"])
def test_zarr_and_hdf5_tokens_load_as_the_npz_does(tmp_path, suffix):
    npz = _save_tokens(tmp_path / "tokens.npz", SPLIT_ARRAYS)
    other = _save_tokens(tmp_path / f"tokens{suffix}", SPLIT_ARRAYS)
    for split in ("train", "test"):
        a, b = load_tokens(npz, split=split), load_tokens(other, split=split)
        assert b.ids.dtype == np.int64 and b.offsets.dtype == np.int64
        np.testing.assert_array_equal(b.ids, a.ids)
        np.testing.assert_array_equal(b.offsets, a.offsets)
        assert b.fingerprint() == a.fingerprint() and b.split == split
    assert load_tokens(other, split="test").ids.tolist() == [1, 2, 3]
    assert load_tokens(other).offsets.tolist() == [0, 3, 7]
    plain = _save_tokens(
        tmp_path / f"plain{suffix}", {"input_ids": np.arange(4), "offsets": np.array([0, 4])}
    )
    assert load_tokens(plain).ids.tolist() == [0, 1, 2, 3]
    with pytest.raises(SpecError, match="no input_ids/offsets for split 'test'"):
        load_tokens(plain, split="test")  # the plain names are the train split only


@pytest.mark.parametrize("suffix", [".npz", ".zarr", ".h5"])
@pytest.mark.parametrize(
    ("arrays", "message"),
    [
        (
            {"input_ids": np.arange(4)},
            r"no input_ids/offsets for split 'train' \(found: \['input_ids'\]",
        ),
        (
            {"input_ids": np.arange(4.0), "offsets": np.array([0, 4])},
            "input_ids must be an integer array, got float64",
        ),
        (
            {"input_ids": np.arange(4), "offsets": np.array([0.0, 4.0])},
            "offsets must be an integer array, got float64",
        ),
        (
            {"input_ids": np.array([3, -1, 2]), "offsets": np.array([0, 3])},
            "token ids must be >= 0",
        ),
        ({"input_ids": np.arange(4), "offsets": np.array([0, 2, 5])}, "offsets must rise strictly"),
        ({"input_ids": np.arange(6).reshape(2, 3), "offsets": np.array([0, 6])}, "must be 1-D"),
    ],
)
def test_bad_pre_tokenised_files_are_refused(tmp_path, suffix, arrays, message):
    with pytest.raises(SpecError, match=message):
        load_tokens(_save_tokens(tmp_path / f"bad{suffix}", arrays))


def test_pre_tokenised_files_that_are_not_token_files(tmp_path):
    with pytest.raises(SpecError, match="must end in one of .npz, .zarr, .h5, .hdf5"):
        load_tokens(str(tmp_path / "tokens.parquet"))
    with pytest.raises(SpecError, match="does not exist"):
        load_tokens(str(tmp_path / "missing.zarr"))
    (tmp_path / "empty.zarr").mkdir()
    with pytest.raises(SpecError, match="is not a Zarr group"):
        load_tokens(str(tmp_path / "empty.zarr"))
    (tmp_path / "text.h5").write_text("not hdf5")
    with pytest.raises(SpecError, match="is not an HDF5 file"):
        load_tokens(str(tmp_path / "text.h5"))


def test_vocabularies_name_their_first_difference():
    a = Vocabulary("sha256:a", {"a": 0, "b": 1, "<eos>": 2}, {"<eos>": 2})
    same = Vocabulary("sha256:other-serialisation", dict(a.tokens), {"<eos>": 2})
    assert a.difference(same) is None and a.difference(a) is None
    b = Vocabulary("sha256:b", {"a": 0, "c": 1, "<eos>": 2, "<pad>": 3}, {"<eos>": 2, "<pad>": 3})
    assert a.difference(b) == (
        "vocabulary size 3 vs 4; first differing id 1: 'b' vs 'c'; special token '<pad>': None vs 3"
    )
    unknown = Vocabulary("sha256:u", {}, {"<eos>": 2})  # known only by its fingerprint
    assert unknown.difference(a) == "fingerprint sha256:u vs sha256:a"


def test_tokenizers_carry_their_vocabulary(lm_files):
    a = load_tokenizer(str(lm_files["tokenizer"]))
    b = load_tokenizer(str(lm_files["hf_tokenizer"]))
    assert len(a.tokens) == a.vocab_size and a.tokens["<eos>"] == 2 and a.tokens["<pad>"] == 0
    assert a.fingerprint != b.fingerprint  # transformers serialises it again, differently
    assert a.tokens == b.tokens and a.vocabulary.difference(b.vocabulary) is None
    seqs = load_text(str(lm_files["corpus"]), str(lm_files["tokenizer"]))
    assert seqs.vocabulary == a.vocabulary


def test_a_tokenizer_without_an_end_token_is_named(tmp_path):
    """add_eos cannot add what the tokenizer does not have: say so instead of joining silently."""
    from tokenizers import Tokenizer, models, pre_tokenizers, trainers

    tok = Tokenizer(models.BPE(unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel()
    tok.train_from_iterator(["some words here"] * 5, trainers.BpeTrainer(special_tokens=["<unk>"]))
    tok.save(str(tmp_path / "t.json"))
    (tmp_path / "d.txt").write_text("some words here\nwords here some\n")
    with pytest.warns(UserWarning, match="names no end-of-sequence token"):
        seqs = load_text(str(tmp_path / "d.txt"), str(tmp_path / "t.json"))
    assert len(seqs) == 2

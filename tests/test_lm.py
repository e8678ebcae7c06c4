"""Causal LM teachers: hf:DIR loads local safetensors weights; padded batches keep the logits."""

from __future__ import annotations

import shutil
from dataclasses import replace

import numpy as np
import pytest
from tokenizers import Tokenizer

from softlabels.errors import MismatchError, TeacherError
from softlabels.lm.generate import head_size
from softlabels.lm.models import sequence_logits, teacher_tokenizer
from softlabels.lm.text import load_text, load_tokenizer
from softlabels.teachers import load_teacher
from tests.lm_helpers import tiny_gpt, train_tokenizer, transformers_tokenizer, write_corpus


@pytest.fixture(scope="module")
def gpt(tmp_path_factory):
    return tiny_gpt(tmp_path_factory.mktemp("gpt") / "model")


def test_hf_teacher_loads_with_its_provenance(gpt):
    teacher = load_teacher(f"hf:{gpt}")
    assert teacher.info.spec == f"hf:{gpt}" and len(teacher.info.sha256) == 64
    assert teacher.module.vocab_size == 200 and not teacher.module.training
    again = load_teacher(f"hf:{gpt}")
    assert again.info.sha256 == teacher.info.sha256


def test_padding_does_not_change_a_sequence_s_logits(gpt):
    module = load_teacher(f"hf:{gpt}").module
    rng = np.random.default_rng(0)
    seqs = [rng.integers(3, 200, n) for n in (5, 17, 9)]
    batched = sequence_logits(module, seqs)
    for s, logits in zip(seqs, batched, strict=True):
        (alone,) = sequence_logits(module, [s])
        assert logits.shape == (len(s), 200)
        np.testing.assert_allclose(logits, alone, atol=1e-5)


def test_hf_teacher_refusals(tmp_path):
    pickled = tiny_gpt(tmp_path / "pickled")
    for weights in pickled.glob("*.safetensors"):  # as a pickled checkpoint would ship
        weights.rename(pickled / "pytorch_model.bin")
    with pytest.raises(TeacherError, match="no .safetensors weights; models are never unpickled"):
        load_teacher(f"hf:{pickled}")


def test_hf_teacher_must_be_a_model_directory(tmp_path):
    with pytest.raises(TeacherError, match="is not a transformers model directory"):
        load_teacher(f"hf:{tmp_path}")


@pytest.fixture(scope="module")
def tokenized(tmp_path_factory):
    """Teachers of one head size: two carrying the same tokenizer (its tokenizer.json, and a
    transformers folder, which serialises it differently), one a larger tokenizer, one none."""
    root = tmp_path_factory.mktemp("tokenized")
    small = train_tokenizer(root / "small.json")
    large = train_tokenizer(root / "large.json", vocab_size=300)
    vocab = load_tokenizer(str(small)).vocab_size
    teachers = {name: tiny_gpt(root / name, vocab) for name in ("json", "hf", "large", "bare")}
    shutil.copy(small, teachers["json"] / "tokenizer.json")
    transformers_tokenizer(small, teachers["hf"])
    shutil.copy(large, teachers["large"] / "tokenizer.json")
    corpus = write_corpus(root / "corpus")
    return {
        "teachers": {name: load_teacher(f"hf:{folder}") for name, folder in teachers.items()},
        "small": load_text(str(corpus), str(small)),
        "large": load_text(str(corpus), str(large)),
        "large_tokenizer": Tokenizer.from_file(str(large)),
        "vocab": vocab,
    }


def test_teachers_sharing_a_tokenizer_pass(tokenized):
    t = tokenized["teachers"]
    assert teacher_tokenizer(t["bare"].info.spec) is None
    assert teacher_tokenizer(t["hf"].info.spec) is not None
    members = [t["json"], t["hf"], t["bare"]]  # a teacher without a tokenizer: head size only
    assert head_size(members, tokenized["small"]) == tokenized["vocab"]
    no_tokenizer = replace(tokenized["small"], tokenizer=None, vocabulary=None)  # an .npz's
    assert head_size([t["hf"], t["bare"]], no_tokenizer) == tokenized["vocab"]


def test_teachers_with_different_tokenizers_are_refused(tokenized):
    t = tokenized["teachers"]
    extra = tokenized["large_tokenizer"].id_to_token(tokenized["vocab"])
    with pytest.raises(MismatchError) as err:
        head_size([t["bare"], t["json"], t["large"]], tokenized["small"])
    assert str(err.value) == (
        f"the teachers must share one tokenizer, but theirs differ ({t['json'].info.name} vs "
        f"{t['large'].info.name}: vocabulary size {tokenized['vocab']} vs 300; first differing "
        f"id {tokenized['vocab']}: None vs {extra!r})"
    )


def test_sequences_from_another_tokenizer_than_the_teachers_are_refused(tokenized):
    t = tokenized["teachers"]
    with pytest.raises(MismatchError, match="made with another tokenizer than hf:") as err:
        head_size([t["hf"]], tokenized["large"])
    assert f"(sequences vs teacher: vocabulary size 300 vs {tokenized['vocab']};" in str(err.value)
    by_fingerprint = replace(tokenized["large"], vocabulary=None)  # a fingerprint only
    with pytest.raises(MismatchError, match="sequences vs teacher: fingerprint sha256:"):
        head_size([t["json"]], by_fingerprint)


def test_a_teacher_with_a_broken_tokenizer_is_refused(tmp_path):
    folder = tiny_gpt(tmp_path / "model")
    (folder / "tokenizer.json").write_text('{"not": "a tokenizer"}')
    with pytest.raises(TeacherError, match="its tokenizer .* could not be loaded"):
        teacher_tokenizer(f"hf:{folder}")

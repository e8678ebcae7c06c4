"""Causal LM teachers: hf:DIR loads local safetensors weights; padded batches keep the logits."""

from __future__ import annotations

import numpy as np
import pytest

from softlabels.errors import TeacherError
from softlabels.lm import sequence_logits
from softlabels.teachers import load_teacher
from tests.lm_helpers import tiny_gpt


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

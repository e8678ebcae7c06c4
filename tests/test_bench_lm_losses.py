"""bench.lm_losses's corpus: WordNet glosses shipped with timm, split 9:1, nothing downloaded."""

from __future__ import annotations

import pytest

pytest.importorskip("timm")

from bench.lm_losses import ARMS, write_glosses  # noqa: E402


def test_the_glosses_corpus_is_split_nine_to_one(tmp_path):
    corpus = write_glosses(tmp_path / "corpus")
    train = (corpus / "train.txt").read_text().splitlines()
    test = (corpus / "test.txt").read_text().splitlines()
    assert (len(train), len(test)) == (19659, 2185)  # 21,844 synsets, every 10th for test
    assert test[0] == (
        "organism, being: a living thing that has (or can develop) the ability to act or "
        "function independently"
    )
    assert set(ARMS) == {"ce", "forward_kl", "reverse_kl", "jsd"}

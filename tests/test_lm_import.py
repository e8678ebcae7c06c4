"""softlabels import: a top-k capture in DistillKit's compressed Parquet layout (written here
with pyarrow from a local teacher's own softmax) or as plain arrays becomes a token store whose
targets at T = 1 are the teacher's, and that refuses replays at another temperature."""

from __future__ import annotations

import math
import struct

import numpy as np
import pytest
import torch

pytest.importorskip("transformers")
pa = pytest.importorskip("pyarrow")
pq = pytest.importorskip("pyarrow.parquet")
yaml = pytest.importorskip("yaml")

from click.testing import CliRunner  # noqa: E402

from softlabels.cli import main as softlabels_cli  # noqa: E402
from softlabels.errors import MismatchError, SpecError  # noqa: E402
from softlabels.lm.capture import read_capture  # noqa: E402
from softlabels.lm.dataset import TokenTargetDataset  # noqa: E402
from softlabels.lm.importer import import_capture  # noqa: E402
from softlabels.lm.models import load_hf  # noqa: E402
from softlabels.lm.text import load_text, load_tokens  # noqa: E402
from softlabels.verify import verify_store  # noqa: E402
from tests.lm_helpers import CORPUS, tiny_gpt, train_tokenizer  # noqa: E402
from trainer.cli import main as distill  # noqa: E402

K = 8


@pytest.fixture(scope="module")
def teacher(tmp_path_factory):
    """A local GPT-2, five token sequences, and its float64 log-softmax over each."""
    root = tmp_path_factory.mktemp("capture")
    tokenizer = train_tokenizer(root / "tokenizer.json")
    docs = root / "docs.txt"
    docs.write_text("\n".join(CORPUS[:5]) + "\n")
    seqs = load_text(str(docs), str(tokenizer))
    model = load_hf(f"hf:{tiny_gpt(root / 'teacher', seqs.vocab_size)}")
    with torch.no_grad():
        log_p = [
            torch.log_softmax(model(torch.from_numpy(seqs.sequence(s))[None])[0].double(), -1)
            for s in range(len(seqs))
        ]
    return {"root": root, "tokenizer": tokenizer, "seqs": seqs, "log_p": log_p}


def _pack_msb(ids: list[int], bits: int) -> bytes:
    """``ids`` in ``bits`` bits each, most significant bit first, padded to whole bytes."""
    acc, total = 0, len(ids) * bits
    for i in ids:
        acc = (acc << bits) | i
    pad = -total % 8
    return (acc << pad).to_bytes((total + pad) // 8, "big")


def write_distillkit(folder, teacher, *, vocab: int, files: int = 2) -> None:
    """The capture DistillKit's vLLM sampler writes: per sequence, its input_ids and, per
    position after the first token, the top K ids (by decreasing log-probability) and their
    log-probabilities, delta-coded float32 (exact_k = k)."""
    folder.mkdir()
    config = {
        "d": vocab,
        "k": K,
        "exact_k": K,
        "exact_dtype": "float32",
        "polynomial_terms": None,
        "term_dtype": "float32",
        "residual_bins": [],
        "delta_encoding": True,
        "error_diffusion": False,
        "normalize_t": False,
    }
    (folder / "compression_config.yaml").write_text(yaml.safe_dump(config))
    bits = math.ceil(math.log2(vocab))
    records = []
    for s, log_p in enumerate(teacher["log_p"]):
        ids = teacher["seqs"].sequence(s)
        values, indices = [], []
        for position in range(len(ids) - 1):  # vLLM: no distribution before the first token
            top = torch.topk(log_p[position], K)  # the distribution of token position + 1
            v = top.values.float().tolist()
            deltas = np.diff(np.asarray(v, dtype=np.float32), prepend=np.float32(0))
            values.append(list(struct.pack(f"<{K}f", *deltas)))
            indices.append(list(_pack_msb(top.indices.tolist(), bits)))
        records.append((ids.tolist(), values, indices))
    schema = pa.schema(
        [
            pa.field("input_ids", pa.list_(pa.uint64())),
            pa.field("compressed_logprobs", pa.list_(pa.list_(pa.uint8()))),
            pa.field("bytepacked_indices", pa.list_(pa.list_(pa.uint8()))),
        ]
    )
    for f in range(files):
        part = records[f::files]
        table = pa.table([list(c) for c in zip(*part, strict=True)], schema=schema)
        pq.write_table(table, folder / f"part_{f:05d}.parquet")


def _check_against_teacher(store, seqs, teacher, *, trimmed: bool) -> None:
    """Every row's targets at T = 1: the teacher's log-probabilities on the top K ids and the
    log of the mass of all other ids, from its own float64 log-softmax."""
    data = TokenTargetDataset(store, seqs, temperature=1.0)
    # the files are read in name order, so sequences are matched to the teacher's by their ids
    originals = {tuple(teacher["seqs"].sequence(s)): s for s in range(len(teacher["seqs"]))}
    for s in range(len(data)):
        ids, _, target, _ = data[s]
        key = next(k for k in originals if k[: len(ids)] == tuple(ids.tolist()))
        log_p = teacher["log_p"][originals[key]][: len(ids)]  # (L, V) float64
        if trimmed:
            assert len(ids) == len(key) - 1
        expect = torch.gather(log_p, 1, target.ids)
        torch.testing.assert_close(target.log_probs.double(), expect, rtol=0, atol=2e-5)
        outside = log_p.clone().scatter_(1, target.ids, -math.inf)
        tail = torch.logsumexp(outside, 1)
        torch.testing.assert_close(target.log_tail.double(), tail, rtol=1e-4, atol=1e-4)


def test_a_distillkit_capture_imports_with_the_teacher_s_targets(teacher, tmp_path):
    vocab = teacher["seqs"].vocab_size
    write_distillkit(tmp_path / "capture", teacher, vocab=vocab)
    capture = read_capture(str(tmp_path / "capture"))
    assert capture.vocab_size == vocab and len(capture.sha256) == 64
    store = import_capture(
        capture, tmp_path / "imported.zarr", tokenizer=str(teacher["tokenizer"]), progress=False
    )
    with store:
        assert verify_store(str(tmp_path / "imported.zarr")).ok
        meta = store.meta
        assert meta.sparse.replay_temperatures == (1.0,) and meta.sparse.tail_temperatures == (1,)
        assert meta.tokens.tokenizer == teacher["seqs"].tokenizer
        assert meta.transfer.fingerprint == capture.sequences.fingerprint()
        _check_against_teacher(store, capture.sequences, teacher, trimmed=True)
        with pytest.raises(MismatchError, match="known at T = 1 only"):
            TokenTargetDataset(store, capture.sequences, temperature=2.0)
        with pytest.raises(MismatchError, match="known at T = 1 only"):
            store.soft_targets(store.read_chunk(0), 0.5)


def test_plain_arrays_with_every_row_and_the_cli(teacher, tmp_path):
    seqs = teacher["seqs"]
    log_p = torch.cat(teacher["log_p"])  # (T, V): every row, the last of each sequence too
    top = torch.topk(log_p, K)
    capture = tmp_path / "capture.npz"
    np.savez(
        capture,
        input_ids=seqs.ids,
        offsets=seqs.offsets,
        top_ids=top.indices.numpy(),
        top_logprobs=top.values.float().numpy(),
    )
    out, tokens = tmp_path / "arrays.zarr", tmp_path / "arrays_tokens.npz"
    args = ["import", str(capture), "--tokenizer", str(teacher["tokenizer"]), "--quiet"]
    result = CliRunner().invoke(
        softlabels_cli, [*args, "--out", str(out), "--tokens-out", str(tokens)]
    )
    assert result.exit_code == 0, result.output
    assert "at T = 1 only" in result.output
    shown = CliRunner().invoke(softlabels_cli, ["inspect", str(out)])
    assert shown.exit_code == 0 and "replayed at T=[1.0] only" in shown.output, shown.output
    stored = load_tokens(str(tokens))
    np.testing.assert_array_equal(stored.ids, seqs.ids)  # nothing trimmed: R = T
    from softlabels.store import open_store

    with open_store(out) as store:
        _check_against_teacher(store, stored, teacher, trimmed=False)
    train = ["train-lm", "--store", str(out), "--tokens", str(tokens), "--eval-split", "none"]
    train += ["--width", "16", "--layers", "1", "--device", "cpu"]
    refused = CliRunner().invoke(
        distill, [*train, "--temperature", "2", "--out", str(tmp_path / "run")]
    )
    assert refused.exit_code != 0 and "known at T = 1 only" in refused.output
    assert "Traceback" not in refused.output
    ran = CliRunner().invoke(distill, [*train, "--temperature", "1", "--out", str(tmp_path / "ok")])
    assert ran.exit_code == 0, ran.output


def test_captures_that_are_not_top_k_log_probabilities_are_refused(teacher, tmp_path):
    seqs = teacher["seqs"]
    top = torch.topk(torch.cat(teacher["log_p"]), K)
    cases = {
        "raw logits": (top.indices.numpy(), top.values.float().numpy() + 10, "not finite or above"),
        "tempered": (top.indices.numpy(), top.values.float().numpy() / 3, "sum to"),
        "twice": (np.zeros_like(top.indices.numpy()), top.values.float().numpy(), "one id twice"),
        "not top": (top.indices.numpy(), top.values.float().numpy() - 6.0, "not a top-K"),
    }
    for name, (ids, lp, match) in cases.items():
        path = tmp_path / f"{name}.npz"
        np.savez(path, input_ids=seqs.ids, offsets=seqs.offsets, top_ids=ids, top_logprobs=lp)
        with pytest.raises(SpecError, match=match):
            import_capture(
                read_capture(str(path)),
                tmp_path / f"{name}.zarr",
                tokenizer=str(teacher["tokenizer"]),
                progress=False,
            )
        assert not (tmp_path / f"{name}.zarr").exists()  # nothing left behind
    folder = tmp_path / "quantised"
    write_distillkit(folder, teacher, vocab=seqs.vocab_size, files=1)
    config = yaml.safe_load((folder / "compression_config.yaml").read_text())
    config |= {
        "exact_k": 2,
        "residual_bins": [{"scale_dtype": "float16", "element_bits": 4, "num_elements": 6}],
    }
    (folder / "compression_config.yaml").write_text(yaml.safe_dump(config))
    with pytest.raises(SpecError, match="quantises its tail"):
        read_capture(str(folder))

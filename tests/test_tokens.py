"""Token stores: rows are token positions of causal-LM teachers' next-token targets."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import zarr
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from softlabels.errors import MismatchError, StoreFormatError
from softlabels.lm.generate import generate_tokens
from softlabels.lm.models import sequence_logits
from softlabels.lm.text import TokenSequences, load_text
from softlabels.schema import SparseSpec
from softlabels.store import open_store
from softlabels.store.rows import chunk_checksum
from softlabels.teachers import load_teacher
from tests.helpers import reseal
from tests.lm_helpers import tiny_gpt, train_tokenizer, write_corpus


@pytest.fixture(scope="module")
def lm(tmp_path_factory):
    root = tmp_path_factory.mktemp("tok")
    tokenizer = train_tokenizer(root / "tokenizer.json")
    seqs = load_text(str(write_corpus(root / "corpus")), str(tokenizer))
    vocab = seqs.vocab_size  # byte-level BPE: at least the 256 bytes plus the specials
    teacher = f"hf:{tiny_gpt(root / 'gpt', vocab)}"
    return {"seqs": seqs, "seqs_raw": seqs, "vocab": vocab, "teacher": teacher}


@pytest.fixture(scope="module")
def lm_store(lm, tmp_path_factory):
    """A token store over the corpus cut into windows of 12, and those sequences."""
    out = tmp_path_factory.mktemp("store") / "t.zarr"
    store = generate_tokens([lm["teacher"]], lm["seqs"], out, max_length=12, progress=False)
    yield store, lm["seqs"].window(12, "window")
    store.close()


def test_sparse_token_store_replays_the_teacher_at_every_row(lm, tmp_path):
    spec = SparseSpec(top_k=8, sample=4, value_step=None)
    out = tmp_path / "t.zarr"
    # 37-row chunks: sequences cross chunk edges, and each is run whole for its context
    store = generate_tokens(
        [lm["teacher"]],
        lm["seqs"],
        out,
        max_length=12,
        sparse=spec,
        chunk_rows=37,
        progress=False,
    )
    seqs = lm["seqs"].window(12, "window")
    with store:
        meta = store.meta
        assert meta.format_version == 6 and meta.sparse.raw and meta.tokens.max_length == 12
        assert meta.num_samples == seqs.num_tokens and meta.num_classes == lm["vocab"]
        rows = store.load()
        np.testing.assert_array_equal(rows.arrays["input_ids"], seqs.ids)
        np.testing.assert_array_equal(rows.labels, seqs.next_tokens())
        starts = np.flatnonzero(rows.arrays["position"] == 0)
        np.testing.assert_array_equal(starts, seqs.offsets[:-1])
        target = store.soft_targets(np.arange(seqs.num_tokens), 1.0, estimator="bucket")
    module = load_teacher(lm["teacher"]).module
    alone = np.concatenate(
        [sequence_logits(module, [seqs.sequence(s)])[0] for s in range(len(seqs))]
    )
    want = torch.log_softmax(torch.from_numpy(alone).double(), 1).numpy()
    np.testing.assert_allclose(
        target.log_probs.numpy(), np.take_along_axis(want, target.ids.numpy(), 1), atol=1e-4
    )


@pytest.mark.bitwise
def test_token_stores_are_reproducible_and_resume_as_no_ops(lm, tmp_path):
    kw = {"max_length": 10, "window": "pack", "chunk_rows": 30, "progress": False}
    a = generate_tokens([lm["teacher"]], lm["seqs"], tmp_path / "a.zarr", **kw)
    b = generate_tokens([lm["teacher"]], lm["seqs"], tmp_path / "b.h5", **kw)
    with a, b:
        assert a.meta.checksums == b.meta.checksums and a.meta.sparse is None
    again = generate_tokens([lm["teacher"]], lm["seqs"], tmp_path / "a.zarr", resume=True, **kw)
    with again:
        assert again.meta.checksums == a.meta.checksums


def test_sequences_from_another_tokenizer_are_refused(lm, tmp_path):
    big = lm["vocab"] + 5
    wide = TokenSequences("wide", "train", np.array([5, big, 7, 8]), np.array([0, 4]))
    with pytest.raises(MismatchError, match=f"outside the teachers' {lm['vocab']}-token vocab"):
        generate_tokens([lm["teacher"]], wide, tmp_path / "x.zarr", max_length=8, progress=False)


def _end_label(group, token: int) -> None:
    """Give a sequence's last row (the row before a position 0, in the same 50-row chunk) a
    next token."""
    pos = group["position"][:]
    ends = np.flatnonzero(pos[1:] == 0)
    end = int(ends[(ends + 1) % 50 != 0][0])
    group["labels"][end] = token


@pytest.mark.parametrize(
    "damage,message",
    [
        (lambda g: g["input_ids"].__setitem__(slice(3, 4), 7), "not the next row's input token"),
        (lambda g: g["position"].__setitem__(slice(5, 6), 9), "neither continue a sequence"),
        (lambda g: g["labels"].__setitem__(slice(0, 1), 3), "not the next row's input token"),
        (lambda g: _end_label(g, 3), "labels at sequence ends that are not -1"),
    ],
)
def test_token_rows_off_the_shift_are_refused(lm, tmp_path, damage, message):
    out = tmp_path / "t.zarr"
    generate_tokens(
        [lm["teacher"]], lm["seqs"], out, max_length=12, chunk_rows=50, progress=False
    ).close()
    group = zarr.open_group(str(out), mode="r+")
    damage(group)
    with open_store(out) as s:  # as a producer would: checksums that match the damage
        sums = [chunk_checksum(s.read_chunk(k)) for k in range(s.meta.num_chunks)]
    group.attrs["checksums"] = sums
    reseal(group)
    with open_store(out) as s, pytest.raises(StoreFormatError, match=message):
        s.load()
    from softlabels.verify import verify_store

    report = verify_store(str(out))  # checksums pass; the tokens check names the damage
    assert not report.ok and "[FAIL] tokens" in report.render() and message in report.render()
    assert "[ok] checksums" in report.render()


def test_a_student_learns_from_a_sparse_token_store(lm, tmp_path):
    from dataclasses import replace as change

    from softlabels.lm.dataset import check_token_store as check_sequences
    from trainer.lm.train import LMConfig, gpt_student, train_lm

    store = generate_tokens(
        [lm["teacher"]],
        lm["seqs"],
        tmp_path / "t.zarr",
        max_length=12,
        sparse=SparseSpec(top_k=16, sample=4),
        chunk_rows=64,
        progress=False,
    )
    seqs = lm["seqs"].window(12, "window")
    config = LMConfig(temperature=2.0, alpha=0.0, epochs=4, batch_size=4, lr=1e-2)
    with store:
        torch.manual_seed(0)
        history = train_lm(
            gpt_student(lm["vocab"], max_length=12), store, seqs, config, eval_seqs=seqs
        )
        assert history[-1]["train_loss"] < 0.5 * history[0]["train_loss"]
        assert np.isfinite(history[-1]["eval_ppl"]) and 0 <= history[-1]["eval_accuracy"] <= 1
        ce = train_lm(
            gpt_student(lm["vocab"], max_length=12), store, seqs, change(config, kd=False)
        )
        assert np.isfinite(ce[-1]["train_loss"])
        shifted = TokenSequences("s", "train", np.roll(seqs.ids, 1), seqs.offsets)
        with pytest.raises(MismatchError, match="not the ones .* was made from"):
            check_sequences(store, shifted)


def test_generate_lm_cli(lm, tmp_path):
    from click.testing import CliRunner

    from softlabels.cli import main as cli
    from tests.lm_helpers import train_tokenizer, write_corpus

    corpus = write_corpus(tmp_path / "corpus")
    tokenizer = train_tokenizer(tmp_path / "tokenizer.json")
    base = ["generate-lm", "--teacher", lm["teacher"], "--max-length", "16", "--quiet"]
    out = CliRunner().invoke(
        cli,
        [
            *base,
            "--text",
            str(corpus),
            "--tokenizer",
            str(tokenizer),
            "--out",
            str(tmp_path / "a.zarr"),
            "--top-k",
            "8",
            "--sample",
            "2",
        ],
    )
    assert out.exit_code == 0, out.output
    assert "token rows" in out.output and "sparse K=10 (top 8 + 2 sampled)" in out.output
    with open_store(tmp_path / "a.zarr") as s:
        assert s.meta.tokens.tokenizer.startswith("sha256:") and s.meta.tokens.max_length == 16
    out = CliRunner().invoke(cli, [*base, "--text", str(corpus), "--out", str(tmp_path / "b.zarr")])
    assert out.exit_code == 2 and "--text needs --tokenizer" in out.output
    out = CliRunner().invoke(cli, ["inspect", str(tmp_path / "a.zarr")])
    assert out.exit_code == 0 and "bytes/entry" in out.output
    out = CliRunner().invoke(cli, ["verify", str(tmp_path / "a.zarr")])
    assert out.exit_code == 0, out.output


def test_train_lm_cli(lm, tmp_path):
    from click.testing import CliRunner

    from softlabels.cli import main as softlabels_cli
    from tests.lm_helpers import train_tokenizer, write_corpus
    from trainer.cli import main as distill

    corpus = write_corpus(tmp_path / "corpus")
    tokenizer = train_tokenizer(tmp_path / "tokenizer.json")
    text = ["--text", str(corpus), "--tokenizer", str(tokenizer)]
    store = tmp_path / "s.zarr"
    made = CliRunner().invoke(
        softlabels_cli,
        [
            "generate-lm",
            "--teacher",
            lm["teacher"],
            *text,
            "--max-length",
            "16",
            "--top-k",
            "8",
            "--out",
            str(store),
            "--quiet",
        ],
    )
    assert made.exit_code == 0, made.output
    for extra, name in (([], "kd"), (["--ce-only"], "ce")):
        out = CliRunner().invoke(
            distill,
            [
                "train-lm",
                "--store",
                str(store),
                *text,
                "--epochs",
                "2",
                "--out",
                str(tmp_path / name),
                *extra,
            ],
        )
        assert out.exit_code == 0, out.output
        assert "eval perplexity" in out.output and (tmp_path / name / "metrics.json").exists()
    other = write_corpus(tmp_path / "other")
    (other / "train.txt").write_text("entirely different words here\n" * 5)
    out = CliRunner().invoke(
        distill,
        [
            "train-lm",
            "--store",
            str(store),
            "--text",
            str(other),
            "--tokenizer",
            str(tokenizer),
            "--out",
            str(tmp_path / "x"),
        ],
    )
    assert (
        out.exit_code == 1
        and "they are not the store's sequences" in out.output
        and "Traceback" not in out.output
    )


# bitwise, but too slow for make test's second run (Makefile): not marked
def test_torchrun_token_store_equals_one_process(lm, tmp_path):
    from tests.helpers import torch_threads
    from tests.lm_helpers import train_tokenizer, write_corpus
    from tests.test_distributed import RANK_THREADS, torchrun

    corpus = write_corpus(tmp_path / "corpus")
    tokenizer = train_tokenizer(tmp_path / "tokenizer.json")
    args = [
        "softlabels.cli",
        "generate-lm",
        "--teacher",
        lm["teacher"],
        "--text",
        str(corpus),
        "--tokenizer",
        str(tokenizer),
        "--max-length",
        "16",
        "--top-k",
        "8",
        "--sample",
        "2",
        "--chunk-rows",
        "40",
        "--quiet",
    ]
    res = torchrun(*args, "--out", str(tmp_path / "dist.zarr"))
    assert res.returncode == 0, res.stderr[-3000:]
    with torch_threads(RANK_THREADS):  # as each rank computes
        one = generate_tokens(
            [lm["teacher"]],
            load_text(str(corpus), str(tokenizer)),
            tmp_path / "one.zarr",
            max_length=16,
            sparse=SparseSpec(top_k=8, sample=2),
            chunk_rows=40,
            progress=False,
        )
    with one, open_store(tmp_path / "dist.zarr") as dist:
        assert one.meta.num_chunks > 2 and one.meta.checksums == dist.meta.checksums


@given(
    st.sampled_from(["shift", "reorder", "repack", "retruncate", "swap_token", "drop_sequence"]),
    st.integers(0, 2**16),
)
@settings(
    max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
def test_every_misaligned_transfer_set_is_refused(lm, lm_store, kind, seed):
    """The alignment fuzz suite: each injected error must be refused, every time."""
    from softlabels.lm.dataset import check_token_store as check_sequences

    store, seqs = lm_store
    rng = np.random.default_rng(seed)
    ids, offsets = seqs.ids.copy(), seqs.offsets.copy()
    if kind == "shift":  # ids shifted by one position
        bad = TokenSequences("x", "train", np.roll(ids, 1 + seed % 3), offsets)
    elif kind == "reorder":  # sequences out of order
        order = rng.permutation(len(seqs))
        while (order == np.arange(len(seqs))).all():
            order = rng.permutation(len(seqs))
        parts = [seqs.sequence(int(s)) for s in order]
        bad = TokenSequences(
            "x",
            "train",
            np.concatenate(parts),
            np.concatenate([[0], np.cumsum([len(p) for p in parts])]),
        )
    elif kind == "repack":  # other packing boundaries
        bad = lm["seqs_raw"].window(int(rng.integers(5, 11)), "pack")
    elif kind == "retruncate":
        bad = lm["seqs_raw"].window(int(rng.integers(2, 11)), "truncate")
    elif kind == "swap_token":  # one token replaced (another tokenizer's output)
        i = int(rng.integers(0, len(ids)))
        ids[i] = (ids[i] + 1 + int(rng.integers(0, 50))) % lm["vocab"]
        bad = TokenSequences("x", "train", ids, offsets)
    else:
        s = int(rng.integers(0, len(seqs)))
        keep = [seqs.sequence(i) for i in range(len(seqs)) if i != s]
        bad = TokenSequences(
            "x",
            "train",
            np.concatenate(keep),
            np.concatenate([[0], np.cumsum([len(p) for p in keep])]),
        )
    with pytest.raises(MismatchError):
        check_sequences(store, bad)


def test_a_student_with_another_vocabulary_is_refused(lm, lm_store):
    from trainer.lm.train import LMConfig, gpt_student, train_lm

    store, seqs = lm_store
    # a head smaller than the tokenizer (a larger one is a padded head, trainer.lm.vocab)
    student = gpt_student(lm["vocab"] - 3, max_length=12)
    with pytest.raises(MismatchError, match=f"the store's teachers {lm['vocab']}"):
        train_lm(student, store, seqs, LMConfig())


def test_the_distill_lm_pipeline_runs_at_tiny_size(tmp_path):
    """make distill-lm at tiny size: corpus, tokenizer, teacher, both stores, students."""
    from dataclasses import replace as change

    from bench.lm import LMBench, run
    from bench.lm_report import report_section
    from tests.lm_helpers import CORPUS

    docs = tmp_path / "docs"
    docs.mkdir()
    for i in range(20):  # "reST sources": paragraphs separated by blank lines
        (docs / f"page{i:02d}.rst.txt").write_text("\n\n".join(CORPUS[i : i + 12]) + "\n")
    c = LMBench(docs=str(docs), out=str(tmp_path / "lm"))
    c = change(
        c,
        vocab_size=300,
        teacher_width=32,
        teacher_layers=1,
        teacher_tokens=3000,
        transfer_tokens=1500,
        test_tokens=500,
        student_width=16,
        student_layers=1,
        student_epochs=1,
        seeds=(0, 1),
        max_length=32,
    )
    res = run(c)
    for key in (
        "ppl_ce",
        "ppl_kd_sparse",
        "ppl_kd_dense",
        "bytes_per_token",
        "kd_step_over_ce_step",
        "stage1_over_inference",
    ):
        assert np.isfinite(res[key]) and res[key] > 0, key
    assert res["bytes_per_token"] < res["dense_bytes_per_token"]
    assert all(len(v) == 3 for v in res["step_seconds"].values())
    for runs in res["students"].values():
        for r in runs:
            assert 0 <= r["teacher_agreement"] <= 1 and r["teacher_kl"] > 0
    assert "| (b) distilled, sparse store |" in report_section(res)


@pytest.mark.parametrize("continues", [True, False])
def test_verify_checks_the_shift_across_chunk_edges(lm, tmp_path, continues):
    """A label at a chunk's last row is checked against the next chunk's first row."""
    from softlabels.verify import verify_store

    out = tmp_path / "t.zarr"
    generate_tokens(
        [lm["teacher"]], lm["seqs"], out, max_length=12, chunk_rows=50, progress=False
    ).close()
    group = zarr.open_group(str(out), mode="r+")
    pos = group["position"][:]
    edges = [r for r in range(50, len(pos), 50) if (pos[r] != 0) == continues]
    edge = edges[0]
    group["labels"][edge - 1] = int(group["input_ids"][edge]) + 1 if continues else 3
    with open_store(out) as s:
        sums = [chunk_checksum(s.read_chunk(k)) for k in range(s.meta.num_chunks)]
    group.attrs["checksums"] = sums
    reseal(group)
    report = verify_store(str(out)).render()
    assert "[FAIL] tokens" in report and f"across the chunk edge at row {edge}" in report
    assert "[ok] checksums" in report


@pytest.mark.parametrize("suffix", [".zarr", ".h5"])
def test_plain_zarr_and_h5py_read_a_token_store(lm, tmp_path, suffix):
    """FORMAT.md's token layout, read without this package: input_ids are the windows' ids,
    position restarts at each window, labels are the next token (-1 at a window's end), and
    the tokens attribute writes the shift convention out."""
    import json

    import h5py

    out = tmp_path / f"t{suffix}"
    generate_tokens(
        [lm["teacher"]], lm["seqs"], out, max_length=12, chunk_rows=40, progress=False
    ).close()
    seqs = lm["seqs"].window(12, "window")
    if suffix == ".zarr":
        group = zarr.open_group(str(out), mode="r")
        arrays = {k: np.asarray(group[k][:]) for k in ("input_ids", "position", "labels")}
        attrs = dict(group.attrs)
    else:
        with h5py.File(out, "r") as f:
            arrays = {k: f[k][:] for k in ("input_ids", "position", "labels")}
            attrs = {k: json.loads(v) for k, v in f.attrs.items()}
    assert attrs["format_version"] == 5 and "class_names" not in attrs  # a token's name: its id
    assert attrs["tokens"]["shift"] == "row t predicts the token at t + 1"
    assert attrs["tokens"]["max_length"] == 12 and attrs["tokens"]["window"] == "window"
    np.testing.assert_array_equal(arrays["input_ids"], seqs.ids)
    np.testing.assert_array_equal(np.flatnonzero(arrays["position"] == 0), seqs.offsets[:-1])
    np.testing.assert_array_equal(arrays["labels"], seqs.next_tokens())
    assert arrays["input_ids"].dtype == np.int32 and arrays["position"].dtype == np.int32


def test_root_metadata_stays_small_at_any_vocabulary_and_version_3_still_reads(lm, tmp_path):
    """Version 5 drops the per-id class names that made a V = 128k store's zarr.json 1.9 MB;
    a version-3 store (with them) still opens, with the same metadata."""
    import json
    from dataclasses import replace

    from softlabels.schema import StoreMeta

    out = tmp_path / "t.zarr"
    generate_tokens([lm["teacher"]], lm["seqs"], out, max_length=12, progress=False).close()
    with open_store(out) as store:
        meta = store.meta
    wide = replace(meta, num_classes=131_072, class_names=tuple(map(str, range(131_072))))
    assert len(json.dumps(wide.to_attrs())) < 16_000
    assert StoreMeta.from_attrs(wide.to_attrs()).class_names[-1] == "131071"
    group = zarr.open_group(str(out), mode="r+")
    group.attrs.update({"format_version": 3, "class_names": list(meta.class_names)})
    reseal(group)
    with open_store(out) as old:
        assert (
            replace(old.meta, attributes_sha256=None) == replace(meta, attributes_sha256=None)
            and old.meta.format_version == 5
        )  # written anew as version 5
        assert old.read_verified_chunk(0).sample_index[0] == 0
    group.attrs.update({"format_version": 5})
    reseal(group)
    with pytest.raises(StoreFormatError, match="must not carry 'class_names'"):
        open_store(out)

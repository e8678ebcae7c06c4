"""README claims that were not true (issue 23), each tested where it is made: the store's labels
rule over the transfer set's, the command line names flags (not Python keywords), user
augmentation policies with only sample and apply, what `combine` pools on token stores,
`make distill-lm` on another corpus, and one-paragraph errors for models that fail on the data."""

from __future__ import annotations

import warnings
from pathlib import Path

import numpy as np
import pytest
import torch
from click.testing import CliRunner

from softlabels.cli import main as softlabels_cli
from softlabels.errors import LabelsWithheldWarning, SoftLabelsError, StoreExistsError
from softlabels.generate import generate
from softlabels.join import withhold_labels
from softlabels.transfer import load_transfer
from trainer import demo_data
from trainer.cli import main as distill_cli
from trainer.train import TrainConfig, train

LABELLED = 144  # make distill's 10% of the 1,438 training labels (trainer/demo_data.py)


@pytest.fixture(scope="module")
def partly_labelled(tmp_path_factory) -> tuple[Path, Path]:
    """make distill's transfer set (10% of the labels known) and a store made over it."""
    folder = tmp_path_factory.mktemp("digits")
    _, transfer = demo_data.write(folder, 0.1)
    store = folder / "softlabels-0.1.zarr"
    generate(["tests.helpers:teacher_a"], str(transfer), str(store), chunk_rows=512, progress=False)
    return transfer, store


# ---- item 3: the store's -1 rules ------------------------------------------------------------


def test_store_without_a_label_withholds_the_transfer_sets_label(partly_labelled):
    transfer, store_path = partly_labelled
    from softlabels.store import open_store

    full = load_transfer("digits", "train")
    with open_store(store_path) as store, pytest.warns(LabelsWithheldWarning) as caught:
        ruled = withhold_labels(full, store)
    message = str(caught[0].message)
    assert f"for {1438 - LABELLED} samples" in message and f"the {LABELLED} labels" in message
    expected = np.load(transfer)["y_train"]  # what the store was made from: -1 outside the 10%
    np.testing.assert_array_equal(ruled.labels, expected)
    assert ruled.fingerprint() == full.fingerprint()
    with open_store(store_path) as store, warnings.catch_warnings():
        warnings.simplefilter("error")
        assert withhold_labels(load_transfer(str(transfer), "train"), store).labels is not None


@pytest.mark.bitwise
def test_training_on_the_full_transfer_set_sees_only_the_stores_labels(tmp_path, partly_labelled):
    """alpha = 1, beta = 0: the loss is the cross-entropy on the labels training sees alone.
    With the fully labelled digits and the 10% store, the student must be bitwise the one
    trained on the 10% transfer set (same batches): no label outside the 10% reaches it."""
    transfer, store = partly_labelled
    common = {
        "store": str(store),
        "model": "mlp",
        "hidden": (8,),
        "epochs": 1,
        "alpha": 1.0,
        "beta": 0.0,
        "eval_split": None,
        "progress": False,
    }
    ten = train(TrainConfig(out=str(tmp_path / "ten"), transfer=str(transfer), **common))
    with pytest.warns(LabelsWithheldWarning):
        full = train(TrainConfig(out=str(tmp_path / "full"), transfer="digits", **common))
    a = torch.load(ten.model_path, weights_only=True)["model"]
    b = torch.load(full.model_path, weights_only=True)["model"]
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert ten.final["train_loss"] == full.final["train_loss"]


def test_distill_train_says_whose_labels_rule(tmp_path, partly_labelled):
    _, store = partly_labelled
    args = ["train", "--transfer", "digits", "--store", str(store), "--hidden", "8"]
    args += ["--epochs", "1", "--eval-split", "none", "--out", str(tmp_path / "run"), "--quiet"]
    result = CliRunner().invoke(distill_cli, args)
    assert result.exit_code == 0, result.output
    assert f"Note: the store {str(store)!r} holds no label (-1) for 1294 samples" in result.output
    assert "Traceback" not in result.output and "LabelsWithheldWarning" not in result.output


# ---- item 14: the command line names flags, the library keywords ----------------------------


def test_cli_names_flags_and_the_library_names_keywords(tmp_path, partly_labelled):
    _, store = partly_labelled
    out = tmp_path / "copy.zarr"
    assert CliRunner().invoke(softlabels_cli, ["convert", str(store), str(out)]).exit_code == 0
    again = CliRunner().invoke(softlabels_cli, ["convert", str(store), str(out)])
    assert again.exit_code == 1 and "--overwrite" in again.output
    combined = CliRunner().invoke(
        softlabels_cli,
        ["combine", str(store), str(store), "--combine", "arithmetic", "--out", str(out)],
    )
    assert combined.exit_code == 1 and "--overwrite" in combined.output
    generated = CliRunner().invoke(
        softlabels_cli,
        [
            "generate",
            "--teacher",
            "tests.helpers:teacher_a",
            "--transfer",
            "digits",
            "--out",
            str(out),
            "--quiet",
        ],
    )
    assert generated.exit_code == 1 and "--resume" in generated.output
    run = tmp_path / "run"
    run.mkdir()
    (run / "mine.txt").write_text("x")
    trained = CliRunner().invoke(distill_cli, ["train", "--out", str(run), "--epochs", "1"])
    assert trained.exit_code == 1 and "--resume" in trained.output
    for result in (again, combined, generated, trained):
        assert "=True" not in result.output, result.output
    # the library speaks Python: keywords, never flags
    from softlabels.tools import combine_stores

    with pytest.raises(StoreExistsError) as exc:
        combine_stores((str(store), str(store)), str(out), combine="arithmetic")
    assert "overwrite=True" in str(exc.value) and "--overwrite" not in str(exc.value)
    with pytest.raises(SoftLabelsError) as exc:
        train(TrainConfig(out=str(run), epochs=1, progress=False))
    assert "resume=True" in str(exc.value) and "--resume" not in str(exc.value)


# ---- item 7: a policy with sample and apply only, through the command line --------------------


def test_policy_with_only_sample_and_apply_makes_and_trains_a_views_store(tmp_path):
    store, spec = tmp_path / "views.zarr", "tests.readme_helpers:shift_policy"
    made = CliRunner().invoke(
        softlabels_cli,
        ["generate", "--teacher", "tests.helpers:teacher_a", "--transfer", "digits"]
        + ["--views", "2", "--augment", spec, "--out", str(store), "--quiet"],
    )
    assert made.exit_code == 0, made.output
    from softlabels import schema
    from softlabels.store import open_store

    with open_store(store) as s:
        assert s.meta.views.policy == {"name": spec} and s.meta.views.param_names == ("p0",)
        params = np.concatenate(
            [s.read_verified_chunk(c).arrays[schema.VIEW_PARAMS] for c in range(s.meta.num_chunks)]
        )
    # row r is view r % 2 of sample r // 2, its shift drawn from the generator of (0, r // 2, r % 2)
    for r in (0, 1, 7, len(params) - 1):
        drawn = np.random.default_rng([0, r // 2, r % 2]).uniform(-1.0, 1.0, size=1)
        assert params[r, 0] == np.float32(drawn[0])
    args = ["train", "--store", str(store), "--transfer", "digits", "--hidden", "8"]
    args += ["--epochs", "1", "--quiet"]
    trained = CliRunner().invoke(
        distill_cli, [*args, "--augment", spec, "--out", str(tmp_path / "run")]
    )
    assert trained.exit_code == 0, trained.output
    assert (tmp_path / "run" / "model.pt").is_file()
    refused = CliRunner().invoke(distill_cli, [*args, "--out", str(tmp_path / "no")])
    assert refused.exit_code == 1 and "--augment" in refused.output
    assert spec in refused.output and "Traceback" not in refused.output
    other = CliRunner().invoke(
        distill_cli, [*args, "--augment", "rrc-flip", "--out", str(tmp_path / "other")]
    )
    assert other.exit_code == 1 and "not the one that made the store's views" in other.output


# ---- item 11: one-paragraph errors for models that fail on the data ---------------------------


def _one_paragraph(result) -> str:
    assert result.exit_code == 1, result.output
    text = result.output.strip()
    assert text.startswith("Error: ") and "\n" not in text and "Traceback" not in text, text
    return text


@pytest.mark.parametrize(
    ("shape", "expected"),
    [
        ((40, 64), "these inputs are shaped (64,): give images shaped (N, C, H, W)"),
        (
            (40, 28, 28),
            "shaped (28, 28): add the channel axis: reshape the inputs to (N, 1, 28, 28)",
        ),
    ],
)
def test_builtin_cnn_on_inputs_that_are_not_images(tmp_path, shape, expected):
    x = np.random.default_rng(0).random(shape, dtype=np.float32)
    y = np.arange(shape[0]) % 3
    np.savez(tmp_path / "data.npz", x_train=x, y_train=y, x_test=x, y_test=y)
    out = tmp_path / "run"
    args = ["train", "--transfer", str(tmp_path / "data.npz"), "--num-classes", "3"]
    result = CliRunner().invoke(distill_cli, [*args, "--model", "cnn", "--out", str(out)])
    assert expected in _one_paragraph(result)
    assert "the built-in cnn takes images shaped (channels, height, width)" in result.output
    assert not out.exists()  # nothing left behind: the model is built before --out


def test_lazy_teacher_that_fails_names_its_lazy_first_layer(tmp_path):
    flat = tmp_path / "flat.npz"  # (N, 64) rows: a LazyConv2d fails on its first batch
    np.savez(flat, x=np.random.default_rng(0).random((40, 64), dtype=np.float32))
    result = CliRunner().invoke(
        softlabels_cli,
        ["generate", "--teacher", "tests.readme_helpers:lazy_conv_teacher", "--transfer"]
        + [str(flat), "--out", str(tmp_path / "s.zarr"), "--quiet"],
    )
    text = _one_paragraph(result)
    assert "'tests.readme_helpers:lazy_conv_teacher' failed on an input batch" in text
    assert "its first layer, LazyConv2d, is lazy" in text and "takes 0 channels" not in text
    made = CliRunner().invoke(
        softlabels_cli,
        ["generate", "--teacher", "tests.readme_helpers:lazy_teacher", "--transfer", "digits"]
        + ["--out", str(tmp_path / "ok.zarr"), "--quiet"],
    )
    assert made.exit_code == 0, made.output


def test_s3_url_without_s3fs_is_one_paragraph():
    try:
        import s3fs  # noqa: F401

        pytest.skip("s3fs is installed here")
    except ImportError:
        pass
    result = CliRunner().invoke(softlabels_cli, ["inspect", "s3://bucket/stores/x.zarr"])
    assert "pip install 'softlabels[remote]'" in _one_paragraph(result)
    assert "s3fs" in result.output


# ---- item 8: what `combine` pools on token stores -----------------------------------------------


@pytest.fixture(scope="module")
def token_stores(tmp_path_factory):
    """Two tiny GPT teachers over one corpus: their dense stores, their top-k stores, and a
    top-k + sampled store of the first."""
    from softlabels import SparseSpec, generate_tokens, load_text
    from tests.lm_helpers import tiny_gpt, train_tokenizer, write_corpus

    root = tmp_path_factory.mktemp("tokens")
    seqs = load_text(str(write_corpus(root / "corpus")), str(train_tokenizer(root / "tok.json")))
    teachers = [f"hf:{tiny_gpt(root / f'gpt{i}', seqs.vocab_size, seed=i)}" for i in (0, 1)]
    kinds = [
        ("dense", 0, None),
        ("dense", 1, None),
        ("top", 0, SparseSpec(top_k=8)),
        ("top", 1, SparseSpec(top_k=8)),
        ("sampled", 0, SparseSpec(top_k=4, sample=4)),
    ]
    paths = {}
    for kind, i, sparse in kinds:
        paths[kind, i] = root / f"{kind}{i}.zarr"
        generate_tokens(
            [teachers[i]], seqs, paths[kind, i], max_length=12, sparse=sparse, progress=False
        ).close()
    return paths


def test_combine_on_token_stores_does_what_the_readme_says(tmp_path, token_stores):
    readme = " ".join((Path(__file__).parent.parent / "README.md").read_text().split())
    assert "**dense** token stores always (into a dense store, or a sparse one with `--top-k`)" in (
        readme
    )
    assert "stores made with the same `--top-k` and no `--sample` that keep the same ids" in readme
    assert "Sparse stores of different teachers, or with sampled ids, are refused" in readme

    def combine(*keys, extra=()):
        out = tmp_path / f"c{len(list(tmp_path.iterdir()))}.zarr"
        args = ["combine", *(str(token_stores[k]) for k in keys), "--combine", "arithmetic"]
        return CliRunner().invoke(softlabels_cli, [*args, *extra, "--out", str(out)])

    assert combine(("dense", 0), ("dense", 1)).exit_code == 0  # dense: always
    assert combine(("dense", 0), ("dense", 1), extra=("--top-k", "8")).exit_code == 0
    assert combine(("top", 0), ("top", 0)).exit_code == 0  # the same teacher: the same ids
    for keys, why in [
        ((("top", 0), ("top", 1)), "the inputs keep different ids"),
        ((("sampled", 0), ("sampled", 0)), "sampled ids"),
    ]:
        result = combine(*keys)
        assert result.exit_code == 1 and why in result.output, result.output
        assert "combine the dense stores and sparsify the result" in " ".join(
            result.output.split()
        ).replace("Combine", "combine")


# ---- item 9: make distill-lm on another corpus -------------------------------------------------


def _lm_results(docs: str) -> dict:
    """Results of bench.lm as run() writes them, with made-up figures."""
    student = {"eval_accuracy": 0.2, "teacher_agreement": 0.4, "teacher_kl": 1.0}
    res = {
        "config": {
            "docs": docs,
            "out": "data/lm",
            "vocab_size": 8192,
            "teacher_width": 192,
            "teacher_layers": 4,
            "teacher_tokens": 1_200_000,
            "student_width": 64,
            "student_layers": 2,
            "student_epochs": 4,
            "temperature": 1.0,
            "alpha": 0.5,
            "seeds": [0, 1, 2],
            "top_k": 48,
            "sample": 16,
            "estimator": None,
        },
        "teacher_test": {"eval_ppl": 100.0},
        "teacher_tokens": 54_321,  # a small corpus: fewer than the config asks for
        "transfer_tokens": 40_000,
        "test_tokens": 5_000,
        "students": {},
        "bytes_per_token": 100.0,
        "dense_bytes_per_token": 32768.0,
        "stage1_over_inference": 1.01,
        "stage1_seconds": 10.0,
        "bare_seconds": 9.9,
        "step_seconds": {"ce": [1.0, 1.0, 1.0]},
        "kd_step_over_ce_step": 1.05,
        "kd_dense_step_over_ce_step": 1.2,
    }
    for key in ("ce", "kd_sparse", "kd_sparse_bucket", "kd_dense"):
        res["students"][key] = [student] * 3
        res[f"ppl_{key}"], res[f"ppl_{key}_std"] = 500.0, 10.0
    return res


def test_distill_lm_on_another_corpus_describes_it_and_leaves_benchmarks_alone(tmp_path):
    import subprocess

    from bench.lm_report import PYTHON_DOCS, report_section

    mine = report_section(_lm_results(str(tmp_path / "my-notes")))
    assert "Python documentation" not in mine and "python3.11-doc" not in mine
    assert f"a corpus of your own: the `.rst.txt` files under `{tmp_path / 'my-notes'}`" in mine
    assert "trained on 54,321 tokens" in mine and "1,200,000" not in mine
    docs = report_section(_lm_results(PYTHON_DOCS + "/"))
    assert "(the Python documentation's reST sources, Debian `python3.11-doc`)" in docs

    root = Path(__file__).resolve().parent.parent

    def report_of(*args: str) -> str:
        dry = subprocess.run(
            ["make", "-n", "-C", str(root), "distill-lm", *args],
            capture_output=True,
            text=True,
            check=True,
        )
        line = [x for x in dry.stdout.splitlines() if "-m bench.lm " in x][-1]
        return line.split("--report ", 1)[1].strip()

    assert report_of(f"PYDOCS={tmp_path}") == "data/lm/REPORT.md"
    assert report_of() == "BENCHMARKS.md"
    assert report_of(f"PYDOCS={PYTHON_DOCS}/") == "BENCHMARKS.md"


def test_the_readme_quotes_the_committed_lm_scale_figures():
    """README's stage-one range for version-6 token stores is bench/lm_scale.json's (make
    lm-scale), rounded as printed, and every figure in it meets issue 20's targets."""
    import json
    import re
    from pathlib import Path

    root = Path(__file__).resolve().parent.parent
    summary = json.loads((root / "bench" / "lm_scale.json").read_text())["summary"]
    ratios = {row["vocab"]: row["stage1_over_bare"] for row in summary}
    text = " ".join((root / "README.md").read_text().split())
    low, high = re.search(r"stage one costs (\d\.\d\d)–(\d\.\d\d)×", text).groups()
    assert (low, high) == (f"{min(ratios.values()):.2f}", f"{max(ratios.values()):.2f}")
    assert ratios[32768] <= 1.25 and ratios[131072] <= 1.5

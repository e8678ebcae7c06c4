"""Data and models nobody on the team wrote: scikit-learn's wine and breast-cancer sets saved as
.npz, and hand-written torch teachers and students passed as module:function
(tests/user_helpers.py).

Each test pins the fixed behaviour of a bug found by running the tools on such data: the exact
outcome (error class and message, exit code, no traceback, values, files left behind). The CLI
runs go through click's CliRunner; stores are read back with plain zarr where the format is what
is being checked (FORMAT.md).
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
import zarr
from click.testing import CliRunner

from softlabels.cli import main as softlabels
from softlabels.errors import SpecError, StoreFormatError
from softlabels.transfer import load_transfer
from tests.helpers import reseal
from tests.user_helpers import wine_arrays, wine_teacher
from trainer.cli import main as distill

ROOT = Path(__file__).resolve().parent.parent
H = "tests.user_helpers:"
TEACHERS = (H + "wine_teacher", H + "wine_teacher_b")
TEST_EVERY = 5  # rows 4, 9, 14, ... of a set form its test split
CHUNK_ROWS = 32


# --------------------------------------------------------------------------------------------
# Data and helpers.


def _split(x: np.ndarray, y: np.ndarray) -> dict[str, np.ndarray]:
    test = np.arange(len(x)) % TEST_EVERY == TEST_EVERY - 1
    return {"x_train": x[~test], "y_train": y[~test], "x_test": x[test], "y_test": y[test]}


def invoke(cli, args: list):
    return CliRunner().invoke(cli, [str(a) for a in args])


def assert_ok(res) -> str:
    assert res.exit_code == 0, (res.exit_code, res.output, repr(res.exception))
    assert "Traceback" not in res.output
    return res.output


def assert_clean_error(res, *parts: str) -> str:
    """Exit 1 through click (no exception escaped the command), one paragraph, no traceback,
    and every expected part of the message present."""
    text = res.output
    assert res.exit_code == 1, (res.exit_code, text, repr(res.exception))
    assert isinstance(res.exception, SystemExit), repr(res.exception)
    assert "Traceback" not in text
    assert text.startswith("Error: "), text
    assert len(text.strip().splitlines()) == 1, text
    for part in parts:
        assert part in text, (part, text)
    return text


def assert_report_fails(res, *parts: str) -> str:
    """A verify report that fails: exit 1 through sys.exit, every part present, no traceback."""
    text = res.output
    assert res.exit_code == 1, (res.exit_code, text, repr(res.exception))
    assert isinstance(res.exception, SystemExit), repr(res.exception)
    assert "Traceback" not in text and text.strip().endswith("FAILED"), text
    for part in parts:
        assert part in text, (part, text)
    return text


def generate_args(transfer, out, *extra, teachers=TEACHERS) -> list:
    ts = [a for t in teachers for a in ("--teacher", t)]
    return ["generate", *ts, "--transfer", transfer, "--out", out, "--quiet", *extra]


def train_args(transfer, out, *extra) -> list:
    common = ["--hidden", "8", "--epochs", "1", "--quiet", "--out", out]
    return ["train", "--transfer", transfer, *common, *extra]


def attrs(store: Path) -> dict:
    """A Zarr store's root attributes, read with plain zarr."""
    return dict(zarr.open_group(str(store), mode="r").attrs)


def chunk_sha256(group, start: int, stop: int) -> str:
    """FORMAT.md's chunk checksum, computed with plain zarr: SHA-256 over the rows of logits,
    member_logits (if present), sample_index and labels, as C-order little-endian bytes."""
    h = hashlib.sha256()
    present = set(group.array_keys())
    for name in ("logits", "member_logits", "sample_index", "labels"):
        if name in present:
            a = np.asarray(group[name][start:stop])
            h.update(np.ascontiguousarray(a, dtype=a.dtype.newbyteorder("<")).tobytes())
    return h.hexdigest()


def files_in(path: Path) -> dict[str, int]:
    """Every file under ``path`` with its modification time (ns)."""
    return {str(p.relative_to(path)): p.stat().st_mtime_ns for p in path.rglob("*") if p.is_file()}


@pytest.fixture(scope="module")
def d(tmp_path_factory) -> Path:
    """A folder of transfer sets (.npz) built from scikit-learn data, and a wine store."""
    from sklearn.datasets import load_breast_cancer, load_wine

    d = tmp_path_factory.mktemp("user")
    x, y = wine_arrays()
    names = np.array(load_wine().target_names)
    wine = _split(x, y)
    np.savez(d / "wine.npz", **wine, class_names=names)
    # 1. labels 0..1 only (3-class teachers), no class names
    np.savez(d / "wine01.npz", **_split(x[y < 2], y[y < 2]))
    # 2. labels 1..3, no class names; a single class present, no class names
    np.savez(d / "wine123.npz", **_split(x, y + 1))
    np.savez(d / "wine_one_class.npz", **_split(x[y == 0], y[y == 0]))
    # 3. a label of -2 at training position 4
    y_bad = wine["y_train"].copy()
    y_bad[4] = -2
    np.savez(d / "wine_minus2.npz", **{**wine, "y_train": y_bad}, class_names=names)
    # 4. a NaN input at training position 7
    x_nan = wine["x_train"].copy()
    x_nan[7, 2] = np.nan
    np.savez(d / "wine_nan.npz", **{**wine, "x_train": x_nan}, class_names=names)
    # 6. the same inputs with the label of training position 5 changed
    y_changed = wine["y_train"].copy()
    y_changed[5] = (y_changed[5] + 1) % 3
    np.savez(d / "wine_label5.npz", **{**wine, "y_train": y_changed}, class_names=names)
    # 8. five rows
    np.savez(d / "five.npz", x=x[:5], y=y[:5], class_names=names)
    # 10. a test split without labels
    unlabelled = {k: v for k, v in wine.items() if k != "y_test"}
    np.savez(d / "wine_unlabelled_test.npz", **unlabelled, class_names=names)
    # 11. one split only (x, y)
    np.savez(d / "wine_xy.npz", x=x, y=y, class_names=names)
    # 5. breast cancer: 30 features, for teachers that take wine's 13
    cancer = load_breast_cancer()
    np.savez(d / "cancer.npz", x=cancer.data.astype(np.float32), y=cancer.target.astype(np.int64))
    store_args = ("--chunk-rows", CHUNK_ROWS)
    assert_ok(invoke(softlabels, generate_args(d / "wine.npz", d / "wine.zarr", *store_args)))
    return d


# --------------------------------------------------------------------------------------------
# 1. compare when the transfer labels do not reach the store's class count


def test_compare_takes_the_class_count_from_the_store(d, tmp_path):
    data = d / "wine01.npz"
    store, test_store = tmp_path / "s.zarr", tmp_path / "t.zarr"
    assert_ok(invoke(softlabels, generate_args(data, store)))
    assert_ok(invoke(softlabels, generate_args(data, test_store, "--split", "test")))
    assert attrs(store)["num_classes"] == 3
    assert set(np.load(data)["y_train"].tolist()) == {0, 1}  # labels reach 2 classes only
    out, results = tmp_path / "cmp", tmp_path / "results.json"
    res = invoke(
        distill,
        ["compare", "--transfer", data, "--store", store, "--eval-store", test_store]
        + ["--hidden", "8", "--epochs", "1", "--quiet", "--out", out, "--results", results],
    )
    text = assert_ok(res)
    assert "size of tensor" not in text and "student, hard labels" in text
    written = json.loads(results.read_text())
    assert 0.0 <= written["student_hard"]["accuracy"] <= 1.0
    assert isinstance(written["student_hard"]["teacher_agreement"], float)
    hard = torch.load(out / "hard" / "s0" / "model.pt", weights_only=True)
    assert hard["arch"]["kwargs"]["num_classes"] == 3
    assert hard["model"]["3.weight"].shape == (3, 8)  # Flatten, Linear, ReLU, Linear(8 -> 3)
    kd = torch.load(out / "kd-T4" / "s0" / "model.pt", weights_only=True)
    assert kd["model"]["3.weight"].shape == (3, 8)


# --------------------------------------------------------------------------------------------
# 2. hard-label training never guesses the class count from the labels present


def test_hard_labels_without_class_names_need_num_classes(d, tmp_path):
    out = tmp_path / "run"
    assert_clean_error(
        invoke(distill, train_args(d / "wine123.npz", out)),
        "wine123.npz' does not name its classes, so the number of classes is unknown",
        "--num-classes",
    )
    assert not (out / "model.pt").exists()

    assert_ok(invoke(distill, train_args(d / "wine123.npz", out, "--num-classes", "4")))
    model = torch.load(out / "model.pt", weights_only=True)
    assert model["arch"]["kwargs"]["num_classes"] == 4
    assert model["model"]["3.weight"].shape == (4, 8)


def test_hard_labels_with_a_single_class_are_refused(d, tmp_path):
    out = tmp_path / "run"
    assert_clean_error(
        invoke(distill, train_args(d / "wine_one_class.npz", out)),
        "wine_one_class.npz' does not name its classes, so the number of classes is unknown",
        "--num-classes",
    )
    assert not (out / "model.pt").exists() and not (out / "metrics.jsonl").exists()


# --------------------------------------------------------------------------------------------
# 3. labels below -1


def test_transfer_labels_below_minus_one_are_refused(d, tmp_path):
    bad = d / "wine_minus2.npz"
    message = "has labels below -1 at positions [4]"
    with pytest.raises(SpecError, match=r"has labels below -1 at positions \[4\]"):
        load_transfer(str(bad))
    out = tmp_path / "g.zarr"
    assert_clean_error(invoke(softlabels, generate_args(bad, out)), message)
    run = tmp_path / "run"
    assert_clean_error(invoke(distill, train_args(bad, run)), message)
    assert not out.exists() and not run.exists()


def test_store_with_a_label_of_minus_two(d, tmp_path):
    from softlabels.summary import inspect_store

    path = tmp_path / "minus2.zarr"
    assert_ok(invoke(softlabels, generate_args(d / "wine.npz", path, "--chunk-rows", CHUNK_ROWS)))
    group = zarr.open_group(str(path), mode="r+")
    sums = list(group.attrs["checksums"])
    assert chunk_sha256(group, 0, CHUNK_ROWS) == sums[0]  # the checksum as FORMAT.md defines it
    group["labels"][3] = -2
    sums[0] = chunk_sha256(group, 0, CHUNK_ROWS)
    group.attrs["checksums"] = sums  # so only the label check can catch it
    reseal(group)
    message = "store labels must be -1..2, but rows [3] hold [-2]"

    res = invoke(softlabels, ["verify", path])
    text = assert_report_fails(res, f"[FAIL] labels: {message}", "[ok] checksums")
    assert text.count("[FAIL]") == 1

    with pytest.raises(StoreFormatError, match=r"rows \[3\] hold \[-2\]"):
        inspect_store(str(path))
    assert_clean_error(invoke(softlabels, ["inspect", path]), message)

    run = tmp_path / "run"
    args = train_args(d / "wine.npz", run, "--store", path, "--eval-split", "none")
    assert_clean_error(invoke(distill, args), message)
    assert not (run / "model.pt").exists()


# --------------------------------------------------------------------------------------------
# 4. NaN or Inf inputs


def test_nan_input_is_refused_naming_its_position(d, tmp_path):
    bad = d / "wine_nan.npz"
    message = "holds NaN or Inf inputs at positions [7]"
    with pytest.raises(SpecError, match=r"NaN or Inf inputs at positions \[7\]"):
        load_transfer(str(bad))
    assert_clean_error(invoke(distill, train_args(bad, tmp_path / "run")), message)
    assert_clean_error(invoke(softlabels, generate_args(bad, tmp_path / "nan.zarr")), message)
    assert list(tmp_path.iterdir()) == []  # nothing written, not even an empty folder


# --------------------------------------------------------------------------------------------
# 5. a user's model that fails on the data


@pytest.mark.parametrize(
    ("teacher", "transfer", "parts"),
    [
        (
            "wine_teacher",
            "cancer.npz",
            [
                "input batch of shape (2, 30) and dtype torch.float32",
                "its first Linear layer takes 13 features",
            ],
        ),
        (
            "wine_teacher_f64",
            "wine.npz",
            [
                "input batch of shape (2, 13) and dtype torch.float32",
                "its first Linear layer takes 13 features of torch.float64",
            ],
        ),
        (
            "cnn_teacher",
            "wine.npz",
            [
                "input batch of shape (2, 13) and dtype torch.float32",
                "its first Conv2d takes 1 channels",
            ],
        ),
    ],
)
def test_teacher_that_fails_on_the_data(d, tmp_path, teacher, transfer, parts):
    out = tmp_path / "t.zarr"
    res = invoke(softlabels, generate_args(d / transfer, out, teachers=[H + teacher]))
    assert_clean_error(res, f"model 'tests.user_helpers:{teacher}' failed on an", *parts)
    assert list(tmp_path.iterdir()) == []


def test_teacher_object_that_fails_on_the_data_raises_teacher_error(d, tmp_path):
    import softlabels as api
    from softlabels.errors import ModelError, TeacherError

    with pytest.raises(TeacherError, match=r"shape \(2, 30\).*takes 13 features") as info:
        api.generate([wine_teacher()], str(d / "cancer.npz"), tmp_path / "t.zarr", progress=False)
    assert isinstance(info.value, ModelError)
    assert "model 'Linear' failed" in str(info.value)
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize(
    ("student", "parts"),
    [
        (
            "student_5_outputs",
            ["student 'tests.user_helpers:student_5_outputs' returns 5 outputs, but there are 3"],
        ),
        (
            "student_7_inputs",
            [
                "model 'tests.user_helpers:student_7_inputs' failed on an input batch of shape "
                "(2, 13) and dtype torch.float32",
                "its first Linear layer takes 7 features",
            ],
        ),
    ],
)
def test_student_that_fails_on_the_data(d, tmp_path, student, parts):
    run = tmp_path / "run"
    args = train_args(d / "wine.npz", run, "--store", d / "wine.zarr", "--model", H + student)
    assert_clean_error(invoke(distill, args), *parts)
    assert not (run / "model.pt").exists() and not (run / "metrics.jsonl").exists()


# --------------------------------------------------------------------------------------------
# 6. verify --transfer with one changed label


def test_verify_transfer_names_the_changed_label(d):
    res = invoke(softlabels, ["verify", d / "wine.zarr", "--transfer", d / "wine_label5.npz"])
    text = assert_report_fails(
        res,
        "[FAIL] transfer: ",
        "labels: the store's labels differ from the transfer set's at positions [5] (1 in all)",
    )
    assert text.count("[FAIL]") == 1 and "fingerprint:" not in text  # same inputs
    assert_ok(invoke(softlabels, ["verify", d / "wine.zarr", "--transfer", d / "wine.npz"]))


# --------------------------------------------------------------------------------------------
# 7. combine a float32 and a float16 store


def test_combine_of_float32_and_float16_records_float16_and_verifies(d, tmp_path):
    data = d / "wine.npz"
    a, b, out = tmp_path / "a32.zarr", tmp_path / "b16.h5", tmp_path / "ab.zarr"
    assert_ok(invoke(softlabels, generate_args(data, a, teachers=TEACHERS[:1])))
    assert_ok(
        invoke(softlabels, generate_args(data, b, "--dtype", "float16", teachers=TEACHERS[1:]))
    )
    assert_ok(invoke(softlabels, ["combine", a, b, "--combine", "arithmetic", "--out", out]))
    meta = attrs(out)
    assert meta["dtype"] == "float16"
    assert [t["spec"] for t in meta["teachers"]] == list(TEACHERS)
    res = invoke(
        softlabels,
        ["verify", out, "--transfer", data, "--teacher", TEACHERS[0], "--teacher", TEACHERS[1]],
    )
    text = assert_ok(res)
    assert "[ok] teachers: re-ran 2 teacher(s)" in text and "tolerance for float16" in text
    assert "[FAIL]" not in text and text.strip().endswith("OK")


# --------------------------------------------------------------------------------------------
# 8. --chunk-rows far beyond the set's size


def test_huge_chunk_rows_on_five_rows_gives_a_small_store(d, tmp_path):
    out = tmp_path / "five.zarr"
    args = generate_args(d / "five.npz", out, "--chunk-rows", "1000000", teachers=TEACHERS[:1])
    assert_ok(invoke(softlabels, args))
    meta = attrs(out)
    assert (meta["chunk_rows"], meta["num_samples"], len(meta["checksums"])) == (5, 5, 1)
    size = sum(p.stat().st_size for p in out.rglob("*") if p.is_file())
    assert size < 100_000, size
    assert_ok(invoke(softlabels, ["verify", out]))


# --------------------------------------------------------------------------------------------
# 9. verify a store whose writer was killed


def test_verify_of_a_killed_store_says_how_far_it_got(d, tmp_path):
    out = tmp_path / "killed.zarr"
    env = {**os.environ, "SOFTLABELS_FAULT": "chunk_committed:2", "PYTHONPATH": str(ROOT)}
    cmd = generate_args(d / "wine.npz", out, "--chunk-rows", "16")
    proc = subprocess.run(
        [sys.executable, "-m", "softlabels.cli", *map(str, cmd)],
        env=env,
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode == -9, proc.stderr  # SIGKILLed right after its 2nd committed chunk
    chunks = math.ceil(len(np.load(d / "wine.npz")["x_train"]) / 16)
    assert chunks == 9
    res = invoke(softlabels, ["verify", out])
    text = assert_report_fails(
        res,
        "[FAIL] complete: ",
        f"incomplete: its writer stopped after committing 2 of {chunks} chunks",
        "--resume",
    )
    assert "sample_index repeats" not in text and "sample_index" not in text.split("FAIL")[1]
    info = json.loads(assert_ok(invoke(softlabels, ["inspect", out, "--json"])))
    assert (info["complete"], info["committed_chunks"], info["num_chunks"]) == (False, 2, chunks)


# --------------------------------------------------------------------------------------------
# 10. an evaluation split without labels


def test_unlabelled_eval_split_shows_na_and_teacher_metrics(d, tmp_path):
    data = d / "wine_unlabelled_test.npz"
    store, test_store = tmp_path / "s.zarr", tmp_path / "t.zarr"
    assert_ok(invoke(softlabels, generate_args(data, store)))
    assert_ok(invoke(softlabels, generate_args(data, test_store, "--split", "test")))
    run = tmp_path / "run"
    text = assert_ok(
        invoke(distill, train_args(data, run, "--store", store, "--eval-store", test_store))
    )
    row = next(line for line in text.splitlines() if line.startswith("KD T=4"))
    assert "nan" not in row.lower(), row
    assert row.split()[2:5] == ["n/a", "n/a", "n/a"], row  # accuracy, NLL, ECE
    final = json.loads((run / "metrics.jsonl").read_text().splitlines()[-1])
    assert final["eval_accuracy"] is None and final["eval_nll"] is None
    assert isinstance(final["eval_teacher_agreement"], float)
    assert 0.0 <= final["eval_teacher_agreement"] <= 1.0
    assert isinstance(final["eval_kl_to_teacher"], float)
    assert math.isfinite(final["eval_kl_to_teacher"]) and final["eval_kl_to_teacher"] >= 0.0


# --------------------------------------------------------------------------------------------
# 11. messages name only options and things that exist


def test_convert_onto_an_existing_destination_does_not_mention_resume(d, tmp_path):
    dst = tmp_path / "copy.h5"
    assert_ok(invoke(softlabels, ["convert", d / "wine.zarr", dst]))
    before = dst.stat().st_mtime_ns
    text = assert_clean_error(
        invoke(softlabels, ["convert", d / "wine.zarr", dst]), "already exists", "--overwrite"
    )
    assert "resume" not in text
    assert dst.stat().st_mtime_ns == before


def test_compare_help_does_not_say_store_may_be_omitted():
    text = " ".join(assert_ok(invoke(distill, ["compare", "--help"])).split())
    assert "--store" in text and "omit" not in text.lower()
    assert "--store and --eval-store are required" in text


def test_unknown_model_lists_the_choices(d, tmp_path):
    run = tmp_path / "run"
    assert_clean_error(
        invoke(distill, train_args(d / "wine.npz", run, "--model", "resnet")),
        "unknown model 'resnet': choose one of cnn, mlp, or module:function",
    )
    assert not (run / "model.pt").exists()


def test_plain_hdf5_file_is_not_a_softlabels_store(tmp_path):
    import h5py

    from softlabels import open_store

    path = tmp_path / "data.h5"
    with h5py.File(path, "w") as f:
        f["x"] = np.zeros((4, 3), np.float32)
    text = assert_clean_error(
        invoke(softlabels, ["inspect", path]), "data.h5' is not a softlabels store"
    )
    assert "JSON" not in text and "attribute 'format'" not in text
    with pytest.raises(StoreFormatError, match="is not a softlabels store"):
        open_store(path)


def test_single_split_npz_with_default_eval_split_names_eval_split_none(d, tmp_path):
    run = tmp_path / "run"
    assert_clean_error(
        invoke(distill, train_args(d / "wine_xy.npz", run)),
        "wine_xy.npz' has a single split (array 'x'); it has no 'test' split",
        "--eval-split none",
    )
    assert not run.exists()
    assert_ok(invoke(distill, train_args(d / "wine_xy.npz", run, "--eval-split", "none")))


def test_module_dataset_without_split_names_eval_split_none(tmp_path):
    spec = H + "wine_dataset"
    with pytest.raises(SpecError, match="takes no `split` argument"):
        load_transfer(spec, "test")
    run = tmp_path / "run"
    assert_clean_error(
        invoke(distill, train_args(spec, run, "--num-classes", "3")),
        f"'{spec}' takes no `split` argument",
        "cannot serve split 'test'",
        "--eval-split none",
    )
    assert not run.exists()


# --------------------------------------------------------------------------------------------
# 12. --resume is idempotent; a failed generate leaves nothing


def test_generate_resume_is_idempotent(d, tmp_path):
    data, out = d / "wine.npz", tmp_path / "r.zarr"
    args = generate_args(data, out, "--resume", "--chunk-rows", CHUNK_ROWS)
    assert_ok(invoke(softlabels, args))  # no store: created
    before, files = attrs(out), files_in(out)
    assert before["complete"] is True

    assert_ok(invoke(softlabels, args))  # complete, same teachers and inputs: nothing to do
    after = attrs(out)
    assert (after["created_at"], after["checksums"]) == (before["created_at"], before["checksums"])
    assert files_in(out) == files  # not one file rewritten

    other = (TEACHERS[0], H + "wine_teacher_c")  # same shapes, other weights in slot 2
    res = invoke(
        softlabels, generate_args(data, out, "--resume", "--chunk-rows", CHUNK_ROWS, teachers=other)
    )
    text = assert_clean_error(
        res, "the existing store was written by a different run (teachers[", "--overwrite"
    )
    assert "wine_teacher_c" in text and "wine_teacher_b" in text
    assert len(text) < 1000  # the differing leaves, not whole dataclass reprs
    assert "transfer:" not in text and "combine:" not in text  # only the teachers differ
    assert files_in(out) == files


def test_distill_resume_of_a_finished_run_does_not_retrain(d, tmp_path):
    run = tmp_path / "run"
    args = train_args(d / "wine.npz", run, "--store", d / "wine.zarr", "--eval-split", "none")
    assert_ok(invoke(distill, args))
    metrics = (run / "metrics.jsonl").read_bytes()
    stamps = {name: (run / name).stat().st_mtime_ns for name in ("metrics.jsonl", "last.pt")}
    assert_ok(invoke(distill, [*args, "--resume"]))
    assert (run / "metrics.jsonl").read_bytes() == metrics
    assert len(metrics.splitlines()) == 1  # one epoch, not two
    assert {name: (run / name).stat().st_mtime_ns for name in stamps} == stamps  # no epoch ran


def test_failed_generate_leaves_nothing_at_out(tmp_path):
    out = tmp_path / "nan.zarr"
    res = invoke(
        softlabels,
        ["generate", "--teacher", "tests.helpers:nan_teacher", "--transfer", "digits"]
        + ["--out", out, "--quiet", "--chunk-rows", "256"],
    )
    assert_clean_error(
        res, "'tests.helpers:nan_teacher' produced NaN or Inf logits at transfer rows"
    )
    assert list(tmp_path.iterdir()) == []  # no store, no staging sibling

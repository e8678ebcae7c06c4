"""Bad input to every CLI command: a one-paragraph error, a non-zero exit, no traceback, and no
partial output left behind as if it were valid."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner

from softlabels.cli import main as softlabels
from trainer.cli import main as distill


@pytest.fixture(scope="module")
def paths(tmp_path_factory, digits_store, digits_test_store):
    d = tmp_path_factory.mktemp("bad")
    (d / "notes.txt").write_text("not a store")
    (d / "dir.h5").mkdir()
    (d / "file.zarr").write_text("not a directory")
    np.savez(d / "empty.npz", x=np.zeros((0, 1, 8, 8), np.float32))
    return {"d": d, "store": str(digits_store), "test_store": str(digits_test_store)}


def cases(p):
    d, store, test_store = p["d"], p["store"], p["test_store"]
    out = str(d / "out.zarr")
    gen = ["generate", "--teacher", "tests.helpers:teacher_a", "--transfer", "digits", "--out", out]
    tr = [
        "train",
        "--store",
        store,
        "--hidden",
        "8",
        "--epochs",
        "1",
        "--quiet",
        "--out",
        str(d / "run"),
    ]
    cmp = [
        "compare",
        "--store",
        store,
        "--eval-store",
        test_store,
        "--hidden",
        "8",
        "--epochs",
        "1",
        "--quiet",
        "--out",
        str(d / "cmp"),
        "--results",
        str(d / "cmp.json"),
    ]
    return [
        # softlabels generate
        (
            softlabels,
            [*gen, "--batch-size", "0"],
            "Invalid value for '--batch-size': 0 is not in the range x>=1",
        ),
        (softlabels, [*gen[:-2], "--out", str(d / "notes.txt")], "must end in .zarr"),
        (
            softlabels,
            [*gen[:3], "--transfer", str(d / "missing.npz"), "--out", out],
            "does not exist",
        ),
        (softlabels, [*gen[:3], "--transfer", str(d / "empty.npz"), "--out", out], "is empty"),
        (
            softlabels,
            [*gen[:3], "--transfer", "tests.helpers:tiny_dataset", "--out", str(d / "dir.h5")],
            "already exists",
        ),
        (
            softlabels,
            [
                "generate",
                "--teacher",
                "tests.helpers:bad_shape_teacher",
                "--transfer",
                "digits",
                "--out",
                out,
            ],
            "(batch, classes)",
        ),
        (
            softlabels,
            [
                "generate",
                "--teacher",
                "tests.helpers:teacher_11_classes",
                "--transfer",
                "digits",
                "--out",
                out,
            ],
            "class count: 11 classes, but transfer set 'digits' names 10",
        ),
        (
            softlabels,
            ["generate", "--teacher", str(d / "notes.txt"), "--transfer", "digits", "--out", out],
            "is not a PyTorch checkpoint",
        ),
        # store tools
        (softlabels, ["inspect", str(d / "missing.zarr")], "no store at"),
        (softlabels, ["inspect", str(d / "dir.h5")], "HDF5"),
        (softlabels, ["inspect", str(d / "file.zarr")], "Zarr"),
        (softlabels, ["verify", str(d / "missing.zarr")], "FAIL"),
        (
            softlabels,
            ["verify", store, "--transfer", "digits", "--sample", "0"],
            "0 is not in the range",
        ),
        (softlabels, ["convert", str(d / "missing.zarr"), str(d / "c.h5")], "no store at"),
        (softlabels, ["convert", store, str(d / "notes.txt")], "must end in .zarr"),
        (
            softlabels,
            ["combine", store, test_store, "--combine", "arithmetic", "--out", str(d / "k.zarr")],
            "transfer fingerprints differ",
        ),
        (
            softlabels,
            ["combine", store, "--combine", "arithmetic", "--out", str(d / "k.zarr")],
            "at least two stores",
        ),
        # distill train and compare
        *[
            (distill, [*tr, "--temperature", t], "temperatures must be finite numbers > 0")
            for t in ("0", "-1", "nan", "inf")
        ],
        *[
            (distill, [*tr, flag, v], f"{flag[2:]} must be in [0, 1]")
            for flag in ("--alpha", "--beta")
            for v in ("-0.1", "1.5", "nan")
        ],
        (
            distill,
            [*tr, "--batch-size", "0"],
            "Invalid value for '--batch-size': 0 is not in the range x>=1",
        ),
        (
            distill,
            [*tr, "--epochs", "0"],
            "Invalid value for '--epochs': 0 is not in the range x>=1",
        ),
        (distill, [*tr, "--transfer", "digits", "--split", "test"], "does not match the store"),
        (
            distill,
            [*tr, "--transfer", "tests.helpers:tiny_dataset"],
            "N: store has 1438 rows, transfer set has 40",
        ),
        (distill, [*tr[:1], "--store", str(d / "missing.zarr"), *tr[3:]], "no store at"),
        (distill, [*tr[:1], "--store", str(d / "notes.txt"), *tr[3:]], "must end in .zarr"),
        (distill, [*tr, "--transfer", str(d / "empty.npz")], "is empty"),
        (distill, [*cmp, "--temperature", "0"], "temperatures must be finite numbers > 0"),
        (distill, [*cmp, "--alpha", "2"], "alpha must be in [0, 1]"),
        (distill, [*cmp[:1], "--store", test_store, *cmp[3:]], "does not match the store"),
    ]


def test_bad_inputs(paths):
    runner = CliRunner()
    d = paths["d"]
    failures = []
    for cli, args, message in cases(paths):
        res = runner.invoke(cli, args)
        text = res.output
        ok = (
            res.exit_code != 0
            and message in text
            and "Traceback" not in text
            and "Error" in text
            or (res.exit_code != 0 and "FAIL" in message and "FAIL" in text)
        )
        if not ok:
            failures.append((args, res.exit_code, text[-400:], repr(res.exception)))
    assert not failures, "\n".join(map(str, failures))
    # nothing was left behind looking valid
    assert (
        not (d / "out.zarr").exists() and not (d / "c.h5").exists() and not (d / "k.zarr").exists()
    )
    assert not (d / "run" / "model.pt").exists() and not (d / "cmp.json").exists()
    assert not list(Path(d).glob("**/model.pt"))

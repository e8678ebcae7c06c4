from __future__ import annotations

import json

import zarr
from click.testing import CliRunner

from softlabels.cli import main as softlabels

TEACHERS = ["--teacher", "tests.helpers:teacher_a", "--teacher", "tests.helpers:teacher_b"]


def run(*args: str):
    return CliRunner().invoke(softlabels, list(args))


def test_generate_inspect_verify_convert_combine(tmp_path):
    a, b = str(tmp_path / "a.zarr"), str(tmp_path / "b.h5")
    res = run(
        "generate", *TEACHERS, "--transfer", "digits", "--out", a, "--chunk-rows", "500", "--quiet"
    )
    assert res.exit_code == 0, res.output
    assert "1438 rows x 10 classes, 2 teacher(s), combine=arithmetic" in res.output
    res = run("inspect", a, "--json")
    info = json.loads(res.output)
    assert info["num_chunks"] == 3 and info["combine"] == "arithmetic"
    assert "bytes/sample" in run("inspect", a).output
    res = run("verify", a, "--transfer", "digits", *TEACHERS)
    assert res.exit_code == 0 and res.output.rstrip().endswith("OK"), res.output
    assert run("convert", a, b).exit_code == 0
    single = str(tmp_path / "c.zarr")
    run(
        "generate",
        "--teacher",
        "tests.helpers:teacher_c",
        "--transfer",
        "digits",
        "--out",
        single,
        "--quiet",
    )
    res = run(
        "combine",
        a,
        single,
        "--combine",
        "geometric",
        "--weights",
        "2,1",
        "--out",
        str(tmp_path / "d.zarr"),
    )
    assert res.exit_code == 0 and "3 members, combine=geometric" in res.output, res.output


def test_errors_are_one_paragraph_with_exit_codes(tmp_path):
    out = str(tmp_path / "x.zarr")
    cases = [
        (
            ("generate", *TEACHERS, "--transfer", "digits", "--out", out, "--batch-size", "0"),
            "Invalid value for '--batch-size': 0 is not in the range x>=1",
        ),
        (
            ("generate", *TEACHERS, "--transfer", "nothing-here", "--out", out),
            "cannot understand transfer SPEC",
        ),
        (
            ("generate", "--teacher", "missing.pt", "--transfer", "digits", "--out", out),
            "neither an existing checkpoint",
        ),
        (
            ("generate", *TEACHERS, "--transfer", "digits", "--out", str(tmp_path / "x.txt")),
            "must end in .zarr",
        ),
        (
            ("generate", *TEACHERS, "--transfer", "digits", "--out", out, "--weights", "1,x"),
            "comma-separated numbers",
        ),
        (("inspect", str(tmp_path / "none.zarr")), "no store at"),
        (("convert", str(tmp_path / "none.zarr"), str(tmp_path / "y.h5")), "no store at"),
    ]
    for args, message in cases:
        res = run(*args)
        assert res.exit_code != 0, args
        assert message in res.output, (args, res.output)
        assert "Traceback" not in res.output
    assert not (tmp_path / "x.zarr").exists() and not (tmp_path / "y.h5").exists()


def test_verify_exit_code_on_corruption(tmp_path):
    a = str(tmp_path / "a.zarr")
    run("generate", *TEACHERS, "--transfer", "digits", "--out", a, "--quiet", "--no-compress")
    zarr.open_group(a, mode="r+").attrs["complete"] = False
    res = run("verify", a)
    assert res.exit_code == 1 and "[FAIL] complete" in res.output


def test_the_closing_line_says_what_happened(tmp_path, monkeypatch):
    """A --resume that finds the store complete writes nothing and says so; a sparse store's K
    is split into its top and sampled ids; under torchrun only rank 0 reports."""
    out = str(tmp_path / "s.zarr")
    args = ["generate", *TEACHERS, "--transfer", "digits", "--out", out, "--quiet"]
    args += ["--top-k", "6", "--sample", "2"]
    res = run(*args)
    assert res.exit_code == 0 and res.output.startswith(f"wrote {out}: "), res.output
    assert "sparse K=8 (top 6 + 2 sampled)" in res.output
    res = run(*args, "--resume")
    assert res.exit_code == 0 and res.output.startswith(f"already complete, nothing written: {out}")
    monkeypatch.setenv("RANK", "1")
    res = run(*args, "--resume")
    assert res.exit_code == 0 and res.output == "", res.output

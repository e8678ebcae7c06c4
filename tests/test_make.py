"""End-to-end runs of the Makefile targets on the embedded digits set (short epochs)."""

from __future__ import annotations

import json
import statistics
import subprocess
import sys
from pathlib import Path

import pytest

from softlabels.store import open_store
from trainer import demo_report

ROOT = Path(__file__).resolve().parent.parent


def make(*args: str) -> str:
    res = subprocess.run(
        ["make", "-C", str(ROOT), *args], capture_output=True, text=True, timeout=600
    )
    assert res.returncode == 0, res.stdout[-3000:] + res.stderr[-3000:]
    return res.stdout


def check_readme_figures(tmp_path: Path, results_path: Path, printed: str) -> None:
    """The README's demo block is make distill's own output: demo_report writes the very table
    make printed into a README, and the sentence under it from the per-seed accuracies."""
    results = json.loads(results_path.read_text())
    table = results["table"]
    assert table in printed and table.splitlines()[0].startswith("model")
    readme = tmp_path / "README.md"
    readme.write_text((ROOT / "README.md").read_text())
    res = subprocess.run(
        [sys.executable, "-m", "trainer.demo_report", str(results_path), "--readme", str(readme)],
        capture_output=True,
        text=True,
        cwd=ROOT,
    )
    assert res.returncode == 0, res.stderr
    text = readme.read_text()
    block = text[text.index(demo_report.BEGIN) : text.index(demo_report.END)]
    hard = results["student_hard"]["accuracy_per_seed"]
    kd = results["student_distilled"]["accuracy_per_seed"]
    gap = 100 * (sum(kd) / len(kd) - sum(hard) / len(hard))
    combined = 100 * (statistics.variance(hard) + statistics.variance(kd)) ** 0.5
    side = "above" if gap >= 0 else "below"
    assert f"```\n{table}\n```" in block
    assert (
        f"The distilled mean is {abs(gap):.2f} points {side} the hard-label mean, against a "
        f"combined std of {combined:.2f}." in block
    )
    original = (ROOT / "README.md").read_text()
    for cut in (demo_report.BEGIN, demo_report.END):  # nothing else in the README changes
        assert (
            text.split(cut)[0 if cut == demo_report.BEGIN else 1]
            == original.split(cut)[0 if cut == demo_report.BEGIN else 1]
        )


@pytest.mark.slow
def test_make_softlabels_then_distill_without_teachers(tmp_path):
    digits = tmp_path / "digits"
    common = (f"DIGITS={digits}", "TEACHER_EPOCHS=3", "EPOCHS=2", "SEEDS=0-1")
    # stage one alone, in HDF5: trains the teachers and writes both stores
    out = make("softlabels", "FORMAT=h5", *common)
    assert (digits / "softlabels-0.1.h5").is_file() and "bytes/sample" in out
    with open_store(digits / "softlabels-0.1.h5") as s:
        assert s.meta.complete and s.has_members
    # the whole demo in Zarr: the teachers exist, so only the Zarr stores are written
    printed = make("distill", *common)
    with open_store(digits / "softlabels-0.1.zarr") as s:
        assert s.meta.complete and s.meta.combine == "arithmetic" and s.meta.num_members == 3
        names = sorted(t.name for t in s.meta.teachers)
        assert names == ["teacher1-0.1", "teacher2-0.1", "teacher3-0.1"]
        assert (s.labels() >= 0).sum() == 144  # 10% of the training labels are known
    first = json.loads((digits / "results.json").read_text())
    check_readme_figures(tmp_path, digits / "results.json", printed)
    for teacher in digits.glob("teacher*.pt"):
        teacher.unlink()
    out = make("distill", *common, "TEMPERATURE=2,8")
    assert not list(digits.glob("teacher*.pt")), (
        "make distill must not retrain teachers when the store exists"
    )
    results = json.loads((digits / "results.json").read_text())
    assert len(results["teacher_accuracy"]) == 3 and 0 <= results["ensemble_accuracy"] <= 1
    assert results["teacher_accuracy"] == first["teacher_accuracy"]
    hard = results["student_hard"]
    assert {"accuracy", "nll", "ece", "epoch_seconds", "accuracy_mean", "accuracy_std"} <= set(hard)
    assert results["seeds"] == [0, 1] and len(hard["accuracy_per_seed"]) == 2
    spread = abs(hard["accuracy_per_seed"][1] - hard["accuracy_per_seed"][0])
    assert hard["accuracy_std"] == pytest.approx(spread / 2**0.5)
    assert [d["temperature"] for d in results["student_distilled"]] == [2.0, 8.0]
    assert all("accuracy_mean" in d and "accuracy_std" in d for d in results["student_distilled"])
    assert results["temperature"] == [2.0, 8.0] and results["alpha"] == 0.1
    assert results["store"].endswith("softlabels-0.1.zarr")
    assert "student, KD T=8" in out and "ensemble (arithmetic)" in out

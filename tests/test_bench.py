"""Smoke test: the benchmark code runs end to end at tiny size, so it cannot rot. No timing
asserts: benchmarks are not tests."""

from __future__ import annotations

import json
from dataclasses import replace

import numpy as np

from bench.report import write_report
from bench.run import QUICK, BenchConfig, run
from tests.test_transfer import write_idx


def test_bench_quick(tmp_path):
    rng = np.random.default_rng(0)
    for prefix, n in (("train", 300), ("t10k", 100)):
        write_idx(
            tmp_path / f"{prefix}-images-idx3-ubyte",
            rng.integers(0, 255, (n, 28, 28), dtype=np.uint8),
        )
        write_idx(tmp_path / f"{prefix}-labels-idx1-ubyte", rng.integers(0, 10, n, dtype=np.uint8))
    c = BenchConfig(data=str(tmp_path), work=str(tmp_path / "work"), quick=True)
    c = replace(c, **QUICK, sparse_work=str(tmp_path / "largec"))
    res = run(c)
    for key in (
        "stage2_over_ideal",
        "stream_over_ideal",
        "online_over_offline",
        "stage1_over_inference",
        "sweep_over_online",
        "distilled_minus_hard",
        "distilled_minus_hard_std",
        "gap_closed",
        "small_data_soft_minus_hard",
    ):
        assert key in res
    assert len(res["storage"]) == 8 and res["synthetic_stream"]["rows"] == 20_000
    assert res["speed"]["stream_budget_bytes"] < res["speed"]["store_float32_bytes"]
    assert len(res["student_hard"]) == 2 and set(res["sweep"]) == {"1", "4"}
    sparse = res["sparse"]
    assert [s["name"] for s in sparse["stores"]] == ["top4", "top2+s2", "top8", "top4+s4"]
    assert all(len(s["accuracy_per_seed"]) == 2 for s in sparse["stores"])
    assert set(sparse["stores"][0]["audit_random_student"]) == {"1", "2", "4", "8", "1.5", "3", "6"}
    assert [st["batch_size"] for st in sparse["step_time"]] == [128, 512, 128]
    views = res["views"]
    assert set(views["summary"]) == {
        "a_offline_plain",
        "b_online_augmented",
        "c_views2",
        "c_views4",
        "d_hard_augmented",
    }
    assert views["stage1"]["views4"]["rows"] == 4 * views["stage1"]["plain"]["rows"] == 1200
    assert all(len(r) == 2 for r in views["runs"].values())
    write_report(res, tmp_path, tmp_path / "BENCHMARKS.md")
    text = (tmp_path / "BENCHMARKS.md").read_text()
    assert "stage2_over_ideal" in text and "smoke run" in text and "Scaling to many GPUs" in text
    assert "## Stored augmentation views" in text and "| (c) offline KD, 4 stored views |" in text
    assert "\n## Scaling" in text and (tmp_path / "sweep.png").exists()
    json.dumps(res)

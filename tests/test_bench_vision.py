"""Smoke test: bench/vision.py runs end to end at tiny size (drawn images and from IDX files),
so it cannot rot. No timing asserts: benchmarks are not tests."""

from __future__ import annotations

import json

import numpy as np
import pytest

from bench.vision import VisionBench, make_folder, report, run
from tests.test_transfer import write_idx

pytest.importorskip("timm")


def test_bench_vision_quick(tmp_path):
    c = VisionBench(work=str(tmp_path), images=10, size=32, model="resnet10t", batch_size=4,
                    repeats=1, top_k=3, views=2)  # fmt: skip
    r = run(c)
    assert r["source"] == "drawn" and r["input_shape"] == [3, 32, 32]
    assert set(r["bytes_per_sample"]) == {"dense float32", "dense float16", "sparse top-3"}
    assert r["stage_one_over_bare"] > 0 and "stage one <= 1.05x" in report(r)
    assert r["views_epochs"]["stored_over_online"] > 0 and "from stored views" in report(r)
    json.dumps(r)


def test_bench_vision_folder_from_idx_files(tmp_path):
    rng = np.random.default_rng(0)
    write_idx(
        tmp_path / "train-images-idx3-ubyte", rng.integers(0, 255, (6, 28, 28), dtype=np.uint8)
    )
    write_idx(tmp_path / "train-labels-idx1-ubyte", np.array([0, 1, 2, 0, 1, 9], dtype=np.uint8))
    c = VisionBench(data=str(tmp_path), work=str(tmp_path / "w"), images=6, size=16)
    root, source = make_folder(c)
    assert source == "fashion-mnist"
    assert sorted(p.name for p in root.iterdir() if p.is_dir()) == [
        "Ankle boot", "Pullover", "T-shirt-top", "Trouser",
    ]  # fmt: skip
    assert len(list(root.glob("*/*.png"))) == 6

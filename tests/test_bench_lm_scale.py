"""bench/lm_scale.py at a toy size: every measurement runs and reports what the table needs."""

from __future__ import annotations

import pytest

pytest.importorskip("transformers")
pytest.importorskip("pyarrow")

from bench.lm_scale import measure, summarise  # noqa: E402
from softlabels.store import open_store  # noqa: E402


def test_each_mode_measures_and_the_summary_divides_by_the_bare_forward(tmp_path):
    modes = ("bare", "stage1", "capture", "stage1-v5")
    runs = [measure(mode, 512, 2, 2, "cpu", tmp_path) for mode in modes]
    kd = measure("kd", 512, 2, 2, "cpu", tmp_path)
    runs += [kd, kd | {"mode": "ce", "step_s": kd["step_s"] / 2}]  # a CE step half as long
    assert all(r["seconds"] > 0 and r["peak_rss_mb"] > 0 for r in runs)
    stage1 = runs[1]
    assert stage1["tokens"] == 512 and 0 < stage1["root_zarr_json_bytes"] < 100_000
    assert (tmp_path / "c512.parquet").stat().st_size > 0
    (row,) = summarise(runs, "cpu")
    assert row["stage1_over_bare"] == pytest.approx(stage1["seconds"] / runs[0]["seconds"])
    assert row["kd_step_over_ce_step"] == pytest.approx(2.0)
    assert row["stage1_v5_over_bare"] == pytest.approx(runs[3]["seconds"] / runs[0]["seconds"])
    with open_store(tmp_path / "s512.zarr") as v6, open_store(tmp_path / "v5-512.zarr") as v5:
        assert (v6.meta.format_version, v5.meta.format_version) == (6, 5)

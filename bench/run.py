"""`make bench`: speed and accuracy on Fashion-MNIST, side by side with ../shared/REFERENCES.md.

Writes bench/results.json (figures by key) and BENCHMARKS.md (the report, with plots). Every
figure is measured in this run; ratios are medians over several epochs or repeats, with the
variants interleaved epoch by epoch so that machine drift hits them alike.

    python -m bench.run --data /usr/share/datasets/fashion-mnist     # the real run
    python -m bench.run --quick --data DIR --work DIR --out DIR     # the smoke test's tiny run
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import platform
import time
from dataclasses import asdict, replace
from pathlib import Path
from typing import Any

import numpy as np
import torch

from bench.common import (
    QUICK,
    BenchConfig,
    log,
    make_store,
    student_config,
    teacher_paths,
    train_teachers,
)
from bench.sparse import run_sparse
from bench.speed import (
    distributed_stage1,
    speed_ratios,
    stage1_ratio,
    storage_matrix,
    synthetic_stream,
)
from bench.views import run_views
from softlabels.store import open_store
from softlabels.transfer import TransferSet, load_transfer
from trainer.train import train

# --------------------------------------------------------------------------------------------
# Accuracy.


def final_metrics(run) -> dict[str, float]:
    f = run.final
    return {
        "accuracy": f["eval_accuracy"],
        "nll": f["eval_nll"],
        "ece": f["eval_ece"],
        "epoch_seconds": run.epoch_seconds,
        "total_train_seconds": sum(h["epoch_seconds"] for h in run.history),
    }


def mean_std(runs: list[dict[str, float]], key: str) -> tuple[float, float]:
    values = [r[key] for r in runs]
    return float(np.mean(values)), float(np.std(values, ddof=1)) if len(values) > 1 else 0.0


def small_data_transfer(c: BenchConfig, full: TransferSet, test: TransferSet) -> str:
    rng = np.random.default_rng(2015)
    keep = np.sort(
        rng.choice(len(full), size=int(round(c.small_fraction * len(full))), replace=False)
    )
    path = Path(c.work) / f"fashion-{c.small_fraction:g}.npz"
    np.savez(
        path,
        x_train=full.gather(keep),
        y_train=full.labels[keep],
        x_test=test.take(0, len(test)),
        y_test=test.labels,
        class_names=np.array(full.class_names),
    )
    return str(path)


# --------------------------------------------------------------------------------------------
# The run.


def run(c: BenchConfig) -> dict[str, Any]:
    Path(c.work).mkdir(parents=True, exist_ok=True)
    started = time.perf_counter()
    data, test = load_transfer(c.transfer, "train"), load_transfer(c.transfer, "test")
    res: dict[str, Any] = {
        "config": asdict(c),
        "machine": machine(),
        "date": dt.date.today().isoformat(),
        "train_size": len(data),
        "test_size": len(test),
    }

    res["teachers"] = train_teachers(c)
    log("stage one: ensemble stores over train and test splits")
    store, res["stage1_ensemble_seconds"] = make_store(c, "ensemble.zarr", teacher_paths(c))
    test_store, _ = make_store(c, "ensemble-test.zarr", teacher_paths(c), split="test")
    single, res["stage1_single_seconds"] = make_store(c, "teacher1.zarr", teacher_paths(c)[:1])
    with open_store(test_store) as s:
        positions, labels = np.arange(s.meta.num_samples), test.labels
        accuracy = lambda lp: float((lp.argmax(1).numpy() == labels).mean())  # noqa: E731
        res["ensemble_test_accuracy"] = accuracy(s.soft_targets(positions, 1.0))
        res["member_test_accuracy"] = [
            accuracy(s.soft_targets(positions, 1.0, member=m)) for m in range(s.meta.num_members)
        ]
    with open_store(store) as s:
        res["store_bytes_per_sample"] = s.nbytes_on_disk() / s.meta.num_samples

    log("speed: stage one vs bare inference")
    res["stage1"] = stage1_ratio(c)
    log("speed: student epoch times (ideal / in memory / streamed / hard / online)")
    res["speed"] = speed_ratios(c, data, single, teacher_paths(c)[0])
    log("speed: stage one with 1 and 2 processes")
    res["distributed_stage1"] = distributed_stage1(c)
    log("speed: storage matrix")
    res["storage"] = storage_matrix(c, store)
    log(
        f"speed: synthetic {c.synthetic_rows} x {c.synthetic_classes} float16 store through the streaming loader"
    )
    res["synthetic_stream"] = synthetic_stream(c)

    log("accuracy: hard-label and distilled students")
    runs_dir = Path(c.work) / "runs"
    hard, distilled = [], []
    for seed in c.seeds:
        hard.append(
            final_metrics(train(student_config(c, str(runs_dir / f"hard-s{seed}"), seed=seed)))
        )
        distilled.append(
            final_metrics(
                train(
                    student_config(
                        c,
                        str(runs_dir / f"kd-T{c.temperature:g}-s{seed}"),
                        seed=seed,
                        store=str(store),
                        eval_store=str(test_store),
                    )
                )
            )
        )
        log(
            f"seed {seed}: hard {hard[-1]['accuracy']:.4f}, distilled {distilled[-1]['accuracy']:.4f}"
        )
    res["student_hard"], res["student_distilled"] = hard, distilled
    sweep = {}
    for t in c.temperatures:
        if t == c.temperature:
            sweep[f"{t:g}"] = distilled[0]
            continue
        sweep[f"{t:g}"] = final_metrics(
            train(
                student_config(
                    c,
                    str(runs_dir / f"kd-T{t:g}-s{c.seeds[0]}"),
                    seed=c.seeds[0],
                    temperature=t,
                    store=str(store),
                    eval_store=str(test_store),
                )
            )
        )
        log(f"sweep T={t:g}: {sweep[f'{t:g}']['accuracy']:.4f}")
    res["sweep"] = sweep

    log(f"accuracy: {c.small_fraction:.0%} of the training set")
    small = small_data_transfer(c, data, test)
    small_store, _ = make_store(c, "small.zarr", teacher_paths(c), transfer=small)
    small_hard, small_soft = [], []
    for seed in c.seeds:
        kw = {"transfer": small, "epochs": c.small_epochs, "seed": seed}
        small_hard.append(
            final_metrics(
                train(replace(student_config(c, str(runs_dir / f"small-hard-s{seed}")), **kw))
            )
        )
        small_soft.append(
            final_metrics(
                train(
                    replace(
                        student_config(
                            c, str(runs_dir / f"small-kd-s{seed}"), store=str(small_store)
                        ),
                        **kw,
                    )
                )
            )
        )
    res["small_data"] = {"fraction": c.small_fraction, "hard": small_hard, "soft": small_soft}
    log("sparse stores of a large-C teacher (bench/sparse.py)")
    res["sparse"] = run_sparse(c)
    log("stored augmentation views (bench/views.py)")
    res["views"] = run_views(c)

    res.update(summary(c, res))
    res["bench_seconds"] = time.perf_counter() - started
    return res


def summary(c: BenchConfig, res: dict[str, Any]) -> dict[str, Any]:
    h_mean, h_std = mean_std(res["student_hard"], "accuracy")
    d_mean, d_std = mean_std(res["student_distilled"], "accuracy")
    teacher = res["ensemble_test_accuracy"]
    sh, _ = mean_std(res["small_data"]["hard"], "accuracy")
    ss, _ = mean_std(res["small_data"]["soft"], "accuracy")
    online_epoch_s = res["speed"]["median_epoch_seconds"]["online"]
    offline_epoch_s = res["speed"]["median_epoch_seconds"]["store_in_memory"]
    n_t = len(c.temperatures)
    return {
        "stage2_over_ideal": res["speed"]["stage2_over_ideal"],
        "stream_over_ideal": res["speed"]["stream_over_ideal"],
        "online_over_offline": res["speed"]["online_over_offline"],
        "kd_over_hard": res["speed"]["kd_over_hard"],
        "stage1_over_inference": res["stage1"]["stage1_over_inference"],
        # five offline runs from one store (stage one once) vs one online run, same epochs
        "sweep_over_online": (
            res["stage1_single_seconds"] + n_t * c.student_epochs * offline_epoch_s
        )
        / (c.student_epochs * online_epoch_s),
        "distilled_minus_hard": 100 * (d_mean - h_mean),
        "distilled_minus_hard_std": 100 * float(np.hypot(h_std, d_std)),
        "gap_closed": (d_mean - h_mean) / (teacher - h_mean) if teacher != h_mean else None,
        "small_data_soft_minus_hard": 100 * (ss - sh),
    }


def machine() -> dict[str, Any]:
    cpu = next(
        (
            line.split(":", 1)[1].strip()
            for line in Path("/proc/cpuinfo").read_text().splitlines()
            if line.startswith("model name")
        ),
        platform.processor(),
    )
    return {
        "cpu": cpu,
        "cores": os.cpu_count(),
        "torch": torch.__version__,
        "torch_threads": torch.get_num_threads(),
        "python": platform.python_version(),
        "platform": platform.platform(),
    }


def run_speed_only(c: BenchConfig) -> dict[str, Any]:
    """The two speed parts again (teachers cached in ``c.work``), merged into the last full run's
    results: ``speed_date`` says when they were measured, ``date`` when the rest was."""
    started = time.perf_counter()
    res = json.loads((Path(c.out) / "results.json").read_text())
    train_teachers(c)
    data = load_transfer(c.transfer, "train")
    single, res["stage1_single_seconds"] = make_store(c, "teacher1.zarr", teacher_paths(c)[:1])
    log("speed: stage one vs bare inference")
    res["stage1"] = stage1_ratio(c)
    log("speed: student epoch times (ideal / in memory / streamed / hard / online)")
    res["speed"] = speed_ratios(c, data, single, teacher_paths(c)[0])
    res["speed_date"] = dt.date.today().isoformat()
    res["speed_machine"] = machine()
    res.update(summary(c, res))
    res["bench_seconds"] = time.perf_counter() - started
    return res


def run_sparse_only(c: BenchConfig) -> dict[str, Any]:
    """The sparse section again, merged into the last full run's results (``sparse_date``)."""
    started = time.perf_counter()
    res = json.loads((Path(c.out) / "results.json").read_text())
    res["sparse"] = run_sparse(c)
    res["sparse_date"] = dt.date.today().isoformat()
    res["sparse_machine"] = machine()
    res["bench_seconds"] = time.perf_counter() - started
    return res


def run_views_only(c: BenchConfig) -> dict[str, Any]:
    """The views section again, merged into the last full run's results (``views_date``)."""
    started = time.perf_counter()
    res = json.loads((Path(c.out) / "results.json").read_text())
    res["views"] = run_views(c)
    res["views_date"] = dt.date.today().isoformat()
    res["views_machine"] = machine()
    res["bench_seconds"] = time.perf_counter() - started
    return res


def main() -> None:
    p = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument("--data", required=True, help="Folder with the Fashion-MNIST IDX files.")
    p.add_argument(
        "--work", default="data/fashion", help="Working folder for teachers and stores (cached)."
    )
    p.add_argument("--out", default="bench", help="Where results.json and the plots go.")
    p.add_argument("--report", default="BENCHMARKS.md")
    p.add_argument("--quick", action="store_true", help="Tiny sizes, for the smoke test.")
    p.add_argument("--device", default="cpu", help="cpu | cuda | cuda:N (make bench DEVICE=cuda).")
    p.add_argument(
        "--precision", default=None, help="Stage one's precision (default: bf16 on CUDA)."
    )
    p.add_argument("--workers", type=int, default=0, help="Stage one's DataLoader workers.")
    p.add_argument(
        "--only-speed",
        action="store_true",
        help="Rerun stage one vs bare inference and the student-epoch feeds only, and update "
        "their keys in an existing results.json (which records the date of each part).",
    )
    p.add_argument(
        "--only-sparse",
        action="store_true",
        help="Rerun the sparse-store section only (bench/sparse.py) and update its key in an "
        "existing results.json.",
    )
    p.add_argument(
        "--only-views",
        action="store_true",
        help="Rerun the stored-views section only (bench/views.py) and update its key in an "
        "existing results.json.",
    )
    a = p.parse_args()
    precision = a.precision or ("bf16" if a.device.startswith("cuda") else "fp32")
    c = BenchConfig(
        data=a.data,
        work=a.work,
        out=a.out,
        report=a.report,
        quick=a.quick,
        device=a.device,
        precision=precision,
        workers=a.workers,
    )
    if a.quick:
        c = replace(c, **QUICK)
    if a.only_speed + a.only_sparse + a.only_views > 1:
        p.error("--only-speed, --only-sparse and --only-views: pick one")
    only = {"speed": a.only_speed, "sparse": a.only_sparse, "views": a.only_views}
    runner = {"speed": run_speed_only, "sparse": run_sparse_only, "views": run_views_only}
    results = next((runner[k] for k, on in only.items() if on), run)(c)
    Path(c.out).mkdir(parents=True, exist_ok=True)
    (Path(c.out) / "results.json").write_text(json.dumps(results, indent=2))
    from bench.report import write_report

    write_report(results, Path(c.out), Path(c.report))
    log(f"wrote {Path(c.out) / 'results.json'} and {c.report} in {results['bench_seconds']:.0f} s")


if __name__ == "__main__":
    main()

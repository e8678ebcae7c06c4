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
import statistics
import subprocess
import sys
import time
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np
import torch

from softlabels.checkpoint import load_model
from softlabels.ensemble import replay_log_probs
from softlabels.generate import GenerateConfig, generate
from softlabels.store import Rows, StoreWriter, open_store
from softlabels.transfer import TransferSet, load_transfer
from trainer import losses
from trainer.data import (
    InMemoryTargets,
    StreamingTargets,
    buffer_chunks_for,
    open_joined_store,
    store_nbytes_in_memory,
)
from trainer.train import TrainConfig, train, train_epoch

ROOT = Path(__file__).resolve().parent.parent


@dataclass(frozen=True)
class BenchConfig:
    data: str
    work: str = "data/fashion"
    out: str = "bench"
    report: str = "BENCHMARKS.md"
    teachers: int = 3
    teacher_channels: tuple[int, ...] = (32, 64)
    teacher_fc: int = 256
    teacher_epochs: int = 12
    student_hidden: tuple[int, ...] = (800, 800)
    student_epochs: int = 15
    speed_hidden: tuple[int, ...] = (64,)
    seeds: tuple[int, ...] = (0, 1, 2)
    temperature: float = 4.0
    temperatures: tuple[float, ...] = (1.0, 2.0, 4.0, 8.0, 20.0)
    alpha: float = 0.1
    batch_size: int = 128
    small_fraction: float = 0.03
    small_epochs: int = 60
    speed_epochs: int = 9
    stage1_repeats: int = 5
    synthetic_rows: int = 2_000_000
    synthetic_classes: int = 1000
    synthetic_budget_mb: float = 512.0
    quick: bool = False

    @property
    def transfer(self) -> str:
        return f"fashion-mnist:{self.data}"


QUICK = {
    "teachers": 2, "teacher_channels": (4, 8), "teacher_fc": 16, "teacher_epochs": 1, "student_hidden": (32, 32),
    "student_epochs": 1, "speed_hidden": (16,), "seeds": (0, 1), "temperatures": (1.0, 4.0), "small_epochs": 2,
    "speed_epochs": 2, "stage1_repeats": 1, "synthetic_rows": 20_000, "synthetic_classes": 50, "synthetic_budget_mb": 1.0,
    "small_fraction": 0.2,
}  # fmt: skip


def log(msg: str) -> None:
    print(f"[bench {time.strftime('%H:%M:%S')}] {msg}", flush=True)


# --------------------------------------------------------------------------------------------
# Teachers and stores (cached under config.work: rerunning the bench reuses them).


def teacher_paths(c: BenchConfig) -> list[Path]:
    return [Path(c.work) / f"teacher{i + 1}.pt" for i in range(c.teachers)]


def train_teachers(c: BenchConfig) -> list[dict[str, Any]]:
    out = []
    for i, path in enumerate(teacher_paths(c)):
        run_dir = Path(c.work) / "runs" / f"teacher{i + 1}"
        if not path.exists():
            log(f"training teacher {i + 1} ({c.teacher_epochs} epochs)")
            train(TrainConfig(out=str(run_dir), transfer=c.transfer, model="cnn", channels=c.teacher_channels,
                              fc=c.teacher_fc, dropout=0.3, epochs=c.teacher_epochs, batch_size=c.batch_size,
                              lr=1e-3, seed=100 + i, save=str(path), overwrite=True, progress=False))  # fmt: skip
        history = [
            json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()
        ]
        out.append({"test_accuracy": history[-1]["eval_accuracy"], "test_nll": history[-1]["eval_nll"],
                    "epoch_seconds": statistics.median(h["epoch_seconds"] for h in history)})  # fmt: skip
    return out


def make_store(
    c: BenchConfig,
    name: str,
    teachers: list[Path],
    split: str = "train",
    transfer: str | None = None,
) -> tuple[Path, float]:
    path = Path(c.work) / name
    t0 = time.perf_counter()
    generate(GenerateConfig(teachers=tuple(map(str, teachers)), transfer=transfer or c.transfer, out=str(path),
                            split=split, batch_size=256, overwrite=True, progress=False))  # fmt: skip
    return path, time.perf_counter() - t0


# --------------------------------------------------------------------------------------------
# Speed.


def bare_inference_seconds(teacher_path: Path, transfer: str, batch_size: int = 256) -> float:
    """The work any teacher inference must do: load the checkpoint and the inputs, then run the
    forward pass batch by batch. `generate` does this plus fingerprinting, combining and writing."""
    t0 = time.perf_counter()
    model, _ = load_model(teacher_path)
    data = load_transfer(transfer, "train")
    with torch.inference_mode():
        for s in range(0, len(data), batch_size):
            model(torch.from_numpy(data.take(s, min(s + batch_size, len(data)))))
    return time.perf_counter() - t0


def stage1_ratio(c: BenchConfig) -> dict[str, Any]:
    """generate (one teacher) vs bare inference, alternating, same batch size. Wall and CPU
    seconds (CPU: all threads of this process, so the writer thread's work counts)."""
    teacher = teacher_paths(c)[0]
    runs: dict[str, dict[str, list[float]]] = {
        k: {"wall": [], "cpu": []} for k in ("bare", "generate")
    }
    for _ in range(c.stage1_repeats):
        for name, fn in (("bare", lambda: bare_inference_seconds(teacher, c.transfer)),
                         ("generate", lambda: make_store(c, "stage1-probe.zarr", [teacher])[1])):  # fmt: skip
            cpu0 = time.process_time()
            runs[name]["wall"].append(fn())
            runs[name]["cpu"].append(time.process_time() - cpu0)
    med = {k: {m: statistics.median(v) for m, v in r.items()} for k, r in runs.items()}
    return {
        "bare_seconds": runs["bare"]["wall"],
        "generate_seconds": runs["generate"]["wall"],
        "bare_cpu_seconds": runs["bare"]["cpu"],
        "generate_cpu_seconds": runs["generate"]["cpu"],
        "stage1_over_inference": med["generate"]["wall"] / med["bare"]["wall"],
        "stage1_over_inference_min": min(runs["generate"]["wall"]) / min(runs["bare"]["wall"]),
        "stage1_over_inference_cpu": med["generate"]["cpu"] / med["bare"]["cpu"],
    }


def speed_ratios(
    c: BenchConfig, data: TransferSet, store_path: Path, teacher: Path
) -> dict[str, Any]:
    """Epoch times of one student under five feeds, interleaved epoch by epoch:
    ideal (logits already a torch tensor), store in memory, store streamed under a budget
    smaller than the store, hard labels only, and online KD (teacher run on every batch)."""
    base = TrainConfig(out="-", transfer=c.transfer, hidden=c.speed_hidden, epochs=c.speed_epochs,
                       batch_size=c.batch_size, temperature=c.temperature, alpha=c.alpha, progress=False)  # fmt: skip
    labels = torch.from_numpy(data.label_array())
    teacher_model, _ = load_model(teacher)
    with open_joined_store(str(store_path), data) as store:
        memory = InMemoryTargets(store, c.batch_size, seed=0)
        budget = store_nbytes_in_memory(store) // 4  # a quarter of the store: it must stream
        stream = StreamingTargets(
            store, c.batch_size, seed=0, buffer_chunks=buffer_chunks_for(store, budget)
        )
        ideal_logits = torch.from_numpy(memory.logits.copy())
        feeds = {
            "ideal": lambda m, o, e: ideal_epoch(base, m, o, data, labels, ideal_logits, store, e),
            "store_in_memory": lambda m, o, e: train_epoch(
                base, m, o, memory, data, labels, store, e
            )[1],
            "store_streamed": lambda m, o, e: train_epoch(
                base, m, o, stream, data, labels, store, e
            )[1],
            "hard_labels": lambda m, o, e: train_epoch(base, m, o, memory, data, labels, None, e)[
                1
            ],
            "online": lambda m, o, e: online_epoch(base, m, o, data, labels, teacher_model, e),
        }
        models = {}
        for name in feeds:
            torch.manual_seed(0)
            model = torch.nn.Sequential(torch.nn.Flatten(), *_mlp_layers(784, c.speed_hidden, 10))
            models[name] = (model, torch.optim.Adam(model.parameters(), lr=1e-3))
        times: dict[str, list[float]] = {name: [] for name in feeds}
        for epoch in range(c.speed_epochs):
            for name, fn in feeds.items():
                times[name].append(fn(*models[name], epoch))
            log(
                f"speed epoch {epoch + 1}: "
                + ", ".join(f"{k} {v[-1]:.2f}s" for k, v in times.items())
            )
        med = {k: statistics.median(v) for k, v in times.items()}
        return {
            "student": f"MLP 784-{'-'.join(map(str, c.speed_hidden))}-10",
            "epoch_seconds": times,
            "median_epoch_seconds": med,
            "stream_budget_bytes": int(budget),
            "store_float32_bytes": store_nbytes_in_memory(store),
            "stage2_over_ideal": med["store_in_memory"] / med["ideal"],
            "stream_over_ideal": med["store_streamed"] / med["ideal"],
            "online_over_offline": med["online"] / med["store_in_memory"],
            "offline_over_hard": med["store_in_memory"] / med["hard_labels"],
        }


def _mlp_layers(width: int, hidden: tuple[int, ...], classes: int) -> list[torch.nn.Module]:
    layers: list[torch.nn.Module] = []
    for h in hidden:
        layers += [torch.nn.Linear(width, h), torch.nn.ReLU()]
        width = h
    return [*layers, torch.nn.Linear(width, classes)]


def _kd_step(config: TrainConfig, model, optimizer, x, y, teacher_lp) -> None:
    loss = losses.hinton_loss(
        model(x), y, teacher_lp, config.temperature, config.alpha, config.kd_weight
    )
    optimizer.zero_grad(set_to_none=True)
    loss.backward()
    optimizer.step()


def _kd_epoch(config, model, optimizer, data, labels, epoch: int, teacher_log_probs) -> float:
    """One epoch in the store path's batch order; ``teacher_log_probs(pos, x)`` gives the soft
    targets of a batch."""
    order = np.random.default_rng([0, epoch]).permutation(len(data))
    model.train()
    t0 = time.perf_counter()
    for s in range(0, len(order), config.batch_size):
        pos = order[s : s + config.batch_size]
        x, y = torch.from_numpy(data.gather(pos)), labels[pos]
        _kd_step(config, model, optimizer, x, y, teacher_log_probs(pos, x))
    return time.perf_counter() - t0


def ideal_epoch(
    config, model, optimizer, data, labels, logits: torch.Tensor, store, epoch: int
) -> float:
    """The same batches and loss as the store path, with the teacher logits already in a tensor."""
    weights = torch.tensor(store.meta.weights)
    return _kd_epoch(config, model, optimizer, data, labels, epoch,
                     lambda pos, x: replay_log_probs(logits[pos], None, store.meta.combine, weights, config.temperature))  # fmt: skip


def online_epoch(
    config, model, optimizer, data, labels, teacher: torch.nn.Module, epoch: int
) -> float:
    """Classic online KD: the teacher runs forward on every batch."""

    def targets(pos, x):
        with torch.inference_mode():
            v = teacher(x)
        return torch.log_softmax(
            v.clone() / config.temperature, dim=-1
        )  # clone: leave inference mode

    return _kd_epoch(config, model, optimizer, data, labels, epoch, targets)


def distributed_stage1(c: BenchConfig) -> dict[str, Any]:
    """Wall time of `softlabels generate` (the 3-teacher ensemble over the training split) as one
    process and under `torchrun --nproc_per_node=2`, start-up included. The single process uses
    torch's default threads; each of the two ranks gets one (OMP_NUM_THREADS=1)."""
    teachers = [a for t in teacher_paths(c) for a in ("--teacher", str(t))]
    gen = [
        "-m",
        "softlabels.cli",
        "generate",
        *teachers,
        "--transfer",
        c.transfer,
        "--quiet",
        "--overwrite",
    ]
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    out: dict[str, Any] = {}
    for procs in (1, 2):
        store = str(Path(c.work) / f"dist-{procs}.zarr")
        launch = (
            [sys.executable]
            if procs == 1
            else [
                sys.executable,
                "-m",
                "torch.distributed.run",
                "--standalone",
                f"--nproc_per_node={procs}",
            ]
        )
        t0 = time.perf_counter()
        subprocess.run([*launch, *gen, "--out", store], check=True, env={**env, **({"OMP_NUM_THREADS": "1"} if procs > 1 else {})},
                       capture_output=True)  # fmt: skip
        seconds = time.perf_counter() - t0
        with open_store(store) as s:
            out[f"{procs}_process"] = {"seconds": seconds, "rows_per_second": s.meta.num_samples / seconds,
                                       "checksums": s.meta.checksums}  # fmt: skip
    out["bitwise_equal"] = out["1_process"].pop("checksums") == out["2_process"].pop("checksums")
    return out


def storage_matrix(c: BenchConfig, source: Path) -> list[dict[str, Any]]:
    """Bytes per sample and read throughput for Zarr/HDF5 x float32/float16 x compression."""
    with open_store(source) as s:
        meta, rows = s.meta, s.read(0, s.meta.num_samples)
    results = []
    for kind in ("zarr", "h5"):
        for dtype in ("float32", "float16"):
            for compress in (True, False):
                path = Path(c.work) / "storage" / f"s-{dtype}-{'c' if compress else 'raw'}.{kind}"
                path.parent.mkdir(parents=True, exist_ok=True)
                m = replace(meta, dtype=dtype)
                with StoreWriter.create(path, m, compress=compress, overwrite=True) as w:
                    for k in range(m.num_chunks):
                        a, b = m.chunk_bounds(k)
                        w.write_chunk(
                            k,
                            Rows(
                                a,
                                rows.logits[a:b],
                                rows.member_logits[a:b],
                                rows.sample_index[a:b],
                                rows.labels[a:b],
                            ),
                        )
                    w.finalize()
                with open_store(path) as s:
                    seq = _read_seconds(s, range(m.num_chunks))
                    shuffled = _read_seconds(s, np.random.default_rng(0).permutation(m.num_chunks))
                    size = s.nbytes_on_disk()
                results.append({"backend": kind, "dtype": dtype, "compressed": compress,
                                "bytes_per_sample": size / m.num_samples,
                                "sequential_rows_per_s": m.num_samples / seq,
                                "chunk_shuffled_rows_per_s": m.num_samples / shuffled})  # fmt: skip
    return results


def _read_seconds(store, chunks) -> float:
    best = float("inf")
    for _ in range(3):
        t0 = time.perf_counter()
        for k in chunks:
            store.read_chunk(int(k))
        best = min(best, time.perf_counter() - t0)
    return best


def synthetic_stream(c: BenchConfig) -> dict[str, Any]:
    path = str(Path(c.work) / "synthetic.zarr")
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    run = lambda *a: json.loads(subprocess.run([sys.executable, "-m", "bench.synthetic", *a], check=True, env=env,  # noqa: E731
                                               capture_output=True, text=True).stdout.strip().splitlines()[-1])  # fmt: skip
    written = run(
        "write", path, "--rows", str(c.synthetic_rows), "--classes", str(c.synthetic_classes)
    )
    streamed = run("stream", path, "--budget-mb", str(c.synthetic_budget_mb))
    import shutil

    shutil.rmtree(path)
    return {
        **written,
        **streamed,
        "shape": [c.synthetic_rows, c.synthetic_classes],
        "dtype": "float16",
    }


# --------------------------------------------------------------------------------------------
# Accuracy.


def student_config(c: BenchConfig, out: str, **kw: Any) -> TrainConfig:
    base = TrainConfig(out=out, transfer=c.transfer, model="mlp", hidden=c.student_hidden, epochs=c.student_epochs,
                       batch_size=c.batch_size, lr=1e-3, temperature=c.temperature, alpha=c.alpha,
                       overwrite=True, progress=False)  # fmt: skip
    return replace(base, **kw)


def final_metrics(run) -> dict[str, float]:
    f = run.final
    return {"accuracy": f["eval_accuracy"], "nll": f["eval_nll"], "ece": f["eval_ece"],
            "epoch_seconds": run.epoch_seconds, "total_train_seconds": sum(h["epoch_seconds"] for h in run.history)}  # fmt: skip


def mean_std(runs: list[dict[str, float]], key: str) -> tuple[float, float]:
    values = [r[key] for r in runs]
    return float(np.mean(values)), float(np.std(values, ddof=1)) if len(values) > 1 else 0.0


def small_data_transfer(c: BenchConfig, full: TransferSet, test: TransferSet) -> str:
    rng = np.random.default_rng(2015)
    keep = np.sort(
        rng.choice(len(full), size=int(round(c.small_fraction * len(full))), replace=False)
    )
    path = Path(c.work) / f"fashion-{c.small_fraction:g}.npz"
    np.savez(path, x_train=full.gather(keep), y_train=full.labels[keep], x_test=test.take(0, len(test)),
             y_test=test.labels, class_names=np.array(full.class_names))  # fmt: skip
    return str(path)


# --------------------------------------------------------------------------------------------
# The run.


def run(c: BenchConfig) -> dict[str, Any]:
    Path(c.work).mkdir(parents=True, exist_ok=True)
    started = time.perf_counter()
    data, test = load_transfer(c.transfer, "train"), load_transfer(c.transfer, "test")
    res: dict[str, Any] = {"config": asdict(c), "machine": machine(), "date": dt.date.today().isoformat(),
                           "train_size": len(data), "test_size": len(test)}  # fmt: skip

    res["teachers"] = train_teachers(c)
    log("stage one: ensemble stores over train and test splits")
    store, res["stage1_ensemble_seconds"] = make_store(c, "ensemble.zarr", teacher_paths(c))
    test_store, _ = make_store(c, "ensemble-test.zarr", teacher_paths(c), split="test")
    single, res["stage1_single_seconds"] = make_store(c, "teacher1.zarr", teacher_paths(c)[:1])
    with open_store(test_store) as s:
        rows = s.read(0, s.meta.num_samples)
        res["ensemble_test_accuracy"] = float((rows.logits.argmax(1) == rows.labels).mean())
        res["member_test_accuracy"] = [float((rows.member_logits[:, m].argmax(1) == rows.labels).mean())
                                       for m in range(rows.member_logits.shape[1])]  # fmt: skip
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
        distilled.append(final_metrics(train(student_config(c, str(runs_dir / f"kd-T{c.temperature:g}-s{seed}"),
                                                            seed=seed, store=str(store), eval_store=str(test_store)))))  # fmt: skip
        log(
            f"seed {seed}: hard {hard[-1]['accuracy']:.4f}, distilled {distilled[-1]['accuracy']:.4f}"
        )
    res["student_hard"], res["student_distilled"] = hard, distilled
    sweep = {}
    for t in c.temperatures:
        if t == c.temperature:
            sweep[f"{t:g}"] = distilled[0]
            continue
        sweep[f"{t:g}"] = final_metrics(train(student_config(c, str(runs_dir / f"kd-T{t:g}-s{c.seeds[0]}"), seed=c.seeds[0],
                                                             temperature=t, store=str(store), eval_store=str(test_store))))  # fmt: skip
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
    cpu = next((line.split(":", 1)[1].strip() for line in Path("/proc/cpuinfo").read_text().splitlines()
                if line.startswith("model name")), platform.processor())  # fmt: skip
    return {"cpu": cpu, "cores": os.cpu_count(), "torch": torch.__version__, "torch_threads": torch.get_num_threads(),
            "python": platform.python_version(), "platform": platform.platform()}  # fmt: skip


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
    a = p.parse_args()
    c = BenchConfig(data=a.data, work=a.work, out=a.out, report=a.report, quick=a.quick)
    if a.quick:
        c = replace(c, **QUICK)
    results = run(c)
    Path(c.out).mkdir(parents=True, exist_ok=True)
    (Path(c.out) / "results.json").write_text(json.dumps(results, indent=2))
    from bench.report import write_report

    write_report(results, Path(c.out), Path(c.report))
    log(f"wrote {Path(c.out) / 'results.json'} and {c.report} in {results['bench_seconds']:.0f} s")


if __name__ == "__main__":
    main()

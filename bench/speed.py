"""The speed half of `make bench`: stage one against bare inference, student epochs under each
feed, stage one with 1 and 2 processes, the storage matrix and the synthetic stream."""

from __future__ import annotations

import json
import os
import shutil
import statistics
import subprocess
import sys
import time
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np
import torch

from bench.common import ROOT, BenchConfig, log, make_store, student_config, teacher_paths
from softlabels.checkpoint import load_model
from softlabels.device import autocast, resolve_device
from softlabels.store import StoreWriter, open_store
from softlabels.transfer import TransferSet, load_transfer
from trainer import modules
from trainer.data import (
    InMemoryTargets,
    StreamingTargets,
    buffer_chunks_for,
    join,
    store_nbytes_in_memory,
)
from trainer.train import train_epoch


def bare_inference_seconds(c: BenchConfig, teacher_path: Path, batch_size: int = 256) -> float:
    """The work any teacher inference must do: load the checkpoint and the inputs, then run the
    forward pass batch by batch at the same device, precision and batch size, with the logits
    brought back to the host. `generate` does this plus fingerprinting, combining and writing."""
    t0 = time.perf_counter()
    device = resolve_device(c.device)
    model, _ = load_model(teacher_path)
    model.to(device)
    data = load_transfer(c.transfer, "train")
    with torch.inference_mode(), autocast(device, c.precision):
        for s in range(0, len(data), batch_size):
            x = torch.from_numpy(data.take(s, min(s + batch_size, len(data))))
            model(x.to(device, non_blocking=True)).float().cpu()
    return time.perf_counter() - t0


def stage1_ratio(c: BenchConfig) -> dict[str, Any]:
    """generate (one teacher) vs bare inference, alternating, same batch size. Wall and CPU
    seconds (CPU: all threads of this process, so the writer thread's work counts)."""
    teacher = teacher_paths(c)[0]
    runs: dict[str, dict[str, list[float]]] = {
        k: {"wall": [], "cpu": []} for k in ("bare", "generate")
    }
    for _ in range(c.stage1_repeats):
        for name, fn in (
            ("bare", lambda: bare_inference_seconds(c, teacher)),
            ("generate", lambda: make_store(c, "stage1-probe.zarr", [teacher])[1]),
        ):
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
        "teacher_rows_per_second": len(load_transfer(c.transfer, "train"))
        / med["generate"]["wall"],
        "device": c.device,
        "precision": c.precision,
    }


def speed_ratios(
    c: BenchConfig, data: TransferSet, store_path: Path, teacher: Path
) -> dict[str, Any]:
    """Epoch times of one student under five feeds, interleaved epoch by epoch: ideal (the
    targets already a torch tensor, batches sliced by hand), store in memory, store streamed
    under a budget smaller than the store, hard labels only (the same batches, plain CE), and
    online KD (teacher run on every batch)."""
    base = student_config(c, "-", hidden=c.speed_hidden, epochs=c.speed_epochs)
    dev = resolve_device(c.device)
    labels = torch.from_numpy(data.label_array()).to(dev)
    teacher_model, _ = load_model(teacher)
    teacher_model.to(dev)
    kd = modules.HintonKD(c.alpha, temperature=c.temperature)
    hard = modules.HardCE()
    with join(str(store_path), data) as store:
        memory = InMemoryTargets(store, c.temperature, c.batch_size, seed=0)
        budget = store_nbytes_in_memory(store) // 4  # a quarter of the store: it must stream
        buffers = buffer_chunks_for(store, budget)
        stream = StreamingTargets(store, c.temperature, c.batch_size, 0, buffers)
        # the ideal: targets at T already a tensor on the device, indexed by position
        ideal = store.soft_targets(np.arange(len(data)), c.temperature).to(dev)

        def loop(loss_fn, source):
            return lambda m, o, e: train_epoch(
                base, m, o, loss_fn, source, data, labels, e, device=dev
            )[1]

        feeds = {
            "ideal": lambda m, o, e: _epoch(
                base, m, o, data, labels, e, lambda p, x: ideal[p], dev
            ),
            "store_in_memory": loop(kd, memory),
            "store_streamed": loop(kd, stream),
            "hard_labels": loop(hard, memory),
            "online": lambda m, o, e: _epoch(
                base, m, o, data, labels, e, _online(teacher_model, c), dev
            ),
        }
        models = {}
        for name in feeds:
            torch.manual_seed(0)
            model = torch.nn.Sequential(torch.nn.Flatten(), *_mlp_layers(784, c.speed_hidden, 10))
            model.to(dev)
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
            "kd_over_hard": med["store_in_memory"] / med["hard_labels"],
            "device": str(dev),
        }


def _mlp_layers(width: int, hidden: tuple[int, ...], classes: int) -> list[torch.nn.Module]:
    layers: list[torch.nn.Module] = []
    for h in hidden:
        layers += [torch.nn.Linear(width, h), torch.nn.ReLU()]
        width = h
    return [*layers, torch.nn.Linear(width, classes)]


def _epoch(config, model, optimizer, data, labels, epoch: int, targets_of, dev) -> float:
    """One KD epoch in the store path's batch order, written out by hand; ``targets_of(pos, x)``
    gives a batch's soft targets on the device."""
    kd = modules.HintonKD(config.alpha, temperature=config.temperature)
    order = np.random.default_rng([0, epoch]).permutation(len(data))
    model.train()
    t0 = time.perf_counter()
    for s in range(0, len(order), config.batch_size):
        pos = order[s : s + config.batch_size]
        x = torch.from_numpy(data.gather(pos)).to(dev, non_blocking=True)
        y = labels[torch.from_numpy(pos).to(dev)]
        loss = kd(model(x), targets_of(torch.from_numpy(pos).to(dev), x), y)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
    return time.perf_counter() - t0


def _online(teacher: torch.nn.Module, c: BenchConfig):
    """Classic online KD: the teacher runs forward on every batch."""

    def targets(pos, x):
        with torch.inference_mode():
            v = teacher(x)
        return torch.log_softmax(v.clone() / c.temperature, dim=-1)  # clone: leave inference mode

    return targets


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
        subprocess.run(
            [*launch, *gen, "--out", store],
            check=True,
            env={**env, **({"OMP_NUM_THREADS": "1"} if procs > 1 else {})},
            capture_output=True,
        )
        seconds = time.perf_counter() - t0
        with open_store(store) as s:
            out[f"{procs}_process"] = {
                "seconds": seconds,
                "rows_per_second": s.meta.num_samples / seconds,
                "checksums": s.meta.checksums,
            }
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
                        w.write_chunk(k, replace(rows.take(np.arange(a, b)), start=a))
                    w.finalize()
                with open_store(path) as s:
                    seq = _read_seconds(s, range(m.num_chunks))
                    shuffled = _read_seconds(s, np.random.default_rng(0).permutation(m.num_chunks))
                    size = s.nbytes_on_disk()
                results.append(
                    {
                        "backend": kind,
                        "dtype": dtype,
                        "compressed": compress,
                        "bytes_per_sample": size / m.num_samples,
                        "sequential_rows_per_s": m.num_samples / seq,
                        "chunk_shuffled_rows_per_s": m.num_samples / shuffled,
                    }
                )
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

    def run(*a):
        return json.loads(
            subprocess.run(
                [sys.executable, "-m", "bench.synthetic", *a],
                check=True,
                env=env,
                capture_output=True,
                text=True,
            )
            .stdout.strip()
            .splitlines()[-1]
        )

    written = run(
        "write", path, "--rows", str(c.synthetic_rows), "--classes", str(c.synthetic_classes)
    )
    streamed = run("stream", path, "--budget-mb", str(c.synthetic_budget_mb))
    shutil.rmtree(path)
    return {
        **written,
        **streamed,
        "shape": [c.synthetic_rows, c.synthetic_classes],
        "dtype": "float16",
    }

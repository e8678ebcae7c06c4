"""The sparse section of `make bench`: sparse stores of a C = 1000 teacher, against its dense
store, on the synthetic task of ``bench/largec.py``.

For each K in ``ks`` two stores are written from the dense one (`softlabels convert --top-k`):
``topK`` (the K largest logits) and ``topK/2+sK/2`` (K/2 largest plus K/2 sampled, the same
bytes). For each: bytes per entry and per row (ids, values and tail summary included), the audit
against the dense store at T in {1, 2, 4, 8} and off the tail's anchors at {1.5, 3, 6}, with
random student logits and with a trained student's, the test accuracy of students distilled from
it over the seeds, and once, the time of a KD step from the K = 64 store against a
cross-entropy step on the same student.

    python -m bench.run --data DIR --only-sparse     (merges the "sparse" key of results.json)
"""

from __future__ import annotations

import statistics
from dataclasses import replace
from pathlib import Path
from typing import Any

import torch

from bench import largec
from bench.common import BenchConfig, log
from bench.speed import _mlp_layers
from softlabels.audit import AuditOptions, audit_store
from softlabels.checkpoint import load_checkpoint
from softlabels.schema import SparseSpec
from softlabels.summary import inspect_store
from softlabels.tools import convert_store
from softlabels.transfer import load_transfer
from trainer import modules
from trainer.data import InMemoryTargets, join
from trainer.train import TrainConfig, train, train_epoch

OFF_ANCHOR = (1.5, 3.0, 6.0)


def store_specs(ks: tuple[int, ...]) -> dict[str, SparseSpec]:
    specs = {}
    for k in ks:
        specs[f"top{k}"] = SparseSpec(top_k=k)
        specs[f"top{k // 2}+s{k - k // 2}"] = SparseSpec(top_k=k // 2, sample=k - k // 2)
    return specs


def run_sparse(c: BenchConfig) -> dict[str, Any]:
    work = Path(c.sparse_work)
    task = largec.make_task(
        work,
        classes=c.sparse_classes,
        superclasses=max(2, c.sparse_classes // 20),
        teacher_rows=c.sparse_teacher_rows,
        transfer_rows=c.sparse_transfer_rows,
        test_rows=c.sparse_test_rows,
    )
    teacher = work / "teacher.pt"
    if not teacher.exists():
        log(f"sparse: training the {c.sparse_classes}-class teacher")
        largec.train_teacher(task, teacher, epochs=c.sparse_teacher_epochs)
    dense = largec.make_dense_store(task, teacher, work / "dense.zarr")
    dense_test = largec.make_dense_store(task, teacher, work / "dense.test.zarr", split="test")
    res: dict[str, Any] = {
        "task": f"bench/largec.py: {c.sparse_classes}-class hierarchical Gaussian mixture",
        "classes": c.sparse_classes,
        "teacher_test_accuracy": load_checkpoint(teacher)["metrics"]["eval_accuracy"],
        "student": {**largec.STUDENT, **largec.KD},
        "temperatures": list(c.sparse_temperatures),
        "off_anchor_temperatures": list(OFF_ANCHOR),
    }
    base = TrainConfig(
        "", str(task["transfer"]), eval_store=str(dense_test), **largec.RUN, **largec.STUDENT
    )
    base = replace(base, loss="hinton", **largec.KD, epochs=c.sparse_student_epochs)
    log("sparse: students from the dense store")
    res["dense"] = {
        "bytes_per_row": inspect_store(str(dense))["bytes_per_sample"],
        **_students(base, dense, work / "runs" / "dense", c.seeds),
    }
    trained = work / "runs" / "dense" / f"s{c.seeds[0]}" / "model.pt"
    stores = []
    for name, spec in store_specs(c.sparse_ks).items():
        path = work / f"{name}.zarr"
        convert_store(str(dense), str(path), sparse=spec, overwrite=True)
        info = inspect_store(str(path))
        log(f"sparse: {name}: {info['bytes_per_entry']:.3f} bytes/entry; audit and students")
        temps = tuple(c.sparse_temperatures) + OFF_ANCHOR
        options = AuditOptions(temperatures=temps, rows=c.sparse_audit_rows)
        random = audit_store(str(path), against=str(dense), options=options)
        options = replace(options, temperatures=tuple(c.sparse_temperatures))
        student = audit_store(
            str(path),
            against=str(dense),
            student=str(trained),
            transfer=str(task["transfer"]),
            options=options,
        )
        stores.append(
            {
                "name": name,
                "k": spec.k,
                "top_k": spec.top_k,
                "sample": spec.sample,
                "value_step": spec.value_step,
                "bytes_per_entry": info["bytes_per_entry"],
                "bytes_per_row": info["bytes_per_sample"],
                "array_bytes_per_row": {
                    k: v / info["num_samples"] for k, v in info["array_bytes"].items() if v
                },
                "audit_random_student": random["temperatures"],
                "audit_trained_student": student["temperatures"],
                **_students(base, path, work / "runs" / name, c.seeds),
            }
        )
        if spec.sample:  # at T = 4 > T_q the default is "bucket"; "importance" to compare
            importance = _students(
                replace(base, estimator="importance"), path, work / "runs" / f"{name}-i", c.seeds
            )
            stores[-1]["importance_estimator"] = importance
    res["stores"] = stores
    k64 = next((s for s in stores if s["k"] == 64 and s["sample"] == 0), stores[-1])
    log(f"sparse: KD step from {k64['name']} against a CE step")
    res["step_time"] = [
        step_time(c, task["transfer"], work / f"{k64['name']}.zarr", replace(base, **kw))
        for kw in (
            {},
            {"batch_size": 4 * base.batch_size},
            {"hidden": (1024, 1024)},
        )
    ]
    return res


def _students(base: TrainConfig, store: Path, runs: Path, seeds: tuple[int, ...]) -> dict[str, Any]:
    acc = []
    for seed in seeds:
        result = train(replace(base, out=str(runs / f"s{seed}"), store=str(store), seed=seed))
        acc.append(float(result.final["eval_accuracy"]))
    std = statistics.stdev(acc) if len(acc) > 1 else 0.0
    return {"accuracy_per_seed": acc, "accuracy_mean": statistics.mean(acc), "accuracy_std": std}


def step_time(c: BenchConfig, transfer: Path, store: Path, base: TrainConfig) -> dict[str, Any]:
    """Median epoch seconds of the same student under a KD loss from the sparse store (targets
    computed once, in memory) and plain cross-entropy on the same batches, interleaved."""
    data = load_transfer(str(transfer), "train")
    labels = torch.from_numpy(data.label_array())
    kd = modules.HintonKD(base.alpha, temperature=base.temperature)
    hard = modules.HardCE()
    times: dict[str, list[float]] = {"kd_sparse": [], "cross_entropy": []}
    with join(str(store), data) as reader:
        source = InMemoryTargets(reader, base.temperature, base.batch_size, seed=0)
        models = {}
        for name in times:
            torch.manual_seed(0)
            layers = _mlp_layers(data.input_shape[0], base.hidden, reader.meta.num_classes)
            model = torch.nn.Sequential(*layers)
            models[name] = (model, torch.optim.Adam(model.parameters(), lr=1e-3))
        for epoch in range(c.speed_epochs):
            for name, loss_fn in (("kd_sparse", kd), ("cross_entropy", hard)):
                model, opt = models[name]
                seconds = train_epoch(base, model, opt, loss_fn, source, data, labels, epoch)[1]
                times[name].append(seconds)
    med = {k: statistics.median(v) for k, v in times.items()}
    hidden = "-".join(map(str, base.hidden))
    return {
        "student": f"MLP {data.input_shape[0]}-{hidden}-{reader.meta.num_classes}",
        "batch_size": base.batch_size,
        "epoch_seconds": times,
        "kd_over_ce": med["kd_sparse"] / med["cross_entropy"],
    }

"""A synthetic classification task with a large output space (C = 1000 by default), for
benchmarking soft-label stores where C is large (sparse, top-k stores) on a CPU.

The data are a hierarchical Gaussian mixture in R^dim: ``superclasses`` superclass centres
~ N(0, SUPER_SCALE^2 I); each class centre = its superclass centre + N(0, CLASS_SCALE^2 I); a
sample = its class centre + N(0, I). Classes inside a superclass overlap (confusable), the
superclasses barely do, so a teacher's soft labels carry real "dark knowledge": most of their
mass sits on the ~C / superclasses siblings of the true class. Class frequencies follow a mild
Zipf law (p_c ~ 1 / rank^ZIPF, ranks shuffled over the classes). With the defaults the Bayes
classifier reaches about 70% top-1 (98% on the superclass); an MLP teacher somewhat less.

Files written to ``--out`` (deterministic given the seed; the same test split in both):

    teacher.npz    x_train/y_train: teacher_rows rows, all labelled      + x_test/y_test
    transfer.npz   x_train/y_train: transfer_rows rows, only a stratified labelled_fraction
                   of them labelled (y = -1 elsewhere)                  + x_test/y_test
    teacher.pt     an MLP teacher trained on teacher.npz (kept: delete it to retrain)
    dense.zarr     the teacher's float32 logits over transfer.npz's train split (dense.test.zarr:
                   over its test split, for agreement/KL metrics)
    runs/          the students' run folders

Then students (a small MLP) train on transfer.npz over seeds 0, 1, 2: from the hard labels only,
and distilled from the dense store; a JSON summary is printed.

    python -m bench.largec --out data/largec [--classes 1000] [--teacher-epochs 5]
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np

from softlabels.checkpoint import load_checkpoint
from softlabels.generate import generate
from trainer.demo_data import labelled_subset
from trainer.train import TrainConfig, train

SUPER_SCALE = 0.6  # spread of the superclass centres (noise has unit variance per dimension)
CLASS_SCALE = 0.3  # spread of the class centres around their superclass centre
ZIPF = 0.5  # class-frequency exponent: p_c ~ 1 / rank^ZIPF
TEACHER: dict[str, Any] = {"hidden": (512,), "lr": 1e-3, "batch_size": 512, "dropout": 0.3}
STUDENT: dict[str, Any] = {"hidden": (128,), "epochs": 20, "lr": 3e-3, "batch_size": 128}
KD: dict[str, Any] = {"temperature": 4.0, "alpha": 0.1}
RUN: dict[str, Any] = {
    "eval_split": "test",
    "model": "mlp",
    "overwrite": True,
    "progress": False,
    "device": "cpu",
}


def _mixture(
    rng: np.random.Generator, classes: int, dim: int, superclasses: int
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(class centres (C, dim), parent superclass (C,), class prior (C,))."""
    parent = np.arange(classes) % superclasses
    supers = rng.normal(0.0, SUPER_SCALE, (superclasses, dim))
    centres = supers[parent] + rng.normal(0.0, CLASS_SCALE, (classes, dim))
    prior = 1.0 / np.arange(1, classes + 1) ** ZIPF
    return centres, parent, rng.permutation(prior / prior.sum())


def _sample(
    rng: np.random.Generator, centres: np.ndarray, prior: np.ndarray, n: int
) -> tuple[np.ndarray, np.ndarray]:
    y = rng.choice(len(prior), size=n, p=prior).astype(np.int64)
    x = centres[y] + rng.standard_normal((n, centres.shape[1]))
    return x.astype(np.float32), y


def make_task(
    out_dir: Path,
    *,
    classes: int = 1000,
    dim: int = 64,
    superclasses: int = 50,
    teacher_rows: int = 200_000,
    transfer_rows: int = 20_000,
    labelled_fraction: float = 0.15,
    test_rows: int = 10_000,
    seed: int = 0,
) -> dict[str, Path]:
    """Write teacher.npz and transfer.npz (see the module docstring); returns their paths."""
    rng = np.random.default_rng(seed)
    centres, parent, prior = _mixture(rng, classes, dim, superclasses)
    x_teacher, y_teacher = _sample(rng, centres, prior, teacher_rows)
    x_transfer, y_transfer = _sample(rng, centres, prior, transfer_rows)
    x_test, y_test = _sample(rng, centres, prior, test_rows)
    known = labelled_subset(y_transfer, labelled_fraction, seed=seed)
    names = np.array([f"s{parent[c]:03d}_c{c:04d}" for c in range(classes)])
    common = {"x_test": x_test, "y_test": y_test, "class_names": names}
    out_dir.mkdir(parents=True, exist_ok=True)
    task = {"teacher": out_dir / "teacher.npz", "transfer": out_dir / "transfer.npz"}
    np.savez(task["teacher"], x_train=x_teacher, y_train=y_teacher, **common)
    np.savez(
        task["transfer"], x_train=x_transfer, y_train=np.where(known, y_transfer, -1), **common
    )
    return task


def train_teacher(task: dict[str, Path], out: Path, *, epochs: int = 5, seed: int = 0) -> Path:
    """Train an MLP teacher on teacher.npz; save it (a teacher checkpoint) at ``out``."""
    run = str(out.parent / "runs" / "teacher")
    config = TrainConfig(run, str(task["teacher"]), epochs=epochs, seed=seed, save=str(out), **RUN)
    result = train(replace(config, **TEACHER))
    print(json.dumps({"teacher": result.final}), flush=True)
    return out


def make_dense_store(task: dict[str, Path], teacher: Path, out: Path, split: str = "train") -> Path:
    """The teacher's float32 logits over transfer.npz's ``split``, written to ``out``."""
    reader = generate(
        [str(teacher)],
        str(task["transfer"]),
        str(out),
        split=split,
        dtype="float32",
        batch_size=1024,
        overwrite=True,
        progress=False,
        device="cpu",
    )
    reader.close()
    return out


def train_students(
    task: dict[str, Path], store: Path, eval_store: Path, runs: Path, seeds: tuple[int, ...]
) -> dict[str, Any]:
    """Hard-label and distilled students per seed: test accuracy, top-1 agreement with the
    teacher, and the mean seconds of a run (training and per-epoch evaluation). Without a store
    the trainer still walks every transfer row; rows with y = -1 add nothing to the loss."""
    kinds = {"hard": {"store": None}, "distilled": {"store": str(store), "loss": "hinton", **KD}}
    base = TrainConfig("", str(task["transfer"]), eval_store=str(eval_store), **RUN, **STUDENT)
    out: dict[str, Any] = {}
    for kind, kw in kinds.items():
        acc: list[float] = []
        agree: list[float] = []
        secs: list[float] = []
        for seed in seeds:
            t0 = time.perf_counter()
            final = train(replace(base, out=str(runs / f"{kind}-s{seed}"), seed=seed, **kw)).final
            secs.append(time.perf_counter() - t0)
            acc.append(float(final["eval_accuracy"]))
            agree.append(round(float(final["eval_teacher_agreement"]), 4))
        out[kind] = {"accuracy": [round(a, 4) for a in acc], **_mean_std(acc)}
        out[kind] |= {
            "teacher_agreement": agree,
            "seconds_per_run": round(statistics.mean(secs), 1),
        }
    return out


def _mean_std(values: list[float]) -> dict[str, float]:
    std = statistics.stdev(values) if len(values) > 1 else 0.0
    return {"mean": round(statistics.mean(values), 4), "std": round(std, 4)}


def main() -> None:
    p = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument("--out", type=Path, default=Path("data/largec"), help="Output folder.")
    p.add_argument("--classes", type=int, default=1000)
    p.add_argument("--superclasses", type=int, default=50)
    p.add_argument("--teacher-epochs", type=int, default=5)
    p.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    a = p.parse_args()
    clock, seconds = time.perf_counter(), dict[str, float]()

    def lap(name: str) -> None:
        nonlocal clock
        seconds[name], clock = round(time.perf_counter() - clock, 1), time.perf_counter()

    task = make_task(a.out, classes=a.classes, superclasses=a.superclasses)
    lap("task")
    teacher = a.out / "teacher.pt"
    if not teacher.exists():
        train_teacher(task, teacher, epochs=a.teacher_epochs)
        lap("teacher")
    store = make_dense_store(task, teacher, a.out / "dense.zarr")
    eval_store = make_dense_store(task, teacher, a.out / "dense.test.zarr", split="test")
    lap("stores")
    students = train_students(task, store, eval_store, a.out / "runs", tuple(a.seeds))
    lap("students")
    summary = {
        "classes": a.classes,
        "teacher_test_accuracy": round(load_checkpoint(teacher)["metrics"]["eval_accuracy"], 4),
        "student": {**STUDENT, **KD},
        **students,
        "seconds": seconds,
    }
    print(json.dumps(summary, indent=2))


if __name__ == "__main__":
    main()

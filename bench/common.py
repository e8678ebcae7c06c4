"""What every part of `make bench` shares: the configuration, logging, the teachers and the
stores (cached under ``BenchConfig.work``: rerunning the bench reuses them)."""

from __future__ import annotations

import json
import statistics
import time
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

from softlabels.generate import generate
from trainer.train import TrainConfig, train

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
    device: str = "cpu"  # make bench DEVICE=cuda
    precision: str = "fp32"  # teachers' forward pass in stage one (bf16 on a GPU)
    workers: int = 0  # DataLoader workers in stage one
    # the sparse section (bench/sparse.py): a C-class synthetic task from bench/largec.py
    sparse_work: str = "data/largec"
    sparse_classes: int = 1000
    sparse_teacher_rows: int = 200_000
    sparse_transfer_rows: int = 20_000
    sparse_test_rows: int = 10_000
    sparse_teacher_epochs: int = 5
    sparse_student_epochs: int = 20
    sparse_ks: tuple[int, ...] = (8, 32, 64, 128)
    sparse_temperatures: tuple[float, ...] = (1.0, 2.0, 4.0, 8.0)
    sparse_audit_rows: int = 2000

    @property
    def transfer(self) -> str:
        return f"fashion-mnist:{self.data}"


QUICK = {
    "teachers": 2,
    "teacher_channels": (4, 8),
    "teacher_fc": 16,
    "teacher_epochs": 1,
    "student_hidden": (32, 32),
    "student_epochs": 1,
    "speed_hidden": (16,),
    "seeds": (0, 1),
    "temperatures": (1.0, 4.0),
    "small_epochs": 2,
    "speed_epochs": 2,
    "stage1_repeats": 1,
    "synthetic_rows": 20_000,
    "synthetic_classes": 50,
    "synthetic_budget_mb": 1.0,
    "small_fraction": 0.2,
    "sparse_classes": 60,
    "sparse_teacher_rows": 3000,
    "sparse_transfer_rows": 1000,
    "sparse_test_rows": 500,
    "sparse_teacher_epochs": 1,
    "sparse_student_epochs": 1,
    "sparse_ks": (4, 8),
    "sparse_audit_rows": 200,
}


def log(msg: str) -> None:
    print(f"[bench {time.strftime('%H:%M:%S')}] {msg}", flush=True)


def teacher_paths(c: BenchConfig) -> list[Path]:
    return [Path(c.work) / f"teacher{i + 1}.pt" for i in range(c.teachers)]


def train_teachers(c: BenchConfig) -> list[dict[str, Any]]:
    out = []
    for i, path in enumerate(teacher_paths(c)):
        run_dir = Path(c.work) / "runs" / f"teacher{i + 1}"
        if not path.exists():
            log(f"training teacher {i + 1} ({c.teacher_epochs} epochs)")
            train(
                TrainConfig(
                    out=str(run_dir),
                    transfer=c.transfer,
                    model="cnn",
                    channels=c.teacher_channels,
                    fc=c.teacher_fc,
                    dropout=0.3,
                    epochs=c.teacher_epochs,
                    batch_size=c.batch_size,
                    lr=1e-3,
                    seed=100 + i,
                    save=str(path),
                    overwrite=True,
                    progress=False,
                    device=c.device,
                )
            )
        history = [
            json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()
        ]
        out.append(
            {
                "test_accuracy": history[-1]["eval_accuracy"],
                "test_nll": history[-1]["eval_nll"],
                "epoch_seconds": statistics.median(h["epoch_seconds"] for h in history),
            }
        )
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
    store = generate(
        [str(t) for t in teachers],
        transfer or c.transfer,
        str(path),
        split=split,
        batch_size=256,
        overwrite=True,
        progress=False,
        device=c.device,
        precision=c.precision,
        workers=c.workers,
    )
    store.close()
    return path, time.perf_counter() - t0


def student_config(c: BenchConfig, out: str, **kw: Any) -> TrainConfig:
    base = TrainConfig(
        out=out,
        transfer=c.transfer,
        model="mlp",
        hidden=c.student_hidden,
        epochs=c.student_epochs,
        batch_size=c.batch_size,
        lr=1e-3,
        temperature=c.temperature,
        alpha=c.alpha,
        overwrite=True,
        progress=False,
        device=c.device,
    )
    return replace(base, **kw)


def put_section(report: Path, title: str, section: str) -> None:
    """Put ``section`` (starting with the heading ``title``) into the markdown file ``report``,
    replacing the section of that title (up to the next "## " heading) if there is one."""
    text = report.read_text() if report.exists() else "# Benchmarks\n"
    if title in text:
        head, rest = text.split(title, 1)
        tail = rest.split("\n## ", 1)
        text = head + section + ("\n## " + tail[1] if len(tail) > 1 else "")
    else:
        text = text.rstrip() + "\n\n" + section
    report.write_text(text)


def goal_table(rows: list[tuple[str, str, bool]]) -> list[str]:
    """A markdown table of (goal, this run's figure, met) rows."""
    out = ["| goal | this run | met |", "|---|---|---|"]
    return out + [f"| {goal} | {value} | {'yes' if ok else '**no**'} |" for goal, value, ok in rows]

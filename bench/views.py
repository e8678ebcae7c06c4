"""Stored augmentation views on Fashion-MNIST (`make bench`, or alone):

    python -m bench.views --data /usr/share/datasets/fashion-mnist

One CNN teacher (bench's teacher1, trained if missing), a transfer set of the first
``transfer_rows`` training images, the same MLP student, epochs, batches and optimizer in every
run, over 3 seeds:

(a) offline KD from a plain store (no augmentation);
(b) online KD with the augmentation: every epoch fresh random-resized-crop + flip views, the
    teacher run on them at every step;
(c) offline KD from views stores (V = 4, 16, 64 stored views per image), each epoch one stored
    view per image rebuilt from its stored parameters (the product's StoredViews/ViewTargets);
(d) hard labels with the augmentation (fresh views every epoch, no teacher).

All four run in one loop here, so their epoch times compare: only where the batch's inputs and
targets come from differs. Writes ``OUT/views.json`` and, with ``--report``, a BENCHMARKS.md
section.
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from bench.common import goal_table, put_section
from softlabels.generate import generate
from softlabels.schema import SparseSpec
from softlabels.store import open_store
from softlabels.teachers import load_teacher
from softlabels.transfer import TransferSet, load_transfer
from softlabels.views.augment import augment_spec, view_rng
from softlabels.views.dataset import StoredViews
from softlabels.views.transfer import rebuild_views
from trainer.build import build_student
from trainer.config import TrainConfig
from trainer.data import InMemoryTargets, ViewTargets
from trainer.modules import HintonKD

Batch = tuple[torch.Tensor, torch.Tensor, torch.Tensor | None]  # inputs, labels, targets


@dataclass(frozen=True)
class ViewsBench:
    data: str
    work: str = "data/fashion/views"
    teacher: str = "data/fashion/teacher1.pt"
    transfer_rows: int = 10_000
    views: tuple[int, ...] = (4, 16, 64)
    augment: str = "rrc-flip:scale=0.6-1"
    top_k: int = 3  # the top-k views store, for bytes per view
    hidden: tuple[int, ...] = (512, 512)
    epochs: int = 15
    batch_size: int = 128
    lr: float = 1e-3
    temperature: float = 4.0
    alpha: float = 0.1
    seeds: tuple[int, ...] = (0, 1, 2)


def log(msg: str) -> None:
    print(f"[views {time.strftime('%H:%M:%S')}] {msg}", flush=True)


def transfer_npz(c: ViewsBench) -> Path:
    """The first ``transfer_rows`` training images and the whole test split, as one .npz."""
    path = Path(c.work) / f"fashion-{c.transfer_rows}.npz"
    if not path.exists():
        path.parent.mkdir(parents=True, exist_ok=True)
        train = load_transfer(f"fashion-mnist:{c.data}", "train")
        test = load_transfer(f"fashion-mnist:{c.data}", "test")
        np.savez(
            path,
            x_train=train.take(0, c.transfer_rows),
            y_train=train.label_array(0, c.transfer_rows),
            x_test=test.take(0, len(test)),
            y_test=test.label_array(),
        )
    return path


def stage_one(c: ViewsBench, transfer: str) -> dict[str, Any]:
    """The plain store, the views stores and a top-k views store: seconds and bytes."""
    out: dict[str, Any] = {}
    jobs: list[tuple[str, dict[str, Any]]] = [("plain", {})]
    jobs += [(f"views{v}", {"views": v, "augment": c.augment}) for v in c.views]
    v_top = c.views[len(c.views) // 2]
    jobs.append(
        (
            f"views{v_top}-top{c.top_k}",
            {"views": v_top, "augment": c.augment, "sparse": SparseSpec(top_k=c.top_k)},
        )
    )
    for name, kw in jobs:
        path = Path(c.work) / f"{name}.zarr"
        t0 = time.perf_counter()
        generate([c.teacher], transfer, str(path), overwrite=True, progress=False, **kw).close()
        seconds = time.perf_counter() - t0
        with open_store(path) as s:
            rows = s.meta.num_samples
            out[name] = {
                "seconds": seconds,
                "rows": rows,
                "bytes_per_row": s.nbytes_on_disk() / rows,
                "bytes_by_array": {k: v / rows for k, v in s.array_nbytes().items()},
            }
        log(f"{name}: {rows} rows in {seconds:.1f} s, {out[name]['bytes_per_row']:.1f} B/row")
    return out


def _perm(seed: int, epoch: int, n: int) -> np.ndarray:
    return np.random.default_rng([seed, epoch, 7]).permutation(n)


def plain_batches(c: ViewsBench, base: TransferSet, store: Any, seed: int) -> Callable:
    source = InMemoryTargets(store, c.temperature, c.batch_size, seed)
    labels = torch.from_numpy(base.label_array())

    def batches(epoch: int) -> Iterator[Batch]:
        for pos, target in source.batches(epoch):
            yield torch.from_numpy(base.gather(pos)), labels[torch.from_numpy(pos)], target

    return batches


def view_batches(c: ViewsBench, base: TransferSet, store: Any, seed: int) -> Callable:
    views = StoredViews(store, base, seed=seed)
    source = ViewTargets(store, views, c.temperature, c.batch_size, seed)

    def batches(epoch: int) -> Iterator[Batch]:
        for rows, target in source.batches(epoch):
            x = torch.from_numpy(views.inputs(rows))
            yield x, torch.from_numpy(views.labels(rows)), target

    return batches


def online_batches(
    c: ViewsBench, base: TransferSet, teacher: torch.nn.Module | None, seed: int
) -> Callable:
    """Fresh views every epoch (drawn per (seed, epoch, sample)); the teacher's targets at T
    computed on them at every step, or none (hard labels)."""
    policy, shape = augment_spec(c.augment), base.input_shape
    labels = torch.from_numpy(base.label_array())

    def batches(epoch: int) -> Iterator[Batch]:
        order = _perm(seed, epoch, len(base))
        for i in range(0, len(order), c.batch_size):
            pos = order[i : i + c.batch_size]
            params = np.stack(
                [policy.sample(view_rng(10_000 + seed, int(s), epoch), shape) for s in pos]
            )
            x = rebuild_views(base, policy, pos, params)  # in one batch, as stored views are
            xs = torch.from_numpy(x.astype(np.float32))
            target = None
            if teacher is not None:
                with torch.no_grad():
                    target = torch.log_softmax(teacher(xs).float() / c.temperature, dim=1)
            yield xs, labels[torch.from_numpy(pos)], target

    return batches


def train_student(
    c: ViewsBench, base: TransferSet, test: TransferSet, batches: Callable, seed: int
) -> dict[str, Any]:
    """The same MLP, optimizer and loss weights for every arm; test accuracy and epoch times."""
    torch.manual_seed(seed)
    config = TrainConfig(out="-", model="mlp", hidden=c.hidden)
    model, _ = build_student(config, base.input_shape, 10)
    optimizer = torch.optim.Adam(model.parameters(), lr=c.lr)
    kd = HintonKD(c.alpha, temperature=c.temperature)
    seconds = []
    for epoch in range(c.epochs):
        model.train()
        t0 = time.perf_counter()
        for x, y, target in batches(epoch):
            logits = model(x)
            loss = F.cross_entropy(logits, y) if target is None else kd(logits, target, y)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
        seconds.append(time.perf_counter() - t0)
    model.eval()
    with torch.no_grad():
        pred = model(torch.from_numpy(test.take(0, len(test)))).argmax(1).numpy()
    return {"accuracy": float((pred == test.label_array()).mean()), "epoch_seconds": seconds}


def run(c: ViewsBench) -> dict[str, Any]:
    spec = str(transfer_npz(c))
    base, test = load_transfer(spec, "train"), load_transfer(spec, "test")
    teacher = load_teacher(c.teacher).module.eval()
    with torch.no_grad():
        t_pred = teacher(torch.from_numpy(test.take(0, len(test)))).argmax(1).numpy()
    res: dict[str, Any] = {
        "config": asdict(c),
        "teacher_accuracy": float((t_pred == test.label_array()).mean()),
        "stage1": stage_one(c, spec),
    }
    stores = {name: open_store(Path(c.work) / f"{name}.zarr") for name in res["stage1"]}
    arms: dict[str, Callable[[int], Callable]] = {
        "a_offline_plain": lambda s: plain_batches(c, base, stores["plain"], s),
        "b_online_augmented": lambda s: online_batches(c, base, teacher, s),
        **{
            f"c_views{v}": (lambda s, v=v: view_batches(c, base, stores[f"views{v}"], s))
            for v in c.views
        },
        "d_hard_augmented": lambda s: online_batches(c, base, None, s),
    }
    runs: dict[str, list[dict[str, Any]]] = {name: [] for name in arms}
    for seed in c.seeds:
        for name, make in arms.items():
            r = train_student(c, base, test, make(seed), seed)
            log(f"{name} seed {seed}: {100 * r['accuracy']:.2f}%")
            runs[name].append(r)
    for s in stores.values():
        s.close()
    res["runs"] = runs
    res["summary"] = {
        name: {
            "accuracy_mean": statistics.mean(r["accuracy"] for r in rs),
            "accuracy_std": statistics.stdev(r["accuracy"] for r in rs) if len(rs) > 1 else 0.0,
            "epoch_seconds_median": statistics.median(t for r in rs for t in r["epoch_seconds"]),
        }
        for name, rs in runs.items()
    }
    return res


def run_views(bench: Any) -> dict[str, Any]:
    """This section inside `make bench` (``bench.run``): its teacher 1 and working folder."""
    from bench.common import teacher_paths

    c = ViewsBench(
        data=bench.data, work=str(Path(bench.work) / "views"), teacher=str(teacher_paths(bench)[0])
    )
    if bench.quick:
        c = replace(c, **QUICK)
    return run(c)


QUICK = {"transfer_rows": 300, "views": (2, 4), "hidden": (32,), "epochs": 1, "seeds": (0, 1)}
SECTION = "## Stored augmentation views (`python -m bench.views`)"


def report_section(res: dict[str, Any]) -> str:
    c, s1, summary = res["config"], res["stage1"], res["summary"]
    online = summary["b_online_augmented"]["epoch_seconds_median"]
    lines = [
        SECTION,
        "",
        f"`python -m bench.views --data {c['data']}`: Fashion-MNIST, the first "
        f"{c['transfer_rows']:,} training images as the transfer set, bench's CNN teacher 1 "
        f"(test accuracy {100 * res['teacher_accuracy']:.2f}%), augmentation `{c['augment']}`. "
        f"Student MLP {list(c['hidden'])}, {c['epochs']} epochs, batch {c['batch_size']}, Adam "
        f"{c['lr']:g}, T = {c['temperature']:g}, alpha {c['alpha']}; test accuracy on the 10,000 "
        f"test images, {len(c['seeds'])} seeds. All runs share one training loop.",
        "",
        "| run | test accuracy | epoch seconds (median) | epoch vs (b) |",
        "|---|---|---|---|",
    ]
    for name, label in _labels(c):
        m = summary[name]
        lines.append(
            f"| {label} | {100 * m['accuracy_mean']:.2f} ± {100 * m['accuracy_std']:.2f}% | "
            f"{m['epoch_seconds_median']:.2f} | {m['epoch_seconds_median'] / online:.2f}× |"
        )
    lines += ["", "| store | rows | stage one seconds | bytes per view |", "|---|---|---|---|"]
    for name, m in s1.items():
        lines.append(f"| {name} | {m['rows']:,} | {m['seconds']:.1f} | {m['bytes_per_row']:.1f} |")
    top = next(n for n in s1 if "-top" in n)
    parts = ", ".join(f"{k} {v:.1f}" for k, v in s1[top]["bytes_by_array"].items())
    lines += ["", f"Bytes per view of `{top}` by array: {parts}.", "", *goals(res), ""]
    return "\n".join(lines)


def goals(res: dict[str, Any]) -> list[str]:
    """The issue's targets against this run's figures."""
    summary, s1 = res["summary"], res["stage1"]
    online = summary["b_online_augmented"]
    best = max(
        (n for n in summary if n.startswith("c_views")), key=lambda n: summary[n]["accuracy_mean"]
    )
    c = summary[best]
    gap = c["accuracy_mean"] - online["accuracy_mean"]
    noise = c["accuracy_std"] + online["accuracy_std"]
    ratio = c["epoch_seconds_median"] / online["epoch_seconds_median"]
    top = next(n for n in s1 if "-top" in n)
    rows = [
        (
            f"(c) at its best V ({best.removeprefix('c_views')}) matches (b) within the seed noise",
            f"{100 * gap:+.2f} points (noise {100 * noise:.2f})",
            abs(gap) <= noise,
        ),
        ("(c)'s epoch ≤ 1/5 of (b)'s", f"{ratio:.2f}×", ratio <= 0.2),
        (
            "≤ 32 bytes per view with a top-k store",
            f"{s1[top]['bytes_per_row']:.1f} ({top})",
            s1[top]["bytes_per_row"] <= 32,
        ),
    ]
    return goal_table(rows)


def _labels(c: dict[str, Any]) -> list[tuple[str, str]]:
    return [
        ("a_offline_plain", "(a) offline KD, plain store (no augmentation)"),
        ("b_online_augmented", "(b) online KD, augmented"),
        *[(f"c_views{v}", f"(c) offline KD, {v} stored views") for v in c["views"]],
        ("d_hard_augmented", "(d) hard labels, augmented"),
    ]


def write_section(res: dict[str, Any], report: Path) -> None:
    put_section(report, SECTION, report_section(res))


def main() -> None:
    p = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument("--data", default="/usr/share/datasets/fashion-mnist")
    p.add_argument("--work", default="data/fashion/views")
    p.add_argument("--teacher", default="data/fashion/teacher1.pt")
    p.add_argument("--out", default="bench/views.json")
    p.add_argument("--report", default=None, help="Also write the section into this file.")
    p.add_argument("--quick", action="store_true", help="Tiny sizes, for the smoke test.")
    a = p.parse_args()
    c = ViewsBench(data=a.data, work=a.work, teacher=a.teacher)
    if a.quick:
        c = ViewsBench(
            data=a.data,
            work=a.work,
            teacher=a.teacher,
            transfer_rows=300,
            views=(2, 4),
            hidden=(32,),
            epochs=1,
            seeds=(0, 1),
        )
    res = run(c)
    Path(a.out).write_text(json.dumps(res, indent=2))
    if a.report:
        write_section(res, Path(a.report))
    log(json.dumps(res["summary"], indent=2))


if __name__ == "__main__":
    main()

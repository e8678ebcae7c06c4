"""The `make distill` experiment: hard-label and distilled students with the same architecture,
epochs, batches and optimizer, over several seeds, beside the teachers' own figures read from
the stored eval-split logits (no teacher is run). Prints one table and writes results.json.

Each store is opened, verified and joined once, and each transfer set fingerprinted once, for
every run of the comparison.
"""

from __future__ import annotations

import json
import statistics
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import torch

from softlabels.errors import SoftLabelsError
from softlabels.join import withhold_labels
from softlabels.transfer import as_transfer
from trainer.data import join
from trainer.evaluate import teacher_metrics
from trainer.train import RunResult, TrainConfig, format_table, resolve_num_classes, train

_METRICS = ("accuracy", "nll", "ece", "teacher_agreement", "kl_to_teacher")


@dataclass(frozen=True)
class CompareConfig:
    base: TrainConfig  # the student: architecture, epochs, transfer, store, eval_store
    temperatures: tuple[float, ...]
    results: str  # path of results.json
    seeds: tuple[int, ...] = (0,)


def compare(config: CompareConfig) -> dict[str, Any]:
    base = config.base
    if base.store is None or base.eval_store is None or base.eval_split is None:
        raise SoftLabelsError("compare needs a store, an eval store and an eval split")
    if not config.seeds or len(set(config.seeds)) != len(config.seeds):
        raise SoftLabelsError(f"seeds must be distinct and at least one, got {config.seeds}")
    for t in config.temperatures:
        replace(base, temperature=t).validate()
    out = Path(base.out)
    # Open, verify and join every input before training anything, so a bad store or transfer
    # set never leaves half a comparison behind.
    data = as_transfer(base.transfer, base.split)
    eval_data = as_transfer(base.transfer, base.eval_split)
    with join(base.store, data) as store, join(base.eval_store, eval_data) as eval_store:
        data = withhold_labels(data, store)  # the store's -1 rules, for both students
        num_classes = resolve_num_classes(base, data, store)  # the hard baseline's C too
        objects = {"data": data, "eval_data": eval_data, "eval_store": eval_store}
        teachers = teacher_metrics(eval_store, torch.from_numpy(eval_data.label_array()))
        hard_base = replace(base, store=None, num_classes=num_classes)
        hard = [
            train(replace(hard_base, seed=s, out=str(out / "hard" / f"s{s}")), **objects)
            for s in config.seeds
        ]
        distilled = {
            t: [
                train(
                    replace(base, temperature=t, seed=s, out=str(out / f"kd-T{t:g}" / f"s{s}")),
                    store=store,
                    **objects,
                )
                for s in config.seeds
            ]
            for t in config.temperatures
        }

    rows = [(f"teacher {i + 1}", m) for i, m in enumerate(teachers["members"])]
    rows.append((f"ensemble ({teachers['combine']})", teachers["ensemble"]))
    rows.append((f"student, hard labels (n={len(config.seeds)})", summarise(hard)))
    rows += [
        (f"student, KD T={t:g} (n={len(config.seeds)})", summarise(r)) for t, r in distilled.items()
    ]
    kd = [summarise(r) for r in distilled.values()]
    results = {
        "teacher_accuracy": [m["accuracy"] for m in teachers["members"]],
        "ensemble_accuracy": teachers["ensemble"]["accuracy"],
        "teachers": teachers["members"],
        "ensemble": teachers["ensemble"],
        "student_hard": summarise(hard),
        "student_distilled": kd[0] if len(kd) == 1 else kd,
        "temperature": config.temperatures[0]
        if len(config.temperatures) == 1
        else list(config.temperatures),
        "seeds": list(config.seeds),
        "alpha": base.alpha,
        "beta": base.kd_weight,
        "loss": base.loss,
        "store": base.store,
        "eval_store": base.eval_store,
        "epochs": base.epochs,
        "table": format_table(rows),
    }
    path = Path(config.results)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps(results, indent=2))
    tmp.replace(path)
    return results


def summarise(runs: list[RunResult]) -> dict[str, Any]:
    """Final eval metrics of runs that differ only in seed: each metric's mean, plus
    ``accuracy_mean`` and ``accuracy_std`` (sample std; 0 for one run) and the per-seed values."""
    finals = [r.final for r in runs]
    summary: dict[str, Any] = {}
    for k in _METRICS:
        values = [f.get(f"eval_{k}") for f in finals]
        if all(v is not None for v in values):
            summary[k] = statistics.fmean(values)
    accuracies = [f.get("eval_accuracy") for f in finals]
    if all(a is not None for a in accuracies):
        summary["accuracy_mean"] = statistics.fmean(accuracies)
        summary["accuracy_std"] = statistics.stdev(accuracies) if len(accuracies) > 1 else 0.0
        summary["accuracy_per_seed"] = accuracies
    summary["seeds"] = [r.config.seed for r in runs]
    summary["epoch_seconds"] = statistics.median(r.epoch_seconds for r in runs)
    summary["temperature"] = runs[0].config.temperature if runs[0].config.store else None
    summary["models"] = [r.model_path for r in runs]
    return summary

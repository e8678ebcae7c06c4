"""The `make distill` experiment: a hard-label student and distilled student(s) with the same
architecture, seed and epochs, beside the teachers' own figures read from the stored test-split
logits (no teacher is run). Prints one table and writes results.json."""

from __future__ import annotations

import json
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import torch

from softlabels.store import StoreReader
from softlabels.transfer import load_transfer
from trainer.data import InMemoryTargets, open_joined_store
from trainer.evaluate import classification_metrics, member_metrics, teacher_log_probs
from trainer.train import RunResult, TrainConfig, format_table, train, train_sweep

_METRICS = ("accuracy", "nll", "ece")


@dataclass(frozen=True)
class CompareConfig:
    base: TrainConfig  # the student: architecture, seed, epochs, transfer, store, eval_store
    temperatures: tuple[float, ...]
    results: str  # path of results.json


def compare(config: CompareConfig) -> dict[str, Any]:
    base = config.base
    out = Path(base.out)
    # Check every input before training anything, so a bad store never leaves half a comparison.
    for t in config.temperatures:
        replace(base, temperature=t).validate()
    open_joined_store(base.store, load_transfer(base.transfer, base.split)).close()
    teachers = _teacher_rows(base)
    hard = train(replace(base, store=None, out=str(out / "hard")))
    distilled = train_sweep(replace(base, out=str(out / "distilled")), config.temperatures)

    rows = [(f"teacher {i + 1}", m) for i, m in enumerate(teachers["members"])]
    rows.append((f"ensemble ({teachers['combine']})", teachers["ensemble"]))
    rows.append(("student, hard labels", _summary(hard)))
    rows += [(f"student, KD T={r.config.temperature:g}", _summary(r)) for r in distilled]
    results = {
        "teacher_accuracy": [m["accuracy"] for m in teachers["members"]],
        "ensemble_accuracy": teachers["ensemble"]["accuracy"],
        "teachers": teachers["members"],
        "ensemble": teachers["ensemble"],
        "student_hard": _summary(hard),
        "student_distilled": _summary(distilled[0])
        if len(distilled) == 1
        else [_summary(r) for r in distilled],
        "temperature": config.temperatures[0]
        if len(config.temperatures) == 1
        else list(config.temperatures),
        "alpha": base.alpha,
        "beta": base.kd_weight,
        "loss": base.loss,
        "store": base.store,
        "eval_store": base.eval_store,
        "epochs": base.epochs,
        "seed": base.seed,
        "table": format_table(rows),
    }
    Path(config.results).parent.mkdir(parents=True, exist_ok=True)
    Path(config.results).write_text(json.dumps(results, indent=2))
    return results


def _summary(run: RunResult) -> dict[str, Any]:
    final = run.final
    summary = {k: final[f"eval_{k}"] for k in _METRICS}
    for extra in ("teacher_agreement", "kl_to_teacher"):
        if f"eval_{extra}" in final:
            summary[extra] = final[f"eval_{extra}"]
    summary["epoch_seconds"] = run.epoch_seconds
    summary["temperature"] = run.config.temperature if run.config.store else None
    summary["model"] = run.model_path
    return summary


def _teacher_rows(base: TrainConfig) -> dict[str, Any]:
    """Teacher and ensemble metrics on the eval split, from the eval store's logits."""
    if base.eval_store is None or base.eval_split is None:
        raise ValueError("compare needs an eval store (the teachers' logits on the eval split)")
    eval_data = load_transfer(base.transfer, base.eval_split)
    store: StoreReader = open_joined_store(base.eval_store, eval_data)
    with store:
        targets = InMemoryTargets(store, batch_size=1, seed=0)  # read the store once
        labels = torch.from_numpy(eval_data.label_array())  # equal to the store's, checked at join
        members = member_metrics(targets, labels)
        ensemble = classification_metrics(teacher_log_probs(store, targets=targets), labels)
        combine = store.meta.combine
    return {"members": members, "ensemble": ensemble, "combine": combine}

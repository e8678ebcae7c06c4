"""What a run writes besides checkpoints: metrics.jsonl, curves.png, and the results table."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any


def write_metrics(out: Path, history: list[dict[str, Any]]) -> None:
    tmp = out / "metrics.jsonl.tmp"
    try:
        tmp.write_text("".join(json.dumps(h) + "\n" for h in history))
        tmp.replace(out / "metrics.jsonl")
    except OSError:
        tmp.unlink(missing_ok=True)  # a full disk leaves no half-written file behind
        raise


def plot_curves(out: Path, history: list[dict[str, Any]]) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    epochs = [h["epoch"] for h in history]
    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(9, 3.5))
    ax1.plot(epochs, [h["train_loss"] for h in history], label="train loss")
    if "eval_nll" in history[0]:
        ax1.plot(epochs, [h["eval_nll"] for h in history], label="eval NLL")
        ax2.plot(epochs, [h["eval_accuracy"] for h in history], label="eval accuracy")
        ax2.set_ylabel("accuracy")
        ax2.legend()
    ax1.set_xlabel("epoch")
    ax2.set_xlabel("epoch")
    ax1.legend()
    fig.tight_layout()
    fig.savefig(out / "curves.png", dpi=100)
    plt.close(fig)


def format_table(rows: list[tuple[str, dict[str, Any]]]) -> str:
    """A fixed-width table of named metric dicts (accuracy, nll, ece, epoch_seconds); a value
    that does not apply (no labels) shows as n/a."""

    def cell(v: Any, fmt: str, width: int) -> str:
        return f"{'n/a':>{width}}" if v is None else f"{v:>{width}{fmt}}"

    lines = [f"{'model':<34} {'accuracy':>16} {'NLL':>8} {'ECE':>7} {'epoch s':>8}"]
    for name, m in rows:
        acc = m.get("accuracy")
        acc_text = "n/a" if acc is None else f"{acc:.2%}"
        if m.get("accuracy_std") is not None:
            acc_text = f"{m['accuracy_mean']:.2%} ± {m['accuracy_std']:.2%}"
        lines.append(
            f"{name:<34} {acc_text:>16} {cell(m.get('nll'), '.4f', 8)} "
            f"{cell(m.get('ece'), '.4f', 7)} {cell(m.get('epoch_seconds'), '.3f', 8)}"
        )
    return "\n".join(lines)

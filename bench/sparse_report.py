"""The sparse section of BENCHMARKS.md, and its plot, from ``results["sparse"]``."""

from __future__ import annotations

from pathlib import Path
from typing import Any


def _angle(store: dict[str, Any], t: str, which: str = "random") -> float:
    """The angle with the default estimator, ``bucket``."""
    audit = store["audit_random_student" if which == "random" else "audit_trained_student"]
    return audit[t]["angle_deg"]["bucket"]


def plot(sp: dict[str, Any], out: Path) -> str:
    import matplotlib
    import matplotlib.ticker

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(9, 3.4), sharey=True)
    for ax, x_key, label in (
        (axes[0], "bytes_per_entry", "bytes per entry (ids and tail included)"),
        (axes[1], "bytes_per_row", "bytes per row"),
    ):
        for sampled, marker in ((False, "o-"), (True, "s--")):
            stores = [s for s in sp["stores"] if bool(s["sample"]) == sampled]
            for t, color in (("1", "C0"), ("4", "C3")):
                ax.plot(
                    [s[x_key] for s in stores],
                    [_angle(s, t) for s in stores],
                    marker,
                    color=color,
                    label=f"T={t}, {'top K/2 + K/2 sampled' if sampled else 'top K'}",
                )
                for s in stores:
                    ax.annotate(f"K={s['k']}", (s[x_key], _angle(s, t)), fontsize=6)
        ax.set_xlabel(label)
        ax.set_xscale("log")
        ax.xaxis.set_major_formatter(matplotlib.ticker.ScalarFormatter())
        ax.xaxis.set_minor_formatter(matplotlib.ticker.NullFormatter())
    axes[0].set_ylabel("gradient angle to dense KD (degrees)")
    axes[0].legend(fontsize=7)
    fig.suptitle("sparse stores: angle of the KD gradient vs storage (random student logits)")
    fig.tight_layout()
    fig.savefig(out / "sparse_angle.png", dpi=110)
    plt.close(fig)
    return "sparse_angle.png"


def section(res: dict[str, Any], out: Path) -> list[str]:
    sp = res["sparse"]
    image = plot(sp, out)
    dense = sp["dense"]
    temps = [f"{t:g}" for t in sp["temperatures"]]
    date = res.get("sparse_date", res["date"])
    lines = [
        f"## Sparse stores of a {sp['classes']}-class teacher",
        "",
        f"Measured on {date} (`python -m bench.run --data DIR --only-sparse`, or the whole "
        f"`make bench`). Task: {sp['task']}; teacher test accuracy "
        f"{100 * sp['teacher_test_accuracy']:.2f}%. Dense float32 store: "
        f"{dense['bytes_per_row']:.0f} bytes/row. Each sparse store is `softlabels convert "
        f"dense.zarr topK.zarr --top-k K [--sample S]` (fixed-point values, step 1/16). "
        f"Students: MLP {sp['student']['hidden']}, Hinton loss at T={sp['student']['temperature']:g}, "
        f"alpha {sp['student']['alpha']}, over {len(dense['accuracy_per_seed'])} seeds. KL is "
        f"KL(dense_T || replay_T) over the stored ids plus the tail bucket; the angle is between "
        f"the KD gradients w.r.t. the student logits from dense and sparse targets (mean over "
        f"rows; the default `bucket` estimator; `softlabels audit` also reports `ht` and "
        f"`importance` for sampled stores).",
        "",
        "| store | K | bytes/entry | bytes/row | "
        + " | ".join(f"KL mean T={t}" for t in temps)
        + " | tail err T=4 | "
        + " | ".join(f"angle T={t} (random)" for t in temps)
        + " | angle T=4 (trained) | student accuracy | vs dense |",
        "|---" * (9 + 2 * len(temps)) + "|",
        f"| dense | all | — | {dense['bytes_per_row']:.0f} | "
        + " | ".join("0" for _ in temps)
        + " | 0 | "
        + " | ".join("0" for _ in temps)
        + f" | 0 | {100 * dense['accuracy_mean']:.2f} ± {100 * dense['accuracy_std']:.2f}% | — |",
    ]
    for s in sp["stores"]:
        rand = s["audit_random_student"]
        rel = s["accuracy_mean"] / dense["accuracy_mean"] - 1
        lines.append(
            f"| {s['name']} | {s['k']} | {s['bytes_per_entry']:.3f} | {s['bytes_per_row']:.1f} | "
            + " | ".join(f"{rand[t]['kl_mean']:.1e}" for t in temps)
            + f" | {rand['4']['tail_error_mean']:.1e} | "
            + " | ".join(f"{_angle(s, t):.1f}°" for t in temps)
            + f" | {_angle(s, '4', 'trained'):.1f}° | {100 * s['accuracy_mean']:.2f} ± "
            f"{100 * s['accuracy_std']:.2f}% | {100 * rel:+.2f}% |"
        )
    sampled = [s for s in sp["stores"] if "importance_estimator" in s]
    if sampled:
        lines += [
            "",
            "Students from the sampled stores use the `bucket` estimator (the default); with "
            "the `importance` estimator instead (the tail's mass spread over the sampled ids):",
            "",
            "| store | bucket | importance |",
            "|---|---|---|",
        ]
        for s in sampled:
            b = s["importance_estimator"]
            lines.append(
                f"| {s['name']} | {100 * s['accuracy_mean']:.2f} ± {100 * s['accuracy_std']:.2f}% "
                f"| {100 * b['accuracy_mean']:.2f} ± {100 * b['accuracy_std']:.2f}% |"
            )
    off = [f"{t:g}" for t in sp["off_anchor_temperatures"]]
    lines += [
        "",
        "Off the tail summary's anchor temperatures (1, 2, 4, 8) the tail's log-partition is "
        "interpolated; mean error of the tail's mass there (random-student audit):",
        "",
        "| store | " + " | ".join(f"tail err T={t}" for t in off) + " |",
        "|---" * (1 + len(off)) + "|",
    ]
    for s in sp["stores"]:
        rand = s["audit_random_student"]
        lines.append(
            f"| {s['name']} | "
            + " | ".join(f"{rand[t]['tail_error_mean']:.1e}" for t in off)
            + " |"
        )
    ratios = "; ".join(
        f"{st['student']}, batch {st['batch_size']}: **{st['kd_over_ce']:.3f}×**"
        for st in sp["step_time"]
    )
    lines += [
        "",
        f"KD step from the K = 64 store against a cross-entropy step on the same student "
        f"(medians of interleaved epochs; target ≤ 1.10): {ratios}.",
        "",
        f"![gradient angle against storage]({Path(out, image).as_posix()})",
        "",
    ]
    return lines

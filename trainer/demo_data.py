"""The transfer files of `make distill`: scikit-learn's digits, with the labels of only a small,
stratified, fixed subset of the training split known (Hinton et al.'s experiment: distillation
lets a student learn from a transfer set that is mostly unlabelled).

    python -m trainer.demo_data --fraction 0.1 --out data/digits

writes two .npz transfer sets with the same test split (every 5th image, all labelled):

    labelled-0.1.npz   x_train/y_train: only the labelled subset (the teachers train on it)
    transfer-0.1.npz   x_train/y_train: the whole training split, label -1 where unknown (the
                       store is made over it; hard-label and distilled students train on it)

Teachers and students see exactly the same labels; the students also see the teachers' soft
targets on the unlabelled rest.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np

from softlabels.transfer import load_transfer

SUBSET_SEED = 0


def labelled_subset(labels: np.ndarray, fraction: float, seed: int = SUBSET_SEED) -> np.ndarray:
    """(N,) bool: for each class, the first round(fraction * n_c) of its positions in a fixed
    random order (at least one per class)."""
    if not 0 < fraction <= 1:
        raise ValueError(f"fraction must be in (0, 1], got {fraction}")
    order = np.random.default_rng(seed).permutation(len(labels))
    keep = np.zeros(len(labels), dtype=bool)
    for c in np.unique(labels):
        of_class = order[labels[order] == c]
        keep[of_class[: max(1, round(fraction * len(of_class)))]] = True
    return keep


def write(out: Path, fraction: float) -> tuple[Path, Path]:
    train, test = load_transfer("digits", "train"), load_transfer("digits", "test")
    x, y = train.take(0, len(train)), train.label_array()
    keep = labelled_subset(y, fraction)
    common = {
        "x_test": test.take(0, len(test)),
        "y_test": test.label_array(),
        "class_names": np.array(train.class_names),
    }
    out.mkdir(parents=True, exist_ok=True)
    labelled, transfer = out / f"labelled-{fraction:g}.npz", out / f"transfer-{fraction:g}.npz"
    np.savez(labelled, x_train=x[keep], y_train=y[keep], **common)
    np.savez(transfer, x_train=x, y_train=np.where(keep, y, -1), **common)
    return labelled, transfer


def main() -> None:
    p = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument("--fraction", type=float, default=0.1, help="Share of training labels known.")
    p.add_argument("--out", default="data/digits", help="Folder for the two .npz files.")
    a = p.parse_args()
    if not 0 < a.fraction <= 1:
        p.error(f"--fraction must be in (0, 1], got {a.fraction}")
    for path in write(Path(a.out), a.fraction):
        print(f"wrote {path}")


if __name__ == "__main__":
    main()

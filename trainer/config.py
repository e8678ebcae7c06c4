"""The training configuration (one frozen dataclass) and the result of a run."""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import numpy as np

from softlabels.errors import SoftLabelsError
from softlabels.sparse import ESTIMATORS
from trainer import losses, modules

# --loss NAME -> the loss module, built from the config (no if-chain on strings).
LOSSES: dict[str, Any] = {
    "hinton": lambda c: modules.HintonKD(c.alpha, c.beta, temperature=c.temperature),
    "soft_ce": lambda c: modules.SoftCE(temperature=c.temperature),
    "logits": lambda c: modules.LogitMatching(),
    "soft_only": lambda c: modules.HintonKD(0.0, 1.0, temperature=c.temperature),
}


@dataclass(frozen=True)
class TrainConfig:
    out: str
    transfer: str = "digits"
    split: str = "train"
    eval_split: str | None = "test"
    store: str | None = None  # None: train on hard labels (teachers, baselines)
    eval_store: str | None = None  # store over the eval split: agreement and KL to the teacher
    num_classes: int | None = None  # None: from the store, else the transfer set's class names
    model: str = "mlp"  # mlp | cnn | module:function
    hidden: tuple[int, ...] = (128,)
    channels: tuple[int, ...] = (32, 64)
    fc: int = 128
    dropout: float = 0.0
    loss: str = "hinton"
    temperature: float = 4.0
    estimator: str | None = None  # sparse stores: softlabels.sparse.ESTIMATORS; None: default
    alpha: float = 0.1  # weight of the hard-label CE term
    beta: float | None = None  # weight of the T^2 KL term; None means 1 - alpha
    epochs: int = 10
    batch_size: int = 128
    lr: float = 1e-3
    weight_decay: float = 0.0
    seed: int = 0
    memory_budget_mb: float = 1024.0
    views_per_epoch: int = 1  # views stores: stored views each sample takes per epoch
    augment: str | None = None  # views stores of a module:function policy: that SPEC again
    save: str | None = None  # extra copy of the final model, e.g. data/digits/teacher1.pt
    resume: bool = False
    overwrite: bool = False
    progress: bool = True
    device: str = "auto"  # auto | cpu | cuda | cuda:N | mps
    precision: str = "fp32"  # the student's forward pass: fp32 or bf16 (autocast)

    @property
    def kd_weight(self) -> float:
        return 1.0 - self.alpha if self.beta is None else self.beta

    def validate(self) -> None:
        try:
            losses.check_temperature(self.temperature)
            losses.check_weight("alpha", self.alpha)
            losses.check_weight("beta", self.kd_weight)
        except ValueError as exc:
            raise SoftLabelsError(str(exc)) from exc
        if self.estimator is not None and self.estimator not in ESTIMATORS:
            raise SoftLabelsError(f"estimator must be one of {ESTIMATORS}, got {self.estimator!r}")
        if self.views_per_epoch < 1:
            raise SoftLabelsError(f"views per epoch must be at least 1, got {self.views_per_epoch}")
        if self.loss not in LOSSES:
            raise SoftLabelsError(f"loss must be one of {tuple(LOSSES)}, got {self.loss!r}")
        for name in ("epochs", "batch_size"):
            if getattr(self, name) < 1:
                raise SoftLabelsError(f"{name} must be at least 1, got {getattr(self, name)}")
        if not (math.isfinite(self.lr) and self.lr > 0):
            raise SoftLabelsError(f"lr must be a finite number > 0, got {self.lr}")
        if not self.memory_budget_mb > 0:
            raise SoftLabelsError(f"memory_budget_mb must be > 0, got {self.memory_budget_mb}")
        if self.resume and self.overwrite:
            raise SoftLabelsError("resume and overwrite contradict each other; pick one")
        if self.precision not in ("fp32", "bf16"):
            raise SoftLabelsError(f"student precision must be fp32 or bf16, got {self.precision!r}")
        if self.num_classes is not None and self.num_classes < 2:
            raise SoftLabelsError(f"num_classes must be at least 2, got {self.num_classes}")


@dataclass(frozen=True)
class RunResult:
    config: TrainConfig
    history: list[dict[str, Any]]
    model_path: str

    @property
    def final(self) -> dict[str, Any]:
        return self.history[-1]

    @property
    def epoch_seconds(self) -> float:
        """Median training time of an epoch (evaluation excluded)."""
        return float(np.median([h["epoch_seconds"] for h in self.history]))

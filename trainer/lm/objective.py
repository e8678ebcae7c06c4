"""What ``train_lm`` optimises: the loss module an ``LMConfig`` names, and the checks that a
store's sparse layout and a replay estimator suit it."""

from __future__ import annotations

from typing import TYPE_CHECKING

from softlabels.errors import SoftLabelsError
from softlabels.sparse import ESTIMATORS
from softlabels.store import StoreReader
from trainer.divergences import DIVERGENCES, DivergenceKD
from trainer.modules import HardCE, HintonKD

if TYPE_CHECKING:
    from trainer.lm.train import LMConfig


def check_estimator(store: StoreReader, estimator: str | None) -> None:
    """An estimator applies to sparse stores, and all but bucket to those with sampled ids."""
    if estimator is None:
        return
    if estimator not in ESTIMATORS:
        raise SoftLabelsError(f"estimator must be one of {ESTIMATORS}, got {estimator!r}")
    sparse = store.meta.sparse
    if sparse is None:
        raise SoftLabelsError(
            f"estimator {estimator!r} applies to sparse stores; {store.path!r} is dense: leave "
            f"the estimator unset"
        )
    if estimator != "bucket" and not sparse.sample:
        raise SoftLabelsError(
            f"estimator {estimator!r} reweights sampled ids, and {store.path!r} keeps its top "
            f"{sparse.top_k} ids only: use 'bucket'"
        )


def kd_loss(config: LMConfig) -> HintonKD | DivergenceKD | HardCE:
    """The loss module ``config`` asks for: CE alone, or alpha CE plus the KD term at T."""
    if not config.kd:
        return HardCE()
    if config.loss not in DIVERGENCES:
        raise SoftLabelsError(f"loss must be one of {DIVERGENCES}, got {config.loss!r}")
    if not 0.0 <= config.jsd_beta <= 1.0:
        raise SoftLabelsError(f"jsd_beta must be in [0, 1], got {config.jsd_beta}")
    if config.loss == "forward-kl":
        return HintonKD(config.alpha, temperature=config.temperature)
    return DivergenceKD(
        config.alpha, temperature=config.temperature, divergence=config.loss, beta=config.jsd_beta
    )


def check_loss(store: StoreReader, config: LMConfig) -> None:
    """Reverse KL and JSD take a sparse store's bucket form only (``trainer.divergences``)."""
    if config.loss == "forward-kl" or store.meta.sparse is None or not config.kd:
        return
    if config.estimator not in (None, "bucket"):
        raise SoftLabelsError(
            f"the {config.loss} loss compares the stored ids plus one bucket for the rest; the "
            f"{config.estimator!r} estimator reweights sampled ids for the forward KL: use "
            f"'bucket' (or leave the estimator unset)"
        )


def estimator_for(store: StoreReader, config: LMConfig) -> str | None:
    """The replay estimator: the forward KL's default, or the bucket for the other losses."""
    if config.loss != "forward-kl" and store.meta.sparse is not None:
        return "bucket"
    return config.estimator

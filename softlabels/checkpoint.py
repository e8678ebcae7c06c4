"""Checkpoints: a plain dict saved with torch.save, loaded with ``weights_only=True``.

Keys: ``format`` ("softlabels-checkpoint"), ``version`` (1), ``arch`` (see models.py),
``model`` (state_dict), ``config`` and ``metrics`` (JSON-able dicts), and for training resume
``optimizer``, ``epoch`` and ``rng``. Writes go to a temporary file swapped in with os.replace,
so a crash never leaves a half-written checkpoint under the real name.
"""

from __future__ import annotations

import os
import pickle
from pathlib import Path
from typing import Any

import torch
from torch import nn

from softlabels.errors import CheckpointError
from softlabels.models import build_model

CHECKPOINT_FORMAT = "softlabels-checkpoint"
CHECKPOINT_VERSION = 1


def save_checkpoint(path: str | os.PathLike[str], payload: dict[str, Any]) -> None:
    """Atomically write ``payload`` (which must hold ``arch`` and ``model``) to ``path``."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    torch.save({"format": CHECKPOINT_FORMAT, "version": CHECKPOINT_VERSION, **payload}, tmp)
    os.replace(tmp, path)


def load_checkpoint(path: str | os.PathLike[str]) -> dict[str, Any]:
    """Load and validate a checkpoint. Never unpickles arbitrary objects."""
    if not os.path.isfile(path):
        raise CheckpointError(f"checkpoint {str(path)!r} does not exist")
    with open(path, "rb") as f:
        magic = f.read(4)
    if magic != b"PK\x03\x04" and magic[:1] != b"\x80":  # torch.save zip, or a legacy pickle
        raise CheckpointError(f"{str(path)!r} is not a PyTorch checkpoint file")
    try:
        ckpt = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as exc:
        reason = next((line.strip() for line in str(exc).splitlines() if "Unsupported" in line), "")
        raise CheckpointError(
            f"refusing to load {str(path)!r}: it holds objects other than tensors and plain data, "
            f"which could run code on load. {reason}".strip()
        ) from exc
    except Exception as exc:
        raise CheckpointError(f"cannot read checkpoint {str(path)!r}: {exc}") from exc
    if not isinstance(ckpt, dict) or ckpt.get("format") != CHECKPOINT_FORMAT:
        raise CheckpointError(
            f"{str(path)!r} is not a softlabels checkpoint (no format={CHECKPOINT_FORMAT!r})"
        )
    if ckpt.get("version") != CHECKPOINT_VERSION:
        raise CheckpointError(
            f"{str(path)!r} has checkpoint version {ckpt.get('version')!r}; expected {CHECKPOINT_VERSION}"
        )
    for key in ("arch", "model"):
        if key not in ckpt:
            raise CheckpointError(f"checkpoint {str(path)!r} has no {key!r} entry")
    return ckpt


def load_model(path: str | os.PathLike[str]) -> tuple[nn.Module, dict[str, Any]]:
    """Rebuild the model a checkpoint describes and load its weights. Returns (model, arch)."""
    ckpt = load_checkpoint(path)
    model = build_model(ckpt["arch"])
    try:
        model.load_state_dict(ckpt["model"])
    except RuntimeError as exc:
        raise CheckpointError(
            f"weights in {str(path)!r} do not fit its architecture: {exc}"
        ) from exc
    return model.eval(), ckpt["arch"]

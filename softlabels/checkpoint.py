"""Checkpoints: a plain dict saved with torch.save, loaded with ``weights_only=True``.

Keys: ``format`` ("softlabels-checkpoint"), ``version`` (1), ``arch`` (see models.py),
``model`` (state_dict), ``config`` and ``metrics`` (JSON-able dicts), and for training resume
``optimizer``, ``epoch`` and ``rng``. Writes go to a temporary file swapped in with os.replace,
so a crash never leaves a half-written checkpoint under the real name.
"""

from __future__ import annotations

import os
import pickle
import shutil
from pathlib import Path
from typing import Any

import torch
from torch import nn

from softlabels.errors import CheckpointError
from softlabels.models import build_model
from softlabels.store.failures import is_disk_full

CHECKPOINT_FORMAT = "softlabels-checkpoint"
CHECKPOINT_VERSION = 1
DISK_FULL_BYTES = 1 << 20  # a write that fails with less free than this ran out of space


def save_checkpoint(path: str | os.PathLike[str], payload: dict[str, Any]) -> None:
    """Atomically write ``payload`` (which must hold ``arch`` and ``model``) to ``path``."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    try:
        with open(tmp, "wb") as f:  # closed here even when the write fails
            torch.save({"format": CHECKPOINT_FORMAT, "version": CHECKPOINT_VERSION, **payload}, f)
        os.replace(tmp, path)
    except (OSError, RuntimeError) as exc:  # torch's zip writer reports a full disk as
        tmp.unlink(missing_ok=True)  # RuntimeError("... unexpected pos ..."): no errno
        raise CheckpointError(_write_failure(path, exc)) from exc


def _write_failure(path: Path, exc: BaseException) -> str:
    free = shutil.disk_usage(path.parent).free
    text = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
    if is_disk_full(exc) or "unexpected pos" in text or free < DISK_FULL_BYTES:
        return (
            f"cannot write the checkpoint {str(path)!r}: the disk is full ({free:,} bytes free); "
            f"free some space and run again (the previous checkpoint, if any, is kept as it was)"
        )
    return f"cannot write the checkpoint {str(path)!r}: {text}"


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
    try:
        model = build_model(ckpt["arch"])
    except CheckpointError as exc:
        raise CheckpointError(f"checkpoint {str(path)!r}: {exc}") from exc
    try:
        model.load_state_dict(ckpt["model"])
    except RuntimeError as exc:
        raise CheckpointError(
            f"weights in {str(path)!r} do not fit its architecture: {exc}"
        ) from exc
    return model.eval(), ckpt["arch"]

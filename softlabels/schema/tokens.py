"""The ``tokens`` root attribute: the store's rows are token positions of a language model's
transfer set (FORMAT.md, "Token stores")."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from softlabels.schema.fields import int_field

SHIFT = "row t predicts the token at t + 1"
WINDOW_MODES = ("truncate", "window", "pack")


@dataclass(frozen=True)
class TokenSpec:
    """What the token rows condition on and how they were cut into sequences."""

    tokenizer: str | None  # "sha256:..." of the tokenizer, None for pre-tokenised input
    tokenizer_vocab_size: int | None
    max_length: int
    window: str
    special_tokens: dict[str, int] = field(default_factory=dict)
    pad_id: int = 0
    shift: str = SHIFT
    # the sequences' loss mask, {"fingerprint": "sha256:...", "rows": n}; None: no mask
    loss_mask: dict[str, Any] | None = None
    # text tokenised here: whether the tokenizer's special tokens were added, the BOS it put
    # first in each document and its end-of-sequence token; None (not written) when unknown:
    # pre-tokenised input, or a store written before these keys
    add_special_tokens: bool | None = None
    bos_id: int | None = None
    eos_id: int | None = None

    def to_attr(self) -> dict[str, Any]:
        optional = {
            key: value
            for key, value in (
                ("add_special_tokens", self.add_special_tokens),
                ("bos_id", self.bos_id),
                ("eos_id", self.eos_id),
            )
            if value is not None
        }
        if self.loss_mask is not None:
            optional["loss_mask"] = dict(self.loss_mask)
        return {
            "tokenizer": self.tokenizer,
            "tokenizer_vocab_size": self.tokenizer_vocab_size,
            "max_length": self.max_length,
            "window": self.window,
            "special_tokens": dict(self.special_tokens),
            "pad_id": self.pad_id,
            "shift": self.shift,
        } | optional

    @classmethod
    def from_attr(cls, entry: Any) -> TokenSpec:
        if not isinstance(entry, dict):
            raise ValueError(f"tokens must be an object, got {entry!r}")
        if entry.get("shift") != SHIFT:
            raise ValueError(f"tokens.shift must be {SHIFT!r}, got {entry.get('shift')!r}")
        if entry.get("window") not in WINDOW_MODES:
            raise ValueError(f"tokens.window must be one of {WINDOW_MODES}")
        specials = entry.get("special_tokens", {})
        if not isinstance(specials, dict) or not all(
            isinstance(v, int) and not isinstance(v, bool) for v in specials.values()
        ):
            raise ValueError("tokens.special_tokens must map names to integer ids")
        vocab = entry.get("tokenizer_vocab_size")
        return cls(
            tokenizer=None if entry.get("tokenizer") is None else str(entry["tokenizer"]),
            tokenizer_vocab_size=None
            if vocab is None
            else int_field(entry, "tokenizer_vocab_size", minimum=1),
            max_length=int_field(entry, "max_length", minimum=2),
            window=str(entry["window"]),
            special_tokens={str(k): int(v) for k, v in specials.items()},
            pad_id=int_field(entry, "pad_id", minimum=0),
            loss_mask=_loss_mask(entry.get("loss_mask")),
            add_special_tokens=_optional_bool(entry, "add_special_tokens"),
            bos_id=None if entry.get("bos_id") is None else int_field(entry, "bos_id", minimum=0),
            eos_id=None if entry.get("eos_id") is None else int_field(entry, "eos_id", minimum=0),
        )


def _optional_bool(entry: dict[str, Any], key: str) -> bool | None:
    value = entry.get(key)
    if value is not None and not isinstance(value, bool):
        raise ValueError(f"tokens.{key} must be true, false or absent, got {value!r}")
    return value


def _loss_mask(entry: Any) -> dict[str, Any] | None:
    """``tokens.loss_mask``: absent or null, or a fingerprint and a row count."""
    if entry is None:
        return None
    fingerprint = entry.get("fingerprint") if isinstance(entry, dict) else None
    if not isinstance(fingerprint, str) or not fingerprint.startswith("sha256:"):
        raise ValueError(f"tokens.loss_mask must hold a sha256: fingerprint, got {entry!r}")
    return {"fingerprint": fingerprint, "rows": int_field(entry, "rows", minimum=0)}

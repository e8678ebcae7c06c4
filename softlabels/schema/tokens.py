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

    def to_attr(self) -> dict[str, Any]:
        mask = {} if self.loss_mask is None else {"loss_mask": dict(self.loss_mask)}
        return mask | {
            "tokenizer": self.tokenizer,
            "tokenizer_vocab_size": self.tokenizer_vocab_size,
            "max_length": self.max_length,
            "window": self.window,
            "special_tokens": dict(self.special_tokens),
            "pad_id": self.pad_id,
            "shift": self.shift,
        }

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
        )


def _loss_mask(entry: Any) -> dict[str, Any] | None:
    """``tokens.loss_mask``: absent or null, or a fingerprint and a row count."""
    if entry is None:
        return None
    fingerprint = entry.get("fingerprint") if isinstance(entry, dict) else None
    if not isinstance(fingerprint, str) or not fingerprint.startswith("sha256:"):
        raise ValueError(f"tokens.loss_mask must hold a sha256: fingerprint, got {entry!r}")
    return {"fingerprint": fingerprint, "rows": int_field(entry, "rows", minimum=0)}

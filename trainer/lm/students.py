"""Causal-LM students: the built-in GPT, ``hf:DIR`` (a local transformers model, safetensors
weights) or ``module:function`` (called as ``function(vocab_size=V, max_length=L)``, returning
an ``nn.Module`` that maps (B, L) int64 ids and an attention mask to (B, L, V) logits).

A trained student is saved without pickle: a transformers model with ``save_pretrained`` (so
``hf:OUT/student`` loads it back, as a student or as a teacher), any other module as
``student.safetensors``.
"""

from __future__ import annotations

import inspect
from pathlib import Path

from torch import nn

from softlabels.errors import SpecError
from softlabels.lm.models import HF_PREFIX, CausalLM, load_hf

BUILTIN = "gpt"


def gpt_student(vocab_size: int, *, max_length: int, width: int = 64, layers: int = 2) -> nn.Module:
    """A small GPT-2 (transformers) with random weights, returning (B, L, V) float32 logits."""
    from transformers import GPT2Config, GPT2LMHeadModel

    config = GPT2Config(
        vocab_size=vocab_size,
        n_positions=max_length,
        n_embd=width,
        n_layer=layers,
        n_head=_heads(width),
        bos_token_id=0,
        eos_token_id=0,
    )
    return CausalLM(GPT2LMHeadModel(config))


def _heads(width: int) -> int:
    """Attention heads of about 32 dimensions each, dividing the width."""
    return max(h for h in range(1, max(1, width // 32) + 1) if width % h == 0)


def load_student(
    spec: str, *, vocab_size: int, max_length: int, width: int = 64, layers: int = 2
) -> nn.Module:
    """The student named by ``spec`` ("gpt", "hf:DIR" or "module:function"), in train mode."""
    if spec == BUILTIN:
        return gpt_student(vocab_size, max_length=max_length, width=width, layers=layers)
    if spec.startswith(HF_PREFIX):
        return load_hf(spec).train()
    if ":" in spec and "/" not in spec.split(":")[0]:
        from softlabels.transfer import import_callable

        fn = import_callable(spec)
        try:
            inspect.signature(fn).bind(vocab_size=vocab_size, max_length=max_length)
        except TypeError as exc:
            raise SpecError(
                f"student {spec!r} must accept the keywords vocab_size= and max_length= ({exc})"
            ) from exc
        module = fn(vocab_size=vocab_size, max_length=max_length)
        if not isinstance(module, nn.Module):
            raise SpecError(f"student {spec!r} returned {type(module).__name__}, not an nn.Module")
        return module.train()
    raise SpecError(f"student {spec!r} is none of 'gpt', 'hf:DIR' or 'module:function'")


def save_student(student: nn.Module, folder: Path) -> Path:
    """Write the trained student under ``folder``; returns what a later run loads."""
    folder.mkdir(parents=True, exist_ok=True)
    if isinstance(student, CausalLM):
        target = folder / "student"
        student.model.save_pretrained(str(target), safe_serialization=True)
        return target
    from safetensors.torch import save_model

    target = folder / "student.safetensors"
    save_model(student, str(target))  # shared (tied) weights are written once
    return target


__all__ = ["BUILTIN", "gpt_student", "load_student", "save_student"]

"""Causal-LM students: the built-in GPT, ``hf:DIR`` (a local transformers model, safetensors
weights) or ``module:function`` (called as ``function(vocab_size=V, max_length=L)``, returning
an ``nn.Module`` that maps (B, L) int64 ids and an attention mask to (B, L, V) logits).

A trained student is saved without pickle: a transformers model with ``save_pretrained`` (so
``hf:OUT/student`` loads it back, as a student or as a teacher), any other module as
``student.safetensors``. Given the tokenizer the store's sequences were made with, a
transformers student's folder also carries that tokenizer's files, with its BOS, EOS and padding
tokens named, so ``AutoTokenizer.from_pretrained(OUT/student)`` encodes as it does and the
folder passes the tokenizer check as an ``hf:`` teacher or student.
"""

from __future__ import annotations

import inspect
from dataclasses import dataclass
from pathlib import Path

from torch import nn

from softlabels.errors import SpecError
from softlabels.lm.models import HF_PREFIX, CausalLM, load_hf
from softlabels.lm.tokenizer import TOKENIZER_FILES, TokenizerInfo

BUILTIN = "gpt"


@dataclass(frozen=True)
class SpecialIds:
    """The ids a student's config names: the BOS its tokenizer puts first (None: none), its
    end-of-sequence token and the padding id (None: unknown)."""

    bos: int | None = None
    eos: int | None = None
    pad: int | None = None


def gpt_student(
    vocab_size: int,
    *,
    max_length: int,
    width: int = 64,
    layers: int = 2,
    special: SpecialIds = SpecialIds(),
) -> nn.Module:
    """A small GPT-2 (transformers) with random weights, returning (B, L, V) float32 logits.
    Its config names the tokenizer's ``special`` ids; without a BOS of its own the BOS is the
    EOS, as GPT-2's (a tokenizer that puts none first)."""
    from transformers import GPT2Config, GPT2LMHeadModel

    config = GPT2Config(
        vocab_size=vocab_size,
        n_positions=max_length,
        n_embd=width,
        n_layer=layers,
        n_head=_heads(width),
        bos_token_id=special.eos if special.bos is None else special.bos,
        eos_token_id=special.eos,
        pad_token_id=special.pad,
    )
    return CausalLM(GPT2LMHeadModel(config))


def _heads(width: int) -> int:
    """Attention heads of about 32 dimensions each, dividing the width."""
    return max(h for h in range(1, max(1, width // 32) + 1) if width % h == 0)


def load_student(
    spec: str,
    *,
    vocab_size: int,
    max_length: int,
    width: int = 64,
    layers: int = 2,
    special: SpecialIds = SpecialIds(),
) -> nn.Module:
    """The student named by ``spec`` ("gpt", "hf:DIR" or "module:function"), in train mode;
    the built-in one names the tokenizer's ``special`` ids in its config."""
    if spec == BUILTIN:
        return gpt_student(
            vocab_size, max_length=max_length, width=width, layers=layers, special=special
        )
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


def save_student(
    student: nn.Module, folder: Path, *, tokenizer: TokenizerInfo | None = None
) -> Path:
    """Write the trained student under ``folder``; returns what a later run loads. A
    transformers student's folder also gets ``tokenizer``'s files (``save_tokenizer``)."""
    folder.mkdir(parents=True, exist_ok=True)
    if isinstance(student, CausalLM):
        target = folder / "student"
        student.model.save_pretrained(str(target), safe_serialization=True)
        if tokenizer is not None:
            save_tokenizer(tokenizer, target)
        return target
    from safetensors.torch import save_model

    target = folder / "student.safetensors"
    save_model(student, str(target))  # shared (tied) weights are written once
    return target


def save_tokenizer(tokenizer: TokenizerInfo, target: Path) -> None:
    """Write ``tokenizer`` (loaded from a ``tokenizer.json`` or a transformers folder) into
    ``target`` as ``AutoTokenizer`` loads it: a folder as it loads itself, a file as a fast
    tokenizer over that file, with its BOS (when it puts one first), EOS and padding tokens
    named, so both encode alike."""
    from transformers import AutoTokenizer, PreTrainedTokenizerFast

    if tokenizer.source is None:
        raise SpecError("the tokenizer was not loaded from a file or folder: nothing to save")
    source = Path(tokenizer.source)
    names = {i: t for t, i in tokenizer.tokens.items()}
    named = {
        f"{role}_token": names[i]
        for role, i in (
            ("bos", tokenizer.bos_id),
            ("eos", tokenizer.eos_id),
            ("pad", tokenizer.pad_id),
        )
        if i is not None and i in names
    }
    if source.is_dir() and any((source / name).is_file() for name in TOKENIZER_FILES):
        tok = AutoTokenizer.from_pretrained(str(source), local_files_only=True)
        missing = {k: v for k, v in named.items() if getattr(tok, k) is None}
        if missing:  # a config that does not name a token its tokenizer uses
            tok.add_special_tokens(missing)
    else:
        tok = PreTrainedTokenizerFast(tokenizer_file=str(source), **named)
    tok.save_pretrained(str(target))


__all__ = ["BUILTIN", "SpecialIds", "gpt_student", "load_student", "save_student"]

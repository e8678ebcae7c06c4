"""Causal language models as teachers: ``hf:DIR`` loads a local ``transformers`` model.

Only safetensors weights are loaded (``use_safetensors=True``, ``local_files_only=True``): a
teacher never unpickles and never downloads. ``CausalLM`` maps int64 token ids (B, L) and an
attention mask to float32 logits (B, L, V), where V is the size of the model's output head
(which may be padded beyond the tokenizer's vocabulary: it is recorded, not assumed).

A teacher's folder may carry its tokenizer (``tokenizer.json``, or the files ``AutoTokenizer``
loads); ``check_tokenizers`` refuses an ensemble whose members' tokenizers differ, or sequences
made with another tokenizer than theirs. A teacher without one is checked by head size only.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path

import numpy as np
import torch
from torch import nn

from softlabels.device import autocast
from softlabels.errors import MismatchError, TeacherError
from softlabels.lm.text import TokenSequences
from softlabels.lm.tokenizer import TOKENIZER_FILES, Vocabulary, load_tokenizer

HF_PREFIX = "hf:"


class CausalLM(nn.Module):
    """A ``transformers`` causal LM returning only its logits, in float32."""

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model = model

    @property
    def vocab_size(self) -> int:
        return int(self.model.get_output_embeddings().weight.shape[0])

    def forward(
        self, input_ids: torch.Tensor, attention_mask: torch.Tensor | None = None
    ) -> torch.Tensor:
        out = self.model(input_ids=input_ids, attention_mask=attention_mask)
        return out.logits.float()

    @property
    def head(self) -> nn.Module:
        """The output head: logits = head(hidden_states(...)) for a plain linear head."""
        return self.model.get_output_embeddings()

    def hidden_states(
        self, input_ids: torch.Tensor, attention_mask: torch.Tensor | None = None
    ) -> torch.Tensor:
        """(B, L, H): what the head reads (the base model's last hidden state)."""
        base = self.model.base_model
        return base(input_ids=input_ids, attention_mask=attention_mask).last_hidden_state

    @torch.no_grad()
    def head_is_linear(self) -> bool:
        """True when the logits are exactly a linear head over ``hidden_states`` (no logit
        scaling or soft-capping), checked on a short probe: what a chunked loss relies on."""
        head = self.head
        if not isinstance(head, nn.Linear):
            return False
        device = head.weight.device
        ids = torch.arange(4, device=device)[None] % head.out_features
        was_training = self.training
        self.eval()
        try:
            plain = self(ids)
            split = head(self.hidden_states(ids)).float()
        finally:
            self.train(was_training)
        return bool(torch.allclose(plain, split, rtol=1e-4, atol=1e-5))


def load_hf(spec: str) -> CausalLM:
    """The model in the local directory of ``hf:DIR``, in eval mode."""
    folder = Path(spec.removeprefix(HF_PREFIX))
    if not (folder / "config.json").is_file():
        raise TeacherError(f"{spec!r}: {str(folder)!r} is not a transformers model directory")
    if not any(folder.glob("*.safetensors")):
        raise TeacherError(
            f"{spec!r} has no .safetensors weights; models are never unpickled here, so "
            f"convert it (model.save_pretrained(DIR, safe_serialization=True))"
        )
    from transformers import AutoModelForCausalLM

    try:
        model = AutoModelForCausalLM.from_pretrained(
            str(folder), local_files_only=True, use_safetensors=True
        )
    except (OSError, ValueError) as exc:
        raise TeacherError(f"{spec!r} could not be loaded as a causal LM: {exc}") from exc
    return CausalLM(model).eval()


@torch.inference_mode()
def sequence_logits(
    module: nn.Module,
    sequences: list[np.ndarray],
    *,
    pad_id: int = 0,
    precision: str = "fp32",
) -> list[np.ndarray]:
    """The logits (L_i, V) float32 of each sequence, run as one right-padded batch with an
    attention mask, so padding never changes a real position's logits beyond float rounding.
    The batch runs on the device of ``module``'s parameters, under autocast at ``precision``
    ("fp32", "bf16" or "fp16"); the logits come back as float32 copies on the CPU."""
    logits = batch_logits(module, sequences, pad_id=pad_id, precision=precision).cpu().numpy()
    return [logits[i, : len(s)] for i, s in enumerate(sequences)]


@torch.inference_mode()
def batch_logits(
    module: nn.Module,
    sequences: list[np.ndarray],
    *,
    pad_id: int = 0,
    precision: str = "fp32",
) -> torch.Tensor:
    """``sequence_logits`` left on the device: (B, longest, V) float32, padding included."""
    longest = max(len(s) for s in sequences)
    ids = torch.full((len(sequences), longest), pad_id, dtype=torch.long)
    mask = torch.zeros((len(sequences), longest), dtype=torch.long)
    for i, s in enumerate(sequences):
        ids[i, : len(s)] = torch.from_numpy(np.asarray(s, dtype=np.int64))
        mask[i, : len(s)] = 1
    device = next(module.parameters(), torch.empty(0)).device
    try:
        with autocast(device, precision):
            out = module(ids.to(device), attention_mask=mask.to(device))
    except Exception as exc:  # a user's model: one clear error, and generate-lm cleans up
        detail = str(exc).splitlines()[0] if str(exc) else ""
        raise TeacherError(
            f"the teacher failed on a batch of {len(sequences)} sequences of up to {longest} "
            f"tokens: {type(exc).__name__}: {detail}"
        ) from exc
    return out.float()


CONTEXT_KEYS = ("n_positions", "max_position_embeddings", "n_ctx", "seq_length")


def context_length(module: nn.Module) -> tuple[int, str] | None:
    """(the most positions a causal LM reads, the config key that says so), or None when its
    config names none (a ``module:function`` model). RoPE models (Llama, Qwen2) compute any
    position, but past ``max_position_embeddings`` they extrapolate beyond their training."""
    model = module.model if isinstance(module, CausalLM) else module
    config = getattr(model, "config", None)
    for key in CONTEXT_KEYS:
        value = getattr(config, key, None)
        if isinstance(value, int) and not isinstance(value, bool) and value > 0:
            return value, key
    return None


def check_context(models: Mapping[str, nn.Module], length: int, *, role: str) -> None:
    """Refuse, before anything is written or trained, sequences longer than a model's context:
    the error names both numbers and the fix."""
    for name, module in models.items():
        found = context_length(module)
        if found is not None and length > found[0]:
            raise MismatchError(
                f"{role} {name!r} reads at most {found[0]} positions ({found[1]} in its config), "
                f"and the sequences run to {length} tokens: cut them to at most {found[0]} "
                f"tokens (the maximum length), or use a {role} with a longer context"
            )


def config_bos(module: nn.Module) -> int | None:
    """The BOS id a causal LM was trained to read first (``bos_token_id`` in its config), or
    None: no config, no BOS, or a BOS that is also its EOS (GPT-2's one ``<|endoftext|>``, which
    its tokenizer never puts first)."""
    model = module.model if isinstance(module, CausalLM) else module
    config = getattr(model, "config", None)
    bos, eos = getattr(config, "bos_token_id", None), getattr(config, "eos_token_id", None)
    if not isinstance(bos, int) or isinstance(bos, bool):
        return None
    same = bos in eos if isinstance(eos, list | tuple) else bos == eos
    return None if same else bos


def check_bos(models: Mapping[str, nn.Module], documents: TokenSequences) -> None:
    """Refuse a teacher whose config names a BOS that does not start every document (before
    windowing: a document's later windows start mid-text, as in the teacher's own training),
    naming the token: scoring text without the BOS a model was trained with is silently off."""
    firsts = documents.ids[documents.offsets[:-1]]
    for name, module in models.items():
        bos = config_bos(module)
        if bos is None:
            continue
        missing = int((firsts != bos).sum())
        if missing:
            vocab = documents.vocabulary
            token = vocab.name_of(bos) if vocab is not None else f"id {bos}"
            raise MismatchError(
                f"teacher {name!r} reads its BOS {token} (bos_token_id in its config) first, "
                f"and {missing} of {len(firsts)} documents do not start with it: encode the "
                f"text with the tokenizer's special tokens (the default), use a tokenizer that "
                f"adds this BOS, or put it first in each pre-tokenised sequence"
            )


def teacher_tokenizer(spec: str | None) -> Vocabulary | None:
    """The tokenizer in an ``hf:DIR`` teacher's folder: its ``tokenizer.json`` if there is one,
    else what ``AutoTokenizer`` loads there; None for another SPEC or a folder without one."""
    if spec is None or not spec.startswith(HF_PREFIX):
        return None
    folder = Path(spec.removeprefix(HF_PREFIX))
    if (folder / "tokenizer.json").is_file():
        source = folder / "tokenizer.json"
    elif any((folder / name).is_file() for name in TOKENIZER_FILES):
        source = folder
    else:
        return None
    try:
        return load_tokenizer(str(source)).vocabulary
    except Exception as exc:  # the tokenizers library raises plain Exception
        raise TeacherError(
            f"{spec!r}: its tokenizer ({str(source)!r}) could not be loaded: {exc}; fix or "
            f"remove the tokenizer files"
        ) from exc


def check_tokenizers(
    members: Mapping[str, Vocabulary | None], sequences: TokenSequences, *, role: str = "teacher"
) -> None:
    """Refuse members (name -> tokenizer, None when unknown) whose tokenizers differ, or that
    differ from the tokenizer the sequences were made with, naming the difference. ``role``
    names the members in messages ("teacher", "student")."""
    known = [(name, vocab) for name, vocab in members.items() if vocab is not None]
    for name, vocab in known[1:]:
        diff = known[0][1].difference(vocab)
        if diff is not None:
            raise MismatchError(
                f"the {role}s must share one tokenizer, but theirs differ ({known[0][0]} vs "
                f"{name}: {diff})"
            )
    if not known or sequences.tokenizer is None:
        return
    name, vocab = known[0]
    ours = sequences.vocabulary or Vocabulary(sequences.tokenizer, {}, sequences.special_tokens)
    diff = ours.difference(vocab)
    if diff is not None:
        raise MismatchError(
            f"the sequences were made with another tokenizer than {name}'s (sequences vs "
            f"{role}: {diff}); make them with the {role}'s tokenizer, in its folder"
        )

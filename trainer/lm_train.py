"""Stage two for language models: train a causal-LM student from a token store.

Batches are whole sequences (the token store's rows, joined through ``sample_index``, which
holds each row's token index). The student's logits (B, L, V) are flattened to the real
positions and take the same losses as any other rows: the sparse (or dense) KD term at T plus
the next-token cross-entropy, whose labels are the store's (row t: the token at t + 1).
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from torch import nn

from softlabels.errors import MismatchError, SoftLabelsError
from softlabels.store import StoreReader
from softlabels.text import TokenSequences
from trainer.data import take
from trainer.modules import HardCE, HintonKD


@dataclass(frozen=True)
class LMConfig:
    temperature: float = 2.0
    alpha: float = 0.5  # weight of the next-token CE term; 1 - alpha on the KD term
    epochs: int = 1
    batch_size: int = 8  # sequences
    lr: float = 3e-3
    seed: int = 0
    kd: bool = True  # False: next-token cross-entropy only (the baseline)


def gpt_student(vocab_size: int, *, max_length: int, width: int = 64, layers: int = 2) -> nn.Module:
    """A small GPT-2 (transformers) with random weights, returning (B, L, V) float32 logits."""
    from transformers import GPT2Config, GPT2LMHeadModel

    from softlabels.lm import CausalLM

    config = GPT2Config(
        vocab_size=vocab_size,
        n_positions=max_length,
        n_embd=width,
        n_layer=layers,
        n_head=max(1, width // 32),
        bos_token_id=0,
        eos_token_id=0,
    )
    return CausalLM(GPT2LMHeadModel(config))


def check_sequences(store: StoreReader, seqs: TokenSequences) -> None:
    """The store must be a token store of exactly these sequences (same windowing)."""
    meta = store.meta
    if meta.tokens is None:
        raise SoftLabelsError(f"{store.path!r} is not a token store (no 'tokens' attribute)")
    if seqs.fingerprint() != meta.transfer.fingerprint:
        raise MismatchError(
            f"the sequences are not the ones {store.path!r} was made from (fingerprints differ: "
            f"another tokenizer, a shifted or reordered text, or other windows)"
        )
    if seqs.tokenizer is not None and meta.tokens.tokenizer not in (None, seqs.tokenizer):
        raise MismatchError("the sequences were tokenised by another tokenizer than the store's")


def train_lm(
    student: nn.Module,
    store: StoreReader | None,
    seqs: TokenSequences,
    config: LMConfig,
    *,
    eval_seqs: TokenSequences | None = None,
) -> list[dict[str, Any]]:
    """Train ``student`` on ``seqs`` (windowed as the store's) from ``store``; per epoch, the
    mean training loss, its seconds and, with ``eval_seqs``, their perplexity and next-token
    accuracy. ``store=None`` trains on next-token cross-entropy alone (a teacher, a baseline)."""
    labels = torch.from_numpy(seqs.next_tokens())
    targets = None
    if store is not None:
        check_sequences(store, seqs)
        probe = student(torch.zeros((1, 2), dtype=torch.long), attention_mask=torch.ones((1, 2)))
        if probe.shape[-1] != store.meta.num_classes:
            raise MismatchError(
                f"the student predicts {probe.shape[-1]} tokens and the store's teachers "
                f"{store.meta.num_classes}: give the student the teachers' vocabulary size"
            )
        if config.kd:
            targets = store.soft_targets(np.arange(seqs.num_tokens), config.temperature)
    elif config.kd:
        raise SoftLabelsError("knowledge distillation needs a token store")
    torch.manual_seed(config.seed)
    loss_fn: nn.Module = (
        HintonKD(config.alpha, temperature=config.temperature) if config.kd else HardCE()
    )
    optimizer = torch.optim.AdamW(student.parameters(), lr=config.lr)
    history = []
    for epoch in range(config.epochs):
        student.train()
        order = np.random.default_rng([config.seed, epoch]).permutation(len(seqs))
        t0, losses = time.perf_counter(), []
        for s in range(0, len(order), config.batch_size):
            group = order[s : s + config.batch_size]
            ids, rows, mask = _batch(seqs, group)
            logits = student(ids, attention_mask=mask)[mask.bool()]  # (rows, V)
            index = torch.from_numpy(rows)
            target = None if targets is None else take(targets, index)
            loss = loss_fn(logits, target, labels[index])
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            losses.append(float(loss.detach()))
        record = {"epoch": epoch + 1, "train_loss": float(np.mean(losses))}
        record["epoch_seconds"] = time.perf_counter() - t0
        if eval_seqs is not None:
            record.update(evaluate_lm(student, eval_seqs))
        history.append(record)
    return history


@torch.no_grad()
def evaluate_lm(student: nn.Module, seqs: TokenSequences, batch_size: int = 16) -> dict[str, float]:
    """Perplexity and next-token accuracy over every position that has a next token."""
    student.eval()
    labels = torch.from_numpy(seqs.next_tokens())
    nll, correct, count = 0.0, 0, 0
    for s in range(0, len(seqs), batch_size):
        ids, rows, mask = _batch(seqs, np.arange(s, min(s + batch_size, len(seqs))))
        logits = student(ids, attention_mask=mask)[mask.bool()]
        y = labels[torch.from_numpy(rows)]
        known = y >= 0
        log_p = torch.log_softmax(logits[known].float(), -1)
        nll += float(-log_p.gather(1, y[known][:, None]).sum())
        correct += int((log_p.argmax(1) == y[known]).sum())
        count += int(known.sum())
    return {"eval_ppl": math.exp(nll / count), "eval_accuracy": correct / count}


def _batch(
    seqs: TokenSequences, group: np.ndarray
) -> tuple[torch.Tensor, np.ndarray, torch.Tensor]:
    """(ids (B, L) right-padded with 0, the rows of the real positions in order, mask (B, L))."""
    lengths = seqs.lengths()[group]
    ids = torch.zeros((len(group), int(lengths.max())), dtype=torch.long)
    mask = torch.zeros_like(ids)
    rows = []
    for i, s in enumerate(group):
        ids[i, : lengths[i]] = torch.from_numpy(seqs.sequence(int(s)))
        mask[i, : lengths[i]] = 1
        rows.append(np.arange(seqs.offsets[s], seqs.offsets[s + 1]))
    return ids, np.concatenate(rows), mask


__all__ = ["LMConfig", "check_sequences", "evaluate_lm", "gpt_student", "train_lm"]

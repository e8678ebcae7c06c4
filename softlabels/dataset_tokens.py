"""``TokenTargetDataset``: a token store joined with its sequences, for users' own LM loops.

    ds = TokenTargetDataset("lm.zarr", sequences, temperature=2.0)
    loader = DataLoader(ds, batch_size=8, shuffle=True, collate_fn=collate_tokens)
    for ids, mask, labels, target in loader:
        logits = student(ids, attention_mask=mask)[mask.bool()]  # (rows, V), in target's order
        loss = HintonKD(0.5, temperature=2.0)(logits, target, labels)

Item s is sequence s: its token ids (L,), labels (L,) (the next token, -1 at the end) and the
teacher's targets at T for its L rows (``SparseTargets`` of K ids, or (L, V) log-probs).
``collate_tokens`` pads ids to the longest sequence and flattens labels and targets to the real
positions, row-major, which is the order ``logits[mask.bool()]`` takes.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch
from torch.utils.data import Dataset

from softlabels.errors import MismatchError, SoftLabelsError
from softlabels.sparse import SparseTargets
from softlabels.store import StoreReader, open_store
from softlabels.text import TokenSequences

Target = torch.Tensor | SparseTargets


class TokenTargetDataset(Dataset):
    def __init__(
        self, store: StoreReader | str, sequences: TokenSequences, *, temperature: float
    ) -> None:
        reader = store if isinstance(store, StoreReader) else open_store(store)
        spec = reader.meta.tokens
        if spec is None:
            raise SoftLabelsError(f"{reader.path!r} is not a token store")
        seqs = sequences.window(spec.max_length, spec.window)
        if seqs.fingerprint() != reader.meta.transfer.fingerprint:
            raise MismatchError(
                f"the sequences are not the ones {reader.path!r} was made from (another "
                f"tokenizer, a shifted or reordered text, or other windows)"
            )
        self.seqs = seqs
        self.labels = torch.from_numpy(seqs.next_tokens())
        self.targets = reader.soft_targets(np.arange(seqs.num_tokens), temperature)
        if reader is not store:
            reader.close()

    def __len__(self) -> int:
        return len(self.seqs)

    def __getitem__(self, s: int) -> tuple[torch.Tensor, torch.Tensor, Target]:
        a, b = int(self.seqs.offsets[s]), int(self.seqs.offsets[s + 1])
        ids = torch.from_numpy(self.seqs.ids[a:b].copy())
        target = (
            self.targets.take(slice(a, b))
            if isinstance(self.targets, SparseTargets)
            else self.targets[a:b]
        )
        return ids, self.labels[a:b], target


def collate_tokens(batch: list[tuple[torch.Tensor, torch.Tensor, Any]]) -> tuple[Any, ...]:
    """(ids (B, L) padded with 0, mask (B, L), labels (rows,), targets (rows, ...))."""
    longest = max(len(ids) for ids, _, _ in batch)
    ids = torch.zeros((len(batch), longest), dtype=torch.long)
    mask = torch.zeros_like(ids)
    for i, (seq, _, _) in enumerate(batch):
        ids[i, : len(seq)] = seq
        mask[i, : len(seq)] = 1
    labels = torch.cat([y for _, y, _ in batch])
    targets = [t for _, _, t in batch]
    target = (
        SparseTargets.cat(targets) if isinstance(targets[0], SparseTargets) else torch.cat(targets)
    )
    return ids, mask, labels, target

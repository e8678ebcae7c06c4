"""Stage one for language models: run causal-LM teachers over token sequences once and write a
token store, whose rows are token positions (row t: the teacher's distribution over token t+1).

Data path: TokenSequences.window(max_length) -> per chunk of rows, every sequence overlapping
it, run whole (its context) in batches padded with an attention mask -> per batch, the members'
logits at the chunk's rows, on the device -> for a sparse store, sparsified there and then
(``softlabels.sparse.device``: only the K ids, values and tails leave the device, and no more
than one batch's (rows, V) logits per member exist at once) -> the chunk's rows -> a background
writer thread -> StoreWriter.write_chunk. A sequence crossing a chunk edge runs once per chunk
it touches; each chunk always runs the same batches, so a resumed run is bitwise equal on the
same device and precision. The teachers run on
the resolved device (under torchrun, each rank's own GPU) under autocast at the precision; their
logits are combined and stored from float32 copies, and the store records the ``runtime``.
"""

from __future__ import annotations

import datetime as dt
import os
from collections.abc import Sequence
from dataclasses import replace

import numpy as np
import torch
from torch import nn
from tqdm import tqdm

from softlabels import __version__, schema
from softlabels.device import resolve_device, runtime_record
from softlabels.distributed import Dist, init_from_env, local_device, shutdown
from softlabels.ensemble import combined_logits, normalise_weights
from softlabels.errors import MismatchError, SoftLabelsError
from softlabels.generate import GenerateOptions, check_sparse, write_store
from softlabels.lm.models import (
    batch_logits,
    check_bos,
    check_context,
    check_tokenizers,
    sequence_logits,
    teacher_tokenizer,
)
from softlabels.lm.sources import loss_mask_record
from softlabels.lm.text import TokenSequences
from softlabels.pipeline import BackgroundWriter, Runtime
from softlabels.schema import SparseSpec, StoreMeta, TokenSpec, TransferInfo
from softlabels.sparse.device import sparsify_torch
from softlabels.store import StoreReader, StoreWriter, backends, open_store, store_kind
from softlabels.store.rows import Rows
from softlabels.teachers import Teacher, as_teacher


def generate_tokens(
    teachers: Sequence[nn.Module | str],
    sequences: TokenSequences,
    out: str | os.PathLike[str],
    *,
    max_length: int,
    window: str = "window",
    combine: str | None = None,
    weights: Sequence[float] | None = None,
    sparse: SparseSpec | None = None,
    chunk_rows: int = 4096,
    batch_size: int = 8,
    compress: bool = True,
    resume: bool = False,
    overwrite: bool = False,
    progress: bool = True,
    device: str = "auto",
    precision: str = "fp32",
    lease_wait: float = 0.0,
) -> StoreReader:
    """Write the next-token targets of ``teachers`` (causal LMs: ``hf:DIR``, or modules mapping
    (B, L) token ids and an attention mask to (B, L, V) logits) over ``sequences``, cut to
    ``max_length`` by ``window``. Returns the finished store, opened.

    device: "auto" (CUDA when available), "cpu", "cuda", "cuda:N" or "mps"; an absent device is
        an error, never a fallback. Teachers given as modules are moved there. precision: the
        teachers' forward pass, "fp32", "bf16" or "fp16" (autocast); logits are combined and
        stored from float32 copies, and the store records both (``runtime``). Resuming a store
        made on another device type or at another precision is refused. lease_wait: as for
        ``softlabels.generate``."""
    opts = GenerateOptions(
        combine=combine,
        weights=None if weights is None else tuple(weights),
        split=sequences.split,
        chunk_rows=chunk_rows,
        batch_size=batch_size,
        compress=compress,
        resume=resume,
        overwrite=overwrite,
        progress=progress,
        sparse=resolved_selection(sparse, out, resume=resume),
        device=device,
        precision=precision,
        lease_wait=lease_wait,
        tool="generate-lm",
    )
    opts.validate(len(teachers))
    seqs = sequences.window(max_length, window)
    resolved = resolve_device(opts.device)
    d = init_from_env(resolved)
    try:
        if d.world > 1 and store_kind(out) != "zarr":
            raise SoftLabelsError("distributed generation writes Zarr: write PATH.zarr")
        runtime = Runtime(local_device(resolved, d), opts.precision)
        loaded = [as_teacher(t) for t in teachers]
        longest = int(seqs.lengths().max())
        check_context({t.info.name: t.module for t in loaded}, longest, role="teacher")
        check_bos({t.info.name: t.module for t in loaded}, sequences)
        for t in loaded:
            t.module.to(runtime.device)
        meta = token_meta(opts, loaded, seqs, max_length, window, runtime)
        write_store(str(out), meta, opts, d, lambda w: _write(w, loaded, seqs, opts, d, runtime))
    finally:
        shutdown(d)
    return open_store(out)


def resolved_selection(
    sparse: SparseSpec | None, out: str | os.PathLike[str], *, resume: bool
) -> SparseSpec | None:
    """``sparse`` with its selection chosen where the caller left it None: raw (format version
    6), or, when resuming a store that exists, that store's own selection."""
    if sparse is None or sparse.selection is not None:
        return sparse
    if resume and backends.exists(str(out)):
        try:
            with open_store(out, allow_incomplete=True) as existing:
                if existing.meta.sparse is not None:
                    return replace(sparse, selection=existing.meta.sparse.selection)
        except SoftLabelsError:
            pass  # not a readable store: opening it for writing reports why
    return sparse.resolved(tokens=True)


def head_size(teachers: list[Teacher], seqs: TokenSequences, precision: str = "fp32") -> int:
    """The teachers' common output size V, checked against the sequences' ids; the teachers'
    own tokenizers, where their folders carry one, must agree with each other and the sequences'."""
    check_tokenizers({t.info.name: teacher_tokenizer(t.info.spec) for t in teachers}, seqs)
    probe = [np.zeros(2, dtype=np.int64)]  # token 0 exists in every vocabulary
    sizes = [sequence_logits(t.module, probe, precision=precision)[0].shape[-1] for t in teachers]
    if len(set(sizes)) > 1:
        detail = ", ".join(f"{t.info.name}: {v}" for t, v in zip(teachers, sizes, strict=True))
        raise MismatchError(f"the teachers' vocabularies differ ({detail}); they must share one")
    if seqs.ids.max() >= sizes[0]:
        raise MismatchError(
            f"token id {int(seqs.ids.max())} is outside the teachers' {sizes[0]}-token "
            f"vocabulary: the sequences were made with another tokenizer"
        )
    return sizes[0]


def token_meta(
    opts: GenerateOptions,
    teachers: list[Teacher],
    seqs: TokenSequences,
    max_length: int,
    window: str,
    runtime: Runtime,
) -> StoreMeta:
    vocab = head_size(teachers, seqs, runtime.precision)
    check_sparse(opts.sparse, opts.dtype, vocab)
    combine = opts.combine or (
        schema.COMBINE_SINGLE if len(teachers) == 1 else schema.COMBINE_ARITHMETIC
    )
    return StoreMeta(
        num_samples=seqs.num_tokens,
        num_classes=vocab,
        class_names=tuple(str(i) for i in range(vocab)),
        combine=combine,
        weights=normalise_weights(opts.weights, len(teachers)),
        teachers=tuple(t.info for t in teachers),
        transfer=TransferInfo(seqs.name, seqs.split, seqs.num_tokens, seqs.fingerprint()),
        dtype=opts.dtype,
        chunk_rows=min(opts.chunk_rows, seqs.num_tokens),
        created_at=dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
        producer=f"softlabels {__version__}",
        runtime=runtime_record(runtime.device, runtime.precision),
        sparse=opts.sparse,
        tokens=TokenSpec(
            tokenizer=seqs.tokenizer,
            tokenizer_vocab_size=seqs.vocab_size,
            max_length=max_length,
            window=window,
            special_tokens=dict(seqs.special_tokens),
            pad_id=seqs.pad_id if seqs.pad_id is not None else seqs.special_tokens.get("<pad>", 0),
            add_special_tokens=seqs.add_special_tokens,
            bos_id=seqs.bos_id,
            eos_id=seqs.eos_id,
            loss_mask=loss_mask_record(seqs),
        ),
    )


def _write(
    writer: StoreWriter,
    teachers: list[Teacher],
    seqs: TokenSequences,
    opts: GenerateOptions,
    d: Dist,
    runtime: Runtime,
) -> None:
    """This rank's pending chunks (``Dist.take``, the one sharding rule), each assembled from
    its batches' rows (``_batch_rows``), then written on the background thread."""
    meta = writer.meta
    labels = seqs.next_tokens()
    seq_of_row = np.searchsorted(seqs.offsets, np.arange(seqs.num_tokens), side="right") - 1
    position = (np.arange(seqs.num_tokens) - seqs.offsets[seq_of_row]).astype(np.int32)
    pending = d.take(np.array(writer.pending_chunks(), dtype=np.int64)).tolist()
    total = sum(b - a for a, b in map(meta.chunk_bounds, pending))
    bar = tqdm(total=total, unit="tokens", desc="teacher targets", disable=not opts.progress)
    with bar, BackgroundWriter(writer) as background:
        for chunk in pending:
            a, b = meta.chunk_bounds(chunk)
            first, last = int(seq_of_row[a]), int(seq_of_row[b - 1])
            parts = []
            for s in range(first, last + 1, opts.batch_size):
                group = range(s, min(s + opts.batch_size, last + 1))
                lo = max(a, int(seqs.offsets[group.start]))
                hi = min(b, int(seqs.offsets[group.stop]))
                parts.append(_batch_rows(teachers, seqs, group, (lo, hi), meta, runtime))
                bar.update(hi - lo)
            rows = Rows.concat(parts).replace(
                **{
                    schema.LABELS: labels[a:b],
                    schema.INPUT_IDS: seqs.ids[a:b].astype(np.int32),
                    schema.POSITION: position[a:b],
                }
            )
            background.put(chunk, Rows(rows.arrays, a))


def _batch_rows(
    teachers: list[Teacher],
    seqs: TokenSequences,
    group: range,
    rows: tuple[int, int],
    meta: StoreMeta,
    runtime: Runtime,
) -> Rows:
    """The store rows [lo, hi) that the sequences in ``group`` (run whole, as one padded batch
    on the device) cover: for a sparse store, sparsified there (``softlabels.sparse.device``),
    so no more than this batch's (rows, V) logits per member are ever held; for a dense store,
    the combined and member logits, brought to the host. Labels come later, per chunk."""
    lo, hi = rows
    start = int(seqs.offsets[group.start])
    sequences = [seqs.sequence(i) for i in group]
    lengths = [len(s) for s in sequences]
    pad = meta.tokens.pad_id if meta.tokens is not None else 0
    members = []
    for t in teachers:
        logits = batch_logits(t.module, sequences, pad_id=pad, precision=runtime.precision)
        if min(lengths) == logits.shape[1]:  # no padding: the rows are a view, not a copy
            real = logits.reshape(-1, logits.shape[2])
        else:
            real = torch.cat([logits[i, :n] for i, n in enumerate(lengths)])  # (group rows, V)
        members.append(real[lo - start : hi - start])
        del logits, real
    # (R, M, V) float32 on the device; one member's is a view of its logits
    z = members[0][:, None] if len(members) == 1 else torch.stack(members, dim=1)
    del members
    index = np.arange(lo, hi, dtype=np.int64)
    if meta.sparse is not None:
        arrays = sparsify_torch(
            z, index, weights=meta.weights, combine=meta.combine, spec=meta.sparse, dtype=meta.dtype
        )
        return Rows({**arrays, schema.SAMPLE_INDEX: index}, lo)
    weights = torch.tensor(meta.weights, dtype=torch.float64, device=z.device)
    combined = combined_logits(z.double(), weights, meta.combine).float().cpu().numpy()
    members_np = z.cpu().numpy() if len(teachers) > 1 else None
    return Rows.dense(combined, members_np, index, np.zeros(hi - lo, np.int64), start=lo)

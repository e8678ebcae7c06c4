"""``softlabels import``: an existing top-k log-probability capture becomes a token store.

A capture (``softlabels.lm.capture``) gives, per row, K ids and their log-probabilities at
T = 1, log p_j = z_j - log Z. Stored as the row's logits (``values``, float32) they are the
teacher's logits up to one constant per row, which no target depends on: on the ids, the
targets at any T are exact. The tail, the mass outside the ids, is 1 - sum_j p_j at T = 1 and
nothing more: the store's one anchor is T = 1 (``tail`` = log(1 - sum_j p_j), floored at
``TAIL_FLOOR`` where rounding leaves no mass) and ``sparse.replay_temperatures`` = [1], so every
reader of this package refuses targets at another T (FORMAT.md, "Imported captures").

Checked before anything is written: the ids are distinct in each row and inside the
distribution's size C (the capture's own ``d``, else ``vocab_size``, else the tokenizer's), the
log-probabilities are finite, at most 0 and sum to at most 1 (to ``MASS_TOLERANCE``), the
tail is no larger than a top-K tail can be ((C - K) times the smallest kept probability), and
the sequences' ids are inside the tokenizer. The store records the tokenizer's fingerprint,
the sequences' fingerprint and the capture files' SHA-256 (as its teacher's ``sha256``); a
failed import leaves nothing behind.
"""

from __future__ import annotations

import datetime as dt
import os

import numpy as np
from tqdm import tqdm

from softlabels import __version__, schema
from softlabels.errors import SpecError
from softlabels.lm.capture import Capture
from softlabels.lm.text import load_tokenizer
from softlabels.schema import SparseSpec, StoreMeta, TeacherInfo, TokenSpec, TransferInfo
from softlabels.sparse.select import encode_ids
from softlabels.store import StoreReader, StoreWriter, open_store
from softlabels.store.backends import remove_store
from softlabels.store.rows import Rows

TAIL_FLOOR = 1e-30  # the tail mass of a row whose K probabilities sum to 1 (rounding)
MASS_TOLERANCE = 1e-3  # how far above 1 the K probabilities may sum (captures' rounding)


def import_capture(
    capture: Capture,
    out: str | os.PathLike[str],
    *,
    tokenizer: str,
    vocab_size: int | None = None,
    chunk_rows: int = 4096,
    overwrite: bool = False,
    progress: bool = True,
) -> StoreReader:
    """Write ``capture`` as a sparse token store at ``out`` (module docstring); the store,
    opened. ``tokenizer``: the capture's tokenizer (a tokenizer.json or a transformers folder);
    ``vocab_size``: the distribution's size C when the capture does not declare it."""
    tok = load_tokenizer(tokenizer)
    seqs = capture.sequences
    num_classes = capture.vocab_size or vocab_size or tok.vocab_size
    if vocab_size is not None and capture.vocab_size not in (None, vocab_size):
        raise SpecError(
            f"the capture declares {capture.vocab_size} ids, and the vocabulary size given is "
            f"{vocab_size}: leave it out"
        )
    if int(seqs.ids.max()) >= tok.vocab_size:
        raise SpecError(
            f"token id {int(seqs.ids.max())} is outside the tokenizer's {tok.vocab_size} ids: "
            f"the capture was made with another tokenizer"
        )
    ids, values, tail = _sparse_rows(capture.ids, capture.logprobs, num_classes)
    meta = _meta(capture, tok, num_classes, ids.shape[1], chunk_rows)
    writer = StoreWriter.create(out, meta, overwrite=overwrite, tool="import")
    try:
        with writer:
            labels, position = seqs.next_tokens(), _positions(seqs)
            bar = tqdm(total=meta.num_samples, unit="tokens", desc="import", disable=not progress)
            with bar:
                for chunk in range(meta.num_chunks):
                    a, b = meta.chunk_bounds(chunk)
                    arrays = {
                        schema.ID_GAPS: encode_ids(ids[a:b], ids.shape[1]),
                        schema.VALUES: values[a:b, None, :],
                        schema.TAIL: tail[a:b, None, None],
                        schema.INPUT_IDS: seqs.ids[a:b].astype(np.int32),
                        schema.POSITION: position[a:b],
                        schema.SAMPLE_INDEX: np.arange(a, b, dtype=np.int64),
                        schema.LABELS: labels[a:b],
                    }
                    writer.write_chunk(chunk, Rows(arrays, a))
                    bar.update(b - a)
            writer.finalize()
    except BaseException:
        if writer.created:
            remove_store(writer.path)
        raise
    return open_store(out)


def _sparse_rows(
    top_ids: np.ndarray, top_lp: np.ndarray, num_classes: int
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """The rows' ids ascending (N, K) int64, their log-probabilities (N, K) float32 in that
    order, and the tail's log mass at T = 1 (N,) float32, after the checks (module docstring)."""
    k = top_ids.shape[1]
    if k >= num_classes:
        raise SpecError(f"K = {k} ids per row must be below the {num_classes} of the vocabulary")
    if len(top_ids) and (top_ids.min() < 0 or top_ids.max() >= num_classes):
        raise SpecError(f"a top id is outside [0, {num_classes}): give the distribution's size")
    order = np.argsort(top_ids, axis=1, kind="stable")
    ids = np.take_along_axis(top_ids, order, axis=1)
    lp = np.take_along_axis(top_lp, order, axis=1).astype(np.float32)
    bad = np.flatnonzero((np.diff(ids, axis=1) == 0).any(axis=1))
    if len(bad):
        raise SpecError(f"row {int(bad[0])} holds one id twice; each row needs K distinct ids")
    bad = np.flatnonzero(~np.isfinite(lp).all(axis=1) | (lp > 1e-6).any(axis=1))
    if len(bad):
        raise SpecError(
            f"row {int(bad[0])} has a log-probability that is not finite or above 0 "
            f"({lp[bad[0]].tolist()[:4]}...): a row needs K finite log-probabilities"
        )
    lp64 = lp.astype(np.float64)
    mass = np.exp(lp64).sum(axis=1)
    bad = np.flatnonzero(mass > 1 + MASS_TOLERANCE)
    if len(bad):
        raise SpecError(
            f"row {int(bad[0])}'s K probabilities sum to {mass[bad[0]]:.4f} > 1: these are not "
            f"log-probabilities at T = 1 (raw logits, or another temperature?)"
        )
    tail = np.log(np.maximum(1.0 - mass, TAIL_FLOOR))
    # each id outside the top K is no likelier than the least likely kept one
    bound = np.log(num_classes - k) + lp64.min(axis=1)
    bad = np.flatnonzero(tail > bound + 1e-6)
    if len(bad):
        raise SpecError(
            f"row {int(bad[0])}: the mass outside its K ids ({np.exp(tail[bad[0]]):.4g}) is more "
            f"than {num_classes - k} ids each below its least likely one can hold: not a top-K "
            f"capture, or the wrong vocabulary size"
        )
    return ids, lp, np.minimum(tail, bound).astype(np.float32)


def _positions(seqs) -> np.ndarray:  # noqa: ANN001
    seq_of_row = np.searchsorted(seqs.offsets, np.arange(seqs.num_tokens), side="right") - 1
    return (np.arange(seqs.num_tokens) - seqs.offsets[seq_of_row]).astype(np.int32)


def _meta(capture: Capture, tok, num_classes: int, k: int, chunk_rows: int) -> StoreMeta:  # noqa: ANN001
    seqs = capture.sequences
    return StoreMeta(
        num_samples=seqs.num_tokens,
        num_classes=num_classes,
        class_names=tuple(str(i) for i in range(num_classes)),
        combine=schema.COMBINE_SINGLE,
        weights=(1.0,),
        teachers=(TeacherInfo("capture", f"import:{capture.name}", None, capture.sha256),),
        transfer=TransferInfo(capture.name, seqs.split, seqs.num_tokens, seqs.fingerprint()),
        dtype="float32",
        chunk_rows=min(chunk_rows, seqs.num_tokens),
        created_at=dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
        producer=f"softlabels {__version__} (import)",
        sparse=SparseSpec(
            top_k=k,
            tail_temperatures=(1.0,),
            value_step=None,
            replay_temperatures=(1.0,),
        ),
        tokens=TokenSpec(
            tokenizer=tok.fingerprint,
            tokenizer_vocab_size=tok.vocab_size,
            max_length=max(2, int(seqs.lengths().max())),
            window="truncate",
            special_tokens=dict(tok.special_tokens),
            pad_id=tok.special_tokens.get("<pad>", 0),
        ),
    )

"""Transfer sets of token sequences, for language-model teachers.

A ``TokenSequences`` holds every sequence's token ids end to end, ``ids`` (T,) int64, and
``offsets`` (S + 1,): sequence s is ``ids[offsets[s]:offsets[s + 1]]``. Position t of a
sequence is a row; its target is the teacher's distribution over the token at t + 1 (the shift
convention), so the last position of a sequence has no next-token label.

Sources:

* text: ``.txt`` (one document per non-empty line) or ``.jsonl`` (one JSON object per line, the
  document in ``field``), with a tokenizer: a Hugging Face ``tokenizers`` JSON file, or a local
  ``transformers`` tokenizer directory. A file is one split, "train"; a directory holds
  ``train.txt``/``train.jsonl`` and ``test.txt``/``test.jsonl``.
* pre-tokenized: an ``.npz``, a Zarr group (``.zarr``) or an HDF5 file (``.h5``/``.hdf5``)
  whose top level holds integer arrays ``input_ids`` (T,) and ``offsets`` (S + 1,), the "train"
  split, or ``input_ids_train``/``offsets_train`` and ``input_ids_test``/``offsets_test``.

Documents are encoded with the special tokens their tokenizer adds (``add_special_tokens``; a
Llama-style BOS first) and end with its end-of-sequence token. ``window(max_length, mode)``
bounds the sequence length: "truncate" drops what is beyond it,
"window" cuts a document into consecutive windows (each window's first token then has no left
context), "pack" joins the documents into one stream cut into windows of exactly max_length
(the models attend across the documents joined in a window, as in usual packed training; the
documents' starts are kept in ``starts``, in memory only). Windows are cuts of the encoded
documents: no BOS is inserted, so only a document's first window starts with its BOS (in "pack",
the BOS stays where each document starts) and every row keeps its own token and label. Nothing
is downloaded: tokenizers and models
are local files.
"""

from __future__ import annotations

import hashlib
import json
import warnings
from collections.abc import Iterable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np

from softlabels.errors import SpecError
from softlabels.lm.tokenizer import TokenizerInfo, Vocabulary, load_tokenizer

SPLITS = ("train", "test")
WINDOW_MODES = ("truncate", "window", "pack")
TOKEN_SUFFIXES = (".npz", ".zarr", ".h5", ".hdf5")


@dataclass(frozen=True)
class TokenSequences:
    name: str
    split: str
    ids: np.ndarray  # (T,) int64
    offsets: np.ndarray  # (S + 1,) int64, offsets[0] = 0, offsets[-1] = T
    tokenizer: str | None = None  # fingerprint, when made from text here
    vocab_size: int | None = None
    special_tokens: dict[str, int] = field(default_factory=dict)
    starts: np.ndarray | None = None  # packed: the token index where each document starts
    # (T,) bool, or None for all True: row t takes a loss (its next token, t + 1, is not a
    # prompt token). Stage two only: the store holds every row's target either way.
    loss_mask: np.ndarray | None = None
    vocabulary: Vocabulary | None = None  # the tokenizer's, when made from text here
    # made from text here: whether the tokenizer's special tokens were added (None otherwise),
    # the BOS it put before each document and its end-of-sequence token (None: none)
    add_special_tokens: bool | None = None
    bos_id: int | None = None
    eos_id: int | None = None
    pad_id: int | None = None

    def __post_init__(self) -> None:
        check_offsets(self.ids, self.offsets, self.name)
        if self.loss_mask is not None and self.loss_mask.shape != self.ids.shape:
            raise SpecError(
                f"{self.name!r}: the loss mask has {self.loss_mask.shape} entries for "
                f"{self.ids.shape} tokens; give one per token"
            )

    def __len__(self) -> int:
        return len(self.offsets) - 1

    @property
    def num_tokens(self) -> int:
        return int(self.offsets[-1])

    def sequence(self, s: int) -> np.ndarray:
        return self.ids[self.offsets[s] : self.offsets[s + 1]]

    def lengths(self) -> np.ndarray:
        return np.diff(self.offsets)

    def next_tokens(self) -> np.ndarray:
        """(T,) the label of each row: the next token of its sequence, -1 at a sequence end."""
        labels = np.full(self.num_tokens, -1, dtype=np.int64)
        labels[:-1] = self.ids[1:]
        labels[self.offsets[1:] - 1] = -1
        return labels

    def fingerprint(self) -> str:
        """ "sha256:" over the ids and then the offsets, as little-endian int64."""
        h = hashlib.sha256()
        h.update(np.ascontiguousarray(self.ids, dtype="<i8").tobytes())
        h.update(np.ascontiguousarray(self.offsets, dtype="<i8").tobytes())
        return "sha256:" + h.hexdigest()

    def window(self, max_length: int, mode: str = "window") -> TokenSequences:
        """Sequences of at most ``max_length`` tokens (see the module docstring for modes)."""
        if max_length < 2:
            raise SpecError(
                f"max_length must be at least 2 (a token and its next), got {max_length}"
            )
        if mode not in WINDOW_MODES:
            raise SpecError(f"window mode must be one of {WINDOW_MODES}, got {mode!r}")
        lengths = self.lengths()
        if mode == "pack":
            cuts = np.arange(0, self.num_tokens, max_length)
            offsets = np.append(cuts, self.num_tokens)
            return replace(self, offsets=offsets, starts=self.offsets[:-1].copy())
        if mode == "truncate":
            keep = np.minimum(lengths, max_length)
            rows = np.concatenate([self.offsets[s] + np.arange(k) for s, k in enumerate(keep)])
            mask = None if self.loss_mask is None else self.loss_mask[rows]
            offsets = np.concatenate([[0], np.cumsum(keep)])
            return replace(self, ids=self.ids[rows], offsets=offsets, loss_mask=mask)
        pieces = [
            np.arange(self.offsets[s], self.offsets[s + 1], max_length) for s in range(len(self))
        ]
        offsets = np.append(np.concatenate(pieces), self.num_tokens).astype(np.int64)
        return replace(self, offsets=offsets)


def check_offsets(ids: np.ndarray, offsets: np.ndarray, name: str) -> None:
    """Offsets must start at 0, end at len(ids) and not decrease; ids must be >= 0."""
    if ids.ndim != 1 or offsets.ndim != 1 or len(offsets) < 2:
        raise SpecError(f"{name!r}: input_ids must be 1-D and offsets 1-D with at least 2 entries")
    if offsets[0] != 0 or offsets[-1] != len(ids) or (np.diff(offsets) <= 0).any():
        raise SpecError(
            f"{name!r}: offsets must rise strictly from 0 to len(input_ids) = {len(ids)} "
            f"(one entry per sequence start, then the end); got {offsets[:5].tolist()}..."
            f"{offsets[-2:].tolist()}"
        )
    if len(ids) and ids.min() < 0:
        raise SpecError(f"{name!r}: token ids must be >= 0")


def load_text(
    spec: str,
    tokenizer: str | TokenizerInfo,
    *,
    split: str = "train",
    text_field: str = "text",
    prompt_field: str | None = None,
    add_eos: bool = True,
    add_special_tokens: bool = True,
) -> TokenSequences:
    """Tokenise the documents of a ``.txt``/``.jsonl`` file or split folder (module docstring).

    add_special_tokens: each document is encoded with the special tokens its tokenizer adds
        around a text (a Llama-style ``<s> $A`` puts BOS first), as the teacher saw them in
        training; False encodes the bare text. With ``add_eos`` each document then ends with
        the tokenizer's end-of-sequence token (once: not again when the tokenizer already ends
        it there). With ``prompt_field`` (``.jsonl``), a document is that field's text (with the
        special tokens), then ``text_field``'s (without: no BOS inside a document), tokenised
        apart and joined; ``loss_mask`` leaves out the rows that predict a prompt token."""
    tok = load_tokenizer(tokenizer) if isinstance(tokenizer, str) else tokenizer
    path = _split_file(Path(spec), split)
    if prompt_field is not None and path.suffix != ".jsonl":
        raise SpecError(f"a prompt field needs .jsonl documents; {str(path)!r} is not one")
    fields = (text_field,) if prompt_field is None else (prompt_field, text_field)
    if add_eos and tok.eos_id is None:
        warnings.warn(
            f"the tokenizer names no end-of-sequence token, so documents are joined without "
            f"one; use a transformers tokenizer folder whose config names eos_token "
            f"({tokenizer if isinstance(tokenizer, str) else 'the tokenizer'})",
            stacklevel=2,
        )
    docs, prompts = encode_documents(
        tok,
        _documents(path, fields),
        prompted=prompt_field is not None,
        add_special_tokens=add_special_tokens,
        add_eos=add_eos,
    )
    if not docs:
        raise SpecError(f"{str(path)!r} holds no document of two tokens or more")
    ids = np.concatenate([np.asarray(d, dtype=np.int64) for d in docs])
    offsets = np.concatenate([[0], np.cumsum([len(d) for d in docs])]).astype(np.int64)
    mask = None
    if prompt_field is not None:  # row t takes a loss when token t + 1 is not a prompt token
        mask = np.concatenate(
            [np.arange(len(d)) >= p - 1 for d, p in zip(docs, prompts, strict=True)]
        )
    if ids.max() >= tok.vocab_size:
        raise SpecError(f"the tokenizer produced id {ids.max()} >= its vocab size {tok.vocab_size}")
    return TokenSequences(
        name=str(spec),
        split=split,
        ids=ids,
        offsets=offsets,
        tokenizer=tok.fingerprint,
        vocab_size=tok.vocab_size,
        special_tokens=tok.special_tokens,
        loss_mask=mask,
        vocabulary=tok.vocabulary,
        add_special_tokens=add_special_tokens,
        bos_id=tok.bos_id if add_special_tokens else None,
        eos_id=tok.eos_id,
        pad_id=tok.pad_id,
    )


def encode_documents(
    tok: TokenizerInfo,
    documents: Iterable[Sequence[str]],
    *,
    prompted: bool,
    add_special_tokens: bool,
    add_eos: bool,
) -> tuple[list[list[int]], list[int]]:
    """Each document's ids (those of two tokens or more) and its prompt's length. A document is
    (text,) or, when ``prompted``, (prompt, text): the prompt is encoded with the tokenizer's
    special tokens, the text after it without (no BOS inside a document), and ``add_eos`` ends
    the document with the end-of-sequence token unless the tokenizer already put it there."""
    eos = tok.eos_id if add_eos else None
    docs, prompts = [], []
    for parts in documents:
        if prompted:
            prompt = tok.encode(parts[0], add_special_tokens)
            body = tok.encode(parts[-1], False)
        else:
            prompt, body = [], tok.encode(parts[-1], add_special_tokens)
        if eos is not None and (prompt + body)[-1:] != [eos]:
            body = body + [eos]
        if len(prompt) + len(body) >= 2:
            docs.append(prompt + body)
            prompts.append(len(prompt))
    return docs, prompts


def load_tokens(spec: str, *, split: str = "train") -> TokenSequences:
    """Pre-tokenised sequences from an ``.npz``, ``.zarr`` group or ``.h5`` file: integer arrays
    ``input_ids_{split}`` and ``offsets_{split}`` at its top level, or, for "train" only,
    ``input_ids`` and ``offsets``."""
    with _token_arrays(Path(spec)) as arrays:
        for ids_key, off_key in (
            (f"input_ids_{split}", f"offsets_{split}"),
            ("input_ids", "offsets"),
        ):
            if ids_key in arrays and off_key in arrays:
                if ids_key == "input_ids" and split != "train":
                    break
                ids, offsets = arrays[ids_key], arrays[off_key]
                for key, array in ((ids_key, ids), (off_key, offsets)):
                    if array.dtype.kind not in "iu":
                        raise SpecError(
                            f"{spec!r}: {key} must be an integer array, got {array.dtype}; "
                            f"store token ids and offsets as int64"
                        )
                return TokenSequences(
                    spec, split, np.asarray(ids[...], np.int64), np.asarray(offsets[...], np.int64)
                )
        raise SpecError(
            f"{spec!r} has no input_ids/offsets for split {split!r} (found: {sorted(arrays)}); "
            f"give input_ids_{split} and offsets_{split}"
        )


@contextmanager
def _token_arrays(path: Path) -> Iterator[dict[str, Any]]:
    """The top-level arrays of a pre-tokenised file, by name (read on ``[...]``)."""
    suffix = path.suffix.lower()
    if suffix not in TOKEN_SUFFIXES:
        raise SpecError(f"token file {str(path)!r} must end in one of {', '.join(TOKEN_SUFFIXES)}")
    if not (path.is_dir() if suffix == ".zarr" else path.is_file()):
        raise SpecError(f"token file {str(path)!r} does not exist")
    if suffix == ".npz":
        with np.load(path, allow_pickle=False) as data:
            yield {k: data[k] for k in data.files}
    elif suffix == ".zarr":
        import zarr

        try:
            group = zarr.open_group(str(path), mode="r")
        except (OSError, ValueError) as exc:
            raise SpecError(f"{str(path)!r} is not a Zarr group: {exc}") from exc
        yield dict(group.arrays())
    else:
        import h5py

        try:
            f = h5py.File(path, "r")
        except OSError as exc:
            raise SpecError(f"{str(path)!r} is not an HDF5 file: {exc}") from exc
        with f:
            yield {k: v for k, v in f.items() if isinstance(v, h5py.Dataset)}


def _split_file(path: Path, split: str) -> Path:
    if split not in SPLITS:
        raise SpecError(f"split must be one of {SPLITS}, got {split!r}")
    if path.is_dir():
        for suffix in (".txt", ".jsonl"):
            if (path / f"{split}{suffix}").is_file():
                return path / f"{split}{suffix}"
        raise SpecError(f"{str(path)!r} has no {split}.txt or {split}.jsonl")
    if not path.is_file():
        raise SpecError(f"text file {str(path)!r} does not exist")
    if split != "train":
        raise SpecError(
            f"{str(path)!r} is one file, the 'train' split; put train.txt and test.txt in a "
            f"folder for a {split!r} split"
        )
    return path


def _documents(path: Path, fields: tuple[str, ...]) -> Iterator[tuple[str, ...]]:
    """Each document's ``fields`` (a .txt line is its one field)."""
    with path.open(encoding="utf-8") as f:
        for n, line in enumerate(f, 1):
            if not line.strip():
                continue
            if path.suffix != ".jsonl":
                yield (line.rstrip("\n"),)
                continue
            try:
                record = json.loads(line)
            except json.JSONDecodeError as exc:
                raise SpecError(f"{str(path)!r} line {n} is not JSON: {exc}") from exc
            for name in fields:
                if not isinstance(record, dict) or not isinstance(record.get(name), str):
                    raise SpecError(f"{str(path)!r} line {n} has no string field {name!r}")
            yield tuple(record[name] for name in fields)

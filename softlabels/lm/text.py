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

``window(max_length, mode)`` bounds the sequence length: "truncate" drops what is beyond it,
"window" cuts a document into consecutive windows (each window's first token then has no left
context), "pack" joins the documents into one stream cut into windows of exactly max_length
(the models attend across the documents joined in a window, as in usual packed training; the
documents' starts are kept in ``starts``, in memory only). Nothing is downloaded: tokenizers and models
are local files.
"""

from __future__ import annotations

import hashlib
import json
import warnings
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np

from softlabels.errors import SpecError

SPLITS = ("train", "test")
WINDOW_MODES = ("truncate", "window", "pack")
TOKEN_SUFFIXES = (".npz", ".zarr", ".h5", ".hdf5")


@dataclass(frozen=True)
class Vocabulary:
    """What identifies a tokenizer: its fingerprint, its token -> id map (added tokens included)
    and its special tokens. Two tokenizers are the same when their fingerprints are, or, as a
    tokenizer saved again by another library may serialise differently, their vocabularies are."""

    fingerprint: str
    tokens: dict[str, int] = field(repr=False)
    special_tokens: dict[str, int]

    def difference(self, other: Vocabulary) -> str | None:
        """None when ``other`` is the same tokenizer, else what differs, in words."""
        if self.fingerprint == other.fingerprint or (self.tokens and self.tokens == other.tokens):
            return None
        if self.tokens and other.tokens:
            parts = _token_differences(self.tokens, other.tokens)
        else:  # a vocabulary known only by its fingerprint
            parts = [f"fingerprint {self.fingerprint} vs {other.fingerprint}"]
        specials = sorted(
            name
            for name in self.special_tokens.keys() | other.special_tokens.keys()
            if self.special_tokens.get(name) != other.special_tokens.get(name)
        )
        parts += [
            f"special token {n!r}: {self.special_tokens.get(n)} vs {other.special_tokens.get(n)}"
            for n in specials
        ]
        return "; ".join(parts) or f"fingerprint {self.fingerprint} vs {other.fingerprint}"


def _token_differences(a: dict[str, int], b: dict[str, int]) -> list[str]:
    """The size difference of two token -> id maps, if any, and their first differing id."""
    parts = [f"vocabulary size {len(a)} vs {len(b)}"] if len(a) != len(b) else []
    by_id_a, by_id_b = {i: t for t, i in a.items()}, {i: t for t, i in b.items()}
    for i in sorted(by_id_a.keys() | by_id_b.keys()):
        if by_id_a.get(i) != by_id_b.get(i):
            parts.append(f"first differing id {i}: {by_id_a.get(i)!r} vs {by_id_b.get(i)!r}")
            break
    return parts


@dataclass(frozen=True)
class TokenizerInfo:
    """A local tokenizer: how to encode, and what identifies it."""

    encode: Callable[[str], list[int]] = field(repr=False)
    vocab_size: int
    fingerprint: str  # "sha256:" over the tokenizer's own serialisation
    special_tokens: dict[str, int]
    eos_id: int | None
    tokens: dict[str, int] = field(default_factory=dict, repr=False)  # token -> id, added too

    @property
    def vocabulary(self) -> Vocabulary:
        return Vocabulary(self.fingerprint, self.tokens, self.special_tokens)


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


def load_tokenizer(spec: str) -> TokenizerInfo:
    """A ``tokenizers`` JSON file, or a local ``transformers`` tokenizer directory."""
    path = Path(spec)
    if path.is_file():
        from tokenizers import Tokenizer

        tok = Tokenizer.from_file(str(path))
        text = tok.to_str()
        specials = {t.content: int(i) for i, t in tok.get_added_tokens_decoder().items()}
        return TokenizerInfo(
            encode=lambda s: tok.encode(s).ids,
            vocab_size=tok.get_vocab_size(),
            fingerprint="sha256:" + hashlib.sha256(text.encode()).hexdigest(),
            special_tokens=specials,
            eos_id=_eos(specials),
            tokens=tok.get_vocab(with_added_tokens=True),
        )
    if path.is_dir():
        from transformers import AutoTokenizer

        tok = AutoTokenizer.from_pretrained(str(path), local_files_only=True)
        h = hashlib.sha256()
        for f in sorted(p for p in path.iterdir() if p.is_file() and "token" in p.name):
            h.update(f.name.encode() + b"\0" + f.read_bytes())
        specials = {
            str(t): int(i) for t, i in zip(tok.all_special_tokens, tok.all_special_ids, strict=True)
        }
        return TokenizerInfo(
            encode=lambda s: tok(s, add_special_tokens=False)["input_ids"],
            vocab_size=len(tok),
            fingerprint="sha256:" + h.hexdigest(),
            special_tokens=specials,
            eos_id=tok.eos_token_id,
            tokens=dict(tok.get_vocab()),
        )
    raise SpecError(f"tokenizer {spec!r} is neither a tokenizer.json file nor a directory")


def _eos(specials: dict[str, int]) -> int | None:
    for name in ("<eos>", "</s>", "<|endoftext|>", "<|end_of_text|>", "<|im_end|>", "[SEP]"):
        if name in specials:
            return specials[name]
    return None


def load_text(
    spec: str,
    tokenizer: str | TokenizerInfo,
    *,
    split: str = "train",
    text_field: str = "text",
    prompt_field: str | None = None,
    add_eos: bool = True,
) -> TokenSequences:
    """Tokenise the documents of a ``.txt``/``.jsonl`` file or split folder (module docstring).
    With ``add_eos`` each document ends with the tokenizer's end-of-sequence token. With
    ``prompt_field`` (``.jsonl``), a document is that field's text, then ``text_field``'s,
    tokenised apart and joined; ``loss_mask`` leaves out the rows that predict a prompt token."""
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
    docs, prompts = [], []
    for parts in _documents(path, fields):
        prompt = tok.encode(parts[0]) if prompt_field is not None else []
        body = tok.encode(parts[-1]) + ([tok.eos_id] if add_eos and tok.eos_id is not None else [])
        if len(prompt) + len(body) >= 2:
            docs.append(prompt + body)
            prompts.append(len(prompt))
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
    )


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

"""Local tokenizers: how to encode text, and what identifies a tokenizer.

A tokenizer is a ``tokenizers`` JSON file or a local ``transformers`` tokenizer folder. A folder
whose only tokenizer file is ``tokenizer.json`` loads exactly as that file (same ids, same
fingerprint); a folder with a ``tokenizer_config.json`` loads through ``AutoTokenizer``, whose
config may change what is added (Llama's ``add_bos_token``), so its fingerprint covers every
tokenizer file.

Special tokens are added as the tokenizer defines them (its post-processor, such as Llama's
``<s> $A``), unless the caller asks for none: ``TokenizerInfo.encode(text, special=False)``.
``bos_id`` is the id the tokenizer puts before a text when it adds its special tokens (found by
encoding a probe both ways), None when it adds none; ``eos_id`` the end-of-sequence token, from
the folder's config or, failing that, by its usual names among the added tokens.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from softlabels.errors import SpecError

EOS_NAMES = ("<eos>", "</s>", "<|endoftext|>", "<|end_of_text|>", "<|im_end|>", "[SEP]")
PAD_NAMES = ("<pad>", "[PAD]", "<|pad|>", "<|finetune_right_pad_id|>")
# The files AutoTokenizer loads a slow or fast tokenizer from (besides tokenizer.json).
TOKENIZER_FILES = ("tokenizer_config.json", "vocab.json", "vocab.txt", "tokenizer.model")
_PROBE = "a"  # any text of one ordinary token: what a tokenizer adds around it is its specials


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

    def name_of(self, token_id: int) -> str:
        """``'<s>' (id 1)``: a token id with its text, where the vocabulary knows it."""
        for name, i in {**self.tokens, **self.special_tokens}.items():
            if i == token_id:
                return f"{name!r} (id {token_id})"
        return f"id {token_id}"


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
    """A local tokenizer: how to encode, and what identifies it.

    encode(text, special=True): the ids of ``text``, with the special tokens the tokenizer
    adds around a text (its BOS, say) when ``special``."""

    encode: Callable[..., list[int]] = field(repr=False)
    vocab_size: int
    fingerprint: str  # "sha256:" over the tokenizer's own serialisation
    special_tokens: dict[str, int]
    eos_id: int | None
    tokens: dict[str, int] = field(default_factory=dict, repr=False)  # token -> id, added too
    bos_id: int | None = None  # what encode(text, special=True) puts first, None if nothing
    pad_id: int | None = None  # the tokenizer's padding token, None if it names none
    source: str | None = None  # the file or folder it was loaded from (stage two copies it)

    @property
    def vocabulary(self) -> Vocabulary:
        return Vocabulary(self.fingerprint, self.tokens, self.special_tokens)


def load_tokenizer(spec: str) -> TokenizerInfo:
    """A ``tokenizers`` JSON file, or a local ``transformers`` tokenizer directory."""
    path = Path(spec)
    if path.is_dir() and _bare_tokenizer_json(path):
        path = path / "tokenizer.json"  # the same file, so the same tokenizer: load it as one
    if path.is_file():
        return _from_file(path)
    if path.is_dir():
        return _from_folder(path)
    raise SpecError(f"tokenizer {spec!r} is neither a tokenizer.json file nor a directory")


def _bare_tokenizer_json(folder: Path) -> bool:
    """A folder whose only tokenizer file is tokenizer.json (no config to change it)."""
    if not (folder / "tokenizer.json").is_file():
        return False
    return not any((folder / name).is_file() for name in TOKENIZER_FILES)


def _from_file(path: Path) -> TokenizerInfo:
    from tokenizers import Tokenizer

    tok = Tokenizer.from_file(str(path))
    specials = {t.content: int(i) for i, t in tok.get_added_tokens_decoder().items()}

    def encode(text: str, special: bool = True) -> list[int]:
        return tok.encode(text, add_special_tokens=special).ids

    return TokenizerInfo(
        encode=encode,
        vocab_size=tok.get_vocab_size(),
        fingerprint="sha256:" + hashlib.sha256(tok.to_str().encode()).hexdigest(),
        special_tokens=specials,
        eos_id=_by_name(specials, EOS_NAMES),
        tokens=tok.get_vocab(with_added_tokens=True),
        bos_id=_bos(encode),
        pad_id=_by_name(specials, PAD_NAMES),
        source=str(path),
    )


def _from_folder(path: Path) -> TokenizerInfo:
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(str(path), local_files_only=True)
    h = hashlib.sha256()
    for f in sorted(p for p in path.iterdir() if p.is_file() and "token" in p.name):
        h.update(f.name.encode() + b"\0" + f.read_bytes())
    specials = {
        str(t): int(i) for t, i in zip(tok.all_special_tokens, tok.all_special_ids, strict=True)
    }
    added = getattr(tok, "added_tokens_decoder", {})  # special added tokens the config may omit
    for i, t in added.items():
        if getattr(t, "special", False):
            specials.setdefault(str(t), int(i))

    def encode(text: str, special: bool = True) -> list[int]:
        return tok(text, add_special_tokens=special)["input_ids"]

    eos = tok.eos_token_id if tok.eos_token_id is not None else _by_name(specials, EOS_NAMES)
    pad = tok.pad_token_id if tok.pad_token_id is not None else _by_name(specials, PAD_NAMES)
    return TokenizerInfo(
        encode=encode,
        vocab_size=len(tok),
        fingerprint="sha256:" + h.hexdigest(),
        special_tokens=specials,
        eos_id=eos,
        tokens=dict(tok.get_vocab()),
        bos_id=_bos(encode),
        pad_id=pad,
        source=str(path),
    )


def _by_name(specials: dict[str, int], names: tuple[str, ...]) -> int | None:
    for name in names:
        if name in specials:
            return specials[name]
    return None


def _bos(encode: Callable[..., list[int]]) -> int | None:
    """The id the tokenizer puts before a text with its special tokens, None if none."""
    plain, special = encode(_PROBE, False), encode(_PROBE, True)
    if len(special) > len(plain) and special[1 : 1 + len(plain)] == plain:
        return int(special[0])
    return None

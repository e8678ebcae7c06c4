"""More transfer forms for language models: Hugging Face ``datasets`` and chat records.

A text SPEC (``load_sequences``) is one of:

    PATH.txt | PATH.jsonl | DIR        documents, as ``softlabels.lm.text.load_text`` reads them
    datasets:DIR                       a ``datasets`` folder written by ``save_to_disk`` (a
                                       Dataset, the "train" split, or a DatasetDict of splits)
    datasets:PATH.parquet | .jsonl | .json | .csv
                                       one file read through ``datasets`` (the "train" split)

Documents come from a text column (``text_field``, optionally preceded by ``prompt_field``).
Chat records (``messages_field``) hold a list of ``{"role", "content"}`` messages; each is
rendered with the tokenizer's own chat template (a local transformers tokenizer folder whose
config carries ``chat_template``), and its loss mask keeps the rows that predict a token of an
assistant turn: the turn's content and whatever the template closes it with, never the header
the template opens it with (that is what ``add_generation_prompt`` renders, the prompt). The
turns are found by rendering each prefix of the conversation: the template must render a
conversation's prefixes as prefixes of it, which the usual templates do; one that does not (it
rewrites earlier turns) is refused. Nothing is downloaded: ``datasets`` reads local files only.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np

from softlabels.errors import MismatchError, SpecError
from softlabels.lm.text import (
    SPLITS,
    TokenizerInfo,
    TokenSequences,
    encode_documents,
    load_text,
    load_tokenizer,
)

DATASETS_PREFIX = "datasets:"
DATA_FILES = {".parquet": "parquet", ".jsonl": "json", ".json": "json", ".csv": "csv"}


def load_sequences(
    spec: str,
    tokenizer: str | TokenizerInfo,
    *,
    split: str = "train",
    text_field: str = "text",
    prompt_field: str | None = None,
    messages_field: str | None = None,
    add_eos: bool = True,
    add_special_tokens: bool = True,
) -> TokenSequences:
    """Token sequences from a text SPEC (module docstring): chat records when
    ``messages_field`` is given, else documents from ``text_field`` (after ``prompt_field``)."""
    if messages_field is not None:
        if prompt_field is not None:
            raise SpecError(
                "chat records carry their own prompts (the turns that are not the assistant's); "
                "give a messages field or a prompt field, not both"
            )
        if not isinstance(tokenizer, str):
            raise SpecError("chat records need a transformers tokenizer folder, given by its path")
        return load_chat(spec, tokenizer, split=split, messages_field=messages_field)
    if not spec.startswith(DATASETS_PREFIX):
        return load_text(
            spec,
            tokenizer,
            split=split,
            text_field=text_field,
            prompt_field=prompt_field,
            add_eos=add_eos,
            add_special_tokens=add_special_tokens,
        )
    tok = load_tokenizer(tokenizer) if isinstance(tokenizer, str) else tokenizer
    fields = (text_field,) if prompt_field is None else (prompt_field, text_field)
    documents = (
        [_string(record, name, spec, n) for name in fields]
        for n, record in enumerate(records(spec, split=split))
    )
    docs, prompts = encode_documents(
        tok,
        documents,
        prompted=prompt_field is not None,
        add_special_tokens=add_special_tokens,
        add_eos=add_eos,
    )
    # row t takes a loss when token t + 1 is not a prompt token (as load_text's prompt masks)
    masks = [np.arange(len(d)) >= p - 1 for d, p in zip(docs, prompts, strict=True)]
    seqs = _sequences(spec, split, tok, docs, masks if prompt_field is not None else None)
    return replace(
        seqs,
        add_special_tokens=add_special_tokens,
        bos_id=tok.bos_id if add_special_tokens else None,
        eos_id=tok.eos_id,
    )


def load_chat(
    spec: str, tokenizer: str, *, split: str = "train", messages_field: str = "messages"
) -> TokenSequences:
    """Chat records rendered with ``tokenizer``'s chat template, with an assistant-only loss
    mask (module docstring). ``spec``: a ``datasets:`` SPEC or a ``.jsonl`` file."""
    info = load_tokenizer(tokenizer)
    tok = _chat_tokenizer(tokenizer)
    docs, masks = [], []
    for n, record in enumerate(records(spec, split=split)):
        messages = record.get(messages_field) if isinstance(record, Mapping) else None
        if not isinstance(messages, list) or not messages:
            raise SpecError(
                f"{spec!r} record {n} has no list of messages in {messages_field!r}; chat "
                f"records hold [{{'role': ..., 'content': ...}}, ...] there"
            )
        ids, assistant = render_chat(tok, [_message(m, spec, n) for m in messages], where=n)
        if len(ids) >= 2:
            docs.append(ids)
            # row t takes a loss when token t + 1 belongs to an assistant turn
            masks.append(np.append(assistant[1:], False))
    return _sequences(spec, split, info, docs, masks)


def render_chat(
    tok: Any, messages: list[dict[str, str]], *, where: int | str = ""
) -> tuple[list[int], np.ndarray]:
    """The ids of ``messages`` rendered by ``tok``'s chat template, and (len,) bool: True on the
    tokens of assistant turns (not their headers)."""
    ids = _template_ids(tok, messages, generation_prompt=False)
    assistant = np.zeros(len(ids), dtype=bool)
    for i, message in enumerate(messages):
        if message["role"] != "assistant":
            continue
        opened = _template_ids(tok, messages[:i], generation_prompt=True) if i else []
        closed = _template_ids(tok, messages[: i + 1], generation_prompt=False)
        if closed != ids[: len(closed)] or opened != closed[: len(opened)]:
            raise SpecError(
                f"chat record {where}: the chat template does not render the conversation's "
                f"first turns as the start of the whole (it rewrites earlier turns), so the "
                f"assistant turns cannot be located; use a template that only appends"
            )
        assistant[len(opened) : len(closed)] = True
    return ids, assistant


def records(spec: str, *, split: str = "train") -> Iterable[Mapping[str, Any]]:
    """The records of a ``datasets:`` SPEC (read through ``datasets``) or a ``.jsonl`` file."""
    if split not in SPLITS:
        raise SpecError(f"split must be one of {SPLITS}, got {split!r}")
    if not spec.startswith(DATASETS_PREFIX):
        path = Path(spec)
        if path.suffix != ".jsonl" or not path.is_file():
            raise SpecError(
                f"{spec!r}: chat records come from a .jsonl file or a datasets: SPEC "
                f"(datasets:DIR saved with save_to_disk, or datasets:FILE.parquet/.jsonl)"
            )
        return _jsonl(path)
    return _dataset(spec.removeprefix(DATASETS_PREFIX), split)


def _dataset(path_text: str, split: str) -> Any:
    try:
        import datasets
    except ImportError as exc:
        raise SpecError(
            "datasets: SPECs need the datasets package: pip install 'softlabels[datasets]'"
        ) from exc
    path = Path(path_text)
    if path.is_dir():
        try:
            data = datasets.load_from_disk(str(path))
        except (FileNotFoundError, ValueError) as exc:
            raise SpecError(
                f"{path_text!r} is not a folder written by datasets' save_to_disk ({exc})"
            ) from exc
        if isinstance(data, datasets.DatasetDict):
            if split not in data:
                raise SpecError(f"{path_text!r} has no {split!r} split (it has {sorted(data)})")
            return data[split]
        if split != "train":
            raise SpecError(
                f"{path_text!r} is one Dataset, the 'train' split; save a DatasetDict for a "
                f"{split!r} split"
            )
        return data
    builder = DATA_FILES.get(path.suffix.lower())
    if builder is None or not path.is_file():
        raise SpecError(
            f"{path_text!r} is neither a save_to_disk folder nor a {'/'.join(DATA_FILES)} file"
        )
    if split != "train":
        raise SpecError(f"{path_text!r} is one file, the 'train' split")
    return datasets.load_dataset(builder, data_files={"train": str(path)}, split="train")


def _jsonl(path: Path) -> Iterator[dict[str, Any]]:
    with path.open(encoding="utf-8") as f:
        for n, line in enumerate(f, 1):
            if line.strip():
                try:
                    yield json.loads(line)
                except json.JSONDecodeError as exc:
                    raise SpecError(f"{str(path)!r} line {n} is not JSON: {exc}") from exc


def _chat_tokenizer(folder: str) -> Any:
    if not Path(folder).is_dir():
        raise SpecError(
            f"chat records need a transformers tokenizer folder with a chat template; "
            f"{folder!r} is not a folder"
        )
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(folder, local_files_only=True)
    if not getattr(tok, "chat_template", None):
        raise SpecError(
            f"the tokenizer in {folder!r} has no chat template; set tokenizer.chat_template "
            f"and save it there (save_pretrained)"
        )
    return tok


def _template_ids(tok: Any, messages: list[dict[str, str]], *, generation_prompt: bool) -> list:
    out = tok.apply_chat_template(messages, tokenize=True, add_generation_prompt=generation_prompt)
    ids = out["input_ids"] if isinstance(out, Mapping) else out
    return [int(i) for i in ids]


def _message(message: Any, spec: str, n: int) -> dict[str, str]:
    if not isinstance(message, Mapping) or not all(
        isinstance(message.get(k), str) for k in ("role", "content")
    ):
        raise SpecError(f"{spec!r} record {n}: every message needs string 'role' and 'content'")
    return {"role": message["role"], "content": message["content"]}


def _string(record: Any, name: str, spec: str, n: int) -> str:
    value = record.get(name) if isinstance(record, Mapping) else None
    if not isinstance(value, str):
        raise SpecError(f"{spec!r} record {n} has no string column {name!r}")
    return value


def _sequences(
    spec: str,
    split: str,
    tok: TokenizerInfo,
    docs: list[list[int]],
    masks: list[np.ndarray] | None,
) -> TokenSequences:
    if not docs:
        raise SpecError(f"{spec!r} holds no record of two tokens or more")
    ids = np.concatenate([np.asarray(d, dtype=np.int64) for d in docs])
    if ids.max() >= tok.vocab_size:
        raise SpecError(f"the tokenizer produced id {ids.max()} >= its vocab size {tok.vocab_size}")
    return TokenSequences(
        name=spec,
        split=split,
        ids=ids,
        offsets=np.concatenate([[0], np.cumsum([len(d) for d in docs])]).astype(np.int64),
        tokenizer=tok.fingerprint,
        vocab_size=tok.vocab_size,
        special_tokens=tok.special_tokens,
        loss_mask=None if masks is None else np.concatenate(masks).astype(bool),
        vocabulary=tok.vocabulary,
        pad_id=tok.pad_id,
    )


def mask_fingerprint(mask: np.ndarray) -> str:
    """ "sha256:" over a loss mask as one byte (0 or 1) per token."""
    return "sha256:" + hashlib.sha256(np.asarray(mask, dtype=np.uint8).tobytes()).hexdigest()


def loss_mask_record(seqs: TokenSequences) -> dict[str, Any] | None:
    """What a token store records of its sequences' loss mask (None: they carry none): its
    fingerprint and the number of rows that take a loss."""
    if seqs.loss_mask is None:
        return None
    return {"fingerprint": mask_fingerprint(seqs.loss_mask), "rows": int(seqs.loss_mask.sum())}


def check_loss_mask(recorded: dict[str, Any] | None, seqs: TokenSequences, path: str) -> None:
    """Sequences trained on a store that records a loss mask must carry that very mask (the
    same prompt field, or the same chat records and template). A store recording none leaves
    the mask to stage two (a prompt mask given only there drops rows, it misaligns none)."""
    if recorded is None:
        return
    if seqs.loss_mask is None:
        raise MismatchError(
            f"{path!r} was made from sequences with a loss mask ({recorded['rows']} rows take a "
            f"loss: prompt fields or chat records), and these sequences carry none; load them "
            f"as the store's were (the same prompt field, or the same messages field)"
        )
    if mask_fingerprint(seqs.loss_mask) != recorded["fingerprint"]:
        raise MismatchError(
            f"the sequences' loss mask ({int(seqs.loss_mask.sum())} rows take a loss) is not "
            f"the one {path!r} records ({recorded['rows']} rows): another prompt field, chat "
            f"template or set of records; load them as the store's were"
        )

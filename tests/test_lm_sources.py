"""Transfer forms for language models: datasets folders and files, and chat records rendered
with a chat template, whose assistant-only loss mask the store records and training checks."""

from __future__ import annotations

from dataclasses import replace

import numpy as np
import pytest
from tokenizers import Tokenizer

from softlabels.errors import MismatchError, SpecError
from softlabels.lm.dataset import TokenTargetDataset
from softlabels.lm.generate import generate_tokens
from softlabels.lm.sources import load_chat, load_sequences, mask_fingerprint
from softlabels.store import open_store
from tests.lm_helpers import CORPUS, tiny_gpt, train_tokenizer, transformers_tokenizer

datasets = pytest.importorskip("datasets")

# Each message: "<role>" then its content then "<eos>"; a generation prompt is "<assistant>".
TEMPLATE = (
    "{% for m in messages %}<{{ m['role'] }}>{{ m['content'] }}<eos>{% endfor %}"
    "{% if add_generation_prompt %}<assistant>{% endif %}"
)
CHATS = [
    [
        {"role": "user", "content": "the quick brown fox"},
        {"role": "assistant", "content": "jumps over the lazy dog"},
    ],
    [
        {"role": "system", "content": "all that glitters"},
        {"role": "user", "content": "a stitch in time"},
        {"role": "assistant", "content": "saves nine"},
        {"role": "user", "content": "the early bird"},
        {"role": "assistant", "content": "catches the worm"},
    ],
]


@pytest.fixture(scope="module")
def tok(tmp_path_factory):
    root = tmp_path_factory.mktemp("sources")
    json_path = train_tokenizer(root / "tokenizer.json")
    folder = transformers_tokenizer(json_path, root / "chat_tok")
    from transformers import AutoTokenizer

    hf = AutoTokenizer.from_pretrained(str(folder), local_files_only=True)
    hf.chat_template = TEMPLATE
    hf.save_pretrained(str(folder))
    return {"json": json_path, "folder": folder, "raw": Tokenizer.from_file(str(json_path))}


def _expected(raw: Tokenizer, docs: list[str]) -> tuple[np.ndarray, np.ndarray]:
    """Ids and offsets of ``docs`` encoded one by one, each ended by <eos>."""
    eos = raw.token_to_id("<eos>")
    encoded = [raw.encode(d).ids + [eos] for d in docs]
    offsets = np.concatenate([[0], np.cumsum([len(e) for e in encoded])])
    return np.concatenate(encoded), offsets


def test_a_saved_dataset_and_its_splits(tok, tmp_path):
    dd = datasets.DatasetDict(
        {
            "train": datasets.Dataset.from_dict({"text": CORPUS[:10]}),
            "test": datasets.Dataset.from_dict({"text": CORPUS[10:13]}),
        }
    )
    dd.save_to_disk(str(tmp_path / "dd"))
    for split, docs in (("train", CORPUS[:10]), ("test", CORPUS[10:13])):
        seqs = load_sequences(f"datasets:{tmp_path / 'dd'}", str(tok["json"]), split=split)
        ids, offsets = _expected(tok["raw"], docs)
        np.testing.assert_array_equal(seqs.ids, ids)
        np.testing.assert_array_equal(seqs.offsets, offsets)
        assert seqs.loss_mask is None and seqs.split == split
    datasets.Dataset.from_dict({"text": CORPUS[:3]}).save_to_disk(str(tmp_path / "one"))
    with pytest.raises(SpecError, match="one Dataset, the 'train' split"):
        load_sequences(f"datasets:{tmp_path / 'one'}", str(tok["json"]), split="test")


def test_parquet_and_jsonl_through_datasets_with_a_text_column_and_prompts(tok, tmp_path):
    table = datasets.Dataset.from_dict(
        {"question": ["the quick", "a stitch"], "answer": ["brown fox", "in time"]}
    )
    table.to_parquet(str(tmp_path / "qa.parquet"))
    table.to_json(str(tmp_path / "qa.jsonl"))
    raw, eos = tok["raw"], tok["raw"].token_to_id("<eos>")
    for name in ("qa.parquet", "qa.jsonl"):
        seqs = load_sequences(
            f"datasets:{tmp_path / name}",
            str(tok["json"]),
            text_field="answer",
            prompt_field="question",
        )
        expected, mask = [], []
        for q, a in (("the quick", "brown fox"), ("a stitch", "in time")):
            prompt, body = raw.encode(q).ids, raw.encode(a).ids + [eos]
            expected += prompt + body
            # row t takes a loss when token t + 1 is not a prompt token
            mask += [False] * (len(prompt) - 1) + [True] * (len(body) + 1)
        np.testing.assert_array_equal(seqs.ids, expected)
        np.testing.assert_array_equal(seqs.loss_mask, mask)
    with pytest.raises(SpecError, match="no string column 'body'"):
        load_sequences(f"datasets:{tmp_path / 'qa.parquet'}", str(tok["json"]), text_field="body")


def test_chat_records_mask_assistant_tokens_only(tok, tmp_path):
    datasets.Dataset.from_dict({"messages": CHATS}).save_to_disk(str(tmp_path / "chat"))
    seqs = load_sequences(
        f"datasets:{tmp_path / 'chat'}", str(tok["folder"]), messages_field="messages"
    )
    raw, eos = tok["raw"], tok["raw"].token_to_id("<eos>")
    ids, assistant = [], []
    for chat in CHATS:  # each turn encoded alone: header, content, <eos>
        for m in chat:
            header, content = raw.encode(f"<{m['role']}>").ids, raw.encode(m["content"]).ids
            ids += header + content + [eos]
            mine = m["role"] == "assistant"
            assistant += [False] * len(header) + [mine] * (len(content) + 1)
    np.testing.assert_array_equal(seqs.ids, ids)
    np.testing.assert_array_equal(seqs.offsets[1:-1], [len(seqs.sequence(0))])
    # the mask is the assistant flag shifted by one: row t predicts token t + 1
    expected = np.zeros(len(ids), bool)
    for s in range(len(seqs)):
        a, b = seqs.offsets[s], seqs.offsets[s + 1]
        expected[a : b - 1] = np.asarray(assistant[a + 1 : b])
    np.testing.assert_array_equal(seqs.loss_mask, expected)
    # the .jsonl form of the same records gives the same sequences
    rows = tmp_path / "chat.jsonl"
    datasets.Dataset.from_dict({"messages": CHATS}).to_json(str(rows))
    again = load_chat(str(rows), str(tok["folder"]))
    np.testing.assert_array_equal(again.ids, seqs.ids)
    np.testing.assert_array_equal(again.loss_mask, seqs.loss_mask)


def test_chat_needs_a_template_that_appends(tok, tmp_path):
    from transformers import AutoTokenizer

    rewriting = tmp_path / "last_only"
    hf = AutoTokenizer.from_pretrained(str(tok["folder"]), local_files_only=True)
    hf.chat_template = "{{ messages[-1]['content'] }}<eos>"  # drops the earlier turns
    hf.save_pretrained(str(rewriting))
    rows = tmp_path / "chat.jsonl"
    datasets.Dataset.from_dict({"messages": CHATS}).to_json(str(rows))
    with pytest.raises(SpecError, match="rewrites earlier turns"):
        load_chat(str(rows), str(rewriting))
    with pytest.raises(SpecError, match="no chat template"):
        plain = transformers_tokenizer(tok["json"], tmp_path / "plain")
        load_chat(str(rows), str(plain))


def test_the_store_records_the_chat_mask_and_training_checks_it(tok, tmp_path):
    datasets.Dataset.from_dict({"messages": CHATS * 3}).save_to_disk(str(tmp_path / "chat"))
    spec = f"datasets:{tmp_path / 'chat'}"
    seqs = load_sequences(spec, str(tok["folder"]), messages_field="messages")
    teacher = tiny_gpt(tmp_path / "teacher", vocab_size=seqs.vocab_size)
    out = tmp_path / "chat.zarr"
    generate_tokens([f"hf:{teacher}"], seqs, out, max_length=64, progress=False, device="cpu")
    with open_store(out) as reader:
        recorded = reader.meta.tokens.loss_mask
        assert recorded == {
            "fingerprint": mask_fingerprint(seqs.loss_mask),
            "rows": int(seqs.loss_mask.sum()),
        }
        ds = TokenTargetDataset(reader, seqs, temperature=1.0)
        ids, _, target, keep = ds[1]
        a, b = ds.seqs.offsets[1], ds.seqs.offsets[2]  # windows of at most 64 tokens
        np.testing.assert_array_equal(keep.numpy(), seqs.loss_mask[a:b])
        assert target.shape[0] == b - a  # the store holds every row; the mask drops some
        with pytest.raises(MismatchError, match="carry none"):
            TokenTargetDataset(reader, replace(seqs, loss_mask=None), temperature=1.0)
        flipped = seqs.loss_mask.copy()
        flipped[int(np.argmax(flipped))] = False
        with pytest.raises(MismatchError, match="not the one"):
            TokenTargetDataset(reader, replace(seqs, loss_mask=flipped), temperature=1.0)


def test_the_clis_take_a_datasets_chat_corpus(tok, tmp_path):
    from click.testing import CliRunner

    from softlabels.cli import main as softlabels_cli
    from trainer.cli import main as distill

    datasets.Dataset.from_dict({"messages": CHATS * 2}).save_to_disk(str(tmp_path / "chat"))
    teacher = tiny_gpt(tmp_path / "teacher", vocab_size=len(tok["raw"].get_vocab()))
    source = ["--text", f"datasets:{tmp_path / 'chat'}", "--tokenizer", str(tok["folder"])]
    store = tmp_path / "chat.zarr"
    made = CliRunner().invoke(
        softlabels_cli,
        ["generate-lm", "--teacher", f"hf:{teacher}", *source, "--messages-field", "messages"]
        + ["--max-length", "64", "--out", str(store), "--quiet", "--device", "cpu"],
    )
    assert made.exit_code == 0, made.output
    train = ["train-lm", "--store", str(store), *source, "--eval-split", "none"]
    train += ["--width", "16", "--layers", "1", "--device", "cpu"]
    refused = CliRunner().invoke(distill, [*train, "--out", str(tmp_path / "a")])
    assert refused.exit_code != 0 and "no string column 'text'" in refused.output
    ran = CliRunner().invoke(
        distill, [*train, "--messages-field", "messages", "--out", str(tmp_path / "b")]
    )
    assert ran.exit_code == 0, ran.output

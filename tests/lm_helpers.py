"""Tiny language-model fixtures built locally (nothing is downloaded): a BPE tokenizer trained on
a few kilobytes of text, its transformers twin, and a two-layer GPT-2 teacher in safetensors."""

from __future__ import annotations

from pathlib import Path

CORPUS = [
    "the quick brown fox jumps over the lazy dog",
    "a stitch in time saves nine",
    "all that glitters is not gold",
    "the early bird catches the worm",
    "where there is smoke there is fire",
    "actions speak louder than words",
    "the pen is mightier than the sword",
    "when in rome do as the romans do",
] * 6
SPECIALS = ["<pad>", "<unk>", "<eos>"]


def write_corpus(folder: Path) -> Path:
    """train.txt (every document but the last 8) and test.txt in ``folder``."""
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "train.txt").write_text("\n".join(CORPUS[:-8]) + "\n")
    (folder / "test.txt").write_text("\n".join(CORPUS[-8:]) + "\n")
    return folder


def train_tokenizer(path: Path, vocab_size: int = 200) -> Path:
    """A byte-level BPE tokenizer.json trained on CORPUS."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

    tok = Tokenizer(models.BPE(unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=SPECIALS,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
    )
    tok.train_from_iterator(CORPUS, trainer)
    path.parent.mkdir(parents=True, exist_ok=True)
    tok.save(str(path))
    return path


def transformers_tokenizer(tokenizer_json: Path, folder: Path) -> Path:
    """The same tokenizer as a transformers tokenizer directory."""
    from transformers import PreTrainedTokenizerFast

    tok = PreTrainedTokenizerFast(
        tokenizer_file=str(tokenizer_json), pad_token="<pad>", unk_token="<unk>", eos_token="<eos>"
    )
    tok.save_pretrained(str(folder))
    return folder


def tiny_gpt(folder: Path, vocab_size: int = 200, seed: int = 0) -> Path:
    """A two-layer GPT-2 with random weights, saved as a transformers directory."""
    import torch
    from transformers import GPT2Config, GPT2LMHeadModel

    torch.manual_seed(seed)
    config = GPT2Config(
        vocab_size=vocab_size,
        n_positions=64,
        n_embd=32,
        n_layer=2,
        n_head=2,
        bos_token_id=2,
        eos_token_id=2,
    )
    GPT2LMHeadModel(config).save_pretrained(str(folder), safe_serialization=True)
    return folder


def bigram_student(*, vocab_size: int, max_length: int):
    """A module:function student: next-token logits from the current token alone."""
    import torch
    from torch import nn

    class _Bigram(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.table = nn.Embedding(vocab_size, vocab_size)

        def forward(self, input_ids, attention_mask=None):
            return self.table(input_ids).float()

    torch.manual_seed(0)
    return _Bigram()


def not_a_module(*, vocab_size: int, max_length: int) -> dict:
    """A student function returning the wrong thing."""
    return {"vocab_size": vocab_size}


def tied_student(*, vocab_size: int, max_length: int):
    """A module:function student whose output head shares the embedding's weight."""
    import torch
    from torch import nn

    class _Tied(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.embed = nn.Embedding(vocab_size, 16)
            self.head = nn.Linear(16, vocab_size, bias=False)
            self.head.weight = self.embed.weight

        def forward(self, input_ids, attention_mask=None):
            return self.head(self.embed(input_ids)).float()

    torch.manual_seed(0)
    return _Tied()


def tiny_llama(
    folder: Path,
    vocab_size: int = 200,
    *,
    context: int = 64,
    head: int | None = None,
    bos: int | None = None,
) -> Path:
    """A two-layer Llama (RoPE: it computes any position, max_position_embeddings is the context
    it was trained for) with random weights; ``head`` pads the output head past the tokenizer;
    ``bos`` is the BOS id its config names (None: none, as CORPUS's tokenizer adds none)."""
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(0)
    config = LlamaConfig(
        vocab_size=head or vocab_size,
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=2,
        num_attention_heads=2,
        num_key_value_heads=2,
        max_position_embeddings=context,
        bos_token_id=bos,
        eos_token_id=2,
    )
    LlamaForCausalLM(config).save_pretrained(str(folder), safe_serialization=True)
    return folder


def llama_tokenizer(tokenizer_json: Path, path: Path, bos: str = "<unk>") -> Path:
    """``tokenizer_json`` with a Llama-style post-processor that puts ``bos`` first
    (``<s> $A``); CORPUS's tokenizer has no ``<s>``, so its ``<unk>`` (id 1) stands in."""
    from tokenizers import Tokenizer, processors

    tok = Tokenizer.from_file(str(tokenizer_json))
    bos_id = tok.token_to_id(bos)
    tok.post_processor = processors.TemplateProcessing(
        single=f"{bos} $A", pair=f"{bos} $A {bos} $B", special_tokens=[(bos, bos_id)]
    )
    path.parent.mkdir(parents=True, exist_ok=True)
    tok.save(str(path))
    return path


def wordlevel_tokenizer(path: Path, size: int = 512) -> Path:
    """A word-level tokenizer.json of exactly ``size`` ids: SPECIALS, CORPUS's words, then
    filler words (so a head of ``size`` rows is the tokenizer's, and more rows are padding)."""
    from tokenizers import Tokenizer, models, pre_tokenizers

    words = sorted({w for doc in CORPUS for w in doc.split()})
    names = SPECIALS + words + [f"w{i}" for i in range(size - len(SPECIALS) - len(words))]
    tok = Tokenizer(models.WordLevel({w: i for i, w in enumerate(names)}, unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    tok.add_special_tokens(SPECIALS)
    path.parent.mkdir(parents=True, exist_ok=True)
    tok.save(str(path))
    return path

"""Keep the README true: every ```sh, ```bash and ```python block in README.md runs here.

Each block is known by its first line (``HANDLERS``); a block this file does not know fails
``test_every_readme_block_is_known``, naming it, so a new block must be added here with a small
equivalent. A handler runs the block's own text, in a fresh folder holding the inputs it names
(tiny digits stores, a tiny GPT-2 and tokenizer, a tiny Fashion-MNIST IDX folder, ...), after
*substitutions* that shrink it (``--epochs 30`` to ``--epochs 1``, a remote URL to ``memory://``):
each substitution must find its text in the block, so a renamed flag, path or value fails here.
Lines with placeholders (``SPEC``, ``STORE``, ``...``, ``[--opt]``, ``a|b``) are synopses: every
flag they name must be an option of that command. The demo's printed table must be what
``trainer.demo_report`` renders from ``bench/distill.json`` (make distill's own results).
"""

from __future__ import annotations

import json
import re
import shlex
import subprocess
import sys
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import click
import numpy as np
import pytest
import torch
from click.testing import CliRunner

from softlabels.cli import main as softlabels_cli
from softlabels.generate import generate
from softlabels.transfer import load_transfer
from trainer import demo_data, demo_report
from trainer.cli import main as distill_cli

ROOT = Path(__file__).resolve().parent.parent
README = ROOT / "README.md"
CLIS: dict[str, click.Group] = {"softlabels": softlabels_cli, "distill": distill_cli}
_BLOCK = re.compile(r"^```(sh|bash|python)\n(.*?)^```", re.S | re.M)
_PLACEHOLDER = re.compile(r"(\.\.\.|\[|\||\b[A-Z][A-Z0-9_]*\b)")


@dataclass(frozen=True)
class Block:
    lang: str
    line: int  # where it starts in README.md
    text: str

    @property
    def key(self) -> str:
        return self.text.splitlines()[0].strip()


def readme_blocks() -> list[Block]:
    text = README.read_text()
    return [
        Block(m.group(1), text[: m.start()].count("\n") + 1, m.group(2))
        for m in _BLOCK.finditer(text)
    ]


def block(key: str) -> Block:
    (found,) = [b for b in readme_blocks() if b.key == key]
    return found


def substitute(text: str, *subs: tuple[str, str]) -> str:
    """``text`` with each (old, new) replaced; each old must be there (else the README
    changed what the handler shrinks, and the handler must follow)."""
    for old, new in subs:
        assert old in text, f"the README block no longer contains {old!r}:\n{text}"
        text = text.replace(old, new)
    return text


def commands(text: str) -> list[list[str]]:
    """The block's commands as argv lists: continuation lines joined, comments dropped."""
    joined = re.sub(r"\\\n\s*", " ", text)
    return [argv for line in joined.splitlines() if (argv := shlex.split(line, comments=True))]


def options_of(argv: list[str]) -> tuple[click.Command, set[str]]:
    """The click command ``argv`` runs (softlabels/distill SUBCOMMAND, or the one torchrun
    runs with -m) and the option names it takes."""
    if argv[0] == "torchrun":
        module = argv[argv.index("-m") + 1]
        assert module in ("softlabels.cli", "trainer.cli"), module
        argv = [
            "softlabels" if module == "softlabels.cli" else "distill",
            *argv[argv.index("-m") + 2 :],
        ]
    group = CLIS[argv[0]]
    sub = group.commands.get(argv[1])
    assert sub is not None, f"`{argv[0]} {argv[1]}` is not a command"
    names = {o for p in sub.params for o in (*p.opts, *p.secondary_opts)}
    return sub, names


def check_synopsis(argv: list[str]) -> None:
    """Every --flag a synopsis line names is an option of its command."""
    sub, names = options_of(argv)
    if argv[0] == "torchrun":  # the launcher's own options are torchrun's business
        argv = argv[argv.index("-m") + 2 :]
    flags = {f for token in argv for f in re.findall(r"(?<![\w-])--[a-z][a-z0-9-]*", token)}
    unknown = sorted(flags - names)
    assert not unknown, f"`{' '.join(argv[:2])}` has no option(s) {unknown}"


def run_cli(argv: list[str]) -> str:
    result = CliRunner().invoke(CLIS[argv[0]], argv[1:], catch_exceptions=False)
    assert result.exit_code == 0, f"{shlex.join(argv)} failed:\n{result.output}"
    return result.output


def run_sh(text: str, *, others: Callable[[list[str]], None] | None = None) -> list[str]:
    """Run each concrete command (softlabels/distill, in process), check each synopsis; other
    programs go to ``others``. Returns the outputs of the commands run."""
    outputs = []
    for argv in commands(text):
        if _PLACEHOLDER.search(" ".join(argv)):
            check_synopsis(argv)
        elif argv[0] in CLIS:
            outputs.append(run_cli(argv))
        else:
            assert others is not None, f"no runner for `{argv[0]}` in:\n{text}"
            others(argv)
    return outputs


def run_python(text: str) -> dict:
    """Run the block; returns the names it defined."""
    scope: dict = {"__name__": "__readme__"}
    exec(compile(text, str(README), "exec"), scope)
    return scope


# ---- inputs the blocks name, made small -----------------------------------------------------


def digits_stores(folder: Path) -> None:
    """make distill's files in data/digits, its stores made by one quick teacher."""
    digits = folder / "data" / "digits"
    _, transfer = demo_data.write(digits, 0.1)
    for split, name in (("train", "softlabels-0.1.zarr"), ("test", "softlabels-0.1-test.zarr")):
        generate(
            ["tests.helpers:teacher_a"],
            str(transfer),
            str(digits / name),
            split=split,
            chunk_rows=512,
            progress=False,
        ).close()


def language_model_files(folder: Path) -> None:
    """corpus/, tokenizer.json, and GPT-2 teacher and student folders in models/."""
    from tokenizers import Tokenizer
    from transformers import GPT2Config, GPT2LMHeadModel

    from tests.lm_helpers import train_tokenizer, write_corpus

    write_corpus(folder / "corpus")
    vocab = Tokenizer.from_file(str(train_tokenizer(folder / "tokenizer.json"))).get_vocab_size()
    for name, seed in (("teacher", 0), ("student", 1)):
        torch.manual_seed(seed)
        config = GPT2Config(vocab_size=vocab, n_positions=256, n_embd=16, n_layer=1, n_head=2)
        config.bos_token_id = config.eos_token_id = 2
        GPT2LMHeadModel(config).save_pretrained(str(folder / "models" / name))


CHAT_TEMPLATE = (  # add_generation_prompt opens the assistant's turn: its header takes no loss
    "{% for m in messages %}<{{ m['role'] }}>{{ m['content'] }}<eos>{% endfor %}"
    "{% if add_generation_prompt %}<assistant>{% endif %}"
)


def chat_models(folder: Path) -> int:
    """models/teacher (a GPT-2 with its transformers tokenizer, whose config carries a chat
    template) and models/student (a Llama); returns the vocabulary size."""
    from transformers import AutoTokenizer

    from tests.lm_helpers import tiny_gpt, tiny_llama, train_tokenizer, transformers_tokenizer

    teacher = folder / "models" / "teacher"
    transformers_tokenizer(train_tokenizer(folder / "tokenizer.json"), teacher)
    tok = AutoTokenizer.from_pretrained(str(teacher), local_files_only=True)
    tok.chat_template = CHAT_TEMPLATE
    tok.save_pretrained(str(teacher))
    tiny_gpt(teacher, len(tok))
    tiny_llama(folder / "models" / "student", len(tok))
    return len(tok)


def chat_records(folder: Path) -> None:
    """chats/: a datasets folder of 16 two-turn conversations (save_to_disk)."""
    import datasets

    from tests.lm_helpers import CORPUS

    chats = [
        [{"role": "user", "content": q}, {"role": "assistant", "content": a}]
        for q, a in zip(CORPUS[0:16], CORPUS[1:17], strict=True)
    ]
    datasets.Dataset.from_dict({"messages": chats}).save_to_disk(str(folder / "chats"))


def distillkit_capture(folder: Path, vocab: int) -> None:
    """capture/: the models/teacher GPT-2's top-k log-probabilities over five documents, in
    DistillKit's compressed Parquet layout (tests/test_lm_import.py's writer)."""
    from softlabels.lm.models import load_hf
    from softlabels.lm.text import load_text
    from tests.lm_helpers import CORPUS
    from tests.test_lm_import import write_distillkit

    docs = folder / "docs.txt"
    docs.write_text("\n".join(CORPUS[:5]) + "\n")
    seqs = load_text(str(docs), str(folder / "tokenizer.json"))
    model = load_hf(f"hf:{folder / 'models' / 'teacher'}")
    with torch.no_grad():
        log_p = [
            torch.log_softmax(model(torch.from_numpy(seqs.sequence(s))[None])[0].double(), -1)
            for s in range(len(seqs))
        ]
    write_distillkit(folder / "capture", {"seqs": seqs, "log_p": log_p}, vocab=vocab)


def fashion_files(folder: Path) -> Path:
    """A Fashion-MNIST IDX folder of 48 training and 16 test images, and an MLP teacher at
    data/fashion/teacher1.pt trained one epoch on it."""
    from trainer.train import TrainConfig, train

    idx = folder / "fashion-mnist"
    idx.mkdir()
    rng = np.random.default_rng(0)
    for prefix, n in (("train", 48), ("t10k", 16)):
        images = rng.integers(0, 256, size=(n, 28, 28), dtype=np.uint8)
        header = bytes([0, 0, 8, 3]) + np.array([n, 28, 28], ">i4").tobytes()
        (idx / f"{prefix}-images-idx3-ubyte").write_bytes(header + images.tobytes())
        labels = (np.arange(n) % 10).astype(np.uint8)
        header = bytes([0, 0, 8, 1]) + np.array([n], ">i4").tobytes()
        (idx / f"{prefix}-labels-idx1-ubyte").write_bytes(header + labels.tobytes())
    teacher = folder / "data" / "fashion" / "teacher1.pt"
    teacher.parent.mkdir(parents=True)
    config = TrainConfig(
        out=str(folder / "runs" / "teacher1"),
        transfer=f"fashion-mnist:{idx}",
        hidden=(16,),
        epochs=1,
        save=str(teacher),
        progress=False,
    )
    train(config)
    return idx


# ---- one handler per block --------------------------------------------------------------------


def two_commands(b: Block, folder: Path) -> None:
    """`make distill` and `make test`: the targets exist (make -n); tests/test_make.py runs
    make distill end to end."""

    def make(argv: list[str]) -> None:
        assert argv[0] == "make", argv
        dry = subprocess.run(["make", "-n", "-C", str(ROOT), *argv[1:]], capture_output=True)
        assert dry.returncode == 0, dry.stderr.decode()

    run_sh(b.text, others=make)


def python_api(b: Block, folder: Path) -> None:
    run_python(b.text)
    from softlabels.store import open_store

    with open_store(folder / "demo.zarr") as store:
        assert store.meta.combine == "arithmetic" and store.meta.num_samples == 512


def synopsis(b: Block, folder: Path) -> None:
    run_sh(b.text)


def stage_two(b: Block, folder: Path) -> None:
    digits_stores(folder)
    text = substitute(
        b.text,
        ("--temperature 1,2,4,8,20", "--temperature 1,20"),  # the sweep's two ends
        ("--epochs 30 --out runs/sweep", "--epochs 1 --out runs/sweep --quiet"),
        ("--out runs/teacher --save teacher.pt", "--out runs/teacher --save teacher.pt --epochs 1"),
    )
    outputs = run_sh(text)
    rows = [line.split()[:3] for line in outputs[0].splitlines()[1:3]]
    assert [r[:2] for r in rows] == [["KD", "T=1"], ["KD", "T=20"]], outputs[0]
    assert (folder / "teacher.pt").is_file() and (folder / "runs" / "sweep" / "T20").is_dir()
    assert "Note:" not in outputs[0]  # make distill's own transfer set: nothing withheld


def language_models_sh(b: Block, folder: Path) -> None:
    language_model_files(folder)
    text = substitute(b.text, ("--epochs 4 --out runs/student", "--epochs 1 --out runs/student"))
    outputs = run_sh(text)
    assert "OK" in outputs[2]  # verify
    assert (folder / "runs" / "student" / "metrics.json").is_file()


def language_models_python(b: Block, folder: Path) -> None:
    language_model_files(folder)
    run_python(b.text)
    from softlabels.store import open_store

    with open_store(folder / "lm.zarr") as store:
        assert store.meta.sparse.top_k == 48 and store.meta.sparse.sample == 16


def views(b: Block, folder: Path) -> None:
    idx = fashion_files(folder)
    text = substitute(
        b.text,
        ("/usr/share/datasets/fashion-mnist", str(idx)),
        ("--views 16", "--views 2"),
        ("--out runs/views", "--out runs/views --epochs 1 --quiet"),
    )
    outputs = run_sh(text)
    assert "OK" in outputs[1]
    assert (folder / "runs" / "views" / "model.pt").is_file()


def vision_sh(b: Block, folder: Path) -> None:
    """A timm ResNet teacher from a local safetensors file over an image folder preprocessed by
    its own data config; a timm ViT student trained from the store on the same folder."""
    from PIL import Image

    from softlabels.store import open_store
    from tests.vision_helpers import draw_images, saved_model

    for i, pixels in enumerate(draw_images(10, size=72)):  # one image in each of 10 classes
        (folder / "images" / f"class{i}").mkdir(parents=True)
        Image.fromarray(pixels).save(folder / "images" / f"class{i}" / "0.png")
    arch = {"name": "timm", "kwargs": {"model": "resnet18", "num_classes": 10}}
    saved_model(folder / "r18.safetensors", arch)
    text = substitute(
        b.text,
        ("--out r18.zarr", "--out r18.zarr --quiet"),
        ("--out runs/vit", "--out runs/vit --epochs 1 --eval-split none --quiet"),
    )
    run_sh(text)
    with open_store(folder / "r18.zarr") as store:
        (teacher,) = store.meta.teachers
        assert teacher.architecture == {"name": "timm", "kwargs": arch["kwargs"]}
        assert store.meta.transfer.preprocess is not None and store.meta.num_samples == 10
    assert (folder / "runs" / "vit" / "model.pt").is_file()


def chat_sh(b: Block, folder: Path) -> None:
    """generate-lm and train-lm on chat records: the store records the assistant-turn mask, the
    run its student."""
    from tokenizers import Tokenizer

    from softlabels.store import open_store
    from softlabels.verify import verify_store
    from tests.lm_helpers import CORPUS

    chat_models(folder)
    chat_records(folder)
    text = substitute(
        b.text,
        ("--max-length 512", "--max-length 64"),  # the tiny GPT-2's context
        ("--out chat.zarr", "--out chat.zarr --quiet"),
        ("--warmup-steps 100", "--warmup-steps 1"),
    )
    run_sh(text)
    assert verify_store(str(folder / "chat.zarr")).ok
    # the rows that take a loss predict each answer's tokens and its <eos>, not <assistant>
    tok = Tokenizer.from_file(str(folder / "tokenizer.json"))
    answers = [len(tok.encode(a, add_special_tokens=False).ids) + 1 for a in CORPUS[1:17]]
    with open_store(folder / "chat.zarr") as store:
        assert store.meta.sparse.top_k == 64
        assert store.meta.tokens.loss_mask["rows"] == sum(answers)
    run = folder / "runs" / "chat"
    assert (run / "metrics.json").is_file() and (run / "student" / "config.json").is_file()


def hf_trainer(b: Block, folder: Path) -> None:
    """The DistillTrainer example with models/ made here: the store's mask is the chat's, and
    the Trainer changed the student."""
    from transformers import AutoModelForCausalLM

    from softlabels.store import open_store

    chat_models(folder)
    text = substitute(b.text, ("max_steps=20", "max_steps=3, use_cpu=True, disable_tqdm=True"))
    scope = run_python(text)
    with open_store(folder / "chat.zarr") as store:
        assert store.meta.tokens.loss_mask["rows"] == int(scope["seqs"].loss_mask.sum()) > 0
    before = AutoModelForCausalLM.from_pretrained("models/student", local_files_only=True)
    after = dict(scope["student"].named_parameters())
    assert any(not torch.equal(p, after[n]) for n, p in before.named_parameters())
    assert (folder / "runs" / "hf").is_dir()


def imported(b: Block, folder: Path) -> None:
    """A DistillKit capture imports into a store that verifies, trains at T = 1 and refuses
    T = 2."""
    from softlabels.verify import verify_store

    distillkit_capture(folder, chat_models(folder))
    text = substitute(b.text, ("--tokens-out imported.npz", "--tokens-out imported.npz --quiet"))
    outputs = run_sh(text)
    assert "at T = 1 only" in outputs[0] and verify_store(str(folder / "imported.zarr")).ok
    assert (folder / "runs" / "imported" / "student" / "config.json").is_file()
    at_2 = commands(b.text)[1]  # the block's train-lm, at T = 2
    at_2[at_2.index("--temperature") + 1], at_2[at_2.index("--out") + 1] = "2", "runs/at2"
    refused = CliRunner().invoke(distill_cli, at_2[1:])
    assert refused.exit_code != 0 and "known at T = 1 only" in refused.output, refused.output


MY_TEACHER = "# myteachers.py, on PYTHONPATH"


def my_teacher(b: Block, folder: Path) -> None:
    """The teacher module as written, with weights for its architecture."""
    from torch import nn

    model = nn.Sequential(nn.Flatten(), nn.Linear(784, 512), nn.ReLU(), nn.Linear(512, 10))
    torch.save(model.state_dict(), folder / "my_teacher_weights.pt")
    (folder / "myteachers.py").write_text(b.text)  # the folder is on sys.path (the test's)
    sys.modules.pop("myteachers", None)
    run_python(b.text + "\nmy_teacher()\n")


def my_teacher_sh(b: Block, folder: Path) -> None:
    my_teacher(block(MY_TEACHER), folder)
    x = np.random.default_rng(0).random((16, 784), dtype=np.float32)
    np.savez(folder / "data.npz", x=x)
    run_sh(b.text)
    assert (folder / "mine.zarr").is_dir()


def torchrun(b: Block, folder: Path) -> None:
    """A synopsis; tests/test_distributed.py runs torchrun against one process."""
    run_sh(b.text)


PUBLISH = "softlabels generate ... --out teacher-v3.zarr"


def publish(b: Block, folder: Path) -> None:
    """Team A: generate, verify, copy the folder as is (to memory://, standing in for S3)."""
    import fsspec

    def aws(argv: list[str]) -> None:
        assert argv[:4] == ["aws", "s3", "cp", "--recursive"], argv
        src, dst = argv[4], argv[5]
        assert dst.startswith("s3://bucket/"), dst
        fs, target = fsspec.filesystem("memory"), "/" + dst.removeprefix("s3://")
        if fs.exists(target):  # published by another test in this process: publish again
            fs.rm(target, recursive=True)
        fs.put(str(folder / src), target, recursive=True)
        assert fs.exists(target + "/zarr.json")

    text = substitute(
        b.text,
        (
            "generate ... --out",
            "generate --teacher tests.helpers:teacher_a --transfer digits --out",
        ),
        ("--transfer SPEC", "--transfer digits"),
    )
    run_sh(text, others=aws)


def consume(b: Block, folder: Path) -> None:
    """Team B reads what team A published: the URLs point at memory://."""
    publish(block(PUBLISH), folder)
    text = substitute(
        b.text,
        ("https://example.org/stores/", "memory://bucket/stores/"),
        ("s3://bucket/stores/", "memory://bucket/stores/"),
        ("--transfer SPEC", "--transfer digits"),
        ("--out runs/b", "--out runs/b --epochs 1 --quiet"),
    )
    outputs = run_sh(text)
    assert "OK" in outputs[1] and (folder / "runs" / "b" / "model.pt").is_file()


HANDLERS: dict[str, Callable[[Block, Path], None]] = {
    "make distill   # venv -> digits, 10% labelled -> 3 teachers -> store -> hard vs distilled students": two_commands,
    "import torch": python_api,
    "softlabels generate --teacher T1.pt --teacher T2.pt --teacher pkg.mod:make_teacher \\": synopsis,
    "distill train --transfer data/digits/transfer-0.1.npz --store data/digits/softlabels-0.1.zarr \\": stage_two,
    "# stage one: the teacher over the training split, and over the test split for held-out metrics": language_models_sh,
    "import softlabels, torch, trainer": language_models_python,
    "softlabels generate-lm --teacher hf:models/teacher --text datasets:chats/ --tokenizer models/teacher \\": chat_sh,
    "import datasets, softlabels": hf_trainer,
    "softlabels import capture/ --tokenizer models/teacher --out imported.zarr --tokens-out imported.npz": imported,
    "softlabels generate --teacher data/fashion/teacher1.pt --transfer fashion-mnist:/usr/share/datasets/fashion-mnist \\": views,
    MY_TEACHER: my_teacher,
    "softlabels generate --teacher myteachers:my_teacher --transfer data.npz --out mine.zarr": my_teacher_sh,
    "torchrun --nproc_per_node=8 -m softlabels.cli generate --teacher big.pt --transfer ... --out store.zarr": torchrun,
    PUBLISH: publish,
    "softlabels generate --teacher 'timm:resnet18,num_classes=10,weights=r18.safetensors' \\": vision_sh,
    "softlabels inspect https://example.org/stores/teacher-v3.zarr": consume,
}
SLOW = {  # a model folder or a teacher trained
    language_models_sh,
    language_models_python,
    chat_sh,
    hf_trainer,
    imported,
    views,
    vision_sh,
}


def test_every_readme_block_is_known():
    blocks = readme_blocks()
    unknown = [b for b in blocks if b.key not in HANDLERS]
    assert not unknown, (
        "README.md has code blocks that tests/test_readme.py does not run; add each to "
        "HANDLERS with a small equivalent:\n"
        + "\n".join(f"  line {b.line} ({b.lang}): {b.key!r}" for b in unknown)
    )
    stale = sorted(set(HANDLERS) - {b.key for b in blocks})
    assert not stale, f"HANDLERS names blocks that README.md no longer has: {stale}"
    assert len({b.key for b in blocks}) == len(blocks), "two README blocks share a first line"


@pytest.mark.parametrize(
    "key",
    [
        pytest.param(key, marks=[pytest.mark.slow] if fn in SLOW else [], id=fn.__name__)
        for key, fn in HANDLERS.items()
    ],
)
def test_readme_block_runs(key, tmp_path, monkeypatch):
    matches = [b for b in readme_blocks() if b.key == key]
    if not matches:
        pytest.fail(f"README.md has no block starting {key!r} (test_every_readme_block_is_known)")
    monkeypatch.chdir(tmp_path)
    monkeypatch.syspath_prepend(str(tmp_path))
    HANDLERS[key](matches[0], tmp_path)


# ---- what the README says in prose about the demo ----------------------------------------------


def test_the_demo_table_is_make_distills_output():
    """The block between the markers is what demo_report renders from make distill's results
    (bench/distill.json, written by `make readme-figures`), and the prose around it names
    make distill's settings."""
    results = json.loads((ROOT / "bench" / "distill.json").read_text())
    text = README.read_text()
    start, end = text.index(demo_report.BEGIN), text.index(demo_report.END)
    assert text[start + len(demo_report.BEGIN) : end] == "\n" + demo_report.render(results) + "\n"
    prose = " ".join(text.split())
    kd = demo_report.distilled(results)
    assert f"(T = {kd['temperature']:g}, alpha = {results['alpha']:g})" in prose
    assert f"the same {results['epochs']} epochs" in prose
    assert f"Each is trained with {len(results['seeds'])} seeds" in prose
    assert results["store"] == "data/digits/softlabels-0.1.zarr" in prose
    labels = load_transfer("digits", "train").label_array()
    known = int(demo_data.labelled_subset(labels, 0.1).sum())
    assert f"({known} of {len(labels):,} images" in prose and known == 144
    makefile = (ROOT / "Makefile").read_text()
    for var, value in [
        ("TEMPERATURE", f"{kd['temperature']:g}"),
        ("ALPHA", f"{results['alpha']:g}"),
        ("EPOCHS", str(results["epochs"])),
        ("SEEDS", f"{results['seeds'][0]}-{results['seeds'][-1]}"),
    ]:
        assert re.search(rf"^{var}\s*\?= {re.escape(value)}$", makefile, re.M), var
        assert f"`{var}={value}`" in prose, var


def test_the_torchrun_claim_states_its_thread_condition():
    """Bitwise equality with one process holds with the same threads per process (what
    tests/test_distributed.py runs: OMP_NUM_THREADS=1 on both sides); the README says so."""
    prose = " ".join(README.read_text().split())
    assert "with as many torch threads as each rank" in prose
    assert "torchrun starts every rank with `OMP_NUM_THREADS=1` unless you set it" in prose
    source = (ROOT / "tests" / "test_distributed.py").read_text()
    assert '"OMP_NUM_THREADS": str(RANK_THREADS)' in source and "RANK_THREADS = 1" in source

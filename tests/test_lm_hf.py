"""The Hugging Face Trainer path: DistillTrainer's loss is the KD loss of the store's targets
(checked against a float64 formula), and a user's TrainingArguments work: cosine schedule,
accumulation, save_steps and resume_from_checkpoint, bf16 autocast, and a PEFT LoRA student."""

from __future__ import annotations

import numpy as np
import pytest
import torch

pytest.importorskip("transformers")

from transformers import AutoModelForCausalLM, TrainingArguments  # noqa: E402

from softlabels.lm.dataset import TokenTargetDataset  # noqa: E402
from softlabels.lm.generate import generate_tokens  # noqa: E402
from softlabels.lm.text import load_text  # noqa: E402
from softlabels.schema import SparseSpec  # noqa: E402
from tests.lm_helpers import CORPUS, tiny_gpt, tiny_llama, train_tokenizer  # noqa: E402
from trainer.lm.hf import DistillTrainer, collate_for_trainer  # noqa: E402

T, ALPHA = 2.0, 0.3


@pytest.fixture(scope="module")
def hf(tmp_path_factory):
    root = tmp_path_factory.mktemp("hf")
    tokenizer = train_tokenizer(root / "tokenizer.json")
    docs = root / "docs.txt"
    docs.write_text("\n".join(CORPUS[:24]) + "\n")
    seqs = load_text(str(docs), str(tokenizer))
    teacher = f"hf:{tiny_gpt(root / 'teacher', seqs.vocab_size)}"
    kw = {"max_length": 32, "progress": False}
    dense = generate_tokens([teacher], seqs, root / "dense.zarr", **kw)
    sparse = generate_tokens([teacher], seqs, root / "sparse.zarr", sparse=SparseSpec(8), **kw)
    student = tiny_llama(root / "student", seqs.vocab_size)
    yield {"root": root, "seqs": seqs, "dense": dense, "sparse": sparse, "student": student}
    dense.close()
    sparse.close()


def _student(hf):
    return AutoModelForCausalLM.from_pretrained(str(hf["student"]), local_files_only=True)


def _args(out, **kw) -> TrainingArguments:
    base = {
        "output_dir": str(out),
        "per_device_train_batch_size": 4,
        "per_device_eval_batch_size": 8,
        "learning_rate": 1e-2,
        "use_cpu": True,
        "report_to": [],
        "seed": 0,
        "save_strategy": "no",
        "disable_tqdm": True,
    }
    return TrainingArguments(**(base | kw))


def test_the_trainer_loss_is_kd_from_the_store(hf, tmp_path):
    data = TokenTargetDataset(hf["dense"], hf["seqs"], temperature=T)
    model = _student(hf).eval()
    trainer = DistillTrainer(model=model, args=_args(tmp_path), train_dataset=data, alpha=ALPHA)
    batch = collate_for_trainer([data[i] for i in range(4)])
    with torch.no_grad():
        loss = float(trainer.compute_loss(model, batch))
        z = model(input_ids=batch["input_ids"]).logits[batch["loss_mask"]].double()  # (rows, V)
    # independent float64: alpha * CE over labelled rows + (1 - alpha) * T^2 * KL(p_T || q_T)
    p_log = batch["target"].double()
    q_log = torch.log_softmax(z / T, dim=-1)
    kl = (p_log.exp() * (p_log - q_log)).sum(1).mean()
    y = batch["next_tokens"]
    ce = -torch.log_softmax(z, -1)[y >= 0].gather(1, y[y >= 0, None]).mean()
    assert loss == pytest.approx(float(ALPHA * ce + (1 - ALPHA) * T * T * kl), rel=1e-5)


def test_training_arguments_work_and_a_run_resumes(hf, tmp_path):
    data = TokenTargetDataset(hf["sparse"], hf["seqs"], temperature=T)
    args = {
        "max_steps": 4,
        "gradient_accumulation_steps": 2,
        "lr_scheduler_type": "cosine",
        "warmup_steps": 1,
        "logging_steps": 1,
    }

    def trainer(out, **kw):
        return DistillTrainer(
            model=_student(hf),
            args=_args(out, **(args | kw)),
            train_dataset=data,
            eval_dataset=data,
            alpha=ALPHA,
        )

    whole = trainer(tmp_path / "whole", save_strategy="steps", save_steps=2)
    before = whole.evaluate()["eval_loss"]
    whole.train()
    after = whole.evaluate()["eval_loss"]
    assert after < before * 0.9, (before, after)
    rates = [h["learning_rate"] for h in whole.state.log_history if "learning_rate" in h]
    assert rates[0] < rates[1] and rates[-1] < rates[1]  # warmup, then the cosine
    assert (tmp_path / "whole" / "checkpoint-2").is_dir()
    resumed = trainer(tmp_path / "whole")
    resumed.train(resume_from_checkpoint=str(tmp_path / "whole" / "checkpoint-2"))
    for (name, a), b in zip(
        whole.model.named_parameters(), resumed.model.parameters(), strict=True
    ):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-6, msg=name)


def test_a_peft_lora_student_in_bf16(hf, tmp_path):
    peft = pytest.importorskip("peft")
    data = TokenTargetDataset(hf["sparse"], hf["seqs"], temperature=T)
    model = peft.get_peft_model(
        _student(hf), peft.LoraConfig(r=4, lora_alpha=8, target_modules=["q_proj", "v_proj"])
    )
    frozen = {n: p.detach().clone() for n, p in model.named_parameters() if not p.requires_grad}
    lora = {n: p.detach().clone() for n, p in model.named_parameters() if p.requires_grad}
    assert lora and all("lora_" in n for n in lora)
    trainer = DistillTrainer(
        model=model,
        args=_args(tmp_path, max_steps=3, bf16=True),  # CPU autocast to bfloat16
        train_dataset=data,
        alpha=ALPHA,
    )
    result = trainer.train()
    assert np.isfinite(result.training_loss)
    for name, p in model.named_parameters():
        if name in frozen:
            torch.testing.assert_close(p.detach(), frozen[name], rtol=0, atol=0)
    changed = [n for n, p in model.named_parameters() if n in lora and not torch.equal(p, lora[n])]
    assert changed

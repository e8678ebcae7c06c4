"""Distilling with Hugging Face's ``Trainer`` from a token store, so that a team's own
``TrainingArguments`` (learning-rate schedule, gradient accumulation, bf16, ``save_steps``,
``resume_from_checkpoint``, logging) and its student (any ``AutoModelForCausalLM``, or a PEFT
model wrapping one) work unchanged:

    data = TokenTargetDataset("lm.zarr", seqs, temperature=2.0)   # the store's targets at T
    trainer = DistillTrainer(model=student, args=TrainingArguments(...), train_dataset=data,
                             data_collator=collate_for_trainer, alpha=0.5)
    trainer.train()

``collate_for_trainer`` turns the dataset's items into a dict of tensors (the Trainer moves
tensors to its device, and nothing else): ``input_ids`` and ``attention_mask`` (B, L),
``loss_mask`` (B, L) (real tokens, prompt or non-assistant tokens left out), ``next_tokens``
(rows,) (the label of each loss row, -1 at a sequence end), and the targets at T of those rows:
``target`` (rows, V) log-probabilities for a dense store, or ``target_ids``/``target_log_probs``
(rows, K) and ``target_log_tail`` (rows,) for a sparse one. ``DistillTrainer.compute_loss``
runs the student, takes its logits at the loss rows in float32 and returns ``HintonKD``
(alpha * next-token CE + (1 - alpha) * T^2 * KL(p_T || q_T), T the dataset's temperature; a
``loss`` module may replace it). With gradient accumulation the Trainer averages the
micro-batches' losses, each a mean over its own rows (``distill train-lm`` weights them by rows
instead). The training order is ``SequenceSampler``'s (store chunks shuffled in groups, seeded
by ``args.seed``), so each chunk of a large store is read about once per epoch.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from softlabels.errors import SoftLabelsError
from softlabels.lm.dataset import SequenceSampler, TokenBatch, collate_tokens
from softlabels.sparse import SparseTargets
from trainer.modules import HintonKD

try:
    from transformers import Trainer
except ImportError as exc:  # pragma: no cover - transformers is a dependency of the LM path
    raise ImportError("DistillTrainer needs transformers: pip install transformers") from exc


def collate_for_trainer(items: list[tuple[Any, ...]]) -> dict[str, torch.Tensor]:
    """``TokenTargetDataset`` items to the dict of tensors a ``Trainer`` moves to its device."""
    batch: TokenBatch = collate_tokens(items)
    out = {
        "input_ids": batch.ids,
        "attention_mask": batch.mask,
        "loss_mask": batch.loss,
        "next_tokens": batch.labels,
    }
    if isinstance(batch.target, SparseTargets):
        out |= {
            "target_ids": batch.target.ids,
            "target_log_probs": batch.target.log_probs,
            "target_log_tail": batch.target.log_tail,
        }
    elif batch.target is not None:
        out["target"] = batch.target
    return out


def batch_target(inputs: dict[str, Any]) -> torch.Tensor | SparseTargets | None:
    """The targets ``collate_for_trainer`` flattened, as the losses take them."""
    if "target_ids" in inputs:
        return SparseTargets(
            inputs["target_ids"], inputs["target_log_probs"], inputs["target_log_tail"]
        )
    return inputs.get("target")


class DistillTrainer(Trainer):
    """A ``transformers.Trainer`` whose loss is KD from a token store (module docstring).

    alpha: weight of the next-token CE; 1 - alpha on the KD term (ignored when ``loss`` is
        given). loss: a module ``(logits (rows, V), target, labels (rows,)) -> scalar`` to use
        instead of ``HintonKD``. Every other argument is the ``Trainer``'s; ``train_dataset``
        (and ``eval_dataset``) must be ``TokenTargetDataset``s (or shaped like them), collated
        by ``collate_for_trainer`` (the default here).
    """

    def __init__(self, *args: Any, alpha: float = 0.5, loss: nn.Module | None = None, **kw: Any):
        kw.setdefault("data_collator", collate_for_trainer)
        super().__init__(*args, **kw)
        data = self.train_dataset if self.train_dataset is not None else self.eval_dataset
        temperature = getattr(data, "temperature", None)
        if loss is None and temperature is None:
            raise SoftLabelsError(
                "DistillTrainer takes its temperature from the dataset's targets: give a "
                "TokenTargetDataset (store, sequences, temperature=T)"
            )
        self.distill_loss = loss if loss is not None else HintonKD(alpha, temperature=temperature)
        # each micro-batch's loss is a mean over its rows: let the Trainer divide by the
        # accumulation steps, as for any loss the model does not normalise itself
        self.model_accepts_loss_kwargs = False

    def _get_train_sampler(self, train_dataset: Any = None) -> Any:
        data = train_dataset if train_dataset is not None else self.train_dataset
        if hasattr(data, "seqs") and hasattr(data, "chunk_rows"):
            return SequenceSampler(data, seed=self.args.seed)
        return super()._get_train_sampler(train_dataset)

    def compute_loss(
        self,
        model: nn.Module,
        inputs: dict[str, Any],
        return_outputs: bool = False,
        num_items_in_batch: Any = None,
    ) -> Any:
        out = model(input_ids=inputs["input_ids"], attention_mask=inputs["attention_mask"])
        logits = out.logits if hasattr(out, "logits") else out  # (B, L, V)
        rows = logits[inputs["loss_mask"]].float()  # (rows, V)
        if rows.shape[0] == 0:  # every row of these sequences is masked: no loss, no gradient
            loss = logits.sum() * 0.0
        else:
            loss = self.distill_loss(rows, batch_target(inputs), inputs["next_tokens"])
        return (loss, out) if return_outputs else loss

    def prediction_step(
        self,
        model: nn.Module,
        inputs: dict[str, Any],
        prediction_loss_only: bool,
        ignore_keys: list[str] | None = None,
    ) -> tuple[torch.Tensor, None, None]:
        """Evaluation: the same loss on ``eval_dataset`` (``eval_loss``), no predictions."""
        inputs = self._prepare_inputs(inputs)
        with torch.no_grad():
            loss = self.compute_loss(model, inputs)
        return loss.detach(), None, None


__all__ = ["DistillTrainer", "batch_target", "collate_for_trainer"]

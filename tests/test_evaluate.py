"""trainer.evaluate against hand-computed values: ECE, accuracy, NLL, teacher agreement and
KL(teacher || student). Every expected number is a literal worked out in the comments."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import nn

from softlabels.transfer import TransferSet
from trainer.evaluate import (
    classification_metrics,
    evaluate,
    expected_calibration_error,
    predict_log_probs,
)

# Five predictions over three classes. Confidences (max prob) 0.9, 0.9, 0.7, 0.5, 0.45 sit well
# inside the default 15 equal-width bins (edges k/15), so the binning below is unambiguous.
PROBS = [
    [0.9, 0.05, 0.05],  # label 0: conf 0.9, correct   bin (0.867, 0.933]
    [0.05, 0.9, 0.05],  # label 0: conf 0.9, wrong     bin (0.867, 0.933]
    [0.1, 0.2, 0.7],  # label 2: conf 0.7, correct     bin (0.667, 0.733]
    [0.5, 0.3, 0.2],  # label 1: conf 0.5, wrong       bin (0.467, 0.533]
    [0.45, 0.3, 0.25],  # label 0: conf 0.45, correct  bin (0.4, 0.467]
]
PROB_LABELS = [0, 0, 2, 1, 0]
# ECE = sum_b |b|/n * |acc(b) - conf(b)|
#     = 2/5 * |0.5 - 0.9| + 1/5 * |1 - 0.7| + 1/5 * |0 - 0.5| + 1/5 * |1 - 0.45|
#     = 0.16 + 0.06 + 0.10 + 0.11 = 0.43
ECE_15_BINS = 0.43
# One bin: |accuracy - mean confidence| = |3/5 - (0.9 + 0.9 + 0.7 + 0.5 + 0.45)/5| = |0.6 - 0.69|
ECE_1_BIN = 0.09
# NLL = -(ln 0.9 + ln 0.05 + ln 0.7 + ln 0.3 + ln 0.45) / 5
NLL = 1.0920496467388514


def test_ece_hand_computed():
    probs, labels = torch.tensor(PROBS), torch.tensor(PROB_LABELS)
    assert expected_calibration_error(probs, labels) == pytest.approx(ECE_15_BINS, abs=1e-6)
    assert expected_calibration_error(probs, labels, bins=1) == pytest.approx(ECE_1_BIN, abs=1e-6)


def test_ece_zero_when_calibrated():
    # four predictions at confidence 0.75, three of them right: accuracy 0.75 = confidence
    probs = torch.tensor([[0.75, 0.25]] * 4)
    labels = torch.tensor([0, 0, 0, 1])
    assert expected_calibration_error(probs, labels) == pytest.approx(0.0, abs=1e-7)


def test_ece_counts_confidence_one():
    # confidence exactly 1.0 belongs to the top bin (lo, 1]: a certain wrong answer has ECE 1
    probs = torch.tensor([[1.0, 0.0], [1.0, 0.0]])
    assert expected_calibration_error(probs, torch.tensor([1, 1])) == pytest.approx(1.0)
    assert expected_calibration_error(probs, torch.tensor([0, 1])) == pytest.approx(0.5)


def test_classification_metrics_skips_unlabelled_rows():
    # PROBS with a confident, unlabelled row inserted at position 2: it must not count
    probs = torch.tensor(PROBS[:2] + [[0.98, 0.01, 0.01]] + PROBS[2:])
    labels = torch.tensor(PROB_LABELS[:2] + [-1] + PROB_LABELS[2:])
    metrics = classification_metrics(probs.log(), labels)
    assert set(metrics) == {"accuracy", "nll", "ece"}
    assert metrics["accuracy"] == pytest.approx(0.6, abs=1e-7)  # 3 of the 5 labelled rows
    assert metrics["nll"] == pytest.approx(NLL, rel=1e-6)
    assert metrics["ece"] == pytest.approx(ECE_15_BINS, abs=1e-6)


# ---- evaluate(): a model with fixed outputs, and a teacher -------------------------------------

STUDENT = [[0.65, 0.25, 0.1], [0.8, 0.1, 0.1], [0.1, 0.15, 0.75]]  # argmax 0, 0, 2
TEACHER = [[0.7, 0.2, 0.1], [0.4, 0.5, 0.1], [0.2, 0.2, 0.6]]  # argmax 0, 1, 2
EVAL_LABELS = [0, -1, 1]
# Labelled rows 0 and 2: row 0 right (conf 0.65), row 2 wrong (conf 0.75, p(label) = 0.15).
EVAL_ACCURACY = 0.5
EVAL_NLL = 1.1639514504891677  # -(ln 0.65 + ln 0.15) / 2
EVAL_ECE = 0.55  # 1/2 * |1 - 0.65| + 1/2 * |0 - 0.75|, two separate bins
AGREEMENT = 2 / 3  # argmax agrees on rows 0 and 2, over all rows (labels are not needed)
# KL(teacher || student) = mean over rows of sum_c t_c (ln t_c - ln s_c)
#   row 0: 0.7 ln(0.7/0.65) + 0.2 ln(0.2/0.25) + 0.1 ln(0.1/0.1)  = 0.0072469...
#   row 1: 0.4 ln(0.4/0.8)  + 0.5 ln(0.5/0.1)  + 0.1 ln(0.1/0.1)  = 0.5274601...
#   row 2: 0.2 ln(0.2/0.1)  + 0.2 ln(0.2/0.15) + 0.6 ln(0.6/0.75) = 0.0622797...
KL_TEACHER_STUDENT = 0.19899555801721824
KL_STUDENT_TEACHER = 0.15202676456502504  # the other direction: wrong
KL_SUMMED = 0.5969866740516547  # summed over rows instead of averaged: wrong


class FixedLogits(nn.Module):
    """Returns row i of a fixed table for input [i]; logits shifted by 3 so that predict_log_probs
    must normalise them."""

    def __init__(self, probs: list[list[float]]) -> None:
        super().__init__()
        self.register_buffer("table", torch.tensor(probs).log() + 3.0)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.table[x[:, 0].long()]


def transfer_set(positions: list[int], labels: list[int]) -> TransferSet:
    return TransferSet(
        name="fixed",
        split="test",
        inputs=np.array(positions, dtype=np.float32)[:, None],
        labels=np.array(labels, dtype=np.int64),
        class_names=("a", "b", "c"),
    )


def test_predict_log_probs_normalises_in_data_order():
    model = FixedLogits(STUDENT)
    data = transfer_set([2, 0, 1], [0, 0, 0])
    want = torch.tensor(STUDENT).log()[[2, 0, 1]]
    torch.testing.assert_close(predict_log_probs(model, data), want)
    torch.testing.assert_close(predict_log_probs(model, data, batch_size=2), want)


def test_evaluate_without_teacher():
    metrics = evaluate(FixedLogits(STUDENT), transfer_set([0, 1, 2], EVAL_LABELS))
    assert metrics == pytest.approx(
        {"accuracy": EVAL_ACCURACY, "nll": EVAL_NLL, "ece": EVAL_ECE}, rel=1e-5
    )


def test_evaluate_against_teacher_kl_direction():
    assert abs(KL_TEACHER_STUDENT - KL_STUDENT_TEACHER) > 0.04  # the case tells them apart
    metrics = evaluate(
        FixedLogits(STUDENT), transfer_set([0, 1, 2], EVAL_LABELS), torch.tensor(TEACHER).log()
    )
    assert metrics["teacher_agreement"] == pytest.approx(AGREEMENT, abs=1e-6)
    assert metrics["kl_to_teacher"] == pytest.approx(KL_TEACHER_STUDENT, rel=1e-5)
    assert metrics["kl_to_teacher"] != pytest.approx(KL_STUDENT_TEACHER, rel=1e-2)
    assert metrics["kl_to_teacher"] != pytest.approx(KL_SUMMED, rel=1e-2)
    assert metrics["accuracy"] == pytest.approx(EVAL_ACCURACY)
    assert metrics["nll"] == pytest.approx(EVAL_NLL, rel=1e-5)
    assert metrics["ece"] == pytest.approx(EVAL_ECE, abs=1e-6)


def test_evaluate_kl_is_zero_against_itself():
    metrics = evaluate(
        FixedLogits(STUDENT), transfer_set([0, 1, 2], EVAL_LABELS), torch.tensor(STUDENT).log()
    )
    assert metrics["teacher_agreement"] == 1.0
    assert metrics["kl_to_teacher"] == pytest.approx(0.0, abs=1e-6)

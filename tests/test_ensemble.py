from __future__ import annotations

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra.numpy import arrays

from softlabels.ensemble import (
    combine_log_probs,
    combined_logits,
    normalise_weights,
    replay_log_probs,
)
from softlabels.errors import SoftLabelsError
from softlabels.store import open_store

TEMPERATURES = (1.0, 2.0, 4.0, 20.0)


def direct_arithmetic(members: np.ndarray, w: np.ndarray, t: float) -> np.ndarray:
    z = members.astype(np.float64) / t
    p = np.exp(z - z.max(-1, keepdims=True))
    p /= p.sum(-1, keepdims=True)
    return np.einsum("nmc,m->nc", p, w)


def direct_geometric(members: np.ndarray, w: np.ndarray, t: float) -> np.ndarray:
    z = members.astype(np.float64) / t
    p = np.exp(z - z.max(-1, keepdims=True))
    p /= p.sum(-1, keepdims=True)
    g = np.exp(np.einsum("nmc,m->nc", np.log(p), w))  # weighted geometric mean of the softmaxes
    return g / g.sum(-1, keepdims=True)


@pytest.mark.parametrize("t", TEMPERATURES)
def test_stored_arithmetic_replays_exactly(digits_store, t):
    with open_store(digits_store) as s:
        rows = s.read(0, s.meta.num_samples)
        w = np.asarray(s.meta.weights)
    got = (
        replay_log_probs(
            torch.from_numpy(rows.logits),
            torch.from_numpy(rows.member_logits),
            "arithmetic",
            torch.tensor(w),
            t,
        )
        .exp()
        .numpy()
    )
    np.testing.assert_allclose(got, direct_arithmetic(rows.member_logits, w, t), atol=1e-6)


@pytest.mark.parametrize("t", TEMPERATURES)
def test_stored_geometric_replays_exactly_from_mean_logits(tmp_path, t):
    from tests.conftest import make_store

    path = make_store(tmp_path / "g.h5", combine="geometric", weights=(0.5, 0.3, 0.2))
    with open_store(path) as s:
        rows = s.read(0, s.meta.num_samples)
        w = np.asarray(s.meta.weights)
    got = (
        replay_log_probs(torch.from_numpy(rows.logits), None, "geometric", torch.tensor(w), t)
        .exp()
        .numpy()
    )
    np.testing.assert_allclose(got, direct_geometric(rows.member_logits, w, t), atol=1e-6)


def test_arithmetic_logits_are_log_mean_probs_hand_computed():
    # Two members over two classes: softmax([0, 0]) = [.5, .5], softmax([ln 3, 0]) = [.75, .25].
    members = torch.tensor([[[0.0, 0.0], [np.log(3.0), 0.0]]], dtype=torch.float64)
    w = torch.tensor([0.5, 0.5], dtype=torch.float64)
    got = combined_logits(members, w, "arithmetic").exp()
    np.testing.assert_allclose(got.numpy(), [[0.625, 0.375]], atol=1e-12)
    np.testing.assert_allclose(
        combined_logits(members, w, "geometric").numpy(), [[np.log(3) / 2, 0.0]]
    )


def test_arithmetic_needs_members():
    with pytest.raises(SoftLabelsError, match="needs member_logits"):
        replay_log_probs(torch.zeros(1, 3), None, "arithmetic", torch.ones(1), 2.0)


def test_normalise_weights():
    assert normalise_weights(None, 4) == (0.25,) * 4
    assert normalise_weights([2, 6], 2) == (0.25, 0.75)
    with pytest.raises(SoftLabelsError, match="has 1 values but there are 2"):
        normalise_weights([1.0], 2)
    with pytest.raises(SoftLabelsError, match="non-negative"):
        normalise_weights([1.0, -1.0], 2)


members_strategy = arrays(
    np.float64,
    st.tuples(st.integers(1, 4), st.integers(1, 4), st.integers(2, 6)),
    elements=st.floats(-50, 50),
)


@settings(max_examples=60, deadline=None)
@given(members=members_strategy, t=st.floats(0.5, 100))
def test_combine_is_a_distribution_and_matches_direct(members, t):
    m = members.shape[1]
    w = np.full(m, 1.0 / m)
    for rule, direct in (("arithmetic", direct_arithmetic), ("geometric", direct_geometric)):
        p = combine_log_probs(torch.from_numpy(members), torch.from_numpy(w), rule, t).exp().numpy()
        np.testing.assert_allclose(p.sum(-1), 1.0, atol=1e-9)
        np.testing.assert_allclose(p, direct(members, w, t), atol=1e-9)

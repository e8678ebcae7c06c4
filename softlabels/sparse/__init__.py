"""Sparse soft targets: a row keeps K ids, its members' logits there, and a summary of the
rest, and replays at any temperature.

    select.py   stage one: choose the support (top-k, systematic sampling), encode the values
    tail.py     the tail's log-partition at any T from a few anchors, with convexity bounds
    replay.py   stage two: decode, check and replay rows as ``SparseTargets``
"""

from softlabels.sparse.replay import ESTIMATORS, SparseTargets

__all__ = ["ESTIMATORS", "SparseTargets"]

"""Sparse soft targets: a row keeps K ids, its members' logits there, and a summary of the
rest, and replays at any temperature.

    select.py   stage one: choose the support (top-k, systematic sampling), encode the values
                (in float64 numpy: the spec's executable reference)
    device.py   the same in torch, on the teachers' device, a block of rows at a time
    raw.py      raw selection (format version 6): top ids and tails from the raw logits
    ops.py      torch blocks both selections share (top ids, ranking logits, the draw)
    tail.py     the tail's log-partition at any T from a few anchors, with convexity bounds
    replay.py   stage two: decode, check and replay rows as ``SparseTargets``
"""

from softlabels.sparse.replay import ESTIMATORS, SparseTargets

__all__ = ["ESTIMATORS", "SparseTargets"]

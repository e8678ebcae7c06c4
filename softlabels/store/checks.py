"""Row checks a reader runs on what it reads: sample_index, labels, token and view rows."""

from __future__ import annotations

import numpy as np

from softlabels import schema
from softlabels.errors import StoreFormatError
from softlabels.store.rows import Rows


def check_sample_index(index: np.ndarray, num_samples: int) -> None:
    if index.shape != (num_samples,):
        raise StoreFormatError(f"sample_index has shape {index.shape}, expected ({num_samples},)")
    if len(index) and (index.min() < 0 or index.max() >= num_samples):
        bad = np.flatnonzero((index < 0) | (index >= num_samples))[:10]
        raise StoreFormatError(
            f"sample_index is out of range [0, {num_samples}) at rows {bad.tolist()}"
        )
    counts = np.bincount(index, minlength=num_samples)
    if (counts != 1).any():
        dup = np.flatnonzero(counts > 1)[:10]
        raise StoreFormatError(f"sample_index repeats transfer positions {dup.tolist()}")


def check_token_rows(rows: Rows, vocab: int, path: str, num_rows: int | None = None) -> None:
    """Token rows must follow the shift convention (``token_problems``)."""
    problems = token_problems(rows, vocab, num_rows)
    if problems:
        raise StoreFormatError(
            f"{path!r} is not a valid token store ({'; '.join(problems)}): row t must predict "
            f"the token at t + 1; regenerate it"
        )


def token_problems(rows: Rows, vocab: int, num_rows: int | None = None) -> list[str]:
    """What breaks the shift convention in these rows: inside a sequence, position rises by
    one and each row's label is the next row's input token; a sequence starts at position 0.
    For a block starting at row 0, or ending at the store's last row (``num_rows``): row 0
    starts a sequence, and the last row ends one (label -1)."""
    ids, pos, labels = rows.arrays[schema.INPUT_IDS], rows.arrays[schema.POSITION], rows.labels
    problems = []
    if len(pos) and rows.start == 0 and pos[0] != 0:
        problems.append(f"row 0 has position {int(pos[0])}: the first row starts a sequence (0)")
    if len(labels) and num_rows is not None and rows.stop == num_rows and labels[-1] != -1:
        problems.append(
            f"the final row {num_rows - 1} has label {int(labels[-1])}, not -1: it ends the last "
            f"sequence, which has no next token"
        )
    if len(ids) and (ids.min() < 0 or ids.max() >= vocab):
        problems.append(f"input ids outside the {vocab}-token vocabulary")
    same = pos[1:] == pos[:-1] + 1  # row r + 1 continues row r's sequence
    if ((pos[1:] != 0) & ~same).any() or (pos < 0).any():
        problems.append("positions that neither continue a sequence nor start one (at 0)")
    if (labels[:-1][same] != ids[1:][same]).any():
        bad = np.flatnonzero(same & (labels[:-1] != ids[1:]))[:5] + rows.start
        problems.append(f"labels that are not the next row's input token at rows {bad.tolist()}")
    ends = np.flatnonzero((pos[1:] == 0) & (labels[:-1] != -1))  # the row before a start
    if len(ends):
        rows_ = (ends[:5] + rows.start).tolist()
        problems.append(f"labels at sequence ends that are not -1 (no next token) at rows {rows_}")
    return problems


def token_edge_problems(previous: Rows, rows: Rows) -> list[str]:
    """The shift convention across the edge between two consecutive chunks: ``rows``' first
    row either continues the last row of ``previous`` (whose label is then its input token) or
    starts a sequence (and ``previous``'s last row then has label -1)."""
    last_pos, last_label = int(previous.arrays[schema.POSITION][-1]), int(previous.labels[-1])
    pos, token = int(rows.arrays[schema.POSITION][0]), int(rows.arrays[schema.INPUT_IDS][0])
    edge = f"across the chunk edge at row {rows.start}"
    if pos == last_pos + 1 and last_label != token:
        return [f"{edge}: label {last_label} is not the next row's input token {token}"]
    if pos == 0 and last_label != -1:
        return [f"{edge}: the sequence ends with label {last_label}, not -1"]
    if pos not in (0, last_pos + 1):
        return [f"{edge}: position {pos} neither continues the sequence nor starts one"]
    return []


def check_labels(labels: np.ndarray, num_classes: int, *, offset: int = 0) -> None:
    """Stored labels are 0..C-1, or -1 for "no label"; refuse anything else."""
    bad = np.flatnonzero((labels < -1) | (labels >= num_classes))
    if len(bad):
        raise StoreFormatError(
            f"store labels must be -1..{num_classes - 1}, but rows {(bad[:10] + offset).tolist()} "
            f"hold {labels[bad[:10]].tolist()}; the store is invalid: regenerate it"
        )


def check_view_index(index: np.ndarray, views: int, path: str) -> None:
    """A views store's whole sample_index must be r // V at every row r."""
    want = np.arange(len(index)) // views
    bad = np.flatnonzero(index != want)
    if len(bad):
        raise StoreFormatError(
            f"sample_index of row {int(bad[0])} of the views store {path!r} is "
            f"{int(index[bad[0]])}, expected {int(want[bad[0]])} (row r is a view of sample "
            f"r // {views}); regenerate it"
        )

"""Every exception the project raises on purpose. Each also subclasses the matching built-in,
so callers can catch either (``except StoreNotFoundError`` or ``except FileNotFoundError``)."""

from __future__ import annotations


class SoftLabelsError(Exception):
    """Base class: an error whose message tells the user what to do."""


class StoreFormatError(SoftLabelsError, ValueError):
    """A store that is not a valid version-1 soft-label store."""


class StoreNotFoundError(SoftLabelsError, FileNotFoundError):
    """No store at the given path."""


class StoreExistsError(SoftLabelsError, FileExistsError):
    """Refusing to replace an existing store unless asked to (``overwrite``)."""


class StoreBusyError(SoftLabelsError, BlockingIOError):
    """Another live writer holds the store's writer lease."""


class StoreReadError(SoftLabelsError, OSError):
    """A store's bytes could not be read (permission denied, a network failure, a full disk on
    write): the store may be fine; the message says what failed."""


class IncompleteStoreError(SoftLabelsError, RuntimeError):
    """A store whose ``complete`` flag is not set, opened without ``allow_incomplete``."""


class ChecksumError(SoftLabelsError, ValueError):
    """Stored data does not match its recorded checksum."""


class MismatchError(SoftLabelsError, ValueError):
    """Two things that must agree (store and transfer set, stores in a combine) do not."""


class ModelError(SoftLabelsError, ValueError):
    """A user's model (teacher or student) that fails on the data or returns unusable output."""


class TeacherError(ModelError):
    """A teacher that cannot be loaded, or whose outputs are unusable."""


class NonFiniteLogitsError(TeacherError):
    """A teacher produced NaN or Inf logits."""


class SpecError(SoftLabelsError, ValueError):
    """A teacher, student or transfer SPEC string that cannot be resolved."""


class CheckpointError(SoftLabelsError, ValueError):
    """A checkpoint that is not a valid softlabels checkpoint or cannot be loaded safely."""


class SparseValueRangeError(SoftLabelsError, ValueError):
    """A row's logits span more than a sparse store's fixed-point codes hold at its step."""


class SoftLabelsWarning(UserWarning):
    """Something the user should know that is not an error; the CLI prints it as a note."""


class LabelsWithheldWarning(SoftLabelsWarning):
    """Training withholds transfer-set labels that its store does not hold (the store says -1,
    "no label"): the store's labels rule."""

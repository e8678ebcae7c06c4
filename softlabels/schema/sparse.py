"""The ``sparse`` root attribute of a version-2 store (FORMAT.md, "Sparse stores")."""

from __future__ import annotations

import math
from dataclasses import dataclass, fields, replace
from typing import Any

from softlabels.schema.fields import int_field, list_field, number_field

TAIL_KIND = "log-partition"
PROPOSAL_KIND = "tempered-ranking"
DEFAULT_TAIL_TEMPERATURES = (1.0, 2.0, 4.0, 8.0)
DEFAULT_VALUE_STEP = 1 / 16
SELECTION_DECODED = "decoded"  # ids and tails from the decoded logits (versions 2 to 5)
SELECTION_RAW = "raw"  # ids and tails from the teacher's raw float32 logits (version 6)
SELECTIONS = (SELECTION_DECODED, SELECTION_RAW)


@dataclass(frozen=True, eq=False)
class SparseSpec:
    """The ``sparse`` root attribute: how a sparse store chose and encoded each row's support.

    K = top_k + sample entries per row: the ``top_k`` largest ranking logits, then ``sample``
    ids drawn from the rest with inclusion probabilities from a proposal at temperature
    ``proposal_temperature`` (seeded by ``seed``). ``tail_temperatures`` are the anchors of the
    tail summary; ``value_step`` is the fixed-point step of the stored logits (None: stored as
    floats in the store's ``dtype``). ``selection``: what the top ids and the tails are taken
    from, "decoded" (the stored values, as a reader decodes them) or "raw" (the teacher's own
    float32 logits, so the top ids are the teacher's top-k; token stores only, format version
    6); None lets the writer choose (raw for token stores, decoded otherwise)."""

    top_k: int
    sample: int = 0
    proposal_temperature: float = 1.0
    seed: int = 0
    tail_temperatures: tuple[float, ...] = DEFAULT_TAIL_TEMPERATURES
    value_step: float | None = DEFAULT_VALUE_STEP
    # the only temperatures a reader may replay at (None: any): an imported capture of
    # log-probabilities at T = 1 knows its tail at T = 1 only ("replay_temperatures")
    replay_temperatures: tuple[float, ...] | None = None
    selection: str | None = None

    def __eq__(self, other: object) -> bool:
        """Field by field, where a selection left to the writer (None) equals either choice."""
        if not isinstance(other, SparseSpec):
            return NotImplemented
        selections = {self.selection, other.selection} - {None}
        return self._key() == other._key() and len(selections) <= 1

    def __hash__(self) -> int:
        return hash(self._key())

    def _key(self) -> tuple[Any, ...]:
        return tuple(getattr(self, f.name) for f in fields(self) if f.name != "selection")

    def resolved(self, *, tokens: bool) -> SparseSpec:
        """This spec with the writer's default selection where it is None: raw for a token
        store (format version 6), decoded otherwise."""
        if self.selection is not None:
            return self
        return replace(self, selection=SELECTION_RAW if tokens else SELECTION_DECODED)

    @property
    def raw(self) -> bool:
        """Whether the top ids and the tails come from the raw logits (format version 6)."""
        return self.selection == SELECTION_RAW

    @property
    def k(self) -> int:
        return self.top_k + self.sample

    @property
    def policy(self) -> str:
        return "top" if self.sample == 0 else "top+sample"

    def to_attr(self) -> dict[str, Any]:
        proposal = None
        if self.sample:
            proposal = {
                "kind": PROPOSAL_KIND,
                "temperature": self.proposal_temperature,
                "seed": self.seed,
            }
        values: dict[str, Any] = {"encoding": "float"}
        if self.value_step is not None:
            values = {"encoding": "fixed", "step": self.value_step}
        extra: dict[str, Any] = {}
        if self.replay_temperatures is not None:
            extra["replay_temperatures"] = list(self.replay_temperatures)
        if self.raw:  # absent means decoded: the attributes of versions 2 to 5 are unchanged
            extra["selection"] = SELECTION_RAW
        return extra | {
            "policy": self.policy,
            "k": self.k,
            "top_k": self.top_k,
            "sample": self.sample,
            "proposal": proposal,
            "tail": {"kind": TAIL_KIND, "temperatures": list(self.tail_temperatures)},
            "values": values,
        }

    @classmethod
    def from_attr(cls, entry: Any) -> SparseSpec:
        if not isinstance(entry, dict):
            raise ValueError(f"sparse must be an object, got {entry!r}")
        missing = [
            k
            for k in ("policy", "k", "top_k", "sample", "proposal", "tail", "values")
            if k not in entry
        ]
        if missing:
            raise ValueError(f"sparse lacks the keys {missing}")
        tail, values, proposal = entry["tail"], entry["values"], entry["proposal"]
        if proposal is not None and not isinstance(proposal, dict):
            raise ValueError(f"sparse.proposal must be an object or null, got {proposal!r}")
        if not isinstance(tail, dict) or tail.get("kind") != TAIL_KIND:
            raise ValueError(f"sparse.tail.kind must be {TAIL_KIND!r}, got {tail!r}")
        if not isinstance(values, dict) or values.get("encoding") not in ("fixed", "float"):
            raise ValueError(f"sparse.values.encoding must be 'fixed' or 'float', got {values!r}")
        sample = int_field(entry, "sample", minimum=0)
        if (proposal is None) != (sample == 0):
            raise ValueError("sparse.proposal must be an object exactly when sample > 0")
        if proposal is not None and proposal.get("kind") != PROPOSAL_KIND:
            raise ValueError(f"sparse.proposal.kind must be {PROPOSAL_KIND!r}, got {proposal!r}")
        for obj, key, where in (
            (proposal or {}, "temperature", "proposal"),
            (proposal or {}, "seed", "proposal"),
            (tail, "temperatures", "tail"),
            (values if values["encoding"] == "fixed" else {"step": 0}, "step", "values"),
        ):
            if key not in obj and (where != "proposal" or proposal is not None):
                raise ValueError(f"sparse.{where} lacks the key {key!r}")
        temps = list_field(tail, "temperatures")
        if not temps or not all(
            isinstance(t, int | float) and not isinstance(t, bool) for t in temps
        ):
            raise ValueError(f"sparse.tail.temperatures must be a list of numbers, got {temps!r}")
        spec = cls(
            top_k=int_field(entry, "top_k", minimum=1),
            sample=sample,
            proposal_temperature=1.0 if proposal is None else number_field(proposal, "temperature"),
            seed=0 if proposal is None else int_field(proposal, "seed", minimum=0),
            tail_temperatures=tuple(float(t) for t in temps),
            value_step=number_field(values, "step") if values["encoding"] == "fixed" else None,
            replay_temperatures=_replay_temperatures(entry.get("replay_temperatures")),
            selection=_selection(entry),
        )
        if entry.get("k") != spec.k or entry.get("policy") != spec.policy:
            raise ValueError(f"sparse.k and sparse.policy must be {spec.k} and {spec.policy!r}")
        return spec

    def replay_problem(self, temperature: float) -> str | None:
        """Why this store cannot give targets at ``temperature``, or None when it can."""
        allowed = self.replay_temperatures
        if allowed is None or any(math.isclose(temperature, t, rel_tol=1e-9) for t in allowed):
            return None
        return (
            f"this store's tail (the mass outside its {self.k} ids) is known at T = "
            f"{', '.join(f'{t:g}' for t in allowed)} only (a capture of log-probabilities at "
            f"that temperature): at T = {temperature:g} the ids' relative logits are exact but "
            f"the tail's mass is not, so the targets would be guessed; distil at T = "
            f"{allowed[0]:g}, or capture the teacher's logits with generate-lm"
        )

    def problems(self, num_classes: int) -> list[str]:
        out = []
        if self.top_k < 1 or self.sample < 0:
            out.append(f"top_k {self.top_k} must be >= 1 and sample {self.sample} >= 0")
        if self.k >= num_classes:
            out.append(
                f"top_k + sample = {self.k} must be below the {num_classes} classes (keep "
                f"every class: use a dense store)"
            )
        if not self.tail_temperatures or len(set(self.tail_temperatures)) != len(
            self.tail_temperatures
        ):
            out.append(f"tail temperatures {list(self.tail_temperatures)} must be distinct")
        if any(not (math.isfinite(t) and t > 0) for t in self.tail_temperatures):
            out.append(f"tail temperatures {list(self.tail_temperatures)} must be > 0")
        if not (math.isfinite(self.proposal_temperature) and self.proposal_temperature > 0):
            out.append(f"proposal temperature {self.proposal_temperature} must be > 0")
        if self.value_step is not None and not (
            math.isfinite(self.value_step) and 0 < self.value_step <= 1
        ):
            out.append(f"value step {self.value_step} must be in (0, 1]")
        if self.selection is not None and self.selection not in SELECTIONS:
            out.append(f"selection {self.selection!r} must be one of {list(SELECTIONS)}")
        if self.seed < 0 or self.seed >= 2**63:
            out.append(f"seed {self.seed} must be in [0, 2**63)")
        return out


def _replay_temperatures(entry: Any) -> tuple[float, ...] | None:
    """``sparse.replay_temperatures``: absent or null, or a non-empty list of numbers > 0."""
    if entry is None:
        return None
    if (
        not isinstance(entry, list)
        or not entry
        or not all(isinstance(t, int | float) and not isinstance(t, bool) and t > 0 for t in entry)
    ):
        raise ValueError(f"sparse.replay_temperatures must be a list of numbers > 0, got {entry!r}")
    return tuple(float(t) for t in entry)


def _selection(entry: dict[str, Any]) -> str:
    """``sparse.selection``: absent (decoded: versions 2 to 5) or "raw" (version 6); null or
    any other value is malformed."""
    if "selection" not in entry:
        return SELECTION_DECODED
    if entry["selection"] != SELECTION_RAW:
        value = entry["selection"]
        raise ValueError(f"sparse.selection must be {SELECTION_RAW!r} when present, got {value!r}")
    return SELECTION_RAW

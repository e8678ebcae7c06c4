"""The ``views`` root attribute: the store's rows are (sample, view) pairs, each view an input
augmented with parameters that are stored per row (FORMAT.md, "Views stores")."""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

from softlabels.schema.fields import int_field, list_field

MAX_PARAMS = 64  # parameters per view: a bound for hostile stores, far above any real policy


@dataclass(frozen=True)
class ViewSpec:
    """How a views store's rows were made: V views of every transfer sample, each sampled from
    ``(seed, sample, view)`` by the policy that ``policy`` describes.

    Row r is view r % V of transfer sample r // V; ``view_params[r]`` holds that view's
    ``param_names`` values, which with the sample's input determine the view exactly.
    """

    views_per_sample: int  # V
    seed: int
    policy: dict[str, Any]  # the policy's ``to_attr()``: {"name": ..., its arguments}
    param_names: tuple[str, ...]
    input_shape: tuple[int, ...]  # one transfer input's shape (the views have it too)

    def to_attr(self) -> dict[str, Any]:
        return {
            "views_per_sample": self.views_per_sample,
            "seed": self.seed,
            "policy": dict(self.policy),
            "param_names": list(self.param_names),
            "input_shape": list(self.input_shape),
        }

    @property
    def policy_name(self) -> str:
        return str(self.policy["name"])

    def problems(self) -> list[str]:
        """What makes this spec impossible (empty when it is valid)."""
        problems = []
        if self.views_per_sample < 1:
            problems.append(f"views_per_sample {self.views_per_sample} is below 1")
        if self.seed < 0:
            problems.append(f"views seed {self.seed} is negative")
        if not isinstance(self.policy.get("name"), str) or not self.policy["name"]:
            problems.append("the views policy must be an object with a non-empty string 'name'")
        if not 1 <= len(self.param_names) <= MAX_PARAMS:
            problems.append(f"a view needs 1..{MAX_PARAMS} parameters, got {len(self.param_names)}")
        if len(set(self.param_names)) != len(self.param_names):
            problems.append(f"views param_names repeat a name: {list(self.param_names)}")
        if not self.input_shape or any(d < 1 for d in self.input_shape):
            problems.append(f"views input_shape {list(self.input_shape)} must be positive sizes")
        try:
            json.dumps(self.policy, allow_nan=False)
        except (TypeError, ValueError) as exc:
            problems.append(f"the views policy is not plain JSON ({exc})")
        return problems

    @classmethod
    def from_attr(cls, entry: Any) -> ViewSpec:
        if not isinstance(entry, dict):
            raise ValueError(f"views must be an object, got {entry!r}")
        policy = entry.get("policy")
        if not isinstance(policy, dict):
            raise ValueError(f"views.policy must be an object, got {policy!r}")
        names = list_field(entry, "param_names")
        if not all(isinstance(n, str) for n in names):
            raise ValueError("views.param_names must be a list of strings")
        shape = list_field(entry, "input_shape")
        if not all(isinstance(d, int) and not isinstance(d, bool) for d in shape):
            raise ValueError("views.input_shape must be a list of integers")
        spec = cls(
            views_per_sample=int_field(entry, "views_per_sample", minimum=1),
            seed=int_field(entry, "seed", minimum=0),
            policy=policy,
            param_names=tuple(names),
            input_shape=tuple(shape),
        )
        problems = spec.problems()
        if problems:
            raise ValueError("; ".join(problems))
        return spec

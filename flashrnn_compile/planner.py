"""Placeholder planner (replaced by the ConstrINT planner): the reference everywhere."""

from __future__ import annotations

import dataclasses
from typing import Any, Dict, Optional, Sequence

from . import runtime


@dataclasses.dataclass(frozen=True)
class Plan:
    family: str
    params: Dict[str, Any]
    reason: str

    def op_arg(self) -> str:
        """The JSON string the core op carries."""
        return runtime.plan_json(self.family, self.params)

    def as_dict(self) -> Dict[str, Any]:
        return {"family": self.family, "params": dict(self.params), "reason": self.reason}


def plan(cell, batch, heads, head_dim, dtype, gpu=None, *, families: Optional[Sequence[str]] = None) -> Plan:
    return Plan("reference", {}, "no planner yet")

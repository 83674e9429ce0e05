"""Run-time dispatch of the core op: plan family -> implementation, in one place.

Every implementation has the same two functions (layouts in `reference`):

    forward(gx, R, b, s0, cell, reverse, params, save) -> (h, sT, states_in, rhb)
    backward(dh, dsT, gx, R, states_in, rhb, cell, reverse, params) -> (dgx, dR, db, ds0)

and says whether it can run on a device. The reference runs everywhere. CUDA families register
themselves when their extension loads (`register`). A plan whose family cannot run here falls back
to the reference with one warning per (family, reason): results never depend on the machine.
"""

from __future__ import annotations

import dataclasses
import functools
import importlib
import importlib.util
import json
import warnings
from typing import Any, Callable, Dict, Optional, Tuple

import torch

from . import reference

FAMILIES = ("fused_block", "fused_cluster", "fused_grid", "alternating", "reference")


@dataclasses.dataclass(frozen=True)
class ParsedPlan:
    family: str
    params: Dict[str, Any]


@dataclasses.dataclass(frozen=True)
class Implementation:
    family: str
    forward: Callable
    backward: Callable
    # device -> None if it can run there, else the reason it cannot
    unavailable: Callable[[torch.device], Optional[str]]
    # whether the planner may choose this family on its own (False: only explicit plans run it, e.g.
    # a family not yet verified on a GPU, offered behind an environment knob); read per choice
    offered: Callable[[], bool] = lambda: True


REFERENCE_PLAN = json.dumps({"family": "reference", "params": {}}, sort_keys=True)

_IMPLEMENTATIONS: Dict[str, Implementation] = {}
_WARNED: set = set()


def register(impl: Implementation) -> None:
    if impl.family not in FAMILIES:
        raise ValueError(f"family: expected one of {FAMILIES}, got {impl.family!r}")
    _IMPLEMENTATIONS[impl.family] = impl


register(
    Implementation(
        "reference",
        forward=lambda gx, R, b, s0, cell, reverse, params, save: reference.forward(
            gx, R, b, s0, cell, reverse, save
        ),
        backward=lambda dh, dsT, gx, R, states_in, rhb, cell, reverse, params: reference.backward(
            dh, dsT, gx, R, states_in, rhb, cell, reverse
        ),
        unavailable=lambda device: None,
    )
)


@functools.lru_cache(maxsize=1024)
def _parse(plan: str) -> Tuple[str, Tuple[Tuple[str, Any], ...]]:
    try:
        obj = json.loads(plan)
    except (TypeError, json.JSONDecodeError) as e:
        raise ValueError(f"plan: expected a JSON object {{'family': ..., 'params': ...}}, got {plan!r}") from e
    if not isinstance(obj, dict) or obj.get("family") not in FAMILIES:
        raise ValueError(f"plan: expected 'family' in {FAMILIES}, got {plan!r}")
    params = obj.get("params", {})
    if not isinstance(params, dict):
        raise ValueError(f"plan: expected 'params' to be an object, got {plan!r}")
    return obj["family"], tuple(sorted(params.items()))


def parse_plan(plan: str) -> ParsedPlan:
    """The plan's family and a fresh params dict (parsed once per plan string: the op asks on
    every call, and json.loads of the params cost more than the dict)."""
    family, params = _parse(plan)
    return ParsedPlan(family, dict(params))


def plan_json(family: str, params: Optional[Dict[str, Any]] = None) -> str:
    """The plan string the op carries."""
    if family not in FAMILIES:
        raise ValueError(f"family: expected one of {FAMILIES}, got {family!r}")
    return json.dumps({"family": family, "params": params or {}}, sort_keys=True)


def _load_extensions() -> None:
    """Give CUDA families a chance to register (import of the kernel bindings, if built)."""
    name = f"{__package__}.kernels"  # registers the CUDA families on import
    if importlib.util.find_spec(name) is not None:
        importlib.import_module(name)


def implemented_families() -> Tuple[str, ...]:
    """The families with an implementation in this build (the CUDA ones once their package loads)."""
    _load_extensions()
    return tuple(f for f in FAMILIES if f in _IMPLEMENTATIONS)


def offered_families() -> Tuple[str, ...]:
    """implemented_families() that the planner may choose on its own (Implementation.offered)."""
    return tuple(f for f in implemented_families() if f not in _IMPLEMENTATIONS or _IMPLEMENTATIONS[f].offered())


def implementation(plan: str, device: torch.device) -> Implementation:
    family = parse_plan(plan).family
    if family != "reference" and family not in _IMPLEMENTATIONS:
        _load_extensions()
    impl = _IMPLEMENTATIONS.get(family)
    reason = "no implementation is registered" if impl is None else impl.unavailable(device)
    if reason is None:
        return impl
    key = (family, reason)
    if key not in _WARNED:
        _WARNED.add(key)
        warnings.warn(
            f"flashrnn: plan family {family!r} cannot run on {device}: {reason}; "
            "using the reference implementation",
            RuntimeWarning,
            stacklevel=3,
        )
    return _IMPLEMENTATIONS["reference"]

"""What the passes know and what they record: options, rewrites, refusals, and the counters.

Every pass gets one `PassContext` per graph. A rewrite is recorded with `ctx.rewrote(...)`, a
refusal with `ctx.refused(...)`; together they are the dump and the `stats()` counters.
"""

from __future__ import annotations

import dataclasses
import logging
import re
import threading
from typing import Any, Dict, List, Optional, Sequence

import torch

SOURCES = ("module", "cell_loop", "handwritten")
INNER_COMPILERS = ("inductor", "aot_eager", "eager")
PLAN_CHOICES = ("auto", "reference", "alternating", "fused")
BIDIRECTIONAL_CHOICES = ("auto", "merged", "split")


@dataclasses.dataclass(frozen=True)
class BackendOptions:
    inner: str = "inductor"
    dump_dir: Optional[str] = None
    plan: str = "auto"
    bidirectional: str = "auto"  # both directions of a layer in one launch: auto | merged | split

    @classmethod
    def from_dict(cls, options: Optional[Dict[str, Any]]) -> "BackendOptions":
        import os

        options = dict(options or {})
        unknown = set(options) - {f.name for f in dataclasses.fields(cls)}
        if unknown:
            raise ValueError(
                f"options: unknown key(s) {sorted(unknown)}; expected some of "
                f"{[f.name for f in dataclasses.fields(cls)]}"
            )
        inner = options.get("inner", "inductor")
        if inner not in INNER_COMPILERS:
            raise ValueError(f"options['inner']: expected one of {INNER_COMPILERS}, got {inner!r}")
        plan = options.get("plan", "auto")
        if plan not in PLAN_CHOICES:
            raise ValueError(f"options['plan']: expected one of {PLAN_CHOICES}, got {plan!r}")
        bidirectional = options.get("bidirectional", "auto")
        if bidirectional not in BIDIRECTIONAL_CHOICES:
            raise ValueError(f"options['bidirectional']: expected one of {BIDIRECTIONAL_CHOICES}, got {bidirectional!r}")
        dump_dir = options.get("dump_dir", os.environ.get("FLASHRNN_DUMP_DIR") or None)
        if dump_dir is not None and not isinstance(dump_dir, (str, os.PathLike)):
            raise ValueError(f"options['dump_dir']: expected a path, got {type(dump_dir).__name__}")
        return cls(inner=inner, dump_dir=None if dump_dir is None else str(dump_dir), plan=plan, bidirectional=bidirectional)


@dataclasses.dataclass
class Rewrite:
    source: str  # module | cell_loop | handwritten
    cell: str
    layers: int
    directions: int
    steps: int
    batch: int
    heads: int
    head_dim: int
    dtype: str
    plan: Dict[str, Any]  # {family, params, reason}
    user_code: List[str]


@dataclasses.dataclass
class Refusal:
    source: str
    reason: str
    user_code: List[str]


# TORCH_LOGS="+flashrnn_compile" shows the passes' decisions (torch._logging takes module names)
log = logging.getLogger("flashrnn_compile")

_FRAME = re.compile(r'File "([^"]+)", line (\d+)')


def user_code(nodes: Sequence[torch.fx.Node]) -> List[str]:
    """'file:line' of the user's code behind `nodes` (the innermost frame of each stack trace)."""
    seen: List[str] = []
    for node in nodes:
        frames = _FRAME.findall(node.meta.get("stack_trace") or "")
        if frames:
            where = f"{frames[-1][0]}:{frames[-1][1]}"
            if where not in seen:
                seen.append(where)
    return seen


class PassContext:
    def __init__(self, options: BackendOptions, example_inputs: Sequence[Any] = ()):
        self.options = options
        self.example_inputs = list(example_inputs)
        self.rewrites: List[Rewrite] = []
        self.refusals: List[Refusal] = []

    def rewrote(self, rewrite: Rewrite) -> None:
        if rewrite.source not in SOURCES:
            raise ValueError(f"source: expected one of {SOURCES}, got {rewrite.source!r}")
        self.rewrites.append(rewrite)
        log.debug(
            "rewrote %s %s (layers=%d, directions=%d, T=%d, B=%d, %dx%d, %s) -> plan %s: %s [%s]",
            rewrite.source, rewrite.cell, rewrite.layers, rewrite.directions, rewrite.steps,
            rewrite.batch, rewrite.heads, rewrite.head_dim, rewrite.dtype, rewrite.plan.get("family"),
            rewrite.plan.get("reason"), ", ".join(rewrite.user_code),
        )

    def refused(self, source: str, reason: str, nodes: Sequence[torch.fx.Node] = ()) -> None:
        if source not in SOURCES:
            raise ValueError(f"source: expected one of {SOURCES}, got {source!r}")
        refusal = Refusal(source, reason, user_code(nodes))
        self.refusals.append(refusal)
        log.debug("left %s as written: %s [%s]", source, reason, ", ".join(refusal.user_code))

    def report(self) -> Dict[str, Any]:
        return {
            "rewrites": [dataclasses.asdict(r) for r in self.rewrites],
            "refusals": [dataclasses.asdict(r) for r in self.refusals],
        }


# ---- counters since the last reset_stats() -------------------------------------------------

_LOCK = threading.Lock()
_STATS: Dict[str, Any] = {}
_REPORTS: List[Dict[str, Any]] = []  # the reports of the graphs compiled since the last reset
_MAX_REPORTS = 256


def reset_stats() -> None:
    with _LOCK:
        _STATS.clear()
        _STATS.update({"rewritten": 0, "by_source": {s: 0 for s in SOURCES}, "rejected": 0})
        _REPORTS.clear()


def stats() -> Dict[str, Any]:
    """{"rewritten": n, "by_source": {"module": a, "cell_loop": b, "handwritten": c}, "rejected": m}"""
    with _LOCK:
        return {
            "rewritten": _STATS["rewritten"],
            "by_source": dict(_STATS["by_source"]),
            "rejected": _STATS["rejected"],
        }


def count(ctx: PassContext) -> None:
    with _LOCK:
        _STATS["rewritten"] += len(ctx.rewrites)
        for r in ctx.rewrites:
            _STATS["by_source"][r.source] += 1
        _STATS["rejected"] += len(ctx.refusals)
        if len(_REPORTS) < _MAX_REPORTS:
            _REPORTS.append(ctx.report())


def reports() -> List[Dict[str, Any]]:
    """The report ({"rewrites": [...], "refusals": [...]}) of each graph compiled since the last
    reset_stats(), oldest first (at most the first 256)."""
    with _LOCK:
        return list(_REPORTS)


reset_stats()


# ---- the plan of one recurrence --------------------------------------------------------------

_FORCED_FAMILIES = {
    "alternating": ("alternating",),
    "fused": ("fused_block", "fused_cluster", "fused_grid"),
}


def choose_plan(
    ctx: PassContext, cell: str, batch: int, heads: int, head_dim: int, dtype, device
):
    """The Plan for one recurrence, honouring options['plan'] and the tensors' device."""
    from . import planner

    device = torch.device(device)
    if ctx.options.plan == "reference":
        return planner.Plan("reference", {}, "forced by options['plan'] = 'reference'")
    if device.type != "cuda":
        return planner.Plan("reference", {}, f"tensors on {device.type}: no CUDA kernel applies")
    from . import runtime

    implemented = runtime.offered_families()  # fused_grid unless FLASHRNN_GRID=0 (kernels/fused_grid.py)
    forced = _FORCED_FAMILIES.get(ctx.options.plan)
    families = tuple(f for f in (forced or runtime.FAMILIES) if f in implemented) or implemented
    gpu = device.index if device.index is not None else torch.cuda.current_device()
    chosen = planner.plan(cell, batch, heads, head_dim, dtype, gpu=gpu, families=families)
    if chosen.family not in implemented:
        return planner.Plan(
            "reference", {}, f"the planner chose {chosen.family} ({chosen.reason}), which this build has no kernel for"
        )
    return chosen

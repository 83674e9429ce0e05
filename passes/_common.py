"""Pieces every rewriting pass uses: reading Dynamo's example values, emitting the core op."""

from __future__ import annotations

import operator
from typing import Optional, Tuple

import torch
import torch.fx

Node = torch.fx.Node

REWRITTEN = "flashrnn_rewritten"  # node.meta key on every emitted node: which pass emitted it


def example_value(node) -> Optional[torch.Tensor]:
    """The fake tensor Dynamo recorded for `node` (None for non-tensor values)."""
    if not isinstance(node, Node):
        return None
    value = node.meta.get("example_value", node.meta.get("val"))
    return value if isinstance(value, torch.Tensor) else None


def emit_recurrence(
    graph: torch.fx.Graph,
    gx: Node,  # [T, B, NH, G, DH]
    R: Node,  # [NH, G, DH, DH]
    b: Node,  # [NH, G, DH]
    s0: Node,  # [S, B, NH, DH]
    *,
    cell: str,
    reverse: bool,
    plan: str,
    save: bool,
) -> Tuple[Node, Node]:
    """Insert one core-op call at the graph's insertion point; returns (h [T, B, NH, DH], sT [S, B, NH, DH])."""
    call = graph.call_function(
        torch.ops.flashrnn.recurrence_fwd.default, (gx, R, b, s0, cell, reverse, plan, save)
    )
    h = graph.call_function(operator.getitem, (call, 0))
    sT = graph.call_function(operator.getitem, (call, 1))
    return h, sT

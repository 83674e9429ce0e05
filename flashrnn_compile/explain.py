"""flashrnn_compile.explain(model, *example_inputs, **kwargs): what the backend would do.

Runs Dynamo and the passes on the model with the given inputs (the model runs once, eagerly,
with the rewritten graphs; no inner compiler), and returns an `Explanation`: the same report as the
dump's report.json, one entry per captured graph, printable as a table. The counters of `stats()`
are left alone.
"""

from __future__ import annotations

import json
from typing import Any, Dict, List

import torch

from . import debug
from .backend import run_passes
from .context import BackendOptions, PassContext


class Explanation:
    def __init__(self, graphs: List[Dict[str, Any]]):
        self.graphs = graphs  # one {"rewrites": [...], "refusals": [...]} per captured graph

    @property
    def rewrites(self) -> List[Dict[str, Any]]:
        return [r for g in self.graphs for r in g["rewrites"]]

    @property
    def refusals(self) -> List[Dict[str, Any]]:
        return [r for g in self.graphs for r in g["refusals"]]

    def to_dict(self) -> Dict[str, Any]:
        return {"graphs": self.graphs, "rewrites": self.rewrites, "refusals": self.refusals}

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), indent=2, sort_keys=True)

    def __str__(self) -> str:
        merged = {"rewrites": self.rewrites, "refusals": self.refusals}
        return f"{len(self.graphs)} graph(s) captured.\n" + debug.report_markdown(merged)

    __repr__ = __str__


def explain(model, *example_inputs, **kwargs) -> Explanation:
    graphs: List[Dict[str, Any]] = []
    options = BackendOptions(inner="eager")

    def capture(gm: torch.fx.GraphModule, inputs):
        ctx = PassContext(options, inputs)
        gm = run_passes(gm, ctx)
        graphs.append(ctx.report())
        return gm.forward

    torch.compile(model, backend=capture)(*example_inputs, **kwargs)
    return Explanation(graphs)

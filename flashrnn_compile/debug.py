"""Dumps of what the backend did to each graph (options['dump_dir'] or FLASHRNN_DUMP_DIR).

    <dump_dir>/<n>_<name>/before.py    the Dynamo graph as it came (print_readable)
                          after.py     the graph handed to the inner compiler
                          report.json  {"rewrites": [...], "refusals": [...]}
                          report.md    the same for a person

Dumping never changes results and never raises into the user's program: a failure to write is
one warning.
"""

from __future__ import annotations

import itertools
import json
import os
import warnings
from typing import Any, Dict, List, Sequence

import torch

_COUNTER = itertools.count()


def readable(gm: torch.fx.GraphModule) -> str:
    return gm.print_readable(print_output=False)


def op_counts(gm: torch.fx.GraphModule) -> Dict[str, int]:
    """How often each function is called in the graph: the shape of a recurrence region at a
    glance (an unrolled loop shows as T copies of its ops, a rewrite as one flashrnn op)."""
    counts: Dict[str, int] = {}
    for n in gm.graph.nodes:
        if n.op in ("call_function", "call_method", "call_module"):
            name = n.target if isinstance(n.target, str) else getattr(n.target, "__name__", str(n.target))
            if hasattr(n.target, "_schema"):  # an OpOverload: namespace::name
                name = n.target._schema.name
            counts[name] = counts.get(name, 0) + 1
    return counts


def graph_picture(before: Dict[str, int], after: Dict[str, int]) -> List[str]:
    """A table of the ops whose count the passes changed: before -> after."""
    changed = sorted(k for k in set(before) | set(after) if before.get(k, 0) != after.get(k, 0))
    if not changed:
        return []
    lines = [
        "",
        "## The graph, before and after",
        "",
        f"{sum(before.values())} calls before, {sum(after.values())} after. Calls whose count changed:",
        "",
        "| call | before | after |",
        "|---|---|---|",
    ]
    lines += [f"| `{k}` | {before.get(k, 0)} | {after.get(k, 0)} |" for k in changed]
    return lines


def report_markdown(report: Dict[str, Any], picture: Sequence[str] = ()) -> str:
    lines = ["# flashrnn rewrite report", ""]
    rewrites, refusals = report["rewrites"], report["refusals"]
    lines.append(f"{len(rewrites)} recurrence(s) rewritten, {len(refusals)} refused.")
    if rewrites:
        lines += [
            "",
            "## Rewritten",
            "",
            "| source | cell | layers x dirs | T | B | NH x DH | dtype | plan | where |",
            "|---|---|---|---|---|---|---|---|---|",
        ]
        for r in rewrites:
            lines.append(
                f"| {r['source']} | {r['cell']} | {r['layers']} x {r['directions']} | {r['steps']} "
                f"| {r['batch']} | {r['heads']} x {r['head_dim']} | {r['dtype']} "
                f"| {r['plan']['family']}: {r['plan']['reason']} | {', '.join(r['user_code'])} |"
            )
    if refusals:
        lines += ["", "## Refused (left as written)", "", "| source | reason | where |", "|---|---|---|"]
        for r in refusals:
            lines.append(f"| {r['source']} | {r['reason']} | {', '.join(r['user_code'])} |")
    lines += list(picture)
    return "\n".join(lines) + "\n"


def dump(dump_dir: str, before: str, before_counts: Dict[str, int], gm: torch.fx.GraphModule, ctx) -> None:
    try:
        folder = os.path.join(dump_dir, f"{next(_COUNTER):03d}_{type(gm).__name__}")
        os.makedirs(folder, exist_ok=True)
        report = ctx.report()
        files = {
            "before.py": before,
            "after.py": readable(gm),
            "report.json": json.dumps(report, indent=2, sort_keys=True),
            "report.md": report_markdown(report, graph_picture(before_counts, op_counts(gm))),
        }
        for name, text in files.items():
            with open(os.path.join(folder, name), "w") as f:
                f.write(text)
    except Exception as e:  # a dump must never break the user's program
        warnings.warn(f"flashrnn: could not write the dump to {dump_dir!r}: {e}", RuntimeWarning)

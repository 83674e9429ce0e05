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
from typing import Any, Dict

import torch

_COUNTER = itertools.count()


def readable(gm: torch.fx.GraphModule) -> str:
    return gm.print_readable(print_output=False)


def report_markdown(report: Dict[str, Any]) -> str:
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
    return "\n".join(lines) + "\n"


def dump(dump_dir: str, before: str, gm: torch.fx.GraphModule, ctx) -> None:
    try:
        folder = os.path.join(dump_dir, f"{next(_COUNTER):03d}_{type(gm).__name__}")
        os.makedirs(folder, exist_ok=True)
        report = ctx.report()
        files = {
            "before.py": before,
            "after.py": readable(gm),
            "report.json": json.dumps(report, indent=2, sort_keys=True),
            "report.md": report_markdown(report),
        }
        for name, text in files.items():
            with open(os.path.join(folder, name), "w") as f:
                f.write(text)
    except Exception as e:  # a dump must never break the user's program
        warnings.warn(f"flashrnn: could not write the dump to {dump_dir!r}: {e}", RuntimeWarning)

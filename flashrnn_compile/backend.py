"""The `flashrnn` torch.compile backend.

Found by name through the entry point group `torch_dynamo_backends` (pyproject.toml), so
`torch.compile(model, backend="flashrnn")` works without importing this package. Importing this
module sets `torch._dynamo.config.allow_rnn = True`: without it Dynamo graph-breaks on
nn.LSTM/GRU/RNN and never resumes, so nothing after the RNN would be compiled.

    backend(gm, example_inputs, options={...}, mode=None)
        runs the passes of `flashrnn_compile.passes.PASSES` on the Dynamo graph, records what
        they did (stats(), dump), then hands the graph to the inner compiler.
"""

from __future__ import annotations

from typing import Any, Callable, Dict, Optional, Sequence

import torch
import torch._dynamo

from . import context, debug

torch._dynamo.config.allow_rnn = True


def run_passes(gm: torch.fx.GraphModule, ctx: context.PassContext) -> torch.fx.GraphModule:
    from .passes import PASSES

    for p in PASSES:
        gm = p(gm, ctx)
    gm.graph.lint()
    gm.recompile()
    return gm


def _inner_compile(
    inner: str, gm: torch.fx.GraphModule, example_inputs: Sequence[Any], mode: Optional[str]
) -> Callable:
    if inner == "eager":
        return gm.forward
    if inner == "aot_eager":
        from torch._dynamo.backends.registry import lookup_backend

        return lookup_backend("aot_eager")(gm, example_inputs)
    from torch._inductor.compile_fx import compile_fx

    patches = torch._inductor.list_mode_options(mode) if mode else {}
    return compile_fx(gm, example_inputs, config_patches=patches)


def flashrnn_backend(
    gm: torch.fx.GraphModule,
    example_inputs: Sequence[Any],
    options: Optional[Dict[str, Any]] = None,
    mode: Optional[str] = None,
) -> Callable:
    opts = context.BackendOptions.from_dict(options)
    ctx = context.PassContext(opts, example_inputs)
    if opts.dump_dir:
        before, before_counts = debug.readable(gm), debug.op_counts(gm)
    gm = run_passes(gm, ctx)
    context.count(ctx)
    if opts.dump_dir:
        debug.dump(opts.dump_dir, before, before_counts, gm, ctx)
    return _inner_compile(opts.inner, gm, example_inputs, mode)

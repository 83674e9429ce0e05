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

import functools
import hashlib
import pathlib
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

    patches = dict(torch._inductor.list_mode_options(mode)) if mode else {}
    patches.update(_cache_salt_patch())
    return compile_fx(gm, example_inputs, config_patches=patches)


@functools.lru_cache(maxsize=None)
def _source_hash() -> str:
    """sha256 of this package's Python sources (the fake kernels of our ops among them)."""
    root = pathlib.Path(__file__).resolve().parent
    digest = hashlib.sha256()
    for path in sorted(root.rglob("*.py")):
        digest.update(str(path.relative_to(root)).encode())
        digest.update(path.read_bytes())
    return digest.hexdigest()


def _cache_salt_patch() -> Dict[str, Any]:
    """Inductor config patch that puts `_source_hash()` into Inductor's FX-graph cache key.

    The key covers the graph (our ops by name) but not our ops' fake kernels, so a graph compiled
    by an older flashrnn_compile whose fake kernels gave other output strides was reused after an
    upgrade, and Inductor's stride assertion failed at run time (seen on this project's own demo).
    A no-op post-grad pass whose uuid is the hash salts the key. A pass the user set is kept and
    runs first; one that is not a CustomGraphPass already keeps Inductor from caching: untouched."""
    import importlib.util

    from torch._inductor import config

    if importlib.util.find_spec("torch._inductor.custom_graph_pass") is None or not hasattr(
        config, "post_grad_custom_pre_pass"
    ):
        return {}  # a torch without custom graph passes: its cache key cannot be salted this way
    from torch._inductor.custom_graph_pass import CustomGraphPass

    user_pass = config.post_grad_custom_pre_pass
    if user_pass is not None and not isinstance(user_pass, CustomGraphPass):
        return {}

    class SourceSalt(CustomGraphPass):
        def __call__(self, graph: torch.fx.Graph) -> None:
            if user_pass is not None:
                user_pass(graph)

        def uuid(self) -> Any:
            return f"flashrnn_compile-{_source_hash()}" + ("" if user_pass is None else f"+{user_pass.uuid()}")

    return {"post_grad_custom_pre_pass": SourceSalt()}


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

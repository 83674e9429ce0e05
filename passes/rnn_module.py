"""Rewrite nn.LSTM / nn.GRU / nn.RNN calls into the core op (one call per layer and direction, or
per layer with both directions as two heads where that is faster: `_merge_plan`).

Matched (what Dynamo records for an nn.RNNBase module with `allow_rnn`; all args positional):

    out = torch.lstm(x, (h0, c0), [W_ih, W_hh, b_ih, b_hh, (W_hr), ...], has_biases,
                     num_layers, dropout, train, bidirectional, batch_first)
    out = torch.gru | torch.rnn_tanh | torch.rnn_relu(x, h0, [...], <same flags>)
    output, h_n(, c_n) = out[0], out[1](, out[2])

Produced (see `_rnn_glue` for the exact glue): per layer and direction one input GEMM over all
steps, W_hh / b_hh as views R [1, G, H, H] / b [1, G, H], one
`flashrnn.recurrence_fwd(gx [T, B, 1, G, H], R, b, s0 [S, B, 1, H], cell, reverse, plan, save)`,
and cat / dropout / stack / transpose around them, so that the graph's outputs have exactly the
shapes and dtypes of the original node's outputs.

Left as written, with the reason recorded in ctx (one refusal per node):
    PackedSequence input (the `batch_sizes` overload): the core op has no lengths argument;
    flags that are not constants; an unexpected weight list; missing example values;
    outputs used other than through getitem; a rewrite whose result metadata does not match
    (except the cuDNN LSTM's known wrong record of h_n / c_n, `_cudnn_lstm_fake_state`);
    under autocast, a failed one-step probe of eager's dtypes (`_eager_dtypes`).

Kept on ATen's kernel instead, wrapped whole in `flashrnn::aten_rnn` (plan family "aten"): on the
CPU (ATen's C++ loop beats the reference) and on CUDA for dense layers no block-fused kernel takes
where cuDNN measured faster: the one-layer unidirectional LSTM in float16 from batch 16
(`_cudnn_is_faster`).

Under autocast the recurrence runs in the dtype eager's kernel returns (learned by a one-step
probe of the same op, since Dynamo's record can be wrong there), inside a region with autocast
off and explicit casts, so the rewrite does exactly the casts eager does.
"""

from __future__ import annotations

import contextlib
import dataclasses
import operator
from typing import List, Optional, Tuple, Union

import torch
import torch.fx
from torch._subclasses.fake_tensor import unset_fake_temporarily
from torch.fx.experimental.symbolic_shapes import statically_known_true

from flashrnn_compile.cells import get_cell
from flashrnn_compile.context import Rewrite, choose_plan, user_code
from flashrnn_compile.planner import Plan

from ._common import REWRITTEN, example_value
from ._rnn_glue import Builder, LayerWeights, RnnCall, emit_rnn

Node = torch.fx.Node
SOURCE = "module"


@dataclasses.dataclass(frozen=True)
class RnnOp:
    cell: str  # cell registry name
    hx_pair: bool  # hx is (h0, c0)
    projections: bool  # may carry W_hr (proj_size)


RNN_OPS = {
    torch.lstm: RnnOp("lstm", hx_pair=True, projections=True),
    torch.gru: RnnOp("gru", hx_pair=False, projections=False),
    torch.rnn_tanh: RnnOp("elman_tanh", hx_pair=False, projections=False),
    torch.rnn_relu: RnnOp("elman_relu", hx_pair=False, projections=False),
}

_DTYPES = (torch.float16, torch.bfloat16, torch.float32, torch.float64)


def _hint(size) -> int:
    """A concrete value of a (possibly symbolic) size without adding a guard."""
    if isinstance(size, torch.SymInt):
        hint = size.node.hint
        return int(hint) if hint is not None else -1
    return int(size)


def _parse(node: Node, op: RnnOp) -> Union[RnnCall, str]:
    """The call's pieces, or the reason it cannot be rewritten."""
    args = node.args
    if node.kwargs or len(args) != 9:
        return f"unexpected signature: {len(args)} positional args, kwargs {sorted(node.kwargs)}"
    if not isinstance(args[3], bool):
        return (
            "PackedSequence input (batch_sizes overload): the core op has no lengths argument, "
            "so variable-length sequences stay on PyTorch's kernel"
        )
    x, hx, params, has_biases, layers, dropout, train, bidirectional, batch_first = args
    flags = dict(has_biases=has_biases, train=train, bidirectional=bidirectional, batch_first=batch_first)
    for name, value in flags.items():
        if not isinstance(value, bool):
            return f"{name} is not a constant bool (got {type(value).__name__})"
    if not isinstance(layers, int) or isinstance(layers, bool) or layers < 1:
        return f"num_layers is not a constant int >= 1 (got {layers!r})"
    if isinstance(dropout, Node):
        # Dynamo makes a float attribute symbolic once it has seen two values of it; the value
        # only matters in training with layers after the first
        if not isinstance(dropout.meta.get("example_value"), (float, torch.SymFloat)):
            return f"dropout is a graph value that is not a float ({dropout.format_node()})"
    elif not isinstance(dropout, (int, float)) or isinstance(dropout, bool) or not 0 <= dropout <= 1:
        return f"dropout is not a constant in [0, 1] (got {dropout!r})"
    if op.hx_pair:
        if not (isinstance(hx, (list, tuple)) and len(hx) == 2):
            return f"hx is not a pair (h0, c0) (got {type(hx).__name__})"
        h0, c0 = hx
    else:
        h0, c0 = hx, None
    if not isinstance(params, (list, tuple)) or not all(isinstance(p, Node) for p in params):
        return "the weight list is not a list of graph values"
    D = 2 if bidirectional else 1
    base = 4 if has_biases else 2
    per, rest = divmod(len(params), layers * D)
    proj = rest == 0 and per == base + 1 and op.projections
    if rest or per not in (base, base + 1) or (per == base + 1 and not proj):
        return f"unexpected weight list: {len(params)} tensors for {layers} layer(s) x {D} direction(s)"
    weights = []
    for k in range(layers * D):
        w = params[k * per : (k + 1) * per]
        weights.append(
            LayerWeights(
                w_ih=w[0],
                w_hh=w[1],
                b_ih=w[2] if has_biases else None,
                b_hh=w[3] if has_biases else None,
                w_hr=w[-1] if proj else None,
            )
        )
    values = [example_value(n) for n in (x, h0, c0, *params) if n is not None]
    outs = node.meta.get("example_value")
    if any(v is None for v in values) or not isinstance(outs, (tuple, list)):
        return "missing example values (fake tensors) on the call's inputs or outputs"
    if not all(isinstance(v, torch.Tensor) for v in outs):
        return "the call's outputs are not all tensors"
    xv = example_value(x)
    if xv.dim() != 3:
        return f"input: expected 3 dims [T, B, I] at this point, got {xv.dim()}"
    dtype = outs[0].dtype
    if dtype not in _DTYPES or any(v.dtype not in _DTYPES for v in values):
        return f"dtype {dtype} (or an input's dtype) is not a floating type the core op takes"
    if len({v.device for v in values}) != 1:
        return f"tensors on several devices {sorted({str(v.device) for v in values})}"
    spec = get_cell(op.cell)
    G = spec.num_gates
    w_hh = example_value(weights[0].w_hh)
    H, rem = divmod(w_hh.shape[0], G)
    if rem:
        return f"W_hh has {w_hh.shape[0]} rows, not a multiple of {G} gates"
    return RnnCall(
        node=node,
        cell=op.cell,
        x=x,
        h0=h0,
        c0=c0,
        weights=weights,
        layers=layers,
        directions=D,
        hidden=H,
        proj=example_value(weights[0].w_hr).shape[0] if proj else 0,
        dropout=dropout if isinstance(dropout, Node) else float(dropout),
        train=train,
        batch_first=batch_first,
        gates=G,
        dtype=dtype,
        out_dtypes=tuple(v.dtype for v in outs),
    )


def _autocast_regions(gm: torch.fx.GraphModule, node: Node, device_type: str) -> Optional[List[tuple]]:
    """None when autocast cannot be on where `node` runs; else the args of the graph's autocast
    regions open at `node`, outermost first (the process's ambient state, which Dynamo guards on,
    applies beneath them)."""
    open_regions: List[tuple] = []
    for n in gm.graph.nodes:
        if n is node:
            break
        if n.target is torch.amp.autocast_mode._enter_autocast:
            open_regions.append(tuple(n.args))
        elif n.target is torch.amp.autocast_mode._exit_autocast and open_regions:
            open_regions.pop()
    if not open_regions and not torch.is_autocast_enabled(device_type):
        return None
    return open_regions


def _eager_dtypes(
    op_fn, call: RnnCall, regions: List[tuple]
) -> Union[Tuple[Tuple[torch.dtype, ...], Optional[torch.dtype]], str]:
    """(the output dtypes eager gives for this call under autocast, the autocast dtype in force
    for the call's device or None where it is off there), found by running the same op on tiny
    real tensors of the same dtypes and device under the same autocast regions.

    Dynamo's record can be wrong here: under CUDA autocast the cuDNN RNN casts to float16 inside
    (ATen's autocast wrapper of _cudnn_rnn), while the recorded example values stay float32
    (measured on an H100, torch 2.11). Which path eager takes depends only on dtypes, device and
    flags, never on sizes, so a one-step, one-unit call shows it."""
    xv = example_value(call.x)
    w = call.weights[0]
    H = 2 if call.proj else 1  # a projection needs P < H
    P = 1 if call.proj else H
    G = call.gates

    def real(node: Optional[Node], *shape):
        dtype = example_value(node).dtype if node is not None else xv.dtype
        return torch.zeros(*shape, dtype=dtype, device=xv.device)

    params = [real(w.w_ih, G * H, 1), real(w.w_hh, G * H, P)]
    if w.b_ih is not None:
        params += [real(w.b_ih, G * H), real(w.b_hh, G * H)]
    if w.w_hr is not None:
        params.append(real(w.w_hr, P, H))
    x = real(call.x, 1, 1, 1)  # [T=1, B=1, I=1]
    h0 = real(call.h0, 1, 1, P)
    hx = (h0, real(call.c0, 1, 1, H)) if call.c0 is not None or call.cell == "lstm" else h0
    try:
        with unset_fake_temporarily(), torch.no_grad(), contextlib.ExitStack() as stack:
            for args in regions:
                stack.enter_context(torch.amp.autocast(*args))
            outs = op_fn(x, hx, params, w.b_ih is not None, 1, 0.0, False, False, False)
            dev = xv.device.type
            in_force = torch.get_autocast_dtype(dev) if torch.is_autocast_enabled(dev) else None
    except Exception as e:  # noqa: BLE001  (then the call stays as written, with this reason)
        return f"autocast: running the op on a one-step probe to learn eager's dtypes failed ({type(e).__name__}: {e})"
    return tuple(o.dtype for o in outs), in_force


def _under_autocast(node: Node, call: RnnCall, regions: List[tuple], device: torch.device, outs) -> Union[RnnCall, str]:
    """`call` with eager's dtypes under autocast, or the reason to leave it as written."""
    probe = _eager_dtypes(node.target, call, regions)
    if isinstance(probe, str):
        return probe
    dtypes, in_force = probe
    if len(dtypes) != len(call.out_dtypes) or dtypes[0] not in _DTYPES:
        return f"autocast: eager's one-step probe gave outputs {dtypes}, recorded {call.out_dtypes}"
    call = dataclasses.replace(call, dtype=dtypes[0], out_dtypes=dtypes)
    training = any(v.requires_grad for v in outs)
    if training and device.type == "cuda" and in_force is not None and in_force != call.dtype:
        # cuDNN casts once at entry and its backward is one op autocast leaves alone; AOTAutograd
        # traces the rewrite's backward under the forward's autocast (its default
        # backward_pass_autocast="same_as_forward"), which would recast the glue's backward GEMMs
        # to `in_force` (measured on an H100: bf16 autocast, 5x eager's input-gradient error)
        return (
            f"autocast to {in_force} around a call eager's cuDNN kernel computes in {call.dtype}: the "
            f"rewrite's backward would be traced under {in_force} autocast and lose precision eager keeps "
            "(training calls stay as written; inference is rewritten)"
        )
    return call


def _same_meta(new: Optional[torch.Tensor], old: torch.Tensor, dtype: torch.dtype) -> bool:
    """Shape and layout (strides of dims longer than 1) of `old`, provably for every size, and
    `dtype` (the recorded one, or eager's under autocast)."""
    if new is None or new.dtype != dtype or new.dim() != old.dim():
        return False
    if not all(statically_known_true(a == b) for a, b in zip(new.shape, old.shape)):
        return False
    return all(
        statically_known_true(size == 1) or statically_known_true(a == b)
        for size, a, b in zip(old.shape, new.stride(), old.stride())
    )


def _cudnn_lstm_fake_state(
    ours: Optional[torch.Tensor], recorded: torch.Tensor, op_name: str, index: int, dtype: torch.dtype
) -> bool:
    """PyTorch's fake kernel for the cuDNN LSTM records h_n / c_n with an extra size-1 dim 1
    ([L*D, 1, B, H] where eager returns [L*D, B, H]; pytorch/pytorch#130791, seen on torch 2.11
    + CUDA 13 on an H100). The recorded value is wrong, not the runtime one: ours must then match
    the runtime layout, i.e. the recorded one without that dim."""
    if op_name != "lstm" or index not in (1, 2) or ours is None or recorded.device.type != "cuda":
        return False
    if recorded.dim() != ours.dim() + 1 or not statically_known_true(recorded.shape[1] == 1):
        return False
    shape = [recorded.shape[0], *recorded.shape[2:]]
    if ours.dtype != dtype or not all(statically_known_true(a == b) for a, b in zip(ours.shape, shape)):
        return False
    return _is_contiguous(recorded) and _is_contiguous(ours)


def _is_contiguous(t: torch.Tensor) -> bool:
    """Row-major strides on every dim longer than 1, provably for every size."""
    expected = 1
    for size, stride in reversed(list(zip(t.shape, t.stride()))):
        if not (statically_known_true(size == 1) or statically_known_true(stride == expected)):
            return False
        expected = expected * size
    return True


def _meta_text(t: Optional[torch.Tensor]) -> str:
    if t is None:
        return "no value"
    return f"{t.dtype} {tuple(t.shape)} strides {tuple(t.stride())} on {t.device}"


def _rewrite(gm: torch.fx.GraphModule, node: Node, op: RnnOp, ctx) -> Optional[str]:
    """Rewrite one node; returns the reason when it is left as written."""
    users = list(node.users)
    if not all(u.target is operator.getitem and isinstance(u.args[1], int) for u in users):
        return "the call's result is used other than through out[i]"
    call = _parse(node, op)
    if isinstance(call, str):
        return call
    xv = example_value(call.x)
    device = xv.device
    T, B = (xv.shape[1], xv.shape[0]) if call.batch_first else (xv.shape[0], xv.shape[1])
    outs = node.meta["example_value"]
    regions = _autocast_regions(gm, node, device.type)
    autocast = regions is not None
    if autocast:  # eager's dtypes, not the record's: the glue casts to them with autocast off
        call = _under_autocast(node, call, regions, device, outs)
        if isinstance(call, str):
            return call
    plan = _aten_plan(ctx, call, device, autocast)
    if plan is None:
        chosen = choose_plan(ctx, call.cell, _hint(B), 1, call.hidden, call.dtype, device)
        faster = _cudnn_is_faster(ctx, call, chosen, device, autocast, _hint(B))
        plan = _cudnn_plan(chosen, call, outs) if faster else chosen
    if plan.family == "aten":
        node.target, node.args = torch.ops.flashrnn.aten_rnn.default, _aten_args(node)
        node.meta[REWRITTEN] = SOURCE
    else:
        merged = _merge_plan(ctx, call, plan, device, _hint(B))
        reason = _emit(gm, node, call, plan, merged, outs, device, autocast)
        if reason is not None:
            return reason
        plan = merged or plan
    ctx.rewrote(
        Rewrite(
            source=SOURCE,
            cell=call.cell,
            layers=call.layers,
            directions=call.directions,
            steps=_hint(T),
            batch=_hint(B),
            heads=1,
            head_dim=call.hidden,
            dtype=str(call.dtype).replace("torch.", ""),
            plan=plan.as_dict(),
            user_code=user_code([node]),
        )
    )
    return None


# On the CPU, ATen's C++ loop beats the reference's Python loop: keep ATen's kernel, wrapped whole
# in flashrnn::aten_rnn so AOTAutograd does not unroll it (DESIGN: never slower than eager).
_ATEN_PLAN = Plan(
    "aten", {}, "on cpu ATen's own RNN kernel is faster than the reference: kept, wrapped in one "
    "opaque op so AOTAutograd does not unroll it (options plan='reference' rewrites it instead)"
)


def _train_dropout(call: RnnCall) -> bool:
    """Inter-layer dropout that draws masks (the aten plan's backward recomputes the forward,
    which would draw new ones)."""
    return call.train and call.layers > 1 and (isinstance(call.dropout, Node) or call.dropout > 0)


def _aten_plan(ctx, call: RnnCall, device: torch.device, autocast: bool) -> Optional[Plan]:
    """The CPU plan: ATen's kernel, where the reference would be slower."""
    use = (
        ctx.options.plan == "auto"
        and device.type == "cpu"
        and not autocast
        and not _train_dropout(call)
        and call.dtype in (torch.float32, torch.float64)
    )
    return _ATEN_PLAN if use else None


# Dense (one head) layers with no fused kernel run our alternating kernels. cuDNN's fp16 kernels beat
# them by far; its bf16 ones do not once the aten plan's backward recomputes the forward. H100 80GB
# HBM3, ms forward / forward+backward (benchmarks/results/H100_80GB_HBM3/layer.md and model.md,
# 2026-11-26):
#   LSTM fp16 B16 T1024 H768: cuDNN 2.25 / 6.96 (aten plan ~ +2.25 recompute), ours 10.57 / 37.39
#   LSTM bf16 B16 T1024 H768: cuDNN 16.55 / 27.34 (aten plan ~ 43.9), ours 10.51 / 36.97
#   BiGRU encoder bf16 H512 B32 T128, training step: ours 6.68, aten plan 14.70, eager 9.90-13.56
#   fp32: not measured; stays on ours.
# Where cuDNN measured faster than our kernels for a dense layer (H100, bf16/fp16 B16 T1024, 1x768;
# benchmarks/results/H100_80GB_HBM3/layer.md, fused_cluster.md): only the LSTM in float16 from a
# batch of 16 (its persistent kernel): 2.4 / 7.1 ms against fused_cluster's 3.1 / 12.3 and the
# alternating kernels' 10.2 / 20.3; at B=64 training 20.8 against 57.9. Not at B=1 (12.0 / 29.2
# against 3.1 / 8.6), not for the GRU (12.3 / 29.6 against 2.65 / 10.8), never in bfloat16 (12-17 / 27-39).
# That kernel is cuDNN's persistent algorithm, which PyTorch selects only for one layer in one
# direction (its heuristic: num_layers == 1 and unidirectional, besides sizes): a bidirectional fp16
# LSTM 768 B16 took 35.55 / 81.93 ms in cuDNN against ours (one launch, bf16) 2.98 / 7.97 (H200,
# benchmarks/results/H200/session13.md), so several layers or directions stay on ours.
CUDNN_FASTER_CELLS = ("lstm",)
CUDNN_FASTER_MIN_BATCH = 16


def _cudnn_is_faster(ctx, call: RnnCall, plan: Plan, device: torch.device, autocast: bool, batch: int) -> bool:
    return (
        ctx.options.plan == "auto"
        and device.type == "cuda"
        and plan.family in ("alternating", "fused_cluster", "fused_grid")
        and not autocast
        and not _train_dropout(call)
        and call.dtype == torch.float16
        and call.cell in CUDNN_FASTER_CELLS
        and batch >= CUDNN_FASTER_MIN_BATCH
        and call.layers == 1
        and call.directions == 1
    )


def _cudnn_plan(chosen: Plan, call: RnnCall, outs) -> Plan:
    mode = "training" if any(v.requires_grad for v in outs) else "inference"
    return Plan(
        "aten",
        {},
        f"on cuda no block-fused kernel takes a dense {call.hidden}-wide layer (the planner chose {chosen.family}); "
        f"cuDNN's float16 {call.cell} (one layer, one direction) from batch {CUDNN_FASTER_MIN_BATCH} is faster "
        f"than ours in {mode} "
        "(H100 layer suite): kept, wrapped in one opaque op so AOTAutograd does not unroll it "
        "(options plan='alternating' forces ours)",
    )


def _aten_args(node: Node) -> tuple:
    x, hx, params, *flags = node.args
    hx = list(hx) if isinstance(hx, (list, tuple)) else [hx]
    has_biases, layers, dropout, *rest = flags
    return (node.target.__name__, x, hx, list(params), has_biases, layers, float(dropout), *rest)


def _floor(plan: Plan) -> Optional[int]:
    """The planner's synchronisation floor per step (ns) of the chosen family, if it modelled one."""
    report = plan.details.get(plan.family, {}).get("report", {}) if isinstance(plan.details, dict) else {}
    value = report.get("STEP_NS")
    return int(value) if isinstance(value, (int, float)) and value > 0 else None


def _merge_plan(ctx, call: RnnCall, single: Plan, device: torch.device, batch: int) -> Optional[Plan]:
    """The plan of one two-head call running both directions of each bidirectional layer, or None
    to keep one call per direction.

    options['bidirectional']: 'split' never merges, 'merged' always does; 'auto' merges where one
    launch is predicted no slower than two after each other: the reference (one Python loop
    instead of two), or a CUDA plan of two heads of the one-head plan's family whose floor per step
    (planner STEP_NS, which counts waves of blocks) is at most twice the one-head plan's. Ties go to
    one launch: at 768 units and B 64 the model predicts a second wave of clusters (a tie), and one
    launch measured 8.43 / 24.77 ms (fwd / fwd+bwd) against two launches' 10.52 / 29.46 (H200,
    benchmarks/results/H200/session13.md). Two launches stay two where the two-head plan is another
    family (the families' floors are not predictions, and not comparable with each other) or has a
    higher floor than two one-head launches."""
    mode = ctx.options.bidirectional
    if call.directions != 2 or mode == "split":
        return None
    pair = choose_plan(ctx, call.cell, batch, 2, call.hidden, call.dtype, device)
    note = None
    if pair.family == "reference":
        note = "one Python loop instead of two"
    elif pair.family == single.family:
        one, two = _floor(single), _floor(pair)
        if one and two and two <= 2 * one:
            note = f"floor {two} ns/step against two launches of {one}"
    if mode == "merged":
        note = note or "forced by options['bidirectional'] = 'merged'"
    if note is None:
        return None
    return dataclasses.replace(
        pair,
        reason=f"both directions in one launch, as 2 heads with the reverse one flipped in time ({note}); {pair.reason}",
    )


def _emit(gm, node: Node, call: RnnCall, plan, merged: Optional[Plan], outs, device, autocast: bool) -> Optional[str]:
    """Replace `node` by the core-op glue (both directions of a layer in one call under `merged`);
    the reason when it cannot be done."""
    users = list(node.users)
    save = any(v.requires_grad for v in outs)  # inference graphs keep no states
    fake_mode = getattr(example_value(call.x), "fake_mode", None)
    if fake_mode is None:
        return "the example values are not fake tensors (no fake mode to check the rewrite in)"
    bld = Builder(gm.graph, node, fake_mode, device.type)
    try:
        results = emit_rnn(bld, call, plan=plan.op_arg(), save=save, disable_autocast=autocast,
                           merged_plan=merged.op_arg() if merged is not None else None)
    except Exception as e:  # noqa: BLE001  (the graph goes back to what the user wrote)
        bld.remove_all()
        return f"internal: building the rewrite failed ({type(e).__name__}: {e})"
    bad = [
        i
        for i, (r, o, want) in enumerate(zip(results, outs, call.out_dtypes))
        if not (
            _same_meta(example_value(r), o, want)
            or _cudnn_lstm_fake_state(example_value(r), o, call.cell, i, want)
        )
    ]
    if bad or len(results) != len(outs):
        bld.remove_all()
        detail = "; ".join(f"[{i}] ours {_meta_text(example_value(results[i]))} vs {_meta_text(outs[i])}" for i in bad)
        return f"internal: the rewrite's output(s) {bad} differ in shape, dtype or strides from the call's ({detail})"
    for u in users:
        u.replace_all_uses_with(results[u.args[1]])
        gm.graph.erase_node(u)
    gm.graph.erase_node(node)
    return None


def rnn_module_pass(gm: torch.fx.GraphModule, ctx) -> torch.fx.GraphModule:
    """Rewrite every torch.lstm / gru / rnn_tanh / rnn_relu node it can prove equivalent."""
    for node in list(gm.graph.nodes):
        op = RNN_OPS.get(node.target) if node.op == "call_function" else None
        if op is None:
            continue
        reason = _rewrite(gm, node, op, ctx)
        if reason is not None:
            ctx.refused(SOURCE, f"{node.target.__name__}: {reason}", [node])
    return gm

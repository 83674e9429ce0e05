"""Model suite: whole models, training step and inference, eager vs torch.compile (default)
vs torch.compile(backend="flashrnn"), with compile times cold and warm.

Models (models.py): an LSTM language model (embedding, 2-layer nn.LSTM, head), a bidirectional
GRU encoder, and a hand-written LSTM loop with a head.

    inference      model.eval(), no_grad, one forward
    training step  model.train(), zero_grad, forward, cross-entropy / MSE loss, backward, SGD step

"torch.compile default" is what a user gets without flashrnn_compile: Dynamo's allow_rnn is off
(importing flashrnn_compile turns it on), so nn.LSTM/GRU graph-break and run eagerly between
compiled graphs; with allow_rnn on, Inductor unrolls them (123 s of compile at T=64 on an H100).

Compile times: cold = the first call in this process with empty Inductor caches
(TORCHINDUCTOR_CACHE_DIR is a fresh folder per run unless set); warm = the first call again after
torch._dynamo.reset(), the on-disk caches filled by the cold compile. Each is one call's wall time
minus nothing (compile + one step).
"""

from __future__ import annotations

import dataclasses
from typing import Any, Callable, Dict, List, Optional, Tuple

import torch
import torch.nn.functional as F

from . import common, models


@dataclasses.dataclass(frozen=True)
class ModelCase:
    name: str
    build: Callable[[], torch.nn.Module]
    inputs: Callable[[torch.device], Tuple[torch.Tensor, torch.Tensor]]  # (input, target)
    loss: Callable[[torch.Tensor, torch.Tensor], torch.Tensor]
    expected_compile_s: float  # torch.compile default, cold + warm, both modes (for the budget)


def _lm(V: int, H: int, B: int, T: int) -> ModelCase:
    def inputs(dev):
        return torch.randint(0, V, (B, T), device=dev), torch.randint(0, V, (B, T), device=dev)  # [B, T] each

    return ModelCase(f"LSTM LM (2 layers, H={H}, V={V}, B={B}, T={T})", lambda: models.LSTMLM(V, H, 2), inputs,
                     lambda y, t: F.cross_entropy(y.flatten(0, 1).float(), t.flatten()), 20.0)


def _bigru(Fe: int, H: int, B: int, T: int, dtype) -> ModelCase:
    C = 10

    def inputs(dev):
        x = torch.randn(B, T, Fe, device=dev, dtype=dtype)  # [B, T, F]
        return x, torch.randint(0, C, (B,), device=dev)  # [B]

    return ModelCase(f"BiGRU encoder (H={H}, F={Fe}, B={B}, T={T})", lambda: models.BiGRUEncoder(Fe, H, C), inputs,
                     lambda y, t: F.cross_entropy(y.float(), t), 20.0)


def _hand(Fe: int, H: int, B: int, T: int, dtype) -> ModelCase:
    def inputs(dev):
        x = torch.randn(B, T, Fe, device=dev, dtype=dtype)  # [B, T, F]
        return x, torch.randn(B, T, Fe, device=dev, dtype=dtype)  # [B, T, F]

    return ModelCase(f"hand-written LSTM loop (H={H}, F={Fe}, B={B}, T={T})", lambda: models.HandLSTMModel(Fe, H),
                     inputs, lambda y, t: F.mse_loss(y.float(), t.float()), 3.0 * T + 20)


def cases(quick: bool, dtype) -> List[ModelCase]:
    if quick:
        return [_lm(50, 24, 2, 4), _bigru(8, 16, 2, 4, dtype), _hand(8, 16, 2, 3, dtype)]
    return [_lm(8192, 768, 32, 128), _bigru(256, 512, 32, 128, dtype), _hand(256, 256, 32, 16, dtype)]


BACKENDS = ("eager", "torch.compile flashrnn", "torch.compile default")  # default last: the slowest compile
FLASHRNN_COMPILE_S = 25.0  # expected cold + warm compile with backend="flashrnn" (rerolled or rewritten)


def _compile(model: torch.nn.Module, backend: str, inner: str = "inductor") -> Callable:
    """The callable for `backend`; 'default' runs with allow_rnn off, as without flashrnn_compile.
    inner: the compiler behind Dynamo ("inductor"; --quick uses "aot_eager": no C++ builds)."""
    if backend == "eager":
        return model
    if backend == "torch.compile flashrnn":
        return torch.compile(model, backend="flashrnn", options={"inner": inner})
    compiled = torch.compile(model, backend=inner)

    def call(*args):
        with torch._dynamo.config.patch(allow_rnn=False):
            return compiled(*args)

    return call


def _steps(case: ModelCase, model: torch.nn.Module, fn: Callable, device) -> Tuple[Callable, Callable]:
    """(inference, training step) closures over fresh random inputs."""
    x, target = case.inputs(device)
    opt = torch.optim.SGD(model.parameters(), lr=1e-4)

    def infer():
        model.eval()
        with torch.no_grad():
            return fn(x)

    def train():
        model.train()
        opt.zero_grad(set_to_none=True)
        loss = case.loss(fn(x), target)
        loss.backward()
        opt.step()
        return loss

    return infer, train


def _refusal(case: ModelCase, model: torch.nn.Module, device) -> Optional[str]:
    """Why the flashrnn backend would leave an nn.LSTM/GRU of `model` as written (Inductor would then
    unroll it: minutes of compile), or None."""
    import flashrnn_compile

    if not any(isinstance(m, torch.nn.RNNBase) for m in model.modules()):
        return None
    x, _ = case.inputs(device)
    with torch.no_grad():
        expl = flashrnn_compile.explain(model.eval(), x)
    torch._dynamo.reset()
    module_refusals = [r["reason"] for r in expl.refusals if r["source"] == "module"]
    if module_refusals:
        return "the flashrnn backend leaves the RNN module as written here: " + "; ".join(module_refusals)
    return None


def run_case(case: ModelCase, backend: str, device, dtype, env, timing, inner: str = "inductor") -> List[Dict[str, Any]]:
    """Two rows (inference, training step) of one model under one backend."""
    import flashrnn_compile

    torch.manual_seed(0)
    model = case.build().to(device, dtype)
    base = {"suite": "model", "model": case.name, "backend": backend, "dtype": str(dtype).replace("torch.", ""),
            "compiler": None if backend == "eager" else inner,
            **{k: env[k] for k in ("card", "torch", "cuda", "command")}}
    if backend == "torch.compile flashrnn" and torch.device(device).type == "cuda":
        why = _refusal(case, model, device)
        if why:
            return [dict(base, mode=m, status="n/a", reason=why[:500]) for m in ("inference", "training step")]
    torch._dynamo.reset()
    before = flashrnn_compile.stats()["rewritten"]
    fn = _compile(model, backend, inner)
    infer, train = _steps(case, model, fn, device)
    cold = {"inference": common.timed_call(infer, device), "training step": common.timed_call(train, device)}
    rewritten = flashrnn_compile.stats()["rewritten"] - before
    warm: Dict[str, Optional[float]] = {"inference": None, "training step": None}
    if backend != "eager":
        torch._dynamo.reset()
        fn = _compile(model, backend, inner)
        infer, train = _steps(case, model, fn, device)
        warm = {"inference": common.timed_call(infer, device), "training step": common.timed_call(train, device)}
    rows = []
    for mode, step in (("inference", infer), ("training step", train)):
        t = common.measure(step, device, **timing)
        row = dict(base, mode=mode, status="ok", **t.as_dict("step"))
        if backend != "eager":
            row.update(compile_cold_s=cold[mode], compile_warm_s=warm[mode])
        if backend == "torch.compile flashrnn":
            row["rewritten"] = rewritten
        rows.append(row)
    torch._dynamo.reset()
    return rows


def run(device, budget: common.Budget, env: Dict[str, Any], quick: bool = False) -> List[Dict[str, Any]]:
    """Every (model, backend, mode) row; a backend that fails is a row with the error."""
    device = torch.device(device)
    dtype = torch.bfloat16 if device.type == "cuda" and not quick else torch.float32
    timing = (dict(warmup=1, min_reps=3, max_reps=3, target_s=0.1) if quick
              else dict(warmup=3, min_reps=10, max_reps=50, target_s=1.0))
    inner = "aot_eager" if quick else "inductor"  # --quick: plumbing only, no C++/Triton builds
    rows: List[Dict[str, Any]] = []
    jobs = [(c, b) for c in cases(quick, dtype) for b in BACKENDS]
    for i, (case, backend) in enumerate(jobs, 1):
        expected = {"eager": 5.0, "torch.compile flashrnn": FLASHRNN_COMPILE_S}.get(backend, case.expected_compile_s)
        skip = budget.refuse(expected)
        if skip:
            new = [{"suite": "model", "model": case.name, "backend": backend, "mode": m, "status": "skipped",
                    "reason": skip} for m in ("inference", "training step")]
        else:
            try:
                new = run_case(case, backend, device, dtype, env, timing, inner)
            except Exception as e:  # reported in the table; the other rows still run
                torch._dynamo.reset()
                new = [{"suite": "model", "model": case.name, "backend": backend, "mode": m, "status": "error",
                        "reason": f"{type(e).__name__}: {e}"[:500]} for m in ("inference", "training step")]
        rows += new
        shown = ", ".join(f"{r['mode']} {common.fmt(r.get('step_ms'))} ms" if r["status"] == "ok"
                          else f"{r['mode']} {r['status']}: {str(r.get('reason'))[:80]}" for r in new)
        common.progress(i, len(jobs), budget, f"{case.name[:40]:<40} {backend:<24} {shown}")
    _speedups(rows)
    return rows


def _speedups(rows: List[Dict[str, Any]]) -> None:
    eager = {(r["model"], r["mode"]): r["step_ms"] for r in rows if r["backend"] == "eager" and r["status"] == "ok"}
    for r in rows:
        e = eager.get((r["model"], r["mode"]))
        if e and r["status"] == "ok":
            r["speedup_vs_eager"] = e / r["step_ms"]


def markdown(rows: List[Dict[str, Any]], env: Dict[str, Any]) -> str:
    cols = [("model", "model", 0), ("mode", "mode", 0), ("backend", "backend", 0), ("ms/step", "step_ms", 3),
            ("q1–q3 ms", lambda r: f"{r['step_q1_ms']:.3f}–{r['step_q3_ms']:.3f}" if r.get("step_q1_ms") else None, 0),
            ("× eager", "speedup_vs_eager", 2), ("compiler", "compiler", 0), ("compile cold s", "compile_cold_s", 1),
            ("compile warm s", "compile_warm_s", 1), ("rewritten", "rewritten", 0),
            ("status", lambda r: r["status"] if r["status"] == "ok" else f"{r['status']}: {r.get('reason')}", 0)]
    return "\n".join([f"# Model suite on {env['card']}", "", common.env_header(env), "",
                      "Median step time after warm-up (CUDA events; CPU: perf_counter). Compile cold = first call "
                      "with empty Inductor caches; warm = first call after torch._dynamo.reset() with the caches "
                      "filled (both include one step). 'torch.compile default' runs with allow_rnn off, as without "
                      "flashrnn_compile: Dynamo then refuses a whole frame holding an nn.LSTM/GRU/RNN ('Attempted "
                      "to wrap RNN'), so such models run eagerly and their compile time is about 0. --quick compiles with aot_eager "
                      "behind Dynamo (no C++ builds; CPU plumbing check, the numbers mean nothing).", "",
                      common.markdown_table(rows, cols), ""])

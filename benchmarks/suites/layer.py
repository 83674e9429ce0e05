"""Layer suite: one recurrent layer, x [T, B, H] -> h [T, B, H], forward and forward+backward,
every system side by side in one process.

Systems (each config gets those that apply):
    cuDNN nn.LSTM/GRU     eager, dense hidden H = NH*DH (cuDNN has no heads): the baseline of every
                          config with that H; measured once per (cell, dtype, B, T, H)
    ours <family>         flashrnn_compile.recurrent_layer: x W^T + b then the core op, forced to
                          one kernel family (the planner's plan restricted to it); a family that
                          cannot take the shape is a row with the planner's reason. Under
                          fused_block the layer is one library call each way (GEMMs overlapped with
                          the recurrence); elsewhere F.linear then flashrnn.recurrence_fwd
    torch.compile flashrnn  torch.compile(nn.LSTM/GRU, backend="flashrnn"), NH = 1 only; skipped
                          with the reason when the backend would leave the module as written
                          (Inductor would then unroll all T steps: minutes of compile)
    Inductor hand loop    torch.compile (default) of a hand-written loop (models.HandLSTM/HandGRU),
                          short T only (compile time grows with T)
    FlashRNN 1.0.8        its fused (cuda_fused) and alternating (cuda) kernels, where the config
                          asks for them (each JIT-compiles for about a minute)

Every row times the same work (input projection included), on random inputs, with
common.measure; times are also given per step (µs/step = ms * 1000 / T) and as speed-up over the
cuDNN row of the same (cell, dtype, B, T, H).
"""

from __future__ import annotations

import dataclasses
import itertools
import os
import warnings
from typing import Any, Callable, Dict, List, Optional, Sequence, Tuple

import torch
import torch.nn.functional as F

from . import common, models

CUDA_FAMILIES = ("fused_block", "fused_cluster", "fused_grid", "alternating")
INDUCTOR_MAX_T = 64  # Inductor unrolls the loop: ~1.3 s of compile per step on an H100 host
FAMILY_FLOOR = {"fused_block": "block", "fused_cluster": "cluster", "fused_grid": "grid"}


@dataclasses.dataclass(frozen=True)
class Config:
    cell: str
    dtype: str
    B: int
    T: int
    NH: int
    DH: int
    flashrnn: Tuple[str, ...] = ()  # FlashRNN 1.0.8 backends to time ("fused", "alternating")
    compiled: bool = True  # torch.compile(backend="flashrnn") on nn.LSTM/GRU (NH == 1)
    inductor: bool = False  # Inductor on the hand-written loop (T <= INDUCTOR_MAX_T)

    @property
    def H(self) -> int:
        return self.NH * self.DH

    @property
    def heads(self) -> str:
        return f"{self.NH}x{self.DH}"

    def label(self) -> str:
        return f"{self.cell} {self.dtype} B{self.B} T{self.T} {self.heads}"

    def fields(self) -> Dict[str, Any]:
        return {"cell": self.cell, "dtype": self.dtype, "B": self.B, "T": self.T, "NH": self.NH, "DH": self.DH,
                "heads": self.heads, "H": self.H}


def _headline() -> List[Config]:
    """What one ~6-minute device call can do, most important first."""
    rows = [
        Config("lstm", "bf16", 16, 1024, 12, 64, flashrnn=("fused",)),
        Config("lstm", "bf16", 16, 1024, 1, 768, flashrnn=("alternating",)),
        Config("lstm", "bf16", 16, 1024, 24, 32),
        Config("gru", "bf16", 16, 1024, 1, 768),
        Config("gru", "bf16", 16, 1024, 12, 64),
        Config("gru", "bf16", 16, 1024, 24, 32),
        Config("lstm", "fp16", 16, 1024, 12, 64),
        Config("lstm", "fp16", 16, 1024, 1, 768),
        Config("lstm", "fp32", 16, 1024, 12, 64, compiled=False),
        Config("lstm", "bf16", 16, 1024, 6, 128, compiled=False),
        Config("elman_tanh", "bf16", 16, 1024, 12, 64),
        Config("slstm", "bf16", 16, 1024, 12, 64),  # no PyTorch module: no cuDNN row
    ]
    rows += [Config("lstm", "bf16", B, 1024, 12, 64, compiled=False) for B in (1, 64, 256)]
    rows.append(Config("lstm", "bf16", 16, 16, 1, 768, compiled=False, inductor=True))
    return rows


def _full() -> List[Config]:
    """The issue's grid: cell x dtype x B x T x heads (FlashRNN fused on the multi-head shapes)."""
    out = []
    for cell, dt, B, T, (NH, DH) in itertools.product(("lstm", "gru"), ("bf16", "fp16"), (1, 16, 64, 256),
                                                      (256, 1024, 4096), ((1, 768), (12, 64), (24, 32), (1, 2048))):
        frnn = ("alternating",) if NH == 1 else ("fused", "alternating")  # fused: R must fit on chip
        out.append(Config(cell, dt, B, T, NH, DH, flashrnn=frnn))
    out += [Config(c, "bf16", 16, T, 1, 768, compiled=False, inductor=True) for c in ("lstm", "gru") for T in (16, 64)]
    return out


def _cluster() -> List[Config]:
    """Issue 8's rows: heads too large for one block (dense 768 to 2048, 2x512), bf16 against
    cuDNN in bf16 and fp16 and FlashRNN 1.0.8, B in {1, 16, 64, 256} at 1x768."""
    rows = [
        Config("lstm", "bf16", 16, 1024, 1, 768, flashrnn=("fused", "alternating"), compiled=False),
        Config("lstm", "fp16", 16, 1024, 1, 768, compiled=False),
        Config("gru", "bf16", 16, 1024, 1, 768, compiled=False),
        Config("lstm", "bf16", 16, 1024, 2, 512, compiled=False),
        Config("lstm", "bf16", 16, 1024, 1, 1024, compiled=False),
        Config("lstm", "bf16", 16, 1024, 1, 2048, compiled=False),
    ]
    rows += [Config("lstm", "bf16", B, 1024, 1, 768, compiled=False) for B in (1, 64, 256)]
    return rows


def _quick() -> List[Config]:
    """Tiny shapes that run on the CPU in seconds (plumbing check; numbers mean nothing)."""
    return [
        Config("lstm", "fp32", 2, 8, 1, 16, flashrnn=("fused",)),
        Config("lstm", "fp32", 2, 8, 2, 8),
        Config("gru", "fp32", 2, 8, 1, 16),
    ]


PRESETS: Dict[str, Callable[[], List[Config]]] = {"headline": _headline, "full": _full, "quick": _quick,
                                                  "cluster": _cluster}


# ---- inputs and callables per system -----------------------------------------------------------

def _randn(*shape, device, dtype, scale=1.0, grad=False) -> torch.Tensor:
    t = (scale * torch.randn(*shape, device=device)).to(dtype)
    return t.requires_grad_(grad)


def ours_fns(cfg: Config, plan: str, device) -> Tuple[Callable, Callable]:
    """(forward, forward_backward) of recurrent_layer (x W^T + b then the core op) under `plan`."""
    from flashrnn_compile import get_cell, recurrent_layer

    spec = get_cell(cfg.cell)
    G, S, T, B, NH, DH, H = spec.num_gates, spec.num_states, cfg.T, cfg.B, cfg.NH, cfg.DH, cfg.H
    dt = common.DTYPES[cfg.dtype]
    x = _randn(T, B, H, device=device, dtype=dt, grad=True)  # [T, B, H]
    W = _randn(NH * G * DH, H, device=device, dtype=dt, scale=H**-0.5, grad=True)  # [NH*G*DH, H]
    b_in = _randn(NH * G * DH, device=device, dtype=dt, scale=0.1, grad=True)  # [NH*G*DH]
    R = _randn(NH, G, DH, DH, device=device, dtype=dt, scale=DH**-0.5, grad=True)  # [NH, G, DH, DH]
    b = _randn(NH, G, DH, device=device, dtype=dt, scale=0.1, grad=True)  # [NH, G, DH]
    s0 = _randn(S, B, NH, DH, device=device, dtype=dt, scale=0.5)  # [S, B, NH, DH]
    if cfg.cell == "slstm":
        s0[2] = 1.0 + s0[2].abs()
    dh = torch.randn(T, B, NH, DH, device=device, dtype=dt)  # [T, B, NH, DH]
    leaves = [x, W, b_in, R, b]

    def run():
        return recurrent_layer(x, W, b_in, R, b, s0, cell=cfg.cell, plan=plan)[0]  # [T, B, NH, DH]

    return _timed_fns(run, leaves, dh)


def projection_fn(cfg: Config, device) -> Callable:
    """The input projection alone (x W^T + b, one GEMM), to read the recurrence's share."""
    from flashrnn_compile import get_cell

    G, H, dt = get_cell(cfg.cell).num_gates, cfg.H, common.DTYPES[cfg.dtype]
    x = _randn(cfg.T, cfg.B, H, device=device, dtype=dt)  # [T, B, H]
    W = _randn(G * H, H, device=device, dtype=dt, scale=H**-0.5)  # [G*H, H]
    b = _randn(G * H, device=device, dtype=dt, scale=0.1)  # [G*H]
    return lambda: F.linear(x, W, b)


def _timed_fns(run: Callable, leaves, dy: torch.Tensor) -> Tuple[Callable, Callable]:
    """(forward without grad, forward + backward to `leaves` with upstream gradient dy) of run()."""

    def forward():
        with torch.no_grad():
            return run()

    def forward_backward():
        torch.autograd.grad(run(), leaves, dy)

    return forward, forward_backward


# cells with a PyTorch module (cuDNN on CUDA): name, constructor (H -> module)
MODULES: Dict[str, Tuple[str, Callable[[int], torch.nn.Module]]] = {
    "lstm": ("nn.LSTM", lambda H: torch.nn.LSTM(H, H)),
    "gru": ("nn.GRU", lambda H: torch.nn.GRU(H, H)),
    "elman_tanh": ("nn.RNN", lambda H: torch.nn.RNN(H, H, nonlinearity="tanh")),
}


def module_fns(cfg: Config, device, wrap: Callable = lambda m: m) -> Tuple[Callable, Callable, torch.nn.Module]:
    """(forward, forward_backward, module) of the cell's PyTorch module(H, H) on x [T, B, H], through `wrap`."""
    mod = MODULES[cfg.cell][1](cfg.H).to(device, common.DTYPES[cfg.dtype])
    x = _randn(cfg.T, cfg.B, cfg.H, device=device, dtype=common.DTYPES[cfg.dtype], grad=True)  # [T, B, H]
    run_mod = wrap(mod)
    dy = torch.randn_like(x)  # [T, B, H]
    return (*_timed_fns(lambda: run_mod(x)[0], [x, *mod.parameters()], dy), mod)


def hand_fns(cfg: Config, device, wrap: Callable) -> Tuple[Callable, Callable]:
    """(forward, forward_backward) of the hand-written loop (dense H) on x [B, T, H], through `wrap`."""
    mod = models.HAND[cfg.cell](cfg.H, cfg.H).to(device, common.DTYPES[cfg.dtype])
    x = _randn(cfg.B, cfg.T, cfg.H, device=device, dtype=common.DTYPES[cfg.dtype], grad=True)  # [B, T, H]
    run_mod = wrap(mod)
    dy = torch.randn_like(x)  # [B, T, H]
    return _timed_fns(lambda: run_mod(x), [x, *mod.parameters()], dy)


# ---- the run --------------------------------------------------------------------------------

class Ctx:
    """What the rows of one layer-suite run share."""

    def __init__(self, device, budget: common.Budget, env: Dict[str, Any], quick: bool, floors: Dict[str, float],
                 skip: Tuple[str, ...] = ()):
        self.device = torch.device(device)
        self.skip = skip  # prefixes of system names not to run (--skip)
        self.budget = budget
        self.env = env
        self.quick = quick
        self.floors = floors
        self.built: set = set()  # families / FlashRNN configs already JIT-built in this process
        self.timing = dict(warmup=2 if quick else 3, min_reps=3 if quick else 10, max_reps=5 if quick else 50,
                           target_s=0.1 if quick else 0.5)


def _row(cfg: Config, system: str, ctx: Ctx, **kw) -> Dict[str, Any]:
    row = {"suite": "layer", "system": system, **cfg.fields(), "status": "ok"}
    row.update(kw)
    row.update({k: ctx.env[k] for k in ("card", "torch", "cuda", "command")})
    return row


def _time_pair(fwd: Callable, fwd_bwd: Callable, ctx: Ctx, T: int, check: Optional[Callable] = None) -> Dict[str, Any]:
    """Forward and forward+backward timings (+ µs/step); `check` validates one forward output."""
    out: Dict[str, Any] = {}
    if check is not None:
        why = check(fwd())
        if why:
            raise RuntimeError(why)
    f = common.measure(fwd, ctx.device, **ctx.timing)
    out.update(f.as_dict("fwd"))
    fb = common.measure(fwd_bwd, ctx.device, **ctx.timing)
    out.update(fb.as_dict("fwd_bwd"))
    out["fwd_us_per_step"] = f.median_ms * 1e3 / T
    out["fwd_bwd_us_per_step"] = fb.median_ms * 1e3 / T
    return out


def _finite(h: torch.Tensor) -> Optional[str]:
    return None if bool(torch.isfinite(h).all()) else "non-finite output"


def _flashrnn_warnings(caught) -> List[str]:
    return [str(w.message) for w in caught if str(w.message).startswith("flashrnn")]


def _fallback(messages: List[str]) -> Optional[str]:
    for m in messages:
        if "using the reference" in m or "; running " in m:
            return m
    return None


def run_ours(cfg: Config, family: str, ctx: Ctx) -> Dict[str, Any]:
    from flashrnn_compile import planner, runtime

    if family not in runtime.implemented_families():
        return _row(cfg, f"ours {family}", ctx, family=family, status="n/a",
                    reason=f"no {family} kernels in this build (the planner models it; not written yet)")
    if family not in runtime.offered_families():
        return _row(cfg, f"ours {family}", ctx, family=family, status="n/a",
                    reason=f"{family} is not offered to the planner here (FLASHRNN_GRID=0 withdraws it)")
    dt = common.DTYPES[cfg.dtype]
    if family == "reference":
        chosen = planner.Plan("reference", {}, "forced")
    else:
        chosen = planner.plan(cfg.cell, cfg.B, cfg.NH, cfg.DH, dt, families=(family,))
    if chosen.family != family:
        return _row(cfg, f"ours {family}", ctx, family=family, status="n/a",
                    reason=f"the planner cannot give {family} this shape: {chosen.reason}"[:400])
    plan = runtime.plan_json(chosen.family, chosen.params)
    impl = runtime.implementation(plan, ctx.device)
    if impl.family != family:
        return _row(cfg, f"ours {family}", ctx, family=family, status="n/a",
                    reason=f"{family} cannot run on {ctx.device} (falls back to {impl.family})")
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        fwd, fwd_bwd = ours_fns(cfg, plan, ctx.device)
        res = _time_pair(fwd, fwd_bwd, ctx, cfg.T, check=_finite)
    msgs = _flashrnn_warnings(caught)
    row = _row(cfg, f"ours {family}", ctx, family=family, params=chosen.params, **res)
    if _fallback(msgs):
        row.update(status="fallback", reason=_fallback(msgs)[:400])
    elif msgs:
        row["note"] = "; ".join(msgs)[:400]
    floor = ctx.floors.get(FAMILY_FLOOR.get(family, ""))
    if floor is not None:
        row["floor_us_per_step"] = floor
    ctx.built.add(family)
    return row


def run_cudnn(cfg: Config, ctx: Ctx) -> Dict[str, Any]:
    name = ("cuDNN " if ctx.device.type == "cuda" else "eager ") + MODULES[cfg.cell][0]
    fwd, fwd_bwd, _ = module_fns(cfg, ctx.device)
    row = _row(cfg, name, ctx, **_time_pair(fwd, fwd_bwd, ctx, cfg.T, check=_finite))
    row.update(heads=f"1x{cfg.H}", NH=1, DH=cfg.H, baseline=True)
    return row


def _backend_refusal(mod: torch.nn.Module, cfg: Config, ctx: Ctx) -> Optional[str]:
    """Why the flashrnn backend would leave `mod` as written on this device (None if it rewrites it)."""
    import flashrnn_compile

    x = torch.randn(cfg.T, cfg.B, cfg.H, device=ctx.device, dtype=common.DTYPES[cfg.dtype])  # [T, B, H]
    with torch.no_grad():
        expl = flashrnn_compile.explain(mod, x)
    torch._dynamo.reset()
    if expl.rewrites:
        return None
    reasons = "; ".join(r["reason"] for r in expl.refusals) or "no recurrence found"
    return f"the flashrnn backend leaves nn.{cfg.cell.upper()} as written here ({reasons})"[:500]


def run_compiled(cfg: Config, ctx: Ctx) -> Dict[str, Any]:
    import flashrnn_compile

    system = f"torch.compile flashrnn nn.{cfg.cell.upper()}"
    torch._dynamo.reset()
    compiled = {}

    def wrap(m):
        compiled["m"] = torch.compile(m, backend="flashrnn")
        return compiled["m"]

    fwd, fwd_bwd, mod = module_fns(cfg, ctx.device, wrap)
    why = _backend_refusal(mod, cfg, ctx)
    if why is not None and cfg.T > INDUCTOR_MAX_T:
        return _row(cfg, system, ctx, status="n/a", reason=why + f"; Inductor would unroll all {cfg.T} steps")
    before = flashrnn_compile.stats()["rewritten"]
    compile_fwd = common.timed_call(fwd, ctx.device)
    compile_train = common.timed_call(fwd_bwd, ctx.device)
    rewritten = flashrnn_compile.stats()["rewritten"] - before
    res = _time_pair(fwd, fwd_bwd, ctx, cfg.T, check=_finite)
    row = _row(cfg, system, ctx, compile_fwd_s=compile_fwd, compile_fwd_bwd_s=compile_train,
               rewritten=rewritten, **res)
    if why is not None:
        row["note"] = why
    torch._dynamo.reset()
    return row


def run_inductor(cfg: Config, ctx: Ctx) -> Dict[str, Any]:
    system = f"Inductor hand {cfg.cell.upper()} loop"
    if cfg.T > INDUCTOR_MAX_T:
        return _row(cfg, system, ctx, status="n/a", reason=f"T={cfg.T} > {INDUCTOR_MAX_T}: Inductor unrolls the loop")
    torch._dynamo.reset()
    fwd, fwd_bwd = hand_fns(cfg, ctx.device, lambda m: torch.compile(m))
    compile_fwd = common.timed_call(fwd, ctx.device)
    compile_train = common.timed_call(fwd_bwd, ctx.device)
    res = _time_pair(fwd, fwd_bwd, ctx, cfg.T, check=_finite)
    torch._dynamo.reset()
    return _row(cfg, system, ctx, heads=f"1x{cfg.H}", compile_fwd_s=compile_fwd, compile_fwd_bwd_s=compile_train,
                **res)


def run_flashrnn(cfg: Config, backend: str, ctx: Ctx) -> Dict[str, Any]:
    from .. import flashrnn_108

    system = f"FlashRNN 1.0.8 {backend}"
    if not flashrnn_108.available():
        return _row(cfg, system, ctx, status="n/a", reason=flashrnn_108.reason())
    why = flashrnn_108.supports(backend, cfg.cell)
    if why:
        return _row(cfg, system, ctx, status="n/a", reason=why)
    fwd, fwd_bwd = flashrnn_108.layer_fn(backend, cfg.cell, cfg.NH, cfg.DH, common.DTYPES[cfg.dtype], cfg.B,
                                         cfg.T, device=str(ctx.device))
    jit_s = common.timed_call(fwd, ctx.device)
    jit_s += common.timed_call(fwd_bwd, ctx.device)
    ctx.built.add(("flashrnn", backend, cfg.cell, cfg.NH, cfg.DH, cfg.dtype, cfg.B))
    res = _time_pair(fwd, fwd_bwd, ctx, cfg.T, check=_finite)
    return _row(cfg, system, ctx, compile_fwd_bwd_s=jit_s, note="; ".join(flashrnn_108.notes()), **res)


# ---- planning the rows ----------------------------------------------------------------------

@dataclasses.dataclass
class Job:
    cfg: Config
    system: str
    fn: Callable[[], Dict[str, Any]]
    expected_s: Callable[[], float]  # seconds the row should take, asked just before it runs (budget)


def jobs_for(cfg: Config, ctx: Ctx, baselines: set) -> List[Job]:
    """The rows of one config: cuDNN baseline (once per H), ours, compiled, FlashRNN, Inductor."""
    jobs: List[Job] = []
    base_key = (cfg.cell, cfg.dtype, cfg.B, cfg.T, cfg.H)
    gpu = ctx.device.type == "cuda"
    per_call = 2.0 if gpu else 0.5  # warm-up + two adaptive measurements of ~0.5 s
    from flashrnn_compile import runtime

    implemented = runtime.offered_families()

    def build_cost(family: str, first: float) -> Callable[[], float]:
        if family not in implemented:
            return lambda: 0.2  # an n/a row
        return lambda: per_call + (0.0 if family in ctx.built or not gpu else first)

    if cfg.cell in MODULES and base_key not in baselines:
        baselines.add(base_key)
        jobs.append(Job(cfg, "cuDNN", lambda: run_cudnn(cfg, ctx), lambda: per_call))
    families = CUDA_FAMILIES if gpu else ("reference",)
    for fam in families:
        first = {"alternating": 25.0, "fused_block": 8.0, "fused_cluster": 20.0}.get(fam, 0.0)  # JIT build
        jobs.append(Job(cfg, f"ours {fam}", lambda fam=fam: run_ours(cfg, fam, ctx), build_cost(fam, first)))
    if cfg.compiled and cfg.NH == 1 and cfg.cell in MODULES:
        jobs.append(Job(cfg, "torch.compile flashrnn", lambda: run_compiled(cfg, ctx), lambda: 30.0 if gpu else 5.0))
    for backend in cfg.flashrnn:
        jobs.append(Job(cfg, f"FlashRNN 1.0.8 {backend}", lambda b=backend: run_flashrnn(cfg, b, ctx),
                        lambda: 80.0 if gpu else 1.0))  # JIT-compiles per configuration: 43-69 s
    if cfg.inductor and cfg.cell in ("lstm", "gru"):
        jobs.append(Job(cfg, "Inductor hand loop", lambda: run_inductor(cfg, ctx), lambda: 3.5 * cfg.T + 10))
    return jobs


def listing(configs: List[Config], device="cuda") -> List[Tuple[str, str, float]]:
    """(config, system, expected seconds) of every row, in run order, without running anything
    (each family's first build counted once): what --list prints, to size --max-seconds."""
    ctx = Ctx(device, common.Budget(None), {}, quick=torch.device(device).type != "cuda", floors={})
    baselines: set = set()
    jobs = [j for cfg in configs for j in jobs_for(cfg, ctx, baselines)]
    jobs.sort(key=lambda j: 2 if j.system.startswith("Inductor") else 1 if j.system.startswith("FlashRNN") else 0)
    out = []
    for j in jobs:
        out.append((j.cfg.label(), j.system, j.expected_s()))
        if j.system.startswith("ours "):
            ctx.built.add(j.system[len("ours "):])
    return out


def _speedups(rows: List[Dict[str, Any]]) -> None:
    """speedup_* = cuDNN time / this row's time, same (cell, dtype, B, T, H)."""
    base = {(r["cell"], r["dtype"], r["B"], r["T"], r["H"]): r for r in rows if r.get("baseline") and r["status"] == "ok"}
    for r in rows:
        b = base.get((r["cell"], r["dtype"], r["B"], r["T"], r["H"]))
        if b is None or r["status"] != "ok" or r.get("baseline"):
            continue
        for k in ("fwd", "fwd_bwd"):
            if r.get(f"{k}_ms"):
                r[f"speedup_{k}_vs_cudnn"] = b[f"{k}_ms"] / r[f"{k}_ms"]


def run(preset: str, device, budget: common.Budget, env: Dict[str, Any], quick: bool = False,
        floors: Optional[Dict[str, float]] = None, skip: Sequence[str] = ()) -> List[Dict[str, Any]]:
    """All rows of `preset` (headline / full / quick), skipping what the budget cannot fit and the
    systems whose names start with one of `skip` (e.g. "torch.compile", "FlashRNN")."""
    if preset not in PRESETS:
        raise ValueError(f"preset: expected one of {sorted(PRESETS)}, got {preset!r}")
    return run_configs(PRESETS[preset](), device, budget, env, quick, floors, skip)


def run_configs(configs: List[Config], device, budget: common.Budget, env: Dict[str, Any], quick: bool = False,
                floors: Optional[Dict[str, float]] = None, skip: Sequence[str] = ()) -> List[Dict[str, Any]]:
    """The rows of `configs`, in order, one progress line each; speed-ups filled in last."""
    ctx = Ctx(device, budget, env, quick, floors or {}, tuple(skip))
    baselines: set = set()
    jobs = [j for cfg in configs for j in jobs_for(cfg, ctx, baselines)]
    # the cheap rows of every config first; FlashRNN (a JIT build per config) and Inductor (an
    # unrolled compile) after, so a tight --max-seconds drops those rather than whole configs
    jobs.sort(key=lambda j: 2 if j.system.startswith("Inductor") else 1 if j.system.startswith("FlashRNN") else 0)
    rows = []
    for i, job in enumerate(jobs, 1):
        rows.append(_run_job(job, ctx))
        r = rows[-1]
        shown = (f"fwd {common.fmt(r.get('fwd_ms'))} ms, fwd+bwd {common.fmt(r.get('fwd_bwd_ms'))} ms"
                 if r["status"] == "ok" else f"{r['status']}: {str(r.get('reason'))[:110]}")
        common.progress(i, len(jobs), budget, f"{job.cfg.label():<28} {r['system']:<34} {shown}")
    _speedups(rows)
    return rows


def _run_job(job: Job, ctx: Ctx) -> Dict[str, Any]:
    if ctx.skip and job.system.startswith(ctx.skip):
        return _row(job.cfg, job.system, ctx, status="skipped", reason=f"--skip {','.join(ctx.skip)}")
    skip = ctx.budget.refuse(job.expected_s())
    if skip:
        return _row(job.cfg, job.system, ctx, status="skipped", reason=skip)
    try:
        return job.fn()
    except Exception as e:  # one failing row is reported, not fatal to the run
        if ctx.device.type == "cuda":
            torch.cuda.empty_cache()
        return _row(job.cfg, job.system, ctx, status="error", reason=f"{type(e).__name__}: {e}"[:500])
    finally:
        torch._dynamo.reset()


# ---- report ---------------------------------------------------------------------------------

COLUMNS = [
    ("system", "system", 0), ("cell", "cell", 0), ("dtype", "dtype", 0), ("B", "B", 0), ("T", "T", 0),
    ("NH×DH", "heads", 0), ("fwd ms", "fwd_ms", 3), ("fwd µs/step", "fwd_us_per_step", 2),
    ("fwd+bwd ms", "fwd_bwd_ms", 3), ("fwd+bwd µs/step", "fwd_bwd_us_per_step", 2),
    ("× cuDNN fwd", "speedup_fwd_vs_cudnn", 2), ("× cuDNN fwd+bwd", "speedup_fwd_bwd_vs_cudnn", 2),
    ("floor µs/step", "floor_us_per_step", 3),
    ("compile s", lambda r: (r.get("compile_fwd_s") or 0) + (r.get("compile_fwd_bwd_s") or 0) or None, 1),
    ("status", lambda r: r["status"] if r["status"] == "ok" else f"{r['status']}: {r.get('reason', '')}", 0),
]


def markdown(rows: List[Dict[str, Any]], env: Dict[str, Any], floors: Dict[str, float]) -> str:
    ok = [r for r in rows if r["status"] == "ok"]
    other = [r for r in rows if r["status"] != "ok"]
    parts = [f"# Layer suite on {env['card']}", "", common.env_header(env), "",
             "One layer x [T, B, H] -> h, input projection included in every row; median of CUDA-event "
             "timings (CPU: perf_counter) after warm-up, random inputs; × cuDNN = cuDNN's time / this "
             "row's (cuDNN runs the dense H = NH·DH layer). Quartiles, reps and plans are in layer.json.", ""]
    if floors:
        parts += ["Synchronisation floors on this card (µs/step, floor suite): " +
                  ", ".join(f"{k} {v:.3f}" for k, v in sorted(floors.items())), ""]
    if any(r["cell"] == "lstm" and r["dtype"] == "bf16" and r["B"] == 16 and r["T"] == 1024 for r in ok):
        parts += ["## Headline: LSTM, B=16, T=1024, H=768", "", headline_table(rows), "", "## All rows", ""]
    parts += [common.markdown_table(ok, COLUMNS), ""]
    if other:
        parts += ["Rows without a time:", "", common.markdown_table(
            other, [("system", "system", 0), ("config", lambda r: f"{r['cell']} {r['dtype']} B{r['B']} T{r['T']} {r['heads']}", 0),
                    ("status", "status", 0), ("reason", "reason", 0)]), ""]
    return "\n".join(parts)


def headline_table(rows: List[Dict[str, Any]]) -> str:
    """The README's table: LSTM B16 T1024 H=768 (bf16, then fp16), every system with a time."""
    pick = [r for r in rows if r["status"] == "ok" and r["cell"] == "lstm" and r["dtype"] in ("bf16", "fp16")
            and r["B"] == 16 and r["T"] == 1024 and r["H"] == 768]
    pick.sort(key=lambda r: r["dtype"] != "bf16")
    cols = [("system", "system", 0), ("dtype", "dtype", 0), ("NH×DH", "heads", 0), ("fwd ms", "fwd_ms", 3), ("fwd+bwd ms", "fwd_bwd_ms", 3),
            ("fwd µs/step", "fwd_us_per_step", 2), ("× cuDNN fwd", "speedup_fwd_vs_cudnn", 2),
            ("× cuDNN fwd+bwd", "speedup_fwd_bwd_vs_cudnn", 2)]
    return common.markdown_table(pick, cols)


# ---- plots ----------------------------------------------------------------------------------

def _series(rows, fixed: Dict[str, Any], xkey: str) -> Dict[str, List[Tuple[Any, float, float]]]:
    """system -> [(x, fwd µs/step, fwd+bwd µs/step)] over the ok rows matching `fixed`."""
    out: Dict[str, List[Tuple[Any, float, float]]] = {}
    for r in rows:
        if r["status"] != "ok" or any(r.get(k) != v for k, v in fixed.items()):
            continue
        out.setdefault(r["system"], []).append((r[xkey], r["fwd_us_per_step"], r["fwd_bwd_us_per_step"]))
    return {k: sorted(v, key=lambda p: p[0]) for k, v in out.items()}


def _line_plot(path: str, title: str, series, xlabel: str, logx: bool, xticks=None) -> bool:
    import matplotlib.pyplot as plt

    if not series:
        return False
    fig, axes = plt.subplots(1, 2, figsize=(12, 4.5))
    for ax, idx, name in ((axes[0], 1, "forward"), (axes[1], 2, "forward+backward")):
        for system, pts in sorted(series.items()):
            ax.plot([p[0] for p in pts], [p[idx] for p in pts], marker="o", label=system)
        ax.set_title(f"{title}: {name}")
        ax.set_xlabel(xlabel)
        ax.set_ylabel("µs per step (median)")
        ax.set_yscale("log")
        if logx:
            ax.set_xscale("log", base=2)
        if xticks:
            ax.set_xticks(*xticks)
        ax.grid(True, which="both", alpha=0.3)
    axes[1].legend(fontsize=7, loc="best")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return True


def plots(rows: List[Dict[str, Any]], folder: str) -> List[str]:
    """time vs head dim, time vs batch, speed-up over cuDNN; the files written."""
    import matplotlib.pyplot as plt

    written = []
    fixed = {"cell": "lstm", "dtype": "bf16", "B": 16, "T": 1024}
    # time vs head dim: every heads split of H = 768 (cuDNN is the dense 1x768 point)
    by_dh = _series([r for r in rows if r.get("H") == 768], fixed, "DH")
    dhs = sorted({p[0] for pts in by_dh.values() for p in pts})
    path = os.path.join(folder, "layer_time_vs_head_dim.png")
    if _line_plot(path, "LSTM bf16 B16 T1024, H=768", by_dh, "head dim DH (NH = 768 / DH)", True,
                  (dhs, [str(d) for d in dhs]) if dhs else None):
        written.append(path)
    by_b = _series([r for r in rows if r.get("H") == 768 and (r.get("DH") == 64 or r.get("baseline"))],
                   {"cell": "lstm", "dtype": "bf16", "T": 1024}, "B")
    by_b = {k: v for k, v in by_b.items() if len(v) > 1}
    path = os.path.join(folder, "layer_time_vs_batch.png")
    if _line_plot(path, "LSTM bf16 T1024, 12x64 (cuDNN: dense 768)", by_b, "batch B", True):
        written.append(path)
    sp = sorted((r for r in rows if r.get("speedup_fwd_vs_cudnn")),
                key=lambda r: (r["cell"], r["dtype"], r["T"], r["B"], r["DH"], r["system"]))
    if sp:
        labels = [f"{r['system']}\n{r['cell']} {r['dtype']} B{r['B']} T{r['T']} {r['heads']}" for r in sp]
        fig, ax = plt.subplots(figsize=(max(8, 0.45 * len(sp) + 2), 5))
        xs = range(len(sp))
        ax.bar([x - 0.2 for x in xs], [r["speedup_fwd_vs_cudnn"] for r in sp], 0.4, label="forward")
        ax.bar([x + 0.2 for x in xs], [r.get("speedup_fwd_bwd_vs_cudnn") or 0 for r in sp], 0.4, label="forward+backward")
        ax.axhline(1.0, color="k", lw=0.8)
        ax.set_yscale("log")
        ax.set_ylabel("speed-up over cuDNN (same cell, dtype, B, T, H)")
        ax.set_xticks(list(xs))
        ax.set_xticklabels(labels, rotation=90, fontsize=6)
        ax.legend()
        fig.tight_layout()
        path = os.path.join(folder, "layer_speedup_vs_cudnn.png")
        fig.savefig(path, dpi=110)
        plt.close(fig)
        written.append(path)
    return written

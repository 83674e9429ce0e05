"""The ConstrINT planner: which kernel family runs a recurrence, with which template parameters.

    plan("lstm", batch=16, heads=12, head_dim=64, dtype=torch.bfloat16, gpu="h100-sxm")
    -> Plan(family="fused_block", params={"WARPS": 16, "BATCH_TILE": 8, "R_REG_TILES": 4},
            reason="fused_block: ... ")

Each family's limits are a constraint model in csrc/ next to its kernel (csrc/fused/*.cint,
csrc/alternating/alternating.cint; language in flashrnn_compile.constrint.lang). The model's
variables are the kernel's template parameters. The planner binds the spec and the GPU as params,
solves every family (propagation + branch and bound), re-checks each solution with the
independent checker, and takes the family with the lowest synchronisation floor per step
(`STEP_NS`; ties go to the earlier family of `FAMILIES`). The reason says why, and for every
family ranked before the chosen one, which of its constraints cannot hold together.

Plans are cached in memory and on disk (FLASHRNN_CACHE_DIR, else ~/.cache/flashrnn_compile), as
JSON keyed by spec + hardware + planner version + model texts, written atomically; a file that
does not parse, belongs to another key, or whose params fail the checker is ignored and rewritten.
"""

from __future__ import annotations

import dataclasses
import functools
import hashlib
import json
import os
import tempfile
import warnings
from importlib import resources
from typing import Any, Callable, Dict, List, Optional, Sequence, Tuple

from . import constrint, hardware, runtime
from .cells import get_cell

PLANNER_VERSION = "constrint-1"
FAMILIES = ("fused_block", "fused_cluster", "fused_grid", "alternating")  # fastest first
MODEL_FILES = {
    "fused_block": "fused/fused_block.cint",
    "fused_cluster": "fused/fused_cluster.cint",
    "fused_grid": "fused/fused_grid.cint",
    "alternating": "alternating/alternating.cint",
}


@dataclasses.dataclass(frozen=True)
class DtypeModel:
    bytes: int
    mma_k: int  # K side of the MMA tile: 16 for bf16/fp16 (m16n8k16), 8 for tf32 (m16n8k8)
    mma_passes: int  # MMAs per tile: 3 for float32 (3xTF32 split keeps float32 accuracy)
    supported: int  # 1 if the CUDA kernels take this dtype


DTYPES = {
    "bfloat16": DtypeModel(2, 16, 1, 1),
    "float16": DtypeModel(2, 16, 1, 1),
    "float32": DtypeModel(4, 8, 3, 1),
    "float64": DtypeModel(8, 8, 1, 0),
}


@dataclasses.dataclass(frozen=True)
class Plan:
    family: str
    params: Dict[str, Any]
    reason: str
    details: Dict[str, Any] = dataclasses.field(default_factory=dict, compare=False)

    def op_arg(self) -> str:
        """The JSON string the core op carries."""
        return runtime.plan_json(self.family, self.params)

    def as_dict(self) -> Dict[str, Any]:
        return {"family": self.family, "params": dict(self.params), "reason": self.reason}


# ---- models ------------------------------------------------------------------------------------


def _read_model_file(path: str) -> str:
    return resources.files("flashrnn_compile.csrc").joinpath(path).read_text()


@functools.lru_cache(maxsize=None)
def kernel_model(family: str) -> constrint.Model:
    """The parsed constraint model of `family` (from csrc/)."""
    if family not in MODEL_FILES:
        raise ValueError(f"family: expected one of {FAMILIES}, got {family!r}")
    path = MODEL_FILES[family]
    return constrint.parse(_read_model_file(path), path, loader=_read_model_file)


@functools.lru_cache(maxsize=1)
def _models_digest() -> str:
    h = hashlib.sha256(PLANNER_VERSION.encode())
    for family in FAMILIES:
        for path in sorted({MODEL_FILES[family], "fused/fused_common.cint"}):
            h.update(path.encode() + b"\0" + _read_model_file(path).encode() + b"\0")
    return h.hexdigest()


def model_params(family: str, spec: Dict[str, Any], gpu: hardware.GPU) -> Dict[str, int]:
    """The params of `family`'s model for a spec and a GPU (only those the model declares)."""
    cell = get_cell(spec["cell"])
    dt = DTYPES[spec["dtype"]]
    everything = {
        "B": spec["batch"], "NH": spec["heads"], "DH": spec["head_dim"],
        "G": cell.num_gates, "S": cell.num_states, "JUMPS": int(cell.gradient_jumps),
        "DTYPE_BYTES": dt.bytes, "MMA_K": dt.mma_k, "MMA_PASSES": dt.mma_passes, "DTYPE_OK": dt.supported,
        "SMS": gpu.sm_count, "REGS_PER_SM": gpu.regs_per_sm, "REGS_PER_BLOCK": gpu.regs_per_block,
        "SMEM_PER_SM": gpu.smem_per_sm, "SMEM_PER_BLOCK": gpu.smem_per_block_optin,
        "MAX_THREADS_BLOCK": gpu.max_threads_per_block, "MAX_THREADS_SM": gpu.max_threads_per_sm,
        "MAX_BLOCKS_SM": gpu.max_blocks_per_sm, "MAX_CLUSTER": gpu.max_cluster_size,
        "SMS_PER_GPC": gpu.sms_per_gpc,
    }
    return {p: everything[p] for p in kernel_model(family).params}


@dataclasses.dataclass
class FamilyResult:
    family: str
    values: Optional[Dict[str, int]]  # the template parameters, None when there is no plan
    objective: Optional[Tuple[int, ...]]
    report: Dict[str, int]
    below: Optional[int]  # solved for STEP_NS < below (None: unbounded)
    problem: constrint.Problem
    gave_up: str = ""  # the search limit was reached before any plan

    def why_not(self) -> List[str]:
        """When infeasible (unbounded): the constraints that cannot hold together, in words."""
        return constrint.explain(self.problem)


def solve_family(family: str, spec: Dict[str, Any], gpu: hardware.GPU, *, below: Optional[int] = None) -> FamilyResult:
    """The best plan of one family (or none), re-verified by the independent checker."""
    model = kernel_model(family)
    params = model_params(family, spec, gpu)
    problem = constrint.instantiate(model, params)
    try:
        result = constrint.solve(problem, below=below)
    except constrint.NodeLimit as e:  # no plan found within the search limit: treated as none
        return FamilyResult(family, None, None, {}, below, problem, gave_up=str(e))
    if result.values is None:
        return FamilyResult(family, None, None, {}, below, problem)
    broken = constrint.violations(model, params, result.values)
    if broken:  # the solver and the checker disagree: a bug, never a plan
        raise RuntimeError(f"constrint: {family} solution {result.values} fails the checker: {broken}")
    x = [result.values[n] for n in problem.names]
    report = {n: e.value(x) for n, e in problem.reports.items()}
    return FamilyResult(family, result.values, result.objective, report, below, problem)


# ---- arguments ---------------------------------------------------------------------------------


def _dtype_name(dtype) -> str:
    name = str(dtype).replace("torch.", "") if not isinstance(dtype, str) else dtype
    name = {"half": "float16", "float": "float32", "double": "float64", "bf16": "bfloat16"}.get(name, name)
    if name not in DTYPES:
        raise ValueError(f"dtype: expected a torch dtype or one of {sorted(DTYPES)}, got {dtype!r}")
    return name


def _positive(name: str, v) -> int:
    if isinstance(v, bool) or not isinstance(v, int) or v < 1:
        raise ValueError(f"{name}: expected a positive int, got {v!r}")
    return v


def _families(families) -> Optional[Tuple[str, ...]]:
    if families is None:
        return None
    if isinstance(families, str):
        families = (families,)
    fams = tuple(families)
    bad = [f for f in fams if f not in runtime.FAMILIES]
    if not fams or bad:
        raise ValueError(f"families: expected a non-empty sequence of {runtime.FAMILIES}, got {families!r}")
    return fams


# ---- the choice ----------------------------------------------------------------------------------


def _fused(split: Callable[[Dict[str, int]], str]) -> Callable[[FamilyResult], str]:
    def describe(r: FamilyResult) -> str:
        rep = r.report
        in_regs = rep["R_BYTES"] - rep["R_SMEM"]
        return (f"{r.family}: {split(r.values)}; sync floor {rep['SYNC_NS']} ns/step x {rep['WAVES']} wave(s); "
                f"{rep['BLOCKS']} blocks of {rep['THREADS']} threads, {rep['REGS']} registers/thread, "
                f"{rep['SMEM']} B shared memory; {in_regs} of {rep['R_BYTES']} B of R per block in registers")
    return describe


# lets of a family's model that are template parameters too (reported, added to the plan's params):
# fused_cluster's backward keeps as many R tiles in registers as its register formula leaves room for
PLAN_LETS: Dict[str, Tuple[str, ...]] = {"fused_cluster": ("BWD_R_REG_TILES",)}


def _lets(family: str, fam_params: Dict[str, int], values: Dict[str, int]) -> Dict[str, int]:
    """The PLAN_LETS of a family's solution `values`, evaluated by its model."""
    names = PLAN_LETS.get(family, ())
    if not names:
        return {}
    problem = constrint.instantiate(kernel_model(family), fam_params)
    x = [values[n] for n in problem.names]
    return {n: problem.reports[n].value(x) for n in names}


# one sentence per family about its solution (values: the template parameters; report: the lets)
DESCRIBE: Dict[str, Callable[[FamilyResult], str]] = {
    "fused_block": _fused(lambda v: "R of each head in one block"),
    "fused_cluster": _fused(lambda v: f"R of each head split over a cluster of {v['CLUSTER_SIZE']} blocks"),
    "fused_grid": _fused(lambda v: f"R of each head split over {v['GRID_SPLIT']} blocks of a cooperative grid"),
    "alternating": lambda r: (
        (
            "alternating: one step-kernel launch per step (R h and the cell in one kernel)"
            if r.values.get("STEP_KERNEL", 1)
            else f"alternating: a GEMM and a pointwise launch per step; pointwise {r.values['PW_THREADS']} "
            f"threads x {r.values['VEC']}-wide"
        )
        + f" (floor {r.report['STEP_NS']} ns/step)"
    ),
}


def _solve_in_order(spec, gpu, fams: Sequence[str]) -> Dict[str, FamilyResult]:
    """Solve `fams` in FAMILIES order; each only has to beat the best found before it."""
    results: Dict[str, FamilyResult] = {}
    best: Optional[int] = None
    for f in FAMILIES:
        if f in fams:
            r = results[f] = solve_family(f, spec, gpu, below=best)
            if r.values is not None:
                best = r.report["STEP_NS"]
    return results


def _best(results: Dict[str, FamilyResult]) -> Optional[FamilyResult]:
    feasible = [r for r in results.values() if r.values is not None]
    return min(feasible, key=lambda r: (r.report["STEP_NS"], FAMILIES.index(r.family))) if feasible else None


def _others(results: Dict[str, FamilyResult], pick: Optional[FamilyResult]) -> List[str]:
    """Why each solved family other than the pick is not the pick (same explanations grouped)."""
    groups: Dict[str, List[str]] = {}
    for f in FAMILIES:
        r = results.get(f)
        if r is None or r is pick:
            continue
        if r.values is not None:
            text = f"costs more ({r.report['STEP_NS']} ns/step)"
        elif r.gave_up:
            text = f"not planned ({r.gave_up})"
        elif r.below is not None:
            text = f"cannot beat {r.below} ns/step"
        else:
            why = r.why_not()
            text = ("impossible, since this cannot hold: " if len(why) == 1 else
                    "impossible, since these cannot hold together: ") + "; ".join(why)
        groups.setdefault(text, []).append(f)
    return [f"{' and '.join(fs)}: {text}" for text, fs in groups.items()]


def choose(spec: Dict[str, Any], gpu: hardware.GPU, families: Optional[Tuple[str, ...]]) -> Plan:
    """Solve the families and pick one (no caching)."""
    if families is not None and "reference" in families and len(families) == 1:
        return Plan("reference", {}, "the only family allowed is 'reference' (families = ('reference',))")
    wanted = FAMILIES if families is None else tuple(f for f in FAMILIES if f in families)
    results = _solve_in_order(spec, gpu, wanted)
    pick = _best(results)
    notes: List[str] = []
    if families is not None:
        if pick is None and "reference" in families:
            return Plan("reference", {}, "; ".join(["the requested CUDA families are impossible"] + _others(results, None)))
        if pick is None:
            forced = _others(results, None)
            results.update(_solve_in_order(spec, gpu, [f for f in FAMILIES if f not in wanted]))
            pick = _best(results)
            notes.append(f"none of the requested families {list(families)} is feasible ({'; '.join(forced)})")
            results = {f: r for f, r in results.items() if f not in wanted}
        else:
            notes.append(f"restricted to {list(families)}")
    notes += _others(results, pick)
    details = {f: ({"params": r.values, "objective": list(r.objective), "report": r.report}
                   if r.values is not None else {"below": r.below}) for f, r in results.items()}
    if pick is None:
        return Plan("reference", {}, "no CUDA kernel family is feasible: " + "; ".join(notes), details)
    params = {**pick.values, **{n: pick.report[n] for n in PLAN_LETS.get(pick.family, ())}}
    return Plan(pick.family, params, "; ".join([DESCRIBE[pick.family](pick)] + notes), details)


# ---- cache ---------------------------------------------------------------------------------------

_MEMORY: Dict[str, Plan] = {}


def cache_dir() -> str:
    return os.environ.get("FLASHRNN_CACHE_DIR") or os.path.join(os.path.expanduser("~"), ".cache", "flashrnn_compile")


def _cache_key(spec, gpu: hardware.GPU, families) -> Tuple[Dict[str, Any], str]:
    key = {"planner": PLANNER_VERSION, "models": _models_digest(), "spec": spec, "gpu": gpu.key(),
           "families": None if families is None else list(families)}
    return key, hashlib.sha256(json.dumps(key, sort_keys=True).encode()).hexdigest()


def _load(path: str, key: Dict[str, Any]) -> Optional[Plan]:
    """The cached plan at `path`, or None when missing, corrupt, foreign or failing the checker."""
    try:
        with open(path, encoding="utf-8") as f:
            obj = json.load(f)
        if not isinstance(obj, dict) or obj.get("key") != key:
            return None
        p = obj["plan"]
        family, params, reason = p["family"], p["params"], p["reason"]
        if family not in runtime.FAMILIES or not isinstance(params, dict) or not isinstance(reason, str):
            return None
        if family in MODEL_FILES:
            fam_params = model_params(family, key["spec"], _gpu_from_key(key["gpu"]))
            lets = PLAN_LETS.get(family, ())
            values = {k: v for k, v in params.items() if k not in lets}
            if constrint.violations(kernel_model(family), fam_params, values):
                return None
            if {n: params.get(n) for n in lets} != _lets(family, fam_params, values):
                return None
        elif params:
            return None
        details = obj.get("details")
        return Plan(family, params, reason, details if isinstance(details, dict) else {})
    except (OSError, ValueError, KeyError, TypeError):
        return None


def _gpu_from_key(d: Dict[str, Any]) -> hardware.GPU:
    return hardware.GPU(**{**d, "capability": tuple(d["capability"])})


def _store(path: str, key: Dict[str, Any], plan_: Plan) -> None:
    try:
        os.makedirs(os.path.dirname(path), exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=os.path.dirname(path), prefix=".plan-", suffix=".tmp")
        try:
            with os.fdopen(fd, "w", encoding="utf-8") as f:
                json.dump({"key": key, "plan": plan_.as_dict(), "details": plan_.details}, f, sort_keys=True)
            os.replace(tmp, path)
        except BaseException:
            os.unlink(tmp)
            raise
    except OSError as e:
        warnings.warn(f"flashrnn: could not write the plan cache {path}: {e}", RuntimeWarning, stacklevel=3)


def clear_memory_cache() -> None:
    _MEMORY.clear()


def plan(cell, batch, heads, head_dim, dtype, gpu=None, *, families: Optional[Sequence[str]] = None) -> Plan:
    """The Plan for one recurrence: kernel family, template parameters, and why.

    gpu: None (the current CUDA device; a reference plan without CUDA), a device index, a preset
    name (hardware.PRESETS) or a hardware.GPU. families: restrict the choice (when none of them
    is feasible, the best feasible family outside them, with the reason).
    """
    get_cell(cell)
    spec = {"cell": cell, "batch": _positive("batch", batch), "heads": _positive("heads", heads),
            "head_dim": _positive("head_dim", head_dim), "dtype": _dtype_name(dtype)}
    fams = _families(families)
    hw = hardware.resolve(gpu)
    if hw is None:
        return Plan("reference", {}, "no CUDA device (torch.cuda.is_available() is False): the PyTorch reference")
    key, digest = _cache_key(spec, hw, fams)
    if digest in _MEMORY:
        return _MEMORY[digest]
    path = os.path.join(cache_dir(), "plans", digest + ".json")
    cached = _load(path, key)
    if cached is None:
        cached = choose(spec, hw, fams)
        _store(path, key, cached)
    _MEMORY[digest] = cached
    return cached


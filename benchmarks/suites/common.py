"""What every suite shares: the timer, the environment a row records, the time budget, the
results folder, and the JSON / markdown writers.

Timing follows the device method: warm-up calls first (module load, JIT, handle creation stay
out), then many timed calls, the median reported with the quartiles beside it. On CUDA each call
is bracketed by CUDA events on the current stream; on the CPU by `time.perf_counter`. The number
of timed calls adapts to the cost of one call (at least `min_reps`, at most `max_reps`, about
`target_s` seconds in all).
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import platform
import re
import shlex
import statistics
import subprocess
import sys
import time
from typing import Any, Callable, Dict, Iterable, List, Optional, Sequence

import torch

RESULTS_ROOT = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "results")
DTYPES = {"bf16": torch.bfloat16, "fp16": torch.float16, "fp32": torch.float32}


# ---- timing ----------------------------------------------------------------------------------

@dataclasses.dataclass
class Timing:
    """Median and quartiles of `reps` timed calls, milliseconds."""

    median_ms: float
    q1_ms: float
    q3_ms: float
    reps: int

    def as_dict(self, prefix: str) -> Dict[str, Any]:
        return {f"{prefix}_ms": self.median_ms, f"{prefix}_q1_ms": self.q1_ms,
                f"{prefix}_q3_ms": self.q3_ms, f"{prefix}_reps": self.reps}


def _one_call_ms(fn: Callable[[], Any], device: torch.device) -> float:
    if device.type == "cuda":
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        fn()
        end.record()
        end.synchronize()
        return start.elapsed_time(end)
    t0 = time.perf_counter()
    fn()
    return (time.perf_counter() - t0) * 1e3


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def measure(fn: Callable[[], Any], device, *, warmup: int = 3, min_reps: int = 5, max_reps: int = 50,
            target_s: float = 1.0) -> Timing:
    """Time `fn` on `device`: `warmup` untimed calls, then between `min_reps` and `max_reps`
    timed calls (about `target_s` seconds); the median and quartiles in milliseconds."""
    device = torch.device(device)
    if warmup < 1 or min_reps < 1 or max_reps < min_reps:
        raise ValueError(f"measure: expected warmup >= 1 and 1 <= min_reps <= max_reps, got "
                         f"warmup={warmup}, min_reps={min_reps}, max_reps={max_reps}")
    for _ in range(warmup):
        fn()
    _sync(device)
    first = _one_call_ms(fn, device)
    reps = int(min(max_reps, max(min_reps, target_s * 1e3 / max(first, 1e-3))))
    times = [first] + [_one_call_ms(fn, device) for _ in range(reps - 1)]
    q = statistics.quantiles(times, n=4) if len(times) >= 2 else [times[0]] * 3
    return Timing(statistics.median(times), q[0], q[2], len(times))


def timed_call(fn: Callable[[], Any], device) -> float:
    """Seconds of one call of `fn` (synchronised): a first call, i.e. compile time plus one run."""
    device = torch.device(device)
    _sync(device)
    t0 = time.perf_counter()
    fn()
    _sync(device)
    return time.perf_counter() - t0


# ---- environment -----------------------------------------------------------------------------

def card_name(device: torch.device) -> str:
    """The device's name as the results folder spells it: 'NVIDIA H100 80GB HBM3' ->
    'H100_80GB_HBM3'; 'cpu' for the CPU."""
    device = torch.device(device)
    if device.type != "cuda":
        return "cpu"
    return sanitise(torch.cuda.get_device_name(device))


def sanitise(name: str) -> str:
    name = re.sub(r"^NVIDIA\s+", "", name.strip())
    return re.sub(r"[^A-Za-z0-9]+", "_", name).strip("_") or "unknown"


def _git_commit() -> Optional[str]:
    """$BENCH_COMMIT where set (a snapshot run inside another checkout, whose .git is not its own:
    benchmarks/device_call.sh sets it), else the checkout's commit."""
    root = os.path.dirname(os.path.dirname(RESULTS_ROOT))
    try:
        out = subprocess.run(["git", "-C", root, "rev-parse", "--short", "HEAD"], capture_output=True, text=True,
                             timeout=10)
        commit = out.stdout.strip() if out.returncode == 0 else ""
    except (OSError, subprocess.SubprocessError):
        commit = ""
    return os.environ.get("BENCH_COMMIT") or commit or None


def environment(device, argv: Optional[Sequence[str]] = None) -> Dict[str, Any]:
    """Card, driver, torch / CUDA / cuDNN versions, the command line, the commit, the date."""
    device = torch.device(device)
    env: Dict[str, Any] = {
        "card": torch.cuda.get_device_name(device) if device.type == "cuda" else f"CPU ({platform.processor() or platform.machine()})",
        "card_dir": card_name(device),
        "device": str(device),
        "torch": torch.__version__,
        "cuda": torch.version.cuda,
        "cudnn": torch.backends.cudnn.version() if device.type == "cuda" else None,
        "python": platform.python_version(),
        "command": "python -m benchmarks.run " + " ".join(shlex.quote(a) for a in (argv if argv is not None else sys.argv[1:])),
        "commit": _git_commit(),
        "date": time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime()),
        "cpu_threads": torch.get_num_threads(),
    }
    if device.type == "cuda":
        p = torch.cuda.get_device_properties(device)
        env["capability"] = f"{p.major}.{p.minor}"
        env["sms"] = p.multi_processor_count
    return env


# ---- budget ----------------------------------------------------------------------------------

class Budget:
    """Wall-clock budget of a suite: a row whose expected cost does not fit what is left is skipped
    (the row says so), so one device call always ends with its files written."""

    def __init__(self, max_seconds: Optional[float]):
        if max_seconds is not None and max_seconds <= 0:
            raise ValueError(f"max_seconds: expected a positive number, got {max_seconds}")
        self.max_seconds = max_seconds
        self.start = time.perf_counter()

    def elapsed(self) -> float:
        return time.perf_counter() - self.start

    def refuse(self, expected_s: float) -> Optional[str]:
        """None if a row expected to take `expected_s` seconds fits, else the reason it is skipped."""
        if self.max_seconds is None:
            return None
        left = self.max_seconds - self.elapsed()
        if expected_s > left:
            return (f"skipped: --max-seconds {self.max_seconds:g} (elapsed {self.elapsed():.0f} s, "
                    f"this row needs about {expected_s:.0f} s)")
        return None


def progress(i: int, n: int, budget: Budget, text: str) -> None:
    """One progress line per row (no dependency: print, flushed)."""
    print(f"[{i:>3}/{n}] {budget.elapsed():6.1f}s  {text}", flush=True)


# ---- output ----------------------------------------------------------------------------------

def results_dir(out: Optional[str], device) -> str:
    """<out or benchmarks/results>/<card>/, created."""
    path = os.path.join(out or RESULTS_ROOT, card_name(device))
    os.makedirs(path, exist_ok=True)
    return path


def fmt(v: Any, digits: int = 3) -> str:
    if v is None:
        return "-"
    if isinstance(v, float):
        if v != v:  # NaN
            return "nan"
        return f"{v:.{digits}f}" if abs(v) < 1e4 else f"{v:.0f}"
    return str(v)


def markdown_table(rows: Iterable[Dict[str, Any]], columns: Sequence[tuple]) -> str:
    """A markdown table; columns are (header, key or callable(row), digits)."""
    lines = ["| " + " | ".join(c[0] for c in columns) + " |", "|" + "|".join("---" for _ in columns) + "|"]
    for r in rows:
        cells = []
        for header, key, digits in columns:
            v = key(r) if callable(key) else r.get(key)
            cells.append(fmt(v, digits).replace("|", "/"))
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def text_table(rows: Iterable[Dict[str, Any]], columns: Sequence[tuple]) -> str:
    """A fixed-width text table, one space between columns; columns are (header, key or
    callable(row), width, digits): width < 0 left-aligns the column in -width characters, width > 0
    right-aligns it; values through `fmt` (None: "-")."""
    def cell(v: Any, width: int) -> str:
        return f"{v:<{-width}}" if width < 0 else f"{v:>{width}}"

    lines = [" ".join(cell(header, width) for header, _, width, _ in columns)]
    for r in rows:
        lines.append(" ".join(cell(fmt(key(r) if callable(key) else r.get(key), digits), width)
                              for _, key, width, digits in columns))
    return "\n".join(lines)


def bench_parser() -> argparse.ArgumentParser:
    """The arguments every benchmarks/bench_*.py takes: --out (the JSON file) and --reps (timed
    calls per median, default 10)."""
    p = argparse.ArgumentParser()
    p.add_argument("--out", default=None)
    p.add_argument("--reps", type=int, default=10)
    return p


def bench_report(rows: List[Dict[str, Any]], out: Optional[str], reps: int, columns: Sequence[tuple]) -> Dict[str, Any]:
    """The end of a benchmarks/bench_*.py run: {device, torch, cuda, rows} written to `out` (JSON,
    when given), then the rows as a `text_table` under a line naming the card and the repetitions."""
    result = {"device": torch.cuda.get_device_name(), "torch": torch.__version__, "cuda": torch.version.cuda,
              "rows": rows}
    if out:
        with open(out, "w") as f:
            json.dump(result, f, indent=1)
    print(f"\n{result['device']}, torch {result['torch']}; median ms over {reps} runs")
    print(text_table(rows, columns))
    return result


def write_json(path: str, env: Dict[str, Any], rows: List[Dict[str, Any]], extra: Optional[Dict[str, Any]] = None) -> None:
    obj = {"environment": env, "rows": rows}
    obj.update(extra or {})
    with open(path, "w", encoding="utf-8") as f:
        json.dump(obj, f, indent=1, sort_keys=False, default=str)


def env_header(env: Dict[str, Any]) -> str:
    bits = [f"card {env['card']}", f"torch {env['torch']}", f"CUDA {env['cuda']}"]
    if env.get("cudnn"):
        bits.append(f"cuDNN {env['cudnn']}")
    bits += [f"commit {env.get('commit')}", env["date"]]
    return ", ".join(bits) + f"\n\nCommand: `{env['command']}`"


def plots_available() -> Optional[str]:
    """None when matplotlib can draw (Agg), else why plots are skipped."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot  # noqa: F401
    except ImportError as e:
        return (f"plots skipped: matplotlib is not installed ({e}); "
                "pip install -e '.[bench]' adds it")
    return None

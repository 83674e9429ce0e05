"""The benchmark harness: one entry point for the floor, layer and model suites.

    python -m benchmarks.run --suite layer|model|floor[,...] [--preset headline|cluster|full|quick]
                             [--quick] [--out DIR] [--max-seconds N | floor=N,layer=N,model=N]
                             [--device cuda|cpu]
    python -m benchmarks.run --prebuild [--preset headline] [--gpu h100-sxm] [--arch 9.0]
    python -m benchmarks.run --list [--preset headline]      # the rows and their expected seconds

Suites (benchmarks/suites/): floor = per-step cost of block / cluster / grid synchronisation;
layer = one recurrent layer, our kernel families vs cuDNN, torch.compile, Inductor and FlashRNN
1.0.8; model = whole models, eager vs torch.compile default vs backend="flashrnn", with compile
times. Several suites in one call share the process (one torch import); the layer table then
shows the floor suite's numbers next to each family.

--quick runs small sizes on the CPU (CI keeps the harness alive with it; numbers mean nothing).
--max-seconds skips the rows that no longer fit (each says so), so one device call always ends with
its files written. --prebuild compiles ahead (on a machine without the GPU) the fused variants
the preset will ask for and the floor library, into $TORCH_EXTENSIONS_DIR, to be carried.

Output, per suite, under <out or benchmarks/results>/<card>/: <suite>.json (environment + rows),
<suite>.md (table), and for the layer suite PNG plots (time vs head dim, time vs batch, speed-up
over cuDNN; matplotlib, the `bench` extra: skipped with a note when missing). A table is printed
last.
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from typing import Dict, List, Optional, Sequence

if __name__ == "__main__" and "--quick" in sys.argv and "TORCHINDUCTOR_COMPILE_THREADS" not in os.environ:
    os.environ["TORCHINDUCTOR_COMPILE_THREADS"] = "1"  # small graphs: no compile-worker pool to start

import torch  # noqa: E402

from .suites import common  # noqa: E402

SUITES = ("floor", "layer", "model")


def parse_budgets(text: Optional[str], suites: Sequence[str]) -> Dict[str, Optional[float]]:
    """'300' -> every suite 300 s; 'layer=260,model=100' -> per suite (others unbounded)."""
    out: Dict[str, Optional[float]] = {s: None for s in suites}
    if text is None:
        return out
    try:
        if "=" not in text:
            return {s: float(text) for s in suites}
        for part in text.split(","):
            name, value = part.split("=")
            if name.strip() not in SUITES:
                raise ValueError(name)
            out[name.strip()] = float(value)
    except ValueError as e:
        raise SystemExit(f"--max-seconds: expected N or suite=N[,suite=N] with suites {SUITES}, got {text!r} ({e})")
    return out


def parse_args(argv: Optional[Sequence[str]]) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m benchmarks.run", description=__doc__.split("\n")[0])
    p.add_argument("--suite", default=None, help="floor, layer, model, or several comma-separated")
    p.add_argument("--preset", default=None, help="layer suite: headline (default on CUDA), cluster (issue 8 shapes), full, quick")
    p.add_argument("--quick", action="store_true", help="small sizes on the CPU (CI)")
    p.add_argument("--out", default=None, help="results root (default benchmarks/results); files go to OUT/<card>/")
    p.add_argument("--max-seconds", default=None, help="time budget: N per suite, or floor=N,layer=N,model=N")
    p.add_argument("--device", default=None, help="cuda or cpu (default: cuda if available; cpu with --quick)")
    p.add_argument("--prebuild", action="store_true", help="build the fused variants the preset plans + the floor library ahead")
    p.add_argument("--replot", default=None, metavar="DIR",
                   help="redraw the layer plots from DIR/layer.json (e.g. a result set fetched without its PNGs)")
    p.add_argument("--list", action="store_true", help="print the layer preset's rows and expected seconds; run nothing")
    p.add_argument("--skip", default="", help="layer suite: comma-separated prefixes of systems not to run: cuDNN, "
                   "'ours <family>', torch.compile, FlashRNN, Inductor; their rows say so")
    p.add_argument("--gpu", default="h100-sxm", help="--prebuild: planner preset of the target GPU")
    p.add_argument("--arch", default="9.0", help="--prebuild: compute capability to build for")
    args = p.parse_args(argv)
    if not (args.prebuild or args.list or args.replot):
        if not args.suite:
            p.error("--suite is required (floor, layer, model, or several comma-separated)")
        bad = [s for s in args.suite.split(",") if s not in SUITES]
        if bad:
            p.error(f"--suite: expected some of {SUITES}, got {bad}")
    return args


def pick_device(args: argparse.Namespace) -> torch.device:
    if args.device:
        dev = torch.device(args.device)
        if dev.type == "cuda" and not torch.cuda.is_available():
            raise SystemExit("--device cuda: CUDA is not available to torch on this machine")
        return dev
    if args.quick or not torch.cuda.is_available():
        return torch.device("cpu")
    return torch.device("cuda")


def run_floor(device, budget, env, args, folder) -> List[dict]:
    from .suites import floor

    rows = floor.run(device, budget, env, quick=args.quick)
    common.write_json(os.path.join(folder, "floor.json"), env, rows)
    with open(os.path.join(folder, "floor.md"), "w", encoding="utf-8") as f:
        f.write(floor.markdown(rows, env))
    return rows


def run_layer(device, budget, env, args, folder, floors: Dict[str, float]) -> List[dict]:
    from . import flashrnn_108
    from .suites import layer

    preset = args.preset or ("quick" if args.quick or device.type != "cuda" else "headline")
    skip = [x.strip() for x in args.skip.split(",") if x.strip()]
    rows = layer.run(preset, device, budget, env, quick=args.quick or device.type != "cuda", floors=floors, skip=skip)
    extra = {"preset": preset, "floors_us_per_step": floors,
             "flashrnn_108": {"available": flashrnn_108.available(), "reason": flashrnn_108.reason(),
                              "notes": flashrnn_108.notes()}}
    common.write_json(os.path.join(folder, "layer.json"), env, rows, extra)
    text = layer.markdown(rows, env, floors)
    why = common.plots_available()
    if why is None:
        written = layer.plots(rows, folder)
        text += "\nPlots: " + ", ".join(os.path.basename(p) for p in written) + "\n"
    else:
        print(why, flush=True)
        text += f"\n{why}\n"
    with open(os.path.join(folder, "layer.md"), "w", encoding="utf-8") as f:
        f.write(text)
    return rows


def run_model(device, budget, env, args, folder) -> List[dict]:
    from .suites import model

    rows = model.run(device, budget, env, quick=args.quick or device.type != "cuda")
    common.write_json(os.path.join(folder, "model.json"), env, rows)
    with open(os.path.join(folder, "model.md"), "w", encoding="utf-8") as f:
        f.write(model.markdown(rows, env))
    return rows


def prebuild(args: argparse.Namespace) -> int:
    """Compile the fused variants the preset's rows plan (fused_block, fused_cluster and fused_grid
    with their backward's) and the floor library for --gpu / --arch."""
    from concurrent.futures import ThreadPoolExecutor

    from flashrnn_compile import build, planner
    from flashrnn_compile.kernels import fused_block, fused_cluster, fused_grid

    from .suites import floor, layer

    preset = args.preset or "headline"
    configs = {}
    # each fused family's plan of every row (the harness offers them all), the backward's libraries too
    libs = {"fused_block": (fused_block, [fused_block.defines]),
            "fused_cluster": (fused_cluster, [fused_cluster.defines, fused_cluster.backward_defines]),
            "fused_grid": (fused_grid, [fused_grid.defines, fused_grid.backward_defines])}
    for cfg in layer.PRESETS[preset]():
        for family, (mod, makers) in libs.items():
            chosen = planner.plan(cfg.cell, cfg.B, cfg.NH, cfg.DH, common.DTYPES[cfg.dtype], gpu=args.gpu,
                                  families=(family,))
            if chosen.family != family:
                if family == "fused_block":
                    print(f"no fused_block plan for {cfg.label()}: {chosen.reason[:120]}")
                continue
            for make in makers:
                defs = make(cfg.cell, common.DTYPES[cfg.dtype], cfg.DH, chosen.params)
                configs[repr(sorted(defs.items()))] = (mod.SOURCE, defs)
    configs["floor"] = (floor.SOURCE, floor.DEFINES)
    start = time.time()
    with ThreadPoolExecutor(8) as pool:
        paths = list(pool.map(lambda sd: build.ensure_variant(sd[0], sd[1], [args.arch]), configs.values()))
    print(f"{len(paths)} libraries ready in {time.time() - start:.1f} s under {build.cache_root() / 'variants'}")
    return 0


def replot(folder: str) -> int:
    """The layer suite's PNG plots again, from the rows of folder/layer.json."""
    import json

    from .suites import layer

    path = os.path.join(folder, "layer.json")
    if not os.path.isfile(path):
        raise SystemExit(f"--replot: expected a layer suite result {path}, not found")
    why = common.plots_available()
    if why:
        raise SystemExit(f"--replot: {why}")
    with open(path, encoding="utf-8") as f:
        rows = json.load(f)["rows"]
    for written in layer.plots(rows, folder):
        print(written)
    return 0


def list_rows(args: argparse.Namespace) -> int:
    """The layer preset's rows on a GPU, in run order, with the seconds each is expected to take."""
    from .suites import layer

    preset = args.preset or "headline"
    rows = layer.listing(layer.PRESETS[preset]())
    total = 0.0
    for label, system, secs in rows:
        total += secs
        print(f"{label:<30} {system:<28} ~{secs:4.0f} s   (cumulative {total:5.0f} s)")
    print(f"{len(rows)} rows, about {total:.0f} s on a GPU (estimates used by --max-seconds)")
    return 0


def summary(results: Dict[str, List[dict]]) -> str:
    """The table printed last (the device tool returns the end of the output)."""
    lines = []
    if "floor" in results:
        lines.append("floor (µs/step): " + "; ".join(
            f"{r.get('what', r['kind'])}: " + (f"{r['us_per_step']:.3f}" if r["status"] == "ok" else r["status"])
            for r in results["floor"]))
    if "layer" in results:
        lines.append(f"\n{'system':<34} {'config':<28} {'fwd ms':>9} {'fwd+bwd':>9} {'xcuDNN f':>8} {'xcuDNN fb':>9}  status")
        lines.append("(n/a rows repeating a reason are shown once; all rows are in layer.json / layer.md)")
        seen_na = set()
        for r in results["layer"]:
            if r["status"] == "n/a":  # the same reason on every config (e.g. a family not in this build): once
                key = (r["system"], str(r.get("reason"))[:40])
                if key in seen_na:
                    continue
                seen_na.add(key)
            cfg = f"{r['cell']} {r['dtype']} B{r['B']} T{r['T']} {r['heads']}"
            st = "ok" if r["status"] == "ok" else f"{r['status']}: {str(r.get('reason'))[:60]}"
            lines.append(f"{r['system'][:34]:<34} {cfg:<28} {common.fmt(r.get('fwd_ms')):>9} "
                         f"{common.fmt(r.get('fwd_bwd_ms')):>9} {common.fmt(r.get('speedup_fwd_vs_cudnn'), 2):>8} "
                         f"{common.fmt(r.get('speedup_fwd_bwd_vs_cudnn'), 2):>9}  {st}")
    if "model" in results:
        lines.append(f"\n{'model':<44} {'mode':<13} {'backend':<24} {'ms/step':>9} {'x eager':>7} {'cold s':>7} {'warm s':>7}")
        for r in results["model"]:
            lines.append(f"{r['model'][:44]:<44} {r['mode']:<13} {r['backend']:<24} {common.fmt(r.get('step_ms')):>9} "
                         f"{common.fmt(r.get('speedup_vs_eager'), 2):>7} {common.fmt(r.get('compile_cold_s'), 1):>7} "
                         f"{common.fmt(r.get('compile_warm_s'), 1):>7}" +
                         ("" if r["status"] == "ok" else f"  {r['status']}: {str(r.get('reason'))[:60]}"))
    return "\n".join(lines)


def main(argv: Optional[Sequence[str]] = None) -> int:
    args = parse_args(argv)
    # a fresh Inductor cache per run unless the caller chose one: "cold" compile times are cold
    # (read when Inductor first compiles, i.e. after this)
    if "TORCHINDUCTOR_CACHE_DIR" not in os.environ:
        os.environ["TORCHINDUCTOR_CACHE_DIR"] = tempfile.mkdtemp(prefix="bench-inductor-")
    import flashrnn_compile  # noqa: F401  (registers the ops and the backend; turns allow_rnn on)

    if args.prebuild:
        return prebuild(args)
    if args.list:
        return list_rows(args)
    if args.replot:
        return replot(args.replot)
    device = pick_device(args)
    if device.type == "cpu":  # the CPU runs the quick sizes: tiny ops, where OpenMP barriers on a
        torch.set_num_threads(1)  # shared 2-core machine cost far more than they give
    suites = [s for s in SUITES if s in args.suite.split(",")]  # floor first: the layer table uses it
    budgets = parse_budgets(args.max_seconds, suites)
    env = common.environment(device, argv if argv is not None else sys.argv[1:])
    folder = common.results_dir(args.out, device)
    print(f"benchmarks.run: {', '.join(suites)} on {env['card']} ({device}), torch {env['torch']}, "
          f"CUDA {env['cuda']}; results in {folder}", flush=True)
    results: Dict[str, List[dict]] = {}
    floors: Dict[str, float] = {}
    for suite in suites:
        budget = common.Budget(budgets[suite])
        print(f"\n== {suite} suite" + (f" (budget {budgets[suite]:g} s)" if budgets[suite] else ""), flush=True)
        if suite == "floor":
            results[suite] = run_floor(device, budget, env, args, folder)
            from .suites.floor import floors as floor_values

            floors = floor_values(results[suite])
        elif suite == "layer":
            results[suite] = run_layer(device, budget, env, args, folder, floors)
        else:
            results[suite] = run_model(device, budget, env, args, folder)
        print(f"== {suite} suite done in {budget.elapsed():.0f} s", flush=True)
    print("\n" + summary(results), flush=True)
    print(f"\nwritten under {folder}: " + ", ".join(sorted(os.listdir(folder))), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())

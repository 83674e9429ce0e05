"""The benchmark harness (benchmarks/run.py) stays alive on the CPU: `--quick` writes the JSON and
markdown with the expected rows; the layer suite's plumbing, budget, report and plots; the
FlashRNN 1.0.8 patch; the timer. Numbers measured here mean nothing (tiny shapes, shared CPU)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time

import pytest
import torch

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if ROOT not in sys.path:  # benchmarks/ is a package of the checkout, not of the installed project
    sys.path.insert(0, ROOT)

from benchmarks import flashrnn_108, run  # noqa: E402
from benchmarks.suites import common, layer  # noqa: E402
MODELS = ("LSTM LM", "BiGRU encoder", "hand-written LSTM loop")
BACKENDS = ("eager", "torch.compile default", "torch.compile flashrnn")
ENV = {"card": "test card", "torch": torch.__version__, "cuda": None, "cudnn": None,
       "command": "python -m benchmarks.run --test", "commit": None, "date": "today"}


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the CPU --quick path CI runs")
def test_quick_run_writes_model_and_floor_results(tmp_path):
    env = dict(os.environ, PYTHONPATH=ROOT, TORCHINDUCTOR_CACHE_DIR=str(tmp_path / "inductor"))
    start = time.perf_counter()
    proc = subprocess.run([sys.executable, "-m", "benchmarks.run", "--suite", "floor,model", "--quick",
                           "--out", str(tmp_path)], cwd=ROOT, env=env, capture_output=True, text=True, timeout=170)
    took = time.perf_counter() - start
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    folder = tmp_path / "cpu"
    data = json.loads((folder / "model.json").read_text())
    assert data["environment"]["command"].startswith("python -m benchmarks.run --suite floor,model --quick")
    rows = data["rows"]
    got = {(m, r["backend"], r["mode"]) for r in rows for m in MODELS if r["model"].startswith(m)}
    want = {(m, b, mode) for m in MODELS for b in BACKENDS for mode in ("inference", "training step")}
    assert got == want and len(rows) == len(want)
    bad = [(r["model"], r["backend"], r["mode"], r.get("reason")) for r in rows if r["status"] != "ok"]
    assert not bad
    for r in rows:
        assert r["step_ms"] > 0 and r["step_q1_ms"] <= r["step_ms"] <= r["step_q3_ms"]
        assert r["speedup_vs_eager"] > 0 and r["card"] and r["torch"] == torch.__version__
        if r["backend"] != "eager":
            assert r["compile_cold_s"] > 0 and r["compile_warm_s"] > 0
    flash = [r for r in rows if r["backend"] == "torch.compile flashrnn"]
    assert all(r["rewritten"] >= 1 for r in flash), [(r["model"], r["rewritten"]) for r in flash]
    md = (folder / "model.md").read_text()
    assert md.count("| training step |") == len(MODELS) * len(BACKENDS)
    assert all(m in md for m in MODELS) and "torch.compile flashrnn" in md
    floor = json.loads((folder / "floor.json").read_text())["rows"]
    assert [r["status"] for r in floor] == ["n/a"] and "CUDA" in floor[0]["reason"]
    assert "model" in proc.stdout and "written under" in proc.stdout
    assert took < 150, f"--quick took {took:.0f} s: CI keeps it under two minutes"


def test_layer_rows_reasons_and_speedups():
    configs = [layer.Config("lstm", "fp32", 2, 5, 1, 8, compiled=False, flashrnn=("fused",)),
               layer.Config("gru", "fp32", 2, 5, 2, 4, compiled=False)]
    rows = layer.run_configs(configs, "cpu", common.Budget(None), ENV, quick=True)
    systems = [(r["system"], r["cell"], r["heads"]) for r in rows]
    assert systems == [("eager nn.LSTM", "lstm", "1x8"), ("ours reference", "lstm", "1x8"),  # cheap rows first,
                       ("eager nn.GRU", "gru", "1x8"), ("ours reference", "gru", "2x4"),  # then FlashRNN (JIT)
                       ("FlashRNN 1.0.8 fused", "lstm", "1x8")]
    by = {(r["system"], r["cell"]): r for r in rows}
    ours = by[("ours reference", "gru")]
    assert ours["status"] == "ok" and ours["fwd_us_per_step"] == pytest.approx(ours["fwd_ms"] * 1e3 / 5)
    base = by[("eager nn.GRU", "gru")]
    assert ours["speedup_fwd_bwd_vs_cudnn"] == pytest.approx(base["fwd_bwd_ms"] / ours["fwd_bwd_ms"])
    assert "speedup_fwd_vs_cudnn" not in base and base["baseline"]
    frnn = by[("FlashRNN 1.0.8 fused", "lstm")]
    if not torch.cuda.is_available():
        assert frnn["status"] == "n/a" and "CUDA" in frnn["reason"]
    assert all(r["command"] == ENV["command"] for r in rows)
    md = layer.markdown(rows, ENV, {"block": 0.035})
    assert "| ours reference | gru | fp32 | 2 | 5 | 2x4 |" in md and "block 0.035" in md
    assert "FlashRNN 1.0.8 fused" in md.split("Rows without a time:")[1]


def test_budget_skips_rows_with_the_reason():
    budget = common.Budget(0.001)
    time.sleep(0.01)
    rows = layer.run_configs([layer.Config("lstm", "fp32", 2, 3, 1, 8, compiled=False)], "cpu", budget, ENV,
                             quick=True)
    assert rows and all(r["status"] == "skipped" and "--max-seconds" in r["reason"] for r in rows)
    with pytest.raises(ValueError, match="max_seconds"):
        common.Budget(0)


def test_skip_leaves_the_named_systems_out_with_the_reason():
    cfg = layer.Config("lstm", "fp32", 2, 3, 1, 8, compiled=False)
    rows = layer.run_configs([cfg], "cpu", common.Budget(None), ENV, quick=True, skip=("cuDNN",))
    by = {r["system"]: r for r in rows}  # the baseline's job is "cuDNN" (run on the CPU, its row says eager)
    assert by["cuDNN"]["status"] == "skipped" and by["cuDNN"]["reason"] == "--skip cuDNN"
    assert by["ours reference"]["status"] == "ok"


def test_headline_listing_orders_expensive_rows_last():
    rows = layer.listing(layer.PRESETS["headline"]())
    systems = [s for _, s, _ in rows]
    first_frnn = min(i for i, s in enumerate(systems) if s.startswith("FlashRNN"))
    assert all(not s.startswith(("FlashRNN", "Inductor")) for s in systems[:first_frnn])
    assert systems[-1] == "Inductor hand loop" and sum(s.startswith("FlashRNN") for s in systems) == 2
    configs = layer.PRESETS["headline"]()
    assert sum(s == "cuDNN" for s in systems) == len({(c.cell, c.dtype, c.B, c.T, c.H) for c in configs if c.cell in layer.MODULES})
    assert 150 < sum(secs for _, _, secs in rows) < 600  # one device call


def test_plots_or_a_note(tmp_path):
    why = common.plots_available()
    if why is not None:
        assert "matplotlib" in why and "bench" in why
        return
    rows = []
    for system, B, DH, f in (("cuDNN nn.LSTM", 16, 768, 18.0), ("cuDNN nn.LSTM", 64, 768, 23.0),
                             ("ours fused_block", 16, 64, 1.5), ("ours fused_block", 64, 64, 2.0),
                             ("ours fused_block", 16, 32, 1.3)):
        rows.append({"system": system, "cell": "lstm", "dtype": "bf16", "B": B, "T": 1024, "NH": 768 // DH, "DH": DH,
                     "heads": f"{768 // DH}x{DH}", "H": 768, "status": "ok", "fwd_ms": f, "fwd_bwd_ms": 3 * f,
                     "fwd_us_per_step": f, "fwd_bwd_us_per_step": 3 * f, "baseline": system.startswith("cuDNN")})
    layer._speedups(rows)
    written = layer.plots(rows, str(tmp_path))
    assert sorted(os.path.basename(p) for p in written) == [
        "layer_speedup_vs_cudnn.png", "layer_time_vs_batch.png", "layer_time_vs_head_dim.png"]
    assert all(os.path.getsize(p) > 1000 for p in written)


def test_flashrnn_cuda13_patch_zeroes_only_removed_fields():
    src = 'd["clockRate"] = prop.clockRate; d["x"] = prop.totalGlobalMem; d["m"] = prop.memoryClockRate;'
    out, fields = flashrnn_108.patch_gpu_info(src)
    assert out == 'd["clockRate"] = 0; d["x"] = prop.totalGlobalMem; d["m"] = 0;'
    assert fields == ["clockRate", "memoryClockRate"]
    loader, edits = flashrnn_108.patch_loader('x = {"verbose": True,}\n    time.sleep(random.random() * 10)\n')
    assert "random.random" not in loader and '"verbose": False' in loader and len(edits) == 2
    with pytest.raises(ValueError, match="backend"):
        flashrnn_108.supports("triton", "lstm")
    assert flashrnn_108.supports("fused", "gru") and flashrnn_108.supports("alternating", "lstm") is None


@pytest.mark.skipif(flashrnn_108.wheel_path() is None, reason="no flashrnn 1.0.8 wheel in build/wheels")
def test_flashrnn_wheel_installs_and_patches(tmp_path):
    how = flashrnn_108.install(flashrnn_108.wheel_path(), str(tmp_path))
    assert how == "pip" or how.startswith("unzip")
    notes = flashrnn_108.patch_installed(str(tmp_path), "13.0")
    assert len(notes) == 3 and "cooperativeMultiDeviceLaunch" in notes[0]
    text = (tmp_path / "flashrnn" / "flashrnn" / "gpu_info" / "gpu_info.cc").read_text()
    assert not any(f"prop.{f}" in text for f in flashrnn_108.REMOVED_PROPS)
    # the call the layer suite makes, through FlashRNN's pure-PyTorch backend (runs on the CPU)
    saved_path, saved_mods = list(sys.path), {k: v for k, v in sys.modules.items() if k.split(".")[0] == "flashrnn"}
    sys.path.insert(0, str(tmp_path))
    try:
        from flashrnn.flashrnn import flashrnn as entry

        for cell in ("lstm", "gru"):
            fwd, fwd_bwd = flashrnn_108.layer_fn("vanilla", cell, 2, 8, torch.float32, 3, 5, device="cpu", entry=entry)
            h = fwd()
            assert h.shape == (3, 5, 2, 8) and bool(torch.isfinite(h).all())
            fwd_bwd()
    finally:
        sys.path[:] = saved_path
        for k in [k for k in sys.modules if k.split(".")[0] == "flashrnn"]:
            del sys.modules[k]
        sys.modules.update(saved_mods)


@pytest.mark.skipif(flashrnn_108.wheel_path() is None, reason="no flashrnn 1.0.8 wheel in build/wheels")
def test_flashrnn_shared_install_is_reused_untouched(tmp_path):
    # a second process must find the same sources with the same time stamps, or its JIT rebuilds
    first = flashrnn_108.install_patched(flashrnn_108.wheel_path(), str(tmp_path), "13.0")
    assert first[0].startswith("installed") and any("gpu_info" in n for n in first)
    cc = tmp_path / "flashrnn" / "flashrnn" / "gpu_info" / "gpu_info.cc"
    stamp, text = cc.stat().st_mtime_ns, cc.read_text()
    again = flashrnn_108.install_patched(flashrnn_108.wheel_path(), str(tmp_path), "13.0")
    assert len(again) == 1 and again[0].startswith(f"reused {tmp_path}") and "gpu_info" in again[0]
    assert cc.stat().st_mtime_ns == stamp and cc.read_text() == text


def test_timer_names_and_budgets():
    t = common.measure(lambda: time.sleep(0.002), "cpu", warmup=1, min_reps=3, max_reps=3)
    assert t.reps == 3 and 1.9 <= t.median_ms < 200 and t.q1_ms <= t.median_ms <= t.q3_ms
    with pytest.raises(ValueError, match="min_reps"):
        common.measure(lambda: None, "cpu", min_reps=5, max_reps=2)
    assert common.sanitise("NVIDIA H100 80GB HBM3") == "H100_80GB_HBM3"
    assert common.card_name(torch.device("cpu")) == "cpu"
    assert run.parse_budgets("layer=260,model=100", ["floor", "layer", "model"]) == {
        "floor": None, "layer": 260.0, "model": 100.0}
    assert run.parse_budgets("30", ["floor", "model"]) == {"floor": 30.0, "model": 30.0}
    with pytest.raises(SystemExit, match="max-seconds"):
        run.parse_budgets("gpu=3", ["layer"])


def test_replot_from_layer_json(tmp_path):
    """--replot draws the layer plots from a result folder's layer.json; a folder without one is a
    clear error naming the file."""

    with pytest.raises(SystemExit, match="expected a layer suite result .*layer.json"):
        run.main(["--replot", str(tmp_path / "none")])
    rows = [{"system": s, "cell": "lstm", "dtype": "bf16", "B": 16, "T": 1024, "NH": 768 // dh, "DH": dh,
             "heads": f"{768 // dh}x{dh}", "H": 768, "status": "ok", "fwd_ms": f, "fwd_bwd_ms": 3 * f,
             "fwd_us_per_step": f, "fwd_bwd_us_per_step": 3 * f, "baseline": s.startswith("cuDNN")}
            for s, dh, f in (("cuDNN nn.LSTM", 768, 18.0), ("ours fused_block", 64, 1.5), ("ours fused_block", 32, 1.3))]
    layer._speedups(rows)
    common.write_json(str(tmp_path / "layer.json"), {}, rows)
    if common.plots_available() is not None:
        with pytest.raises(SystemExit, match="matplotlib"):
            run.main(["--replot", str(tmp_path)])
        return
    assert run.main(["--replot", str(tmp_path)]) == 0
    assert (tmp_path / "layer_time_vs_head_dim.png").stat().st_size > 1000


def test_fused_limits_finds_the_edge(monkeypatch, tmp_path):
    # the largest H a family takes is taken, the next multiple of 16 is not, and the family that
    # never takes a shape on a GPU without clusters says why
    monkeypatch.setenv("FLASHRNN_CACHE_DIR", str(tmp_path))
    from benchmarks import fused_limits as fl

    H, why = fl.largest("lstm", 16, torch.bfloat16, "h200", "fused_block", 1024)
    assert H is not None and H % 16 == 0
    assert fl.takes("lstm", 16, H, torch.bfloat16, "h200", "fused_block").family == "fused_block"
    assert fl.takes("lstm", 16, H + 16, torch.bfloat16, "h200", "fused_block").family != "fused_block"
    assert why.startswith("fused_block: impossible")
    none, why = fl.largest("lstm", 16, torch.bfloat16, "a100-80gb", "fused_cluster", 512)
    assert none is None and why.startswith("fused_cluster: impossible")


def test_profile_summary_means_each_warp_over_the_blocks(tmp_path):
    """profile_cluster --summarize: per section and kernel, each warp's phase means over the blocks
    that printed (lines outside a section, e.g. a warm-up launch's, are left out)."""
    sys.path.insert(0, os.path.join(ROOT, "benchmarks"))
    import profile_cluster

    log = tmp_path / "profile.log"
    log.write_text("fwd block 0 warp 0: 9 9 9 9 9 9 9 0 | 63\n"  # warm-up: before any section
                   "=== lstm 1x768 save=False params={}\n"
                   "fwd block 0 warp 0: 10 20 30 40 50 60 70 0 | 280\n"
                   "fwd block 1 warp 0: 30 20 10 40 50 60 70 0 | 280\n"
                   "fwd block 1 warp 1: 1 2 3 4 5 6 7 0 | 28\n"
                   "=== end: 1.0 ms\n"
                   "=== lstm 1x768 fwd+bwd params={}\n"
                   "bwd block 0 warp 2: 5 5 5 5 5 5 0 0 | 30\n"
                   "=== end\n")
    text = profile_cluster.summarize(str(log))
    assert "lstm 1x768 save=False, fwd (2 warps, 3 lines)" in text
    assert "| 0 | 20 | 20 | 20 | 40 | 50 | 60 | 70 | 280 |" in text
    assert "| 1 | 1 | 2 | 3 | 4 | 5 | 6 | 7 | 28 |" in text
    assert "lstm 1x768 fwd+bwd, bwd (1 warps, 1 lines)" in text
    assert "| 2 | 5 | 5 | 5 | 5 | 5 | 5 | 30 |" in text
    assert "| 9 |" not in text and "63" not in text

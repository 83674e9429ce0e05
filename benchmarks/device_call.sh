#!/usr/bin/env bash
# One whole device call from a committed snapshot: gpu_check.sh (builds, tests/gpu over xdist
# workers with the sanitizers beside them, the layer harness), then an optional A/B timing script,
# and everything packed into $OUT/all.tar.gz (the device tool returns at most 8 files) beside
# $OUT/summary.md. Every step has its own timeout, so the pack runs even when a step overruns.
#
# Here, before the call (the fused variants are torch-free libraries: host-built ones load there):
#   bash scripts/snapshot_prebuild.sh all
# The call (device tool, carry ["build/snap"]):  bash build/snap/benchmarks/device_call.sh
# Env: everything gpu_check.sh reads; AB='cmd' (a timing command run after the harness, alone on
# the GPU; log ab.log); defaults below are sized for a ~6-minute call.
set -uo pipefail
cd "$(dirname "$0")/.."
OUT="${OUT:?set by the device tool}"
R="$(mktemp -d)"  # the logs; only the tarball and the summary go to $OUT
mkdir -p "$R"
export PYTHONPATH="$PWD" PYTHONUNBUFFERED=1
# the snapshot's commit (the device copy's own .git, if any, is not this snapshot's)
[ -f SNAPSHOT_COMMIT ] && export BENCH_COMMIT="$(cut -c1-7 SNAPSHOT_COMMIT)"
{ nvidia-smi --query-gpu=name,driver_version,clocks.max.sm,memory.total --format=csv,noheader
  uname -r
  python3 -c "import torch; print('torch', torch.__version__, 'cuda', torch.version.cuda, 'cudnn', torch.backends.cudnn.version())"
  echo "snapshot ${BENCH_COMMIT:-unknown}"; } >"$R/card.txt" 2>&1
export XDIST="${XDIST:-8}" PARALLEL="${PARALLEL:-1}" ALT_BENCH="${ALT_BENCH:-0}" FUSED_BENCH="${FUSED_BENCH:-0}"
export PYTEST_TIMEOUT="${PYTEST_TIMEOUT:-120}" SANITIZER_TIMEOUT="${SANITIZER_TIMEOUT:-120}"
export HARNESS="${HARNESS:-1}" HARNESS_SUITES="${HARNESS_SUITES:-floor,layer}"
export HARNESS_SECONDS="${HARNESS_SECONDS:-floor=12,layer=105}" HARNESS_TIMEOUT="${HARNESS_TIMEOUT:-165}"
export HARNESS_SKIP="${HARNESS_SKIP:-torch.compile,Inductor}"
OUT="$R" bash benchmarks/gpu_check.sh
if [ -n "${AB:-}" ]; then timeout "${AB_TIMEOUT:-75}" bash -c "$AB" >"$R/ab.log" 2>&1; echo "A/B exit $?"; cat "$R/ab.log" | tail -n 20; fi
cp "$R/summary.md" "$OUT/summary.md" 2>/dev/null
tar -czf "$OUT/all.tar.gz" -C "$R" .

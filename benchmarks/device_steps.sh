#!/usr/bin/env bash
# One device call that runs a list of named steps from a committed snapshot (made and prebuilt by
# scripts/snapshot_prebuild.sh): first every correctness step side by side, then every timing
# step alone on the GPU, each under its own timeout; the logs go into $OUT/all.tar.gz and a table of
# exit codes and seconds (with each log's tail) into $OUT/summary.md.
#
#   bash benchmarks/device_steps.sh STEPFILE
#
# STEPFILE: one step a line, `kind name timeout_s command...` with kind `c` (correctness: run
# concurrently with the other c steps) or `t` (timing: run one at a time after every c step ended);
# `#` lines are comments. The command runs under bash in the snapshot's root with PYTHONPATH set
# and LOGS = the folder packed into all.tar.gz (for a step's own result files).
set -uo pipefail
cd "$(dirname "$0")/.."
STEPS="${1:?usage: device_steps.sh STEPFILE}"
OUT="${OUT:?set by the device tool}"
R="$(mktemp -d)"
export LOGS="$R"
export PYTHONPATH="$PWD" PYTHONUNBUFFERED=1
[ -f SNAPSHOT_COMMIT ] && export BENCH_COMMIT="$(cut -c1-7 SNAPSHOT_COMMIT)"
# prebuilt variants (build/fused_cache, same sources: same cache keys) seed one shared cache
export TORCH_EXTENSIONS_DIR="$(mktemp -d)"
[ -d build/fused_cache ] && cp -r build/fused_cache/. "$TORCH_EXTENSIONS_DIR/"
# FlashRNN 1.0.8 (build/wheels, copied in by the snapshot): one install shared by every step, so a
# step that JIT-builds its kernels beside the tests leaves them built for the harness
export FLASHRNN_108_DIR="$(mktemp -d)/flashrnn108"
{ nvidia-smi --query-gpu=name,driver_version,clocks.max.sm,memory.total --format=csv,noheader
  python3 -c "import torch; print('torch', torch.__version__, 'cuda', torch.version.cuda, 'cudnn', torch.backends.cudnn.version())"
  echo "snapshot ${BENCH_COMMIT:-unknown}"; } >"$R/card.txt" 2>&1
run_step() {  # name timeout command
  local t0 rc; t0=$(date +%s)
  timeout "$2" bash -c "$3" >"$R/$1.log" 2>&1; rc=$?
  echo "$rc $(( $(date +%s) - t0 ))" >"$R/$1.rc"
}
# the alternating library first (several steps load it; one build, not one per process);
# SKIP_BUILD=1 leaves it out (steps that need no alternating kernels)
[ "${SKIP_BUILD:-0}" = 1 ] || run_step build 240 "python3 -m flashrnn_compile.build"
pids=()
while read -r kind name tmo cmd; do
  [ "$kind" = c ] || continue
  run_step "$name" "$tmo" "$cmd" & pids+=($!)
done < <(grep -v '^\s*#' "$STEPS" | grep -v '^\s*$')
for p in "${pids[@]}"; do wait "$p"; done
while read -r kind name tmo cmd; do
  [ "$kind" = t ] || continue
  run_step "$name" "$tmo" "$cmd"
done < <(grep -v '^\s*#' "$STEPS" | grep -v '^\s*$')
{ echo "# device_steps $(cat "$R/card.txt" | tr '\n' ' ')"; echo
  echo "| step | exit | s |"; echo "|---|---|---|"
  for f in "$R"/*.rc; do n="$(basename "$f" .rc)"; read -r rc s <"$f"; echo "| $n | $rc | $s |"; done
  for f in "$R"/*.rc; do n="$(basename "$f" .rc)"; echo; echo "## $n"; echo '```'
    grep -E "^(FAILED|ERROR)|passed|failed|ERROR SUMMARY|RACECHECK SUMMARY" "$R/$n.log" | tail -n 8
    tail -n "${TAIL:-14}" "$R/$n.log"; echo '```'; done; } >"$OUT/summary.md"
tar -czf "$OUT/all.tar.gz" -C "$R" .
cat "$OUT/summary.md" | head -c 11000

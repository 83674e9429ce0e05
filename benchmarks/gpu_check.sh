#!/usr/bin/env bash
# On a CUDA machine, from anywhere: a cold build of the kernels (fresh cache), a second process
# reusing it, tests/gpu/, compute-sanitizer memcheck on a small case, and the benchmark; then the
# fused_block family: a cold build of one new configuration, the prebuilt ones (build/fused_cache,
# from benchmarks/prebuild_fused.py, if carried), memcheck + racecheck on a small fused case, and
# bench_fused_block (fused_block vs alternating vs cuDNN); a summary table last.
# Logs go to $OUT (default: a temp dir). Usage: bash benchmarks/gpu_check.sh
# Env: TESTS (pytest paths, default tests/gpu), SKIP_ALTERNATING=1 (no alternating build, bench or
# tests: only the fused_block steps), ALT_CHECKS=0 (build the alternating kernels, for the fused
# bench's side-by-side row, but skip their memcheck and bench_alternating), SKIP_FUSED=1 (no
# fused_block steps: only the alternating build, tests, memcheck and bench).
# SKIP_SANITIZERS=1 (no fused memcheck/racecheck: intermediate runs only), FUSED_BENCH=0 (no fused
# benchmark), HARNESS=1 (then `python -m benchmarks.run --suite floor,layer,model --preset headline`
# into $OUT, budget HARNESS_SECONDS, default floor=30,layer=280,model=120; carry build/wheels for the
# FlashRNN 1.0.8 rows; HARNESS_SUITES picks fewer suites, HARNESS_PRESET the layer preset (headline),
# HARNESS_SKIP the layer systems left out (--skip), HARNESS_TIMEOUT caps the run, default 600 s).
# ALT_BENCH=0 (no bench_alternating: the harness has the rows). XDIST=N (pytest over N processes with pytest-xdist where installed), PARALLEL=1 (the
# sanitizer runs beside pytest: both check correctness only, and every timing step comes after them),
# PARALLEL_EXTRA='cmd' (one more correctness command beside pytest), SANITIZER_TIMEOUT (240 s each).
set -uo pipefail
cd "$(dirname "$0")/.."
OUT="${OUT:-$(mktemp -d)}"
mkdir -p "$OUT"
PY="${PYTHON:-python3}"
export PYTHONUNBUFFERED=1
# the checkout itself, installed or not (flashrnn_compile.build finds csrc/ in the checkout)
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"
# setup.py maps flashrnn_compile.passes -> passes/ and flashrnn_compile.csrc -> csrc/; without an
# install, a sitecustomize finder does the same mapping for every Python process of this script
SHIM="$(mktemp -d)"
cat >"$SHIM/sitecustomize.py" <<PYEOF
import importlib.abc, importlib.util, os, sys
_MAP = {"flashrnn_compile.passes": "$PWD/passes", "flashrnn_compile.csrc": "$PWD/csrc"}
class _Finder(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path=None, target=None):
        if name in _MAP:
            return importlib.util.spec_from_file_location(name, os.path.join(_MAP[name], "__init__.py"),
                                                          submodule_search_locations=[_MAP[name]])
        return None
sys.meta_path.append(_Finder())
PYEOF
export PYTHONPATH="$SHIM:$PYTHONPATH"
CARD="$("$PY" -c 'import torch; print(torch.cuda.get_device_name())')"
export TORCH_EXTENSIONS_DIR="$(mktemp -d)"   # a cold cache: the first build is timed
secs() { "$PY" -c "import time; print(f'{time.time() - $1:.1f}')"; }

SKIP_ALT="${SKIP_ALTERNATING:-0}"
ALT_CHECKS="${ALT_CHECKS:-1}"
TESTS="${TESTS:-tests/gpu}"
# fused_block variants built ahead (same sources: same cache keys) go into the fresh cache
if [ -d build/fused_cache/flashrnn_compile/variants ]; then
  mkdir -p "$TORCH_EXTENSIONS_DIR/flashrnn_compile"
  cp -r build/fused_cache/flashrnn_compile/variants "$TORCH_EXTENSIONS_DIR/flashrnn_compile/"
fi
SKIP_FUSED="${SKIP_FUSED:-0}"
fb_rc=skipped; fmc_rc=skipped; frc_rc=skipped; fbench_rc=skipped; fb_cold=0; fmtime=0; frtime=0
if [ "$SKIP_FUSED" != 1 ]; then
t=$(date +%s.%N)
timeout 120 "$PY" -c "
from flashrnn_compile import build
build.ensure_variant('fused/fused_block.cu', dict(FRNN_CELL='LstmCell', FRNN_DTYPE=1, FRNN_DH=64, FRNN_WARPS=8, FRNN_BATCH_TILE=16, FRNN_R_REG_TILES=1))
" >"$OUT/fused_build.log" 2>&1; fb_rc=$?
fb_cold=$(secs "$t")
fi
build_rc=0; warm_rc=0; cold=0; warm=0
if [ "$SKIP_ALT" != 1 ]; then
t=$(date +%s.%N); timeout 300 "$PY" -m flashrnn_compile.build >"$OUT/build.log" 2>&1; build_rc=$?
cold=$(secs "$t")
t=$(date +%s.%N); timeout 120 "$PY" -m flashrnn_compile.build >>"$OUT/build.log" 2>&1; warm_rc=$?
warm=$(secs "$t")
tail -n 3 "$OUT/build.log"
fi
[ $build_rc -ne 0 ] && { echo "BUILD FAILED"; tail -n 60 "$OUT/build.log"; ls "$TORCH_EXTENSIONS_DIR"/flashrnn_compile; cat "$TORCH_EXTENSIONS_DIR"/flashrnn_compile/*failed.log 2>/dev/null | grep -iE "error|undefined" | head -30; }

# the sanitizer runs: each writes its exit code and seconds to $OUT/<name>.rc / .secs
sanitize() {  # name tool family timeout
  local t; t=$(date +%s.%N)
  timeout "$4" compute-sanitizer --tool "$2" --error-exitcode 9 "$PY" tests/gpu/memcheck_case.py "$3" >"$OUT/$1.log" 2>&1
  echo $? >"$OUT/$1.rc"; secs "$t" >"$OUT/$1.secs"
}
sanitizers() {  # the three runs side by side (SANITIZER_TIMEOUT caps each, default 240 s)
  local st="${SANITIZER_TIMEOUT:-240}" pids=()
  if [ "$SKIP_ALT" != 1 ] && [ "$ALT_CHECKS" != 0 ]; then sanitize memcheck memcheck alternating "$st" & pids+=($!); fi
  if [ "$SKIP_FUSED" != 1 ] && [ "${SKIP_SANITIZERS:-0}" != 1 ]; then
    sanitize fused_memcheck memcheck fused_block "$st" & pids+=($!)
    sanitize fused_racecheck racecheck fused_block "$st" & pids+=($!)
  fi
  for p in "${pids[@]}"; do wait "$p"; done
}
# PARALLEL=1: the sanitizers run beside pytest (correctness only: no timing runs meanwhile);
# XDIST=N: pytest over N worker processes (pytest-xdist, where installed)
XDIST_ARGS=""
if [ -n "${XDIST:-}" ] && "$PY" -c "import xdist" 2>/dev/null; then XDIST_ARGS="-n $XDIST"; fi
san_pid=""; extra_pid=""
if [ "${PARALLEL:-0}" = 1 ]; then sanitizers & san_pid=$!; fi
# PARALLEL_EXTRA: one more correctness command beside pytest (log: $OUT/parallel_extra.log)
if [ -n "${PARALLEL_EXTRA:-}" ]; then bash -c "$PARALLEL_EXTRA" >"$OUT/parallel_extra.log" 2>&1 & extra_pid=$!; fi
t=$(date +%s.%N)
timeout "${PYTEST_TIMEOUT:-360}" "$PY" -m pytest -q -p no:cacheprovider -rf --tb=line --durations=5 $XDIST_ARGS $TESTS >"$OUT/pytest.log" 2>&1
pytest_rc=$?
ptime=$(secs "$t")
grep -E "^(FAILED|ERROR)" "$OUT/pytest.log" | head -40
tail -n 12 "$OUT/pytest.log"
if [ -n "$san_pid" ]; then wait "$san_pid"; else sanitizers; fi
extra_rc=skipped
if [ -n "$extra_pid" ]; then wait "$extra_pid"; extra_rc=$?; tail -n 5 "$OUT/parallel_extra.log"; fi
rc_of() { cat "$OUT/$1.rc" 2>/dev/null || echo skipped; }
secs_of() { cat "$OUT/$1.secs" 2>/dev/null || echo 0; }
mc_rc=$(rc_of memcheck); mtime=$(secs_of memcheck)
fmc_rc=$(rc_of fused_memcheck); fmtime=$(secs_of fused_memcheck)
frc_rc=$(rc_of fused_racecheck); frtime=$(secs_of fused_racecheck)
for f in memcheck fused_memcheck fused_racecheck; do [ -f "$OUT/$f.log" ] && tail -n 3 "$OUT/$f.log"; done

bench_rc=skipped
if [ "$SKIP_ALT" != 1 ] && [ "$ALT_CHECKS" != 0 ] && [ "${ALT_BENCH:-1}" != 0 ]; then
timeout 240 "$PY" benchmarks/bench_alternating.py --out "$OUT/bench.json" >"$OUT/bench.log" 2>&1
bench_rc=$?
fi

if [ "$SKIP_FUSED" != 1 ]; then
if [ "${PROFILE:-0}" = 1 ] && command -v ncu >/dev/null; then  # stall reasons of one fwd + bwd kernel
  timeout 60 ncu --section SpeedOfLight --section WarpStateStats -k regex:"forward_kernel|backward_kernel" -c 2 \
    "$PY" benchmarks/profile_fused.py >"$OUT/fused_ncu.log" 2>&1
  grep -E "forward_kernel|backward_kernel|Duration|Stall|Warp Cycles|Issue|Compute \(SM\)|Memory Throughput" "$OUT/fused_ncu.log" | head -40
fi
ALT_FLAG=""; [ "$SKIP_ALT" = 1 ] && ALT_FLAG="--no-alternating"
if [ "${FUSED_BENCH:-1}" != 0 ]; then
timeout 300 "$PY" benchmarks/bench_fused_block.py $ALT_FLAG --out "$OUT/fused_bench.json" >"$OUT/fused_bench.log" 2>&1
fbench_rc=$?
fi
fi

harness_rc=skipped
if [ "${HARNESS:-0}" = 1 ]; then
  timeout "${HARNESS_TIMEOUT:-600}" "$PY" -m benchmarks.run --suite "${HARNESS_SUITES:-floor,layer,model}" --preset "${HARNESS_PRESET:-headline}" \
    --max-seconds "${HARNESS_SECONDS:-floor=30,layer=280,model=120}" --skip "${HARNESS_SKIP:-}" --out "$OUT" >"$OUT/harness.log" 2>&1
  harness_rc=$?
fi

{
  echo "## gpu_check on $CARD"
  echo
  echo "| step | result |"
  echo "|---|---|"
  echo "| cold build (fresh TORCH_EXTENSIONS_DIR) | exit $build_rc, ${cold} s |"
  echo "| second process, cached | exit $warm_rc, ${warm} s |"
  echo "| pytest tests/gpu | exit $pytest_rc, ${ptime} s: $(tail -n 1 "$OUT/pytest.log") |"
  echo "| compute-sanitizer memcheck (small case) | exit $mc_rc, ${mtime} s: $(grep -o 'ERROR SUMMARY.*' "$OUT/memcheck.log" | tail -n 1) |"
  echo "| benchmark (alternating) | exit $bench_rc |"
  echo "| fused_block: cold build of one new configuration | exit $fb_rc, ${fb_cold} s (incl. Python + torch import) |"
  echo "| fused_block: compute-sanitizer memcheck (small case) | exit $fmc_rc, ${fmtime} s: $(grep -o 'ERROR SUMMARY.*' "$OUT/fused_memcheck.log" | tail -n 1) |"
  echo "| fused_block: compute-sanitizer racecheck (small case) | exit $frc_rc, ${frtime} s: $(grep -o 'ERROR SUMMARY.*' "$OUT/fused_racecheck.log" | tail -n 1) |"
  echo "| fused_block benchmark | exit $fbench_rc |"
  echo "| benchmark harness (floor, layer, model; harness.log) | exit $harness_rc |"
  echo "| PARALLEL_EXTRA (parallel_extra.log) | exit $extra_rc: $(tail -n 1 "$OUT/parallel_extra.log" 2>/dev/null) |"
  echo
  echo '```'
  [ -f "$OUT/bench.log" ] && tail -n 24 "$OUT/bench.log"
  [ -f "$OUT/fused_bench.log" ] && grep FAILED "$OUT/fused_bench.log" | head -5
  [ -f "$OUT/fused_bench.log" ] && tail -n 18 "$OUT/fused_bench.log"
  echo '```'
} >"$OUT/summary.md"
cat "$OUT/summary.md"

#!/usr/bin/env bash
# On a CUDA machine, from anywhere: a cold build of the kernels (fresh cache), a second process
# reusing it, tests/gpu/, compute-sanitizer memcheck on a small case, and the benchmark; a summary
# table last. Logs go to $OUT (default: a temp dir). Usage: bash benchmarks/gpu_check.sh
set -uo pipefail
cd "$(dirname "$0")/.."
OUT="${OUT:-$(mktemp -d)}"
mkdir -p "$OUT"
PY="${PYTHON:-python3}"
export PYTHONUNBUFFERED=1
# the checkout itself, installed or not (flashrnn_compile.build finds csrc/ in the checkout)
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"
CARD="$("$PY" -c 'import torch; print(torch.cuda.get_device_name())')"
export TORCH_EXTENSIONS_DIR="$(mktemp -d)"   # a cold cache: the first build is timed
secs() { "$PY" -c "import time; print(f'{time.time() - $1:.1f}')"; }

t=$(date +%s.%N); timeout 300 "$PY" -m flashrnn_compile.build >"$OUT/build.log" 2>&1; build_rc=$?
cold=$(secs "$t")
t=$(date +%s.%N); timeout 120 "$PY" -m flashrnn_compile.build >>"$OUT/build.log" 2>&1; warm_rc=$?
warm=$(secs "$t")
tail -n 3 "$OUT/build.log"
[ $build_rc -ne 0 ] && { echo "BUILD FAILED"; tail -n 60 "$OUT/build.log"; ls "$TORCH_EXTENSIONS_DIR"/flashrnn_compile; cat "$TORCH_EXTENSIONS_DIR"/flashrnn_compile/*failed.log 2>/dev/null | grep -iE "error|undefined" | head -30; }

t=$(date +%s.%N)
timeout "${PYTEST_TIMEOUT:-360}" "$PY" -m pytest -q -p no:cacheprovider -rf --tb=line --durations=5 tests/gpu >"$OUT/pytest.log" 2>&1
pytest_rc=$?
ptime=$(secs "$t")
grep -E "^(FAILED|ERROR)" "$OUT/pytest.log" | head -40
tail -n 12 "$OUT/pytest.log"

t=$(date +%s.%N)
timeout 240 compute-sanitizer --tool memcheck --error-exitcode 9 "$PY" tests/gpu/memcheck_small.py >"$OUT/memcheck.log" 2>&1
mc_rc=$?
mtime=$(secs "$t")
tail -n 4 "$OUT/memcheck.log"

timeout 240 "$PY" benchmarks/bench_alternating.py --out "$OUT/bench.json" >"$OUT/bench.log" 2>&1
bench_rc=$?

{
  echo "## gpu_check on $CARD"
  echo
  echo "| step | result |"
  echo "|---|---|"
  echo "| cold build (fresh TORCH_EXTENSIONS_DIR) | exit $build_rc, ${cold} s |"
  echo "| second process, cached | exit $warm_rc, ${warm} s |"
  echo "| pytest tests/gpu | exit $pytest_rc, ${ptime} s: $(tail -n 1 "$OUT/pytest.log") |"
  echo "| compute-sanitizer memcheck (small case) | exit $mc_rc, ${mtime} s: $(grep -o 'ERROR SUMMARY.*' "$OUT/memcheck.log" | tail -n 1) |"
  echo "| benchmark | exit $bench_rc |"
  echo
  echo '```'
  tail -n 12 "$OUT/bench.log"
  echo '```'
} >"$OUT/summary.md"
cat "$OUT/summary.md"

#!/usr/bin/env bash
# Compile-check every .cu under csrc/ with nvcc, as plain CUDA (no torch headers), for sm_80 and
# sm_90. Exits non-zero if any file fails. Called from .ci/run; runs two files at a time.
set -uo pipefail
cd "$(dirname "$0")/.."
NVCC="${NVCC:-$(command -v nvcc || echo /usr/local/cuda/bin/nvcc)}"
if [ ! -x "$NVCC" ]; then
  echo "nvcc_check: nvcc not found (set NVCC or put nvcc on PATH)" >&2
  exit 1
fi
mapfile -t FILES < <(find csrc -name '*.cu' | sort)
if [ "${#FILES[@]}" -eq 0 ]; then
  echo "nvcc_check: no .cu files under csrc/" >&2
  exit 1
fi
OUT="$(mktemp -d)"
trap 'rm -rf "$OUT"' EXIT
check_one() {
  local f="$1" out="$2" nvcc="$3"
  local log="$out/$(echo "$f" | tr '/' '_').log"
  if "$nvcc" -c -std=c++17 -O1 -Icsrc \
      -gencode=arch=compute_80,code=sm_80 -gencode=arch=compute_90,code=sm_90 \
      "$f" -o "$out/$(basename "$f").o" >"$log" 2>&1; then
    echo "ok    $f"
  else
    echo "FAIL  $f"
    cat "$log"
    return 1
  fi
}
export -f check_one
start=$SECONDS
printf '%s\n' "${FILES[@]}" | xargs -P "${NVCC_CHECK_JOBS:-2}" -I{} bash -c 'check_one "$@"' _ {} "$OUT" "$NVCC"
status=$?
echo "nvcc_check: ${#FILES[@]} file(s), sm_80 + sm_90, $((SECONDS - start)) s, exit $status"
exit $status

#!/usr/bin/env bash
# Snapshot HEAD into build/snap and prebuild there the fused variants a device call loads, from the
# snapshot's own sources (build.csrc_dir() would otherwise resolve flashrnn_compile.csrc through the
# editable install to the working tree; a link flashrnn_compile/csrc -> ../csrc lives in the snapshot
# while the builds run). Then: run(carry=["build/snap"], command="cd build/snap && bash
# benchmarks/device_steps.sh benchmarks/steps/<file>.txt").
#
#   [SNAP=build/snap2] bash scripts/snapshot_prebuild.sh [block|cluster|final|grid|rows|all] [GPU preset, default h200] [arch, default 9.0]
#
# SNAP: the snapshot's folder (default build/snap), so that a second snapshot can be made while
# the first still waits for its device call.
# block: the headline harness's variants and the fused_block tests' (with the DR_OUT and lean-save
# libraries), ~3.5 min on 2 cores; cluster: also fused_cluster's; all: also fused_grid's (all of
# tests/gpu), ~8 min or more; final: cluster plus the cluster preset's variants (issue 8's rows);
# grid: only fused_grid's (forward and backward libraries of its tests and bench_fused_grid); rows:
# only the cluster preset's (issue 8's harness rows, forward and backward libraries).
set -euo pipefail
what="${1:-block}" gpu="${2:-h200}" arch="${3:-9.0}"
root="$(git rev-parse --show-toplevel)"
PY="${PY:-$root/.venv/bin/python}"
cd "$root"
# the previous snapshot's variant cache is kept (its entries are keyed by their sources and defines:
# what did not change is not built again)
snap="${SNAP:-build/snap}"
rm -rf "$snap.cache" && [ -d "$snap/build/fused_cache" ] && mv "$snap/build/fused_cache" "$snap.cache"
rm -rf "$snap" && mkdir -p "$snap/build"
[ -d "$snap.cache" ] && mv "$snap.cache" "$snap/build/fused_cache"
git archive HEAD | tar -x -C "$snap"
stamp="$(mktemp)"  # older than every entry this run builds or touches
git rev-parse HEAD > "$snap/SNAPSHOT_COMMIT"
# FlashRNN 1.0.8's wheels (never committed) travel inside the snapshot for the harness's baseline rows
[ -d build/wheels ] && cp -r build/wheels "$snap/build/"
cd "$snap"
ln -sfn ../csrc flashrnn_compile/csrc
trap 'rm -f flashrnn_compile/csrc "$stamp"' EXIT
export PYTHONPATH="$PWD" TORCH_EXTENSIONS_DIR="$PWD/build/fused_cache"
"$PY" -c "from flashrnn_compile import build; print('sources:', build.csrc_dir())"
[ "$what" = all ] || [ "$what" = grid ] && "$PY" benchmarks/bench_fused_grid.py --prebuild "$gpu" --arch "$arch" --jobs 2
[ "$what" = all ] || [ "$what" = cluster ] || [ "$what" = final ] && "$PY" benchmarks/bench_fused_cluster.py --prebuild "$gpu" --jobs 2
[ "$what" = grid ] || [ "$what" = rows ] || "$PY" -m benchmarks.run --prebuild --preset headline --gpu "$gpu" --arch "$arch"
[ "$what" = all ] || [ "$what" = final ] || [ "$what" = rows ] && "$PY" -m benchmarks.run --prebuild --preset cluster --gpu "$gpu" --arch "$arch"
[ "$what" = grid ] || [ "$what" = rows ] || "$PY" benchmarks/prebuild_fused.py --gpu "$gpu" --arch "$arch" --jobs 2 --families block --dr-out --recompute
# only the variants this snapshot's prebuilds built or used travel (a kept cache grows otherwise):
# every other entry is older than the stamp (ensure_variant touches the entries it finds valid)
find build/fused_cache/flashrnn_compile/variants -mindepth 1 -maxdepth 1 ! -newer "$stamp" -exec rm -rf {} +
echo "snapshot $(cat SNAPSHOT_COMMIT) prebuilt ($what) under $snap/build/fused_cache ($(du -sh build/fused_cache | cut -f1))"

"""csrc/common/cells.cuh against cells.py, on CPU: the CUDA functors compile for the host too.

A small host program (nvcc) runs every functor's forward and backward on random float32 inputs
(passed exactly, as hex floats); the float64 reference is the cell's `step` from cells.py and its
vector-Jacobian product. Every output must agree to float32 rounding (relative error < 1e-5):
a wrong formula, gate order or state order shows as an O(1) error.
"""

from __future__ import annotations

import shutil
import subprocess

import pytest
import torch

from flashrnn_compile import build
from flashrnn_compile.cells import CELLS
from flashrnn_compile.testing import rel_err

HARNESS = r"""
#include <cstdio>
#include <cstring>
#include "common/cells.cuh"
using namespace flashrnn;
template <typename Cell> void run(int n) {
  constexpr int G = Cell::G, S = Cell::S;
  for (int i = 0; i < n; ++i) {
    float gx[G], rhb[G], s[S], ds_new[S], s_new[S], dgx[G], drhb[G], ds[S];
    for (float& v : gx) std::scanf("%a", &v);
    for (float& v : rhb) std::scanf("%a", &v);
    for (float& v : s) std::scanf("%a", &v);
    for (float& v : ds_new) std::scanf("%a", &v);
    Cell::forward(gx, rhb, s, s_new);
    Cell::backward(gx, rhb, s, ds_new, dgx, drhb, ds);
    for (float v : s_new) std::printf("%a ", v);
    for (float v : dgx) std::printf("%a ", v);
    for (float v : drhb) std::printf("%a ", v);
    for (float v : ds) std::printf("%a ", v);
    std::printf("\n");
  }
}
int main() {
  char name[64];
  int n;
  while (std::scanf("%63s %d", name, &n) == 2) {
#define FLASHRNN_RUN(Cell) if (!std::strcmp(name, #Cell)) { run<Cell>(n); continue; }
    FLASHRNN_FOR_EACH_CELL(FLASHRNN_RUN)
    std::printf("unknown functor %s\n", name);
    return 2;
  }
  return 0;
}
"""

N = 256


@pytest.fixture(scope="module")
def harness(tmp_path_factory):
    nvcc = build.find_nvcc() or shutil.which("nvcc")
    if nvcc is None:
        pytest.skip("nvcc not found: cells.cuh cannot be compiled here")
    d = tmp_path_factory.mktemp("cells_cuh")
    (d / "harness.cu").write_text(HARNESS)
    exe = d / "harness"
    subprocess.run([nvcc, "-std=c++17", "-O1", "-I", str(build.csrc_dir()), str(d / "harness.cu"), "-o", str(exe)],
                   check=True, capture_output=True)
    return exe


def _inputs(spec, g):
    G, S = spec.num_gates, spec.num_states
    gx = 2 * torch.randn(N, G, generator=g)
    rhb = 2 * torch.randn(N, G, generator=g)
    s = torch.randn(N, S, generator=g)
    if "n" in spec.states:  # the sLSTM normaliser is positive
        k = spec.states.index("n")
        s[:, k] = 1 + torch.rand(N, generator=g)
    ds_new = torch.randn(N, S, generator=g)
    return gx, rhb, s, ds_new  # float32


def _reference(spec, gx, rhb, s, ds_new):
    """float64 forward and vjp of cells.py's step; shapes [N, 1, G, 1] / [N, 1, 1]."""
    gx64, rhb64 = gx.double()[:, None, :, None], rhb.double()[:, None, :, None]
    states = tuple(s.double()[:, k, None, None] for k in range(spec.num_states))
    s_new, vjp = torch.func.vjp(spec.step, gx64, rhb64, states)
    dgx, drhb, ds = vjp(tuple(ds_new.double()[:, k, None, None] for k in range(spec.num_states)))
    flat = lambda ts: torch.stack([t.reshape(N) for t in ts], dim=1)  # noqa: E731
    return flat(s_new), dgx.reshape(N, -1), drhb.reshape(N, -1), flat(ds)


@pytest.mark.parametrize("cell", sorted(CELLS))
def test_functor_matches_cells_py(harness, cell):
    spec = CELLS[cell]
    G, S = spec.num_gates, spec.num_states
    gx, rhb, s, ds_new = _inputs(spec, torch.Generator().manual_seed(len(cell)))
    rows = torch.cat([gx, rhb, s, ds_new], dim=1)
    text = f"{spec.functor} {N}\n" + "\n".join(" ".join(float(v).hex() for v in row.tolist()) for row in rows)
    out = subprocess.run([str(harness)], input=text, capture_output=True, text=True, check=True).stdout
    got = torch.tensor([[float.fromhex(v) for v in line.split()] for line in out.strip().splitlines()],
                       dtype=torch.float64)
    assert got.shape == (N, S + G + G + S)
    ours = torch.split(got, [S, G, G, S], dim=1)
    for name, o, r in zip(("s_new", "dgx", "drhb", "ds"), ours, _reference(spec, gx, rhb, s, ds_new)):
        assert rel_err(o, r) < 1e-5, (cell, name, rel_err(o, r))

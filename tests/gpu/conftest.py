"""tests/gpu/: need a CUDA device; skipped (with the reason) where there is none.

Inputs shared by the GPU tests: random values rounded so that float32, bfloat16 and float16 hold
them exactly (one float64 reference serves the three dtypes).
"""

from __future__ import annotations

import pytest
import torch

from flashrnn_compile.cells import get_cell


def pytest_collection_modifyitems(config, items):
    if torch.cuda.is_available():
        return
    skip = pytest.mark.skip(reason="needs a CUDA device (tests/gpu/)")
    for item in items:
        if "tests/gpu/" in str(item.fspath).replace("\\", "/"):
            item.add_marker(skip)


def exact(x: torch.Tensor) -> torch.Tensor:
    """Round to bfloat16 and drop magnitudes under float16's normal range: exact in all three."""
    x = x.to(torch.bfloat16).double()
    return torch.where(x.abs() < 2.0**-14, torch.zeros_like(x), x)


# initial value of each state by name (the sLSTM normaliser n must stay positive)
_STATE_SAMPLERS = {
    "h": lambda shape, g: 0.5 * torch.randn(shape, generator=g, dtype=torch.float64),
    "c": lambda shape, g: 0.5 * torch.randn(shape, generator=g, dtype=torch.float64),
    "n": lambda shape, g: 1.0 + torch.rand(shape, generator=g, dtype=torch.float64),
    "m": lambda shape, g: 0.5 * torch.randn(shape, generator=g, dtype=torch.float64),
}


def make_inputs(cell: str, T: int, B: int, NH: int, DH: int, seed: int, device="cuda"):
    """Fresh float64 inputs (exact in every dtype): gx [T,B,NH,G,DH], R [NH,G,DH,DH], b [NH,G,DH],
    s0 [S,B,NH,DH], and upstream gradients dh [T,B,NH,DH], dsT [S,B,NH,DH]."""
    spec = get_cell(cell)
    G = spec.num_gates
    g = torch.Generator().manual_seed(seed)
    gx = exact(torch.randn(T, B, NH, G, DH, generator=g, dtype=torch.float64))
    R = exact(0.7 / DH**0.5 * torch.randn(NH, G, DH, DH, generator=g, dtype=torch.float64))
    b = exact(0.1 * torch.randn(NH, G, DH, generator=g, dtype=torch.float64))
    s0 = exact(torch.stack([_STATE_SAMPLERS[name]((B, NH, DH), g) for name in spec.states]))
    dh = exact(torch.randn(T, B, NH, DH, generator=g, dtype=torch.float64))
    dsT = exact(torch.randn(spec.num_states, B, NH, DH, generator=g, dtype=torch.float64))
    return tuple(t.to(device) for t in (gx, R, b, s0, dh, dsT))

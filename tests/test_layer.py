"""recurrent_layer on the CPU: F.linear then recurrence(), values and gradients, and its errors.
(The one-call CUDA path: tests/gpu/test_layer_gpu.py.)"""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from flashrnn_compile import layer, recurrence, recurrent_layer
from flashrnn_compile.cells import get_cell


def _inputs(cell, T=6, B=3, NH=2, DH=8, I=5, seed=0):
    g = torch.Generator().manual_seed(seed)
    G, S = get_cell(cell).num_gates, get_cell(cell).num_states
    x = torch.randn(T, B, I, generator=g)
    W = torch.randn(NH * G * DH, I, generator=g) * I**-0.5
    b_in, R = torch.randn(NH * G * DH, generator=g) * 0.1, torch.randn(NH, G, DH, DH, generator=g) * DH**-0.5
    b, s0 = torch.randn(NH, G, DH, generator=g) * 0.1, torch.rand(S, B, NH, DH, generator=g) + 0.5
    return [t.requires_grad_(True) for t in (x, W, b_in, R, b, s0)]


@pytest.mark.parametrize("cell,reverse", [("lstm", False), ("gru", True), ("slstm", False)])
def test_cpu_layer_is_linear_then_recurrence(cell, reverse):
    a = _inputs(cell)
    b_ = [t.detach().clone().requires_grad_(True) for t in a]
    before = layer.STATS["linear_then_recurrence"]
    h, sT = recurrent_layer(*a, cell=cell, reverse=reverse)
    assert layer.STATS["linear_then_recurrence"] == before + 1
    x, W, b_in, R, b, s0 = b_
    h2, s2 = recurrence(F.linear(x, W, b_in).view(6, 3, 2, -1, 8), R, b, s0, cell=cell, reverse=reverse)
    assert torch.equal(h, h2) and torch.equal(sT, s2)
    g1 = torch.autograd.grad((h.sum() + sT.sum()), a)
    g2 = torch.autograd.grad((h2.sum() + s2.sum()), b_)
    for u, v in zip(g1, g2):
        assert torch.equal(u, v)


def test_without_input_bias_and_default_state():
    x, W, _, R, b, _ = _inputs("lstm")
    h, _ = recurrent_layer(x, W, None, R, b, cell="lstm")
    h2, _ = recurrence(F.linear(x, W).view(6, 3, 2, 4, 8), R, b, cell="lstm")
    assert torch.equal(h, h2)


@pytest.mark.parametrize("change,match", [
    (lambda a: a.__setitem__(0, a[0][0]), r"x: expected 3 dims \[T, B, I\]"),
    (lambda a: a.__setitem__(1, a[1][:-1]), r"W: expected \[NH\*G\*DH, I\] = \[64, 5\]"),
    (lambda a: a.__setitem__(2, a[2][:3]), r"b_in: expected None or \[NH\*G\*DH\] = \[64\]"),
    (lambda a: a.__setitem__(1, a[1].double()), r"W: expected dtype torch.float32"),
    (lambda a: a.__setitem__(4, a[4][:1]), r"b: expected \[NH, G, DH\]"),
])
def test_bad_arguments_name_the_argument(change, match):
    a = [t.detach() for t in _inputs("lstm")]
    change(a)
    with pytest.raises(ValueError, match=match):
        recurrent_layer(*a, cell="lstm")


def test_chunks_out_of_range():
    with pytest.raises(ValueError, match=r"chunks: expected 1 \.\. 16, got 17"):
        recurrent_layer(*[t.detach() for t in _inputs("lstm")], cell="lstm", chunks=17)


def test_forward_chunks(monkeypatch):
    monkeypatch.setattr(layer, "FWD_CHUNKS", None)
    assert [layer.fwd_chunks(T) for T in (1, 511, 512, 767, 768, 5000)] == [1, 1, 2, 2, 3, 3]
    monkeypatch.setattr(layer, "FWD_CHUNKS", 40)  # within 1 .. 16 and T >= 2K - 1
    assert layer.fwd_chunks(3) == 2 and layer.fwd_chunks(31) == 16 and layer.fwd_chunks(1024) == 16
    monkeypatch.setattr(layer, "FWD_CHUNKS", 0)
    assert layer.fwd_chunks(1024) == 1


def test_default_chunks(monkeypatch):
    monkeypatch.delenv("FLASHRNN_LAYER_CHUNKS", raising=False)
    assert [layer.default_chunks(T) for T in (1, 255, 256, 700, 1024, 5000)] == [1, 1, 1, 2, 4, 4]
    monkeypatch.setenv("FLASHRNN_LAYER_CHUNKS", "40")
    assert layer.default_chunks(3) == 3 and layer.default_chunks(1024) == 16

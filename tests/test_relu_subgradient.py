"""The GPU tests' float64 helpers for elman_relu in float32 (tests/gpu/conftest.py), checked on the
CPU: the hand-written subgradient backward equals autograd's float64 gradients when given the
float64 reference's own ReLU pattern, and a flip far from the kink is reported."""

from __future__ import annotations

import pytest
import torch

from flashrnn_compile import reference
from tests.gpu.conftest import (make_inputs, relu_flips_outside_rounding, relu_subgradient_grads,
                                run_with_grads)


@pytest.mark.parametrize("reverse", [False, True], ids=["fwd", "rev"])
def test_subgradient_at_reference_kinks_is_autograd(reverse):
    T, B, NH, DH = 9, 3, 2, 5
    gx, R, b, s0, dh, dsT = make_inputs("elman_relu", T, B, NH, DH, seed=7, device="cpu")
    ref = run_with_grads(lambda *a: reference.forward(*a, "elman_relu", reverse, False)[:2], (gx, R, b, s0), dh, dsT)
    mask = ref[0] > 0  # [T, B, NH, DH]
    assert 0 < int(mask.sum()) < mask.numel()  # both sides of the kink occur
    grads = relu_subgradient_grads(gx, R, b, s0, ref[0], dh, dsT, reverse, mask)
    for name, ours, want in zip(("dgx", "dR", "db", "ds0"), grads, ref[2:]):
        assert ours.shape == want.shape, name
        torch.testing.assert_close(ours, want, rtol=1e-12, atol=1e-12, msg=name)
    assert relu_flips_outside_rounding(gx, R, b, s0, ref[0], reverse, mask, torch.float32) == (0, 0)


def test_flip_far_from_the_kink_is_reported():
    T, B, NH, DH = 6, 2, 1, 4
    gx, R, b, s0, dh, dsT = make_inputs("elman_relu", T, B, NH, DH, seed=3, device="cpu")
    h = reference.forward(gx, R, b, s0, "elman_relu", False, False)[0]
    mask = (h > 0).clone()
    mask[2, 1, 0, 3] = ~mask[2, 1, 0, 3]
    bad, flips = relu_flips_outside_rounding(gx, R, b, s0, h, False, mask, torch.float32)
    assert (bad, flips) == (1, 1)
    grads = relu_subgradient_grads(gx, R, b, s0, h, dh, dsT, False, mask)
    ref = run_with_grads(lambda *a: reference.forward(*a, "elman_relu", False, False)[:2], (gx, R, b, s0), dh, dsT)
    assert not torch.allclose(grads[0], ref[2])  # the flipped derivative shows in dgx

"""A hand-written multi-head LSTM loop compiled with backend="flashrnn" on the GPU: the reroll
pass finds the recurrence, the planner picks the fused_block kernel, and 3 SGD steps in bfloat16
give losses and parameters within 2x the error of eager bfloat16, both against float64."""

import copy

import pytest
import torch

from flashrnn_compile.context import reports, reset_stats
from tests.test_reroll_models import MultiHeadLSTMEinsum

from .conftest import assert_trains_like_eager, sgd_losses


@pytest.mark.parametrize("NH,DH", [(4, 16), (2, 64)])
def test_multihead_loop_picks_fused_block_and_trains_like_eager(NH, DH):
    I, B, T = 24, 4, 12
    torch.manual_seed(0)
    base = MultiHeadLSTMEinsum(I, NH, DH).cuda()
    with torch.no_grad():  # the gallery draws 0.4 N(0, 1); unit-variance pre-activations here
        base.W.mul_(1 / (0.4 * I**0.5))
        base.R.mul_(1 / (0.4 * DH**0.5))
        base.b.mul_(0.1 / 0.4)
    runs = {
        "eager": copy.deepcopy(base).to(torch.bfloat16),
        "ours": copy.deepcopy(base).to(torch.bfloat16),
        "f64": copy.deepcopy(base).double(),
    }
    fns = dict(runs, ours=torch.compile(runs["ours"], backend="flashrnn", options={"inner": "aot_eager"}))
    g = torch.Generator(device="cuda").manual_seed(1)
    x = torch.randn(B, T, I, device="cuda", generator=g)
    target = torch.randn(B, T, NH * DH, device="cuda", generator=g)
    reset_stats()
    losses = sgd_losses(runs, fns, x, target, lr=0.1)
    rewrites = [w for r in reports() for w in r["rewrites"]]
    assert [w["source"] for w in rewrites] == ["handwritten"], reports()
    assert rewrites[0]["plan"]["family"] == "fused_block", rewrites[0]["plan"]
    assert_trains_like_eager(runs, losses)

"""A hand-written multi-head LSTM loop compiled with backend="flashrnn" on the GPU: the reroll
pass finds the recurrence, the planner picks the fused_block kernel, and 3 SGD steps in bfloat16
give losses and parameters within 2x the error of eager bfloat16, both against float64."""

import copy

import pytest
import torch

from flashrnn_compile.context import reports, reset_stats
from flashrnn_compile.testing import rel_err, within
from tests.test_reroll_models import MultiHeadLSTMEinsum


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
    losses = {k: [] for k in runs}
    for _ in range(3):
        for name, mod in runs.items():
            dt = torch.float64 if name == "f64" else torch.bfloat16
            mod.zero_grad()
            loss = ((fns[name](x.to(dt)) - target.to(dt)) ** 2).mean()
            loss.backward()
            with torch.no_grad():
                for p in mod.parameters():
                    p -= 0.1 * p.grad
            losses[name].append(loss.item())
    rewrites = [w for r in reports() for w in r["rewrites"]]
    assert [w["source"] for w in rewrites] == ["handwritten"], reports()
    assert rewrites[0]["plan"]["family"] == "fused_block", rewrites[0]["plan"]
    l64 = torch.tensor(losses["f64"])
    e_ours, e_eager = rel_err(torch.tensor(losses["ours"]), l64), rel_err(torch.tensor(losses["eager"]), l64)
    assert within(e_ours, e_eager), (losses, e_ours, e_eager)
    for (name, p), p_e, p64 in zip(runs["ours"].named_parameters(), runs["eager"].parameters(), runs["f64"].parameters()):
        e_ours, e_eager = rel_err(p.detach(), p64.detach()), rel_err(p_e.detach(), p64.detach())
        assert within(e_ours, e_eager), (name, e_ours, e_eager)

"""explain() and logging: the report without the inner compiler, counters untouched."""

import os
import subprocess
import sys

import pytest
import torch

import flashrnn_compile
from flashrnn_compile.context import Rewrite


@pytest.fixture
def one_rewrite_pass(monkeypatch):
    import flashrnn_compile.passes as P

    def fake(gm, ctx):
        ctx.rewrote(Rewrite("module", "gru", 2, 2, 7, 3, 1, 5, "float32",
                            {"family": "reference", "params": {}, "reason": "because"}, ["m.py:1"]))
        ctx.refused("handwritten", "weights differ between steps")
        return gm

    monkeypatch.setattr(P, "PASSES", [fake])


def test_explain_reports_and_leaves_stats_alone(one_rewrite_pass):
    flashrnn_compile.reset_stats()

    def f(x):
        return torch.tanh(x) * 2

    e = flashrnn_compile.explain(f, torch.randn(3))
    assert len(e.graphs) == 1
    assert [r["cell"] for r in e.rewrites] == ["gru"]
    assert [r["reason"] for r in e.refusals] == ["weights differ between steps"]
    text = str(e)
    assert "1 graph(s) captured." in text
    assert "| module | gru | 2 x 2 | 7 | 3 | 1 x 5 | float32 | reference: because | m.py:1 |" in text
    assert '"cell": "gru"' in e.to_json()
    assert flashrnn_compile.stats()["rewritten"] == 0


def test_torch_logs_shows_the_pass_decisions():
    code = (
        "import torch\n"
        "import flashrnn_compile.passes as P\n"
        "from flashrnn_compile.context import Rewrite\n"
        "def fake(gm, ctx):\n"
        "    ctx.refused('cell_loop', 'a reason to see')\n"
        "    return gm\n"
        "P.PASSES[:] = [fake]\n"
        "torch.compile(lambda x: x + 1, backend='flashrnn', options={'inner': 'eager'})(torch.randn(2))\n"
    )
    env = dict(os.environ, TORCH_LOGS="+flashrnn_compile")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, timeout=300)
    assert out.returncode == 0, out.stderr[-2000:]
    assert "left cell_loop as written: a reason to see" in out.stderr
    quiet = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300,
                           env={k: v for k, v in os.environ.items() if k != "TORCH_LOGS"})
    assert "a reason to see" not in quiet.stderr

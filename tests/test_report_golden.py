"""Golden report.md for three models (a 2-layer bidirectional nn.LSTM, a hand-written GRU loop, a
decoder loop that must be refused), and the report.json schema on every gallery model.

Regenerate the goldens after an intended change: EXPECTTEST_ACCEPT=1 pytest tests/test_report_golden.py
"""

import json
import os
import sys

import expecttest
import pytest
import torch
import torch.nn as nn

import flashrnn_compile
from flashrnn_compile.context import SOURCES

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)
import test_reroll as reroll_gallery  # noqa: E402
import test_reroll_models as G  # noqa: E402


class Encoder(nn.Module):
    def __init__(self):
        super().__init__()
        self.lstm = nn.LSTM(5, 6, num_layers=2, bidirectional=True)

    def forward(self, x):  # x [T, B, I]
        y, _ = self.lstm(x)
        return y.sum()


def _report_md(model, *inputs, tmp_path):
    torch._dynamo.reset()
    compiled = torch.compile(model, backend="flashrnn", options={"inner": "eager", "dump_dir": str(tmp_path)})
    compiled(*inputs)
    (folder,) = sorted(tmp_path.iterdir())
    return (folder / "report.md").read_text().replace(HERE + os.sep, "tests/")


class TestGoldenReports(expecttest.TestCase):
    @pytest.fixture(autouse=True)
    def _tmp(self, tmp_path):
        self.tmp_path = tmp_path

    def test_bidirectional_lstm(self):
        torch.manual_seed(0)
        text = _report_md(Encoder(), torch.randn(4, 3, 5), tmp_path=self.tmp_path)
        self.assertExpectedInline(text, """\
# flashrnn rewrite report

1 recurrence(s) rewritten, 0 refused.

## Rewritten

| source | cell | layers x dirs | T | B | NH x DH | dtype | plan | where |
|---|---|---|---|---|---|---|---|---|
| module | lstm | 2 x 2 | 4 | 3 | 1 x 6 | float32 | aten: on cpu ATen's own RNN kernel is faster than the reference: kept, wrapped in one opaque op so AOTAutograd does not unroll it (options plan='reference' rewrites it instead) | tests/test_report_golden.py:31 |

## The graph, before and after

5 calls before, 6 after. Calls whose count changed:

| call | before | after |
|---|---|---|
| `flashrnn::aten_rnn` | 0 | 1 |
| `getitem` | 1 | 3 |
| `lstm` | 1 | 0 |
| `zeros` | 2 | 1 |
""")

    def test_hand_written_gru(self):
        torch.manual_seed(0)
        text = _report_md(G.GRUHand(), torch.randn(G.B, G.T, G.I), tmp_path=self.tmp_path)
        self.assertExpectedInline(text, """\
# flashrnn rewrite report

1 recurrence(s) rewritten, 0 refused.

## Rewritten

| source | cell | layers x dirs | T | B | NH x DH | dtype | plan | where |
|---|---|---|---|---|---|---|---|---|
| handwritten | gru | 1 x 1 | 7 | 3 | 1 x 6 | float32 | reference: tensors on cpu: no CUDA kernel applies | tests/test_reroll_models.py:193, tests/test_reroll_models.py:194, tests/test_reroll_models.py:195, tests/test_reroll_models.py:196, tests/test_reroll_models.py:197, tests/test_reroll_models.py:198, tests/test_reroll_models.py:199, tests/test_reroll_models.py:200 |

## The graph, before and after

156 calls before, 40 after. Calls whose count changed:

| call | before | after |
|---|---|---|
| `add` | 28 | 3 |
| `broadcast_to` | 0 | 2 |
| `cat` | 0 | 1 |
| `chunk` | 14 | 0 |
| `contiguous` | 0 | 1 |
| `einsum` | 0 | 2 |
| `flashrnn::recurrence_fwd` | 0 | 1 |
| `flatten` | 0 | 1 |
| `getitem` | 49 | 2 |
| `linear` | 14 | 0 |
| `matmul` | 0 | 1 |
| `movedim` | 0 | 2 |
| `mul` | 21 | 0 |
| `narrow` | 0 | 6 |
| `permute` | 0 | 1 |
| `reshape` | 0 | 9 |
| `select` | 0 | 1 |
| `sigmoid` | 14 | 0 |
| `stack` | 1 | 2 |
| `sub` | 7 | 0 |
| `t` | 0 | 1 |
| `tanh` | 7 | 0 |
| `unflatten` | 0 | 1 |
| `zeros` | 0 | 2 |
""")

    def test_decoder_loop_is_refused(self):
        torch.manual_seed(0)
        model = G.DecoderFeedback()
        text = _report_md(model, torch.randn(G.B, G.I), torch.randn(G.B, G.H), torch.randn(G.B, G.H),
                          tmp_path=self.tmp_path)
        self.assertExpectedInline(text, """\
# flashrnn rewrite report

0 recurrence(s) rewritten, 1 refused.

## Refused (left as written)

| source | reason | where |
|---|---|---|
| cell_loop | no per-step input: the step input depends on an earlier state (an output fed back, or attention inside the loop) | tests/test_reroll_models.py:312, tests/test_reroll_models.py:313 |

## The graph, before and after

35 calls before, 36 after. Calls whose count changed:

| call | before | after |
|---|---|---|
| `getitem` | 13 | 14 |
""")


# ---- report.json schema on every model of the pass galleries ----------------------------------

REWRITE_KEYS = {
    "source": str, "cell": str, "layers": int, "directions": int, "steps": int, "batch": int,
    "heads": int, "head_dim": int, "dtype": str, "plan": dict, "user_code": list,
}


def _check_schema(report):
    assert set(report) == {"rewrites", "refusals"}
    for r in report["rewrites"]:
        assert set(r) == set(REWRITE_KEYS), sorted(r)
        for key, typ in REWRITE_KEYS.items():
            assert isinstance(r[key], typ), (key, r[key])
        assert r["source"] in SOURCES and r["cell"] in flashrnn_compile.CELLS
        assert min(r["layers"], r["directions"], r["steps"], r["batch"], r["heads"], r["head_dim"]) >= 1
        assert set(r["plan"]) == {"family", "params", "reason"} and r["plan"]["reason"]
        assert all(isinstance(u, str) and u.rsplit(":", 1)[1].isdigit() for u in r["user_code"])
    for r in report["refusals"]:
        assert set(r) == {"source", "reason", "user_code"}
        assert r["source"] in SOURCES and isinstance(r["reason"], str) and r["reason"]


@pytest.mark.parametrize("name", sorted(reroll_gallery.GALLERY))
def test_report_json_schema_reroll_gallery(name, tmp_path):
    torch.manual_seed(0)
    model = getattr(G, name)()
    inputs = reroll_gallery._inputs(name, torch.Generator().manual_seed(0))
    torch._dynamo.reset()
    torch.compile(model, backend="flashrnn", options={"inner": "eager", "dump_dir": str(tmp_path)})(*inputs)
    reports = [json.loads((d / "report.json").read_text()) for d in sorted(tmp_path.iterdir())]
    for report in reports:
        _check_schema(report)
    expected = reroll_gallery.GALLERY[name][0]
    assert sum(len(r["rewrites"]) for r in reports) == expected["rewritten"]
    assert sum(len(r["refusals"]) for r in reports) == expected["rejected"]


@pytest.mark.parametrize("plan", ["auto", "reference"])
@pytest.mark.parametrize(
    "make",
    [
        lambda: nn.LSTM(3, 4, num_layers=2, bidirectional=True, batch_first=True),
        lambda: nn.LSTM(3, 4, proj_size=2),
        lambda: nn.GRU(3, 4, bias=False),
        lambda: nn.RNN(3, 4, nonlinearity="relu", num_layers=3),
    ],
)
def test_report_json_schema_modules(make, plan, tmp_path):
    torch.manual_seed(0)
    torch._dynamo.reset()
    opts = {"inner": "eager", "dump_dir": str(tmp_path), "plan": plan}
    torch.compile(make(), backend="flashrnn", options=opts)(torch.randn(5, 2, 3))
    (folder,) = sorted(tmp_path.iterdir())
    report = json.loads((folder / "report.json").read_text())
    _check_schema(report)
    assert len(report["rewrites"]) == 1

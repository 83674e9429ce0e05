"""The mapping of the core op onto nn.LSTM / nn.GRU / nn.RNN that tests/gpu/test_cudnn.py uses to
measure cuDNN's error, checked on CPU in float64: outputs and every gradient equal the reference."""

from __future__ import annotations

import pytest
import torch

from flashrnn_compile import reference
from flashrnn_compile.testing import rel_err
from tests.gpu.conftest import make_inputs
from tests.gpu.test_cudnn import MODULES, _run, torch_rnn


@pytest.mark.parametrize("reverse", [False, True], ids=["fwd", "rev"])
@pytest.mark.parametrize("cell", sorted(MODULES))
def test_torch_rnn_mapping_equals_reference(cell, reverse):
    gx, R, b, s0, dh, dsT = make_inputs(cell, 6, 3, 1, 5, seed=4, device="cpu")
    ours = _run(lambda *a: torch_rnn(cell, *a, reverse), (gx, R, b, s0), dh, dsT)
    ref = _run(lambda *a: reference.forward(*a, cell, reverse, False)[:2], (gx, R, b, s0), dh, dsT)
    for name, o, r in zip(("h", "sT", "dgx", "dR", "db", "ds0"), ours, ref):
        assert rel_err(o, r) < 1e-12, (name, rel_err(o, r))

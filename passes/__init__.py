"""FX passes over the Dynamo (torch-level) graph, run in the order of `PASSES`.

Each pass is a function `(gm, ctx) -> gm` in a file of its own. It records every rewrite and every
refusal, with the reason, in `ctx` (a `flashrnn_compile.context.PassContext`).
"""

from .canonicalize import canonicalize_pass
from .reroll import reroll_pass
from .rnn_module import rnn_module_pass

PASSES = [rnn_module_pass, canonicalize_pass, reroll_pass]

"""flashrnn_compile: a torch.compile backend for recurrent networks.

    model = torch.compile(model, backend="flashrnn")

finds every recurrence in the graph Dynamo captures (nn.LSTM/GRU/RNN modules, loops over cells,
hand-written cells), replaces it by one call of the core op `torch.ops.flashrnn.recurrence_fwd`
with a kernel plan from the ConstrINT planner, and hands the rest to Inductor.
"""

from . import aten_rnn, ops  # noqa: F401  (register torch.ops.flashrnn.*)
from .backend import flashrnn_backend
from .cells import CELLS, get_cell
from .context import reports, reset_stats, stats
from .explain import Explanation, explain
from .ops import recurrence
from .planner import Plan, plan

__all__ = [
    "CELLS",
    "Explanation",
    "explain",
    "Plan",
    "flashrnn_backend",
    "get_cell",
    "plan",
    "recurrence",
    "reports",
    "reset_stats",
    "stats",
]

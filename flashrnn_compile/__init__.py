"""flashrnn_compile: a torch.compile backend for recurrent networks.

    model = torch.compile(model, backend="flashrnn")

finds every recurrence in the graph Dynamo captures (nn.LSTM/GRU/RNN modules, loops over cells,
hand-written cells), replaces it by one call of the core op `torch.ops.flashrnn.recurrence_fwd`
with a kernel plan from the ConstrINT planner, and hands the rest to Inductor.
"""

from . import _checkout

_checkout.install()

from . import aten_rnn, ops  # noqa: E402, F401  (register torch.ops.flashrnn.*)
from .backend import flashrnn_backend  # noqa: E402
from .cells import CELLS, get_cell  # noqa: E402
from .context import reports, reset_stats, stats  # noqa: E402
from .explain import Explanation, explain  # noqa: E402
from .layer import recurrent_layer  # noqa: E402
from .ops import recurrence  # noqa: E402
from .planner import Plan, plan  # noqa: E402

_checkout.register_backend_if_not_installed(flashrnn_backend)

__all__ = [
    "CELLS",
    "Explanation",
    "explain",
    "Plan",
    "flashrnn_backend",
    "get_cell",
    "plan",
    "recurrence",
    "recurrent_layer",
    "reports",
    "reset_stats",
    "stats",
]

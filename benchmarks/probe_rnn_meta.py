"""Print Dynamo's example values of torch.lstm / gru / rnn_tanh nodes on this device, and the
rnn_module pass's refusal reasons in full (a diagnostic for the CUDA path)."""
import torch
import flashrnn_compile.backend  # noqa: F401
from flashrnn_compile.context import reports, reset_stats

dev = "cuda" if torch.cuda.is_available() else "cpu"
def show(gm, example_inputs):
    for n in gm.graph.nodes:
        if n.target in (torch.lstm, torch.gru, torch.rnn_tanh):
            for i, v in enumerate(n.meta["example_value"]):
                print("   ", n.target.__name__, i, v.dtype, tuple(v.shape), v.stride())
    return gm.forward
for kind, kw in [("LSTM", {}), ("LSTM", dict(num_layers=2, bidirectional=True, batch_first=True)), ("GRU", {}), ("RNN", {})]:
    for dt in (torch.float32, torch.bfloat16):
        torch._dynamo.reset()
        mod = getattr(torch.nn, kind)(32, 64, **kw).to(dev, dt)
        x = torch.randn(12, 4, 32, device=dev, dtype=dt)
        print(kind, kw, dt)
        torch.compile(mod, backend=show)(x)
        torch._dynamo.reset(); reset_stats()
        torch.compile(mod, backend="flashrnn", options={"inner": "aot_eager"})(x)
        for r in reports():
            for w in r["refusals"]:
                print("   REFUSED:", w["reason"])
            for w in r["rewrites"]:
                print("   rewrite:", w["plan"].get("family"))

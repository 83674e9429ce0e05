"""python -m flashrnn_compile.demo [--inner inductor|aot_eager|eager] [--steps T] [--batch B]

Compiles a small LSTM language model with `torch.compile(model, backend="flashrnn")`, prints what
was rewritten and which kernel plan each recurrence got, checks outputs and gradients against
eager, and times eager against compiled on whatever device is there (CUDA if present).
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch
import torch.nn as nn

import flashrnn_compile
from flashrnn_compile.testing import rel_err


class LSTMLanguageModel(nn.Module):
    def __init__(self, vocab: int = 512, emb: int = 128, hidden: int = 256, layers: int = 2):
        super().__init__()
        self.embed = nn.Embedding(vocab, emb)
        self.lstm = nn.LSTM(emb, hidden, num_layers=layers, batch_first=True)
        self.head = nn.Linear(hidden, vocab)

    def forward(self, tokens):  # tokens [B, T] -> logits [B, T, vocab]
        y, _ = self.lstm(self.embed(tokens))
        return self.head(y)


def _time_ms(fn, device: torch.device, repeats: int) -> float:
    """Median milliseconds of fn() after two warm-up calls (CUDA events on the GPU)."""
    for _ in range(2):
        fn()
    times = []
    for _ in range(repeats):
        if device.type == "cuda":
            start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            start.record()
            fn()
            end.record()
            torch.cuda.synchronize()
            times.append(start.elapsed_time(end))
        else:
            t0 = time.perf_counter()
            fn()
            times.append((time.perf_counter() - t0) * 1e3)
    return statistics.median(times)


def _print_reports() -> None:
    for report in flashrnn_compile.reports():
        for r in report["rewrites"]:
            print(
                f"  rewrote {r['source']:<11} {r['cell']:<5} layers={r['layers']} dirs={r['directions']} "
                f"T={r['steps']} B={r['batch']} {r['heads']}x{r['head_dim']} {r['dtype']}"
            )
            print(f"      plan: {r['plan']['family']} {r['plan']['params']} ({r['plan']['reason']})")
        for r in report["refusals"]:
            print(f"  left as written ({r['source']}): {r['reason']}")


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--inner", default="inductor", choices=("inductor", "aot_eager", "eager"))
    parser.add_argument("--steps", type=int, default=64)
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--repeats", type=int, default=10)
    args = parser.parse_args(argv)

    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    dtype = torch.bfloat16 if device.type == "cuda" else torch.float32
    torch.manual_seed(0)
    model = LSTMLanguageModel().to(device=device, dtype=dtype)
    tokens = torch.randint(0, 512, (args.batch, args.steps), device=device)
    print(f"device {device}, dtype {dtype}, torch {torch.__version__}, inner compiler {args.inner}")
    print(f"model: Embedding -> nn.LSTM(128, 256, num_layers=2) -> Linear; tokens [B={args.batch}, T={args.steps}]")

    flashrnn_compile.reset_stats()
    compiled = torch.compile(model, backend="flashrnn", options={"inner": args.inner})
    t0 = time.perf_counter()
    logits = compiled(tokens)
    loss = logits.float().logsumexp(-1).mean()
    loss.backward()
    compile_s = time.perf_counter() - t0
    grads = {n: p.grad.clone() for n, p in model.named_parameters()}
    model.zero_grad()

    eager_logits = model(tokens)
    eager_logits.float().logsumexp(-1).mean().backward()
    print(f"\ncompiled in {compile_s:.1f} s; stats: {flashrnn_compile.stats()}")
    _print_reports()

    out_err = rel_err(logits, eager_logits)
    grad_err = max(rel_err(grads[n], p.grad) for n, p in model.named_parameters())
    tol = 1e-5 if dtype == torch.float32 else 2e-2
    ok = out_err <= tol and grad_err <= tol
    print(f"\nagainst eager: logits rel. error {out_err:.2e}, worst gradient rel. error {grad_err:.2e} "
          f"({'OK' if ok else 'MISMATCH'}, tolerance {tol:g})")

    with torch.no_grad():
        eager_ms = _time_ms(lambda: model(tokens), device, args.repeats)
        compiled_ms = _time_ms(lambda: compiled(tokens), device, args.repeats)
    print(f"\nforward, median of {args.repeats}: eager {eager_ms:.2f} ms, compiled {compiled_ms:.2f} ms "
          f"({eager_ms / compiled_ms:.2f}x)")
    return 0 if ok else 1


if __name__ == "__main__":
    raise SystemExit(main())

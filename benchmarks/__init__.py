"""Benchmarks of flashrnn_compile. The harness is `python -m benchmarks.run --suite layer|model|floor`
(see benchmarks/run.py); the older single-purpose scripts (bench_alternating.py,
bench_fused_block.py, ...) still run as plain scripts: `python benchmarks/bench_fused_block.py`."""

"""The suites of `python -m benchmarks.run`: floor (synchronisation floors), layer (one recurrent
layer: our kernel families, torch.compile, cuDNN, Inductor, FlashRNN 1.0.8) and model (whole
models: eager vs torch.compile default vs backend="flashrnn", with compile times)."""

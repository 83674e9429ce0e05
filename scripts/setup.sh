#!/usr/bin/env bash
# Creates .venv (when missing) with torch and the project installed editable, with test extras.
# torch comes first and pinned: on the CPU machines `pip install torch==2.13.0` takes the local CPU
# wheel, while a bare `torch` requirement with no torch installed would pull a multi-GB CUDA build.
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON=${PYTHON:-python3}
TORCH_SPEC=${FLASHRNN_TORCH_SPEC:-torch==2.13.0}
[ -x .venv/bin/python ] || "$PYTHON" -m venv .venv
.venv/bin/python -c "import torch" 2>/dev/null || .venv/bin/python -m pip install -q "$TORCH_SPEC"
.venv/bin/python -m pip install -q -e ".[test]"

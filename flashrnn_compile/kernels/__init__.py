"""CUDA kernel families. Importing this package registers them with the runtime:

    alternating   per step a cuBLAS GEMM (R h over the heads) and one pointwise kernel; any size
                  (csrc/alternating, built by flashrnn_compile.build on first use)
    fused_block   one persistent block per (head, batch tile) for all steps (csrc/fused, one small
                  library per configuration, built by flashrnn_compile.build.ensure_variant)

The runtime imports this package the first time a non-reference plan runs. Each family's
`unavailable(device)` gives the reason it cannot run there (not CUDA, no nvcc, build failed), and
the runtime then warns once and uses the reference.
"""

from .. import runtime
from . import alternating, fused_block

runtime.register(
    runtime.Implementation(
        "alternating",
        forward=alternating.forward,
        backward=alternating.backward,
        unavailable=alternating.unavailable,
    )
)

runtime.register(
    runtime.Implementation(
        "fused_block",
        forward=fused_block.forward,
        backward=fused_block.backward,
        unavailable=fused_block.unavailable,
    )
)

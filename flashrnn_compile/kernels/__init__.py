"""CUDA kernel families. Importing this package registers them with the runtime:

    alternating   per step a cuBLAS GEMM (R h over the heads) and one pointwise kernel; any size
                  (csrc/alternating, built by flashrnn_compile.build on first use)

The runtime imports this package the first time a non-reference plan runs. Each family's
`unavailable(device)` gives the reason it cannot run there (not CUDA, no nvcc, build failed), and
the runtime then warns once and uses the reference.
"""

from .. import runtime
from . import alternating

runtime.register(
    runtime.Implementation(
        "alternating",
        forward=alternating.forward,
        backward=alternating.backward,
        unavailable=alternating.unavailable,
    )
)

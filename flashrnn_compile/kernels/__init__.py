"""CUDA kernel families. Importing this package registers them with the runtime:

    alternating   per step a cuBLAS GEMM (R h over the heads) and one pointwise kernel; any size
                  (csrc/alternating, built by flashrnn_compile.build on first use)
    fused_block   one persistent block per (head, batch tile) for all steps (csrc/fused, one small
                  library per configuration, built by flashrnn_compile.build.ensure_variant)
    fused_cluster R of a head split over a thread-block cluster (sm_90), one persistent cluster per
                  (head, batch tile), forward and backward
    fused_grid    R of a head split over blocks of a cooperative grid (sm_80+), h (forward) and
                  drhb (backward) through global memory; FLASHRNN_GRID=0 withdraws it from the
                  planner; explicit plans run it regardless

The runtime imports this package the first time a non-reference plan runs. Each family's
`unavailable(device)` gives the reason it cannot run there (not CUDA, no nvcc, build failed), and
the runtime then warns once and uses the reference.
"""

from .. import runtime
from . import alternating, fused_block, fused_cluster, fused_grid

for _name, _module in (("alternating", alternating), ("fused_block", fused_block), ("fused_cluster", fused_cluster),
                       ("fused_grid", fused_grid)):
    runtime.register(
        runtime.Implementation(_name, forward=_module.forward, backward=_module.backward, unavailable=_module.unavailable,
                               offered=getattr(_module, "offered", lambda: True))
    )
del _name, _module

"""The hardware model the planner reasons about: one GPU, as numbers.

`from_device(index)` reads `torch.cuda.get_device_properties` (no extra CUDA extension);
`PRESETS` describe GPUs by name for tests and for planning ahead of time. `resolve(gpu)` accepts
None (the current CUDA device, or None when there is no CUDA), a device index, a preset name, or
a `GPU`.

Facts not exposed by torch (registers per block, blocks per SM, cluster limits) come from the
compute capability: 65536 registers per block on every sm_70+ part; clusters exist from sm_90,
8 blocks portable and 16 with the non-portable attribute.
"""

from __future__ import annotations

import dataclasses
from typing import Dict, Optional, Union

_MAX_BLOCKS_PER_SM = {(7, 0): 32, (7, 5): 16, (8, 0): 32, (8, 6): 16, (8, 7): 16, (8, 9): 24, (9, 0): 32}


@dataclasses.dataclass(frozen=True)
class GPU:
    name: str
    capability: tuple  # (major, minor)
    sm_count: int
    regs_per_sm: int  # 32-bit registers
    regs_per_block: int
    smem_per_sm: int  # bytes
    smem_per_block_optin: int  # bytes, with cudaFuncAttributeMaxDynamicSharedMemorySize
    max_threads_per_block: int
    max_threads_per_sm: int
    max_blocks_per_sm: int
    max_cluster_size: int  # 0: no thread-block clusters; 16 with the non-portable attribute
    sms_per_gpc: int  # SMs a cluster can spread over (clusters stay inside one GPC)

    def __post_init__(self):
        for f in dataclasses.fields(self):
            v = getattr(self, f.name)
            if f.name not in ("name", "capability") and (not isinstance(v, int) or v < 0):
                raise ValueError(f"GPU.{f.name}: expected a non-negative int, got {v!r}")
        if not (isinstance(self.capability, tuple) and len(self.capability) == 2):
            raise ValueError(f"GPU.capability: expected (major, minor), got {self.capability!r}")

    @property
    def cc(self) -> int:
        return 10 * self.capability[0] + self.capability[1]

    def key(self) -> Dict[str, object]:
        """Everything that can change a plan (used in the plan cache key)."""
        d = dataclasses.asdict(self)
        d["capability"] = list(self.capability)
        return d


def _cluster_size(capability) -> int:
    return 16 if tuple(capability) >= (9, 0) else 0


def _preset(name, cc, sms, smem_sm_kib, smem_block_kib, threads_sm, gpc) -> GPU:
    return GPU(
        name=name,
        capability=cc,
        sm_count=sms,
        regs_per_sm=65536,
        regs_per_block=65536,
        smem_per_sm=smem_sm_kib * 1024,
        smem_per_block_optin=smem_block_kib * 1024,
        max_threads_per_block=1024,
        max_threads_per_sm=threads_sm,
        max_blocks_per_sm=_MAX_BLOCKS_PER_SM[cc],
        max_cluster_size=_cluster_size(cc),
        sms_per_gpc=gpc,
    )


# Figures from the CUDA programming guide's per-capability tables and the vendors' data sheets.
PRESETS: Dict[str, GPU] = {
    g.name: g
    for g in (
        _preset("h100-sxm", (9, 0), 132, 228, 227, 2048, 16),
        _preset("h200", (9, 0), 132, 228, 227, 2048, 16),
        _preset("a100-80gb", (8, 0), 108, 164, 163, 2048, 16),
        _preset("l4", (8, 9), 58, 100, 99, 1536, 8),
        _preset("rtx4090", (8, 9), 128, 100, 99, 1536, 8),
    )
}


def from_device(index: int) -> GPU:
    """The model of CUDA device `index`, read from torch.cuda.get_device_properties."""
    import torch

    if not torch.cuda.is_available():
        raise ValueError(f"gpu: device {index} requested but CUDA is not available")
    if not 0 <= index < torch.cuda.device_count():
        raise ValueError(f"gpu: expected a device index in [0, {torch.cuda.device_count()}), got {index}")
    p = torch.cuda.get_device_properties(index)
    cc = (p.major, p.minor)
    smem_sm = int(getattr(p, "shared_memory_per_multiprocessor", 0) or 0)
    return GPU(
        name=str(p.name),
        capability=cc,
        sm_count=int(p.multi_processor_count),
        regs_per_sm=int(getattr(p, "regs_per_multiprocessor", 65536) or 65536),
        regs_per_block=int(getattr(p, "regs_per_block", 65536) or 65536),
        smem_per_sm=smem_sm,
        smem_per_block_optin=int(getattr(p, "shared_memory_per_block_optin", 0) or getattr(p, "shared_memory_per_block", 0)),
        max_threads_per_block=int(getattr(p, "max_threads_per_block", 1024) or 1024),
        max_threads_per_sm=int(getattr(p, "max_threads_per_multi_processor", 2048) or 2048),
        max_blocks_per_sm=_MAX_BLOCKS_PER_SM.get(cc, 16),
        max_cluster_size=_cluster_size(cc),
        sms_per_gpc=16 if cc >= (8, 0) and smem_sm >= 160 * 1024 else 8,
    )


def resolve(gpu: Union[None, int, str, GPU]) -> Optional[GPU]:
    """None -> the current CUDA device (None without CUDA); int -> that device; str -> a preset."""
    if isinstance(gpu, GPU):
        return gpu
    if isinstance(gpu, str):
        if gpu not in PRESETS:
            raise ValueError(f"gpu: expected a preset name in {sorted(PRESETS)}, got {gpu!r}")
        return PRESETS[gpu]
    if isinstance(gpu, bool) or not (gpu is None or isinstance(gpu, int)):
        raise ValueError(f"gpu: expected None, a device index, a preset name {sorted(PRESETS)} or a GPU, got {gpu!r}")
    import torch

    if gpu is None:
        if not torch.cuda.is_available():
            return None
        gpu = torch.cuda.current_device()
    return from_device(gpu)

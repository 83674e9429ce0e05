"""Numerics helpers shared by the tests: errors against a float64 reference, measured the same
way for our implementation and for PyTorch's own in the same dtype."""

from __future__ import annotations

import torch


def rel_err(x: torch.Tensor, ref: torch.Tensor) -> float:
    """||x - ref|| / ||ref|| in float64 (NaN if x has a NaN or Inf)."""
    x64, ref64 = x.detach().double(), ref.detach().double()
    if not torch.isfinite(x64).all():
        return float("nan")
    denom = ref64.norm().item()
    diff = (x64 - ref64).norm().item()
    return diff / denom if denom > 0 else diff


def within(ours: float, torch_err: float, factor: float = 2.0, floor: float = 0.0) -> bool:
    """err(ours) <= factor * err(torch); `floor` only for float64, where both errors are ~0."""
    return ours == ours and ours <= factor * torch_err + floor

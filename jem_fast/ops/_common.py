"""Small helpers shared by the op wrappers."""
from __future__ import annotations

import torch

ROUTES = ("auto", "gram", "covariance")


def acc_dtype(dtype: torch.dtype) -> torch.dtype:
    """Accumulation dtype of the kernels: float64 stays float64, everything else float32."""
    return torch.float64 if dtype == torch.float64 else torch.float32


def compute_dtype(dtype: torch.dtype, device: torch.device) -> torch.dtype:
    """dtype of the centered/normalized copies the kernels keep (mirrors host_utils.h)."""
    if device.type == "cuda":
        return dtype
    return torch.float32 if dtype in (torch.float16, torch.bfloat16) else dtype


def check_route(route: str) -> None:
    if route not in ROUTES:
        raise ValueError(f"route must be one of {ROUTES}, got {route!r}")


def shape_2d(z: torch.Tensor, name: str):
    """(rows, cols) of a 2-D tensor argument, or a TypeError/ValueError naming it."""
    if not isinstance(z, torch.Tensor):
        raise TypeError(f"{name} must be a torch.Tensor, got {type(z).__name__}")
    if z.dim() != 2:
        raise ValueError(f"{name} must be 2-D (batch, dim), got shape {tuple(z.shape)}")
    return z.shape[0], z.shape[1]

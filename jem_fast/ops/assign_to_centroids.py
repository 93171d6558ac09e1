"""Nearest-centroid assignment by cosine similarity: jem_fast::assign_to_centroids.

    index[i] = argmax_k cos(features_i, centroids_k)     int64, ties -> the lowest k
    score[i] = that cosine                               float32 (float64 for float64 inputs)

The B x K similarity matrix is never stored (CPU: one fused kernel with a running max per row;
CUDA: bounded tiles of cuBLAS dot products folded into the running max at once). Zero-norm
features or centroids have cosine 0 with everything (no NaN).

Assignment is a hard argmax and has no useful gradient: no autograd formula is registered, the
outputs never require grad, and the wrapper runs the op under torch.no_grad().
"""
from __future__ import annotations

from typing import Tuple

import torch

from .._extension import require_extension
from ._common import acc_dtype, check_devices

require_extension()

_DTYPES = (torch.float32, torch.float64, torch.float16, torch.bfloat16)


@torch.library.register_fake("jem_fast::assign_to_centroids")
def _assign_to_centroids_fake(features, centroids):
    # The checks of the CPU/CUDA kernels, so that a compiled graph fails the same way.
    op = "assign_to_centroids"
    torch._check(features.dim() == 2, lambda: f"{op}: features must be 2-D (batch, dim), got "
                 f"shape {tuple(features.shape)}")
    torch._check(centroids.dim() == 2, lambda: f"{op}: centroids must be 2-D (num_centroids, "
                 f"dim), got shape {tuple(centroids.shape)}")
    torch._check(features.shape[1] == centroids.shape[1], lambda: f"{op}: features and "
                 f"centroids must have the same dimension, got {features.shape[1]} and "
                 f"{centroids.shape[1]}")
    torch._check(features.dtype in _DTYPES, lambda: f"{op}: features must be float32, float64, "
                 f"float16 or bfloat16, got {features.dtype}")
    torch._check(centroids.dtype == features.dtype, lambda: f"{op}: features and centroids must "
                 f"have the same dtype, got {features.dtype} and {centroids.dtype}")
    torch._check(features.device == centroids.device, lambda: f"{op}: features and centroids "
                 f"must be on the same device, got {features.device} and {centroids.device}")
    b = features.shape[0]
    return (features.new_empty((b,), dtype=torch.int64),
            features.new_empty((b,), dtype=acc_dtype(features.dtype)))


def assign_to_centroids(features: torch.Tensor,
                        centroids: torch.Tensor) -> Tuple[torch.Tensor, torch.Tensor]:
    """The centroid with the largest cosine similarity to each row of features, fused.

    Args:
        features: (B, D) floating-point rows (need not be normalized).
        centroids: (K, D) centroids of the same dtype and device (need not be normalized).

    Returns:
        (index, score): (B,) int64 index of the best centroid and its (B,) cosine similarity.
        Runs without gradient (see the module docstring).
    """
    for t, name in ((features, "features"), (centroids, "centroids")):
        if not isinstance(t, torch.Tensor):
            raise TypeError(f"{name} must be a torch.Tensor, got {type(t).__name__}")
    check_devices("assign_to_centroids", (("features", features), ("centroids", centroids)))
    with torch.no_grad():
        return torch.ops.jem_fast.assign_to_centroids(features, centroids)

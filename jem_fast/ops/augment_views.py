"""Fused per-sample augmentation op: jem_fast::augment_views (schema in csrc/augment/augment_views.cpp).

The op takes uint8 images and pre-drawn per-sample parameters and returns normalized views; it
has no autograd (uint8 input). The fake kernel below gives torch.compile the output's shape,
dtype and memory format, so jem_fast.augment.functional.augment traces with fullgraph=True.
"""
from __future__ import annotations

import torch

from .._extension import require_extension
from ._common import check_devices, named_list

require_extension()


@torch.library.register_fake("jem_fast::augment_views")
def _augment_views_fake(images, crop, flip, jitter, brightness, contrast, saturation, hue, order,
                        grayscale, blur_sigma, solarize, out_h, out_w, channels_last_input,
                        interpolation, blur_kernel_size, blur_padding, solarize_threshold, mean,
                        std, out_dtype, channels_last_output):
    # With one tensor on the meta device the dispatcher lands here: raise like the C++ op does
    # instead of returning uninitialized memory on the other tensors' device.
    check_devices("augment_views", named_list("images", images) + [
        ("crop", crop), ("flip", flip), ("jitter", jitter), ("brightness", brightness),
        ("contrast", contrast), ("saturation", saturation), ("hue", hue), ("order", order),
        ("grayscale", grayscale), ("blur_sigma", blur_sigma), ("solarize", solarize)])
    batch = images[0].shape[0] if len(images) == 1 and images[0].dim() == 4 else len(images)
    memory_format = torch.channels_last if channels_last_output else torch.contiguous_format
    return torch.empty((batch, 3, out_h, out_w), dtype=out_dtype, device=images[0].device,
                       memory_format=memory_format)

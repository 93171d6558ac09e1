"""Deterministic fused augmentation: apply given per-sample parameters in one call.

    views = augment(images, params, 224)

images: a uint8 batch (B, 3, H, W) (input_layout='CHW') or (B, H, W, 3) (input_layout='HWC'),
or a list of B uint8 images (3, H_i, W_i) / (H_i, W_i, 3) of different sizes, on CPU or CUDA.
params: a dict of per-sample tensors (B = number of images = number of views), named as in
this table:

    crop        (B, 4) int64  top, left, height, width in source pixels        (required)
    flip        (B,)   bool   horizontal flip                                  (default False)
    jitter      (B,)   bool   apply the colour-jitter ops                      (default False)
    brightness  (B,)   float  factor >= 0                                      (default 1)
    contrast    (B,)   float  factor >= 0, against the CURRENT grayscale mean  (default 1)
    saturation  (B,)   float  factor >= 0                                      (default 1)
    hue         (B,)   float  shift in [-0.5, 0.5]                             (default 0)
    order       (B, 4) int64  permutation of 0 brightness 1 contrast 2 saturation 3 hue
                                                                               (default 0,1,2,3)
    grayscale   (B,)   bool   rgb_to_grayscale, 3 channels                     (default False)
    blur_sigma  (B,)   float  Gaussian sigma, 0 = no blur                      (default 0)
    solarize    (B,)   bool   x >= solarize_threshold -> 1 - x                 (default False)

Each view equals torchvision.transforms.v2.functional applied to that image in float32 in
[0, 1]: resized_crop(antialias=True) -> hflip -> jitter ops in `order` -> rgb_to_grayscale ->
gaussian_blur -> solarize -> normalize, then the cast (see csrc/augment/augment_views.cpp).
A factor of exactly 1 (hue exactly 0) means that op is off, as in a ColorJitter configured
without it: torchvision's adjust_*(x, 1) would still clamp pixels that bicubic overshoot left
outside [0, 1] (and adjust_hue(x, 0) round-trips them); jem_fast leaves them unchanged. Random
factors are never exactly 1, so this only matters for deliberately disabled ops.
Crops must lie inside their image (ValueError otherwise); the op itself clamps rectangles into the
image, so nothing is ever read out of bounds even when checks are skipped under torch.compile.
To make several views of the same images (two-view, multi-crop), call once per view set with
the images repeated in the list (the list holds references, not copies).

Value checks (factor ranges, permutations, crop bounds) read the parameters once (numpy on
the CPU, a few microseconds; one device synchronization on CUDA) and are skipped while
torch.compile traces; shape, dtype and device checks always run. Float images are refused
(the kernel reads uint8); float images outside [0, 1], typically 0-255 data stored as floats,
raise ImageValueRangeError (a TypeError and a ValueError) saying to pass uint8 or divide by 255.

`augment_sampled` is the unchecked entry of the presets and the DataLoader transforms, whose
parameters come from jem_fast's own sampler.
"""
from __future__ import annotations

from contextlib import nullcontext as _nullcontext
from typing import Mapping, Sequence, Union

import torch

try:
    import numpy as _np
except ImportError:  # pragma: no cover - then the value checks run as torch ops
    _np = None

from ..ops import augment_views as _ops  # noqa: F401  (registers the fake kernel)

from .sampling import IMAGENET_MEAN, IMAGENET_STD  # one definition for the kernel and presets
from .sampling import uint8_error

MAX_SIZE = 16384          # per output side, as the op enforces
MAX_BLUR_KERNEL = 63      # the op's limit (shared-memory tile + halo on CUDA)

_FLAGS = ("flip", "jitter", "grayscale", "solarize")
_FACTORS = ("brightness", "contrast", "saturation", "hue", "blur_sigma")
_NAMES = ("crop", "order") + _FLAGS + _FACTORS
_OUT_DTYPES = (torch.float32, torch.float16, torch.bfloat16)


def _is_compiling() -> bool:
    try:
        return torch.compiler.is_compiling()
    except AttributeError:  # pragma: no cover - older torch
        return False


def _image_list(images, input_layout):
    if input_layout not in ("CHW", "HWC"):
        raise ValueError(f"input_layout must be 'CHW' or 'HWC', got {input_layout!r}")
    c_axis = 0 if input_layout == "CHW" else 2
    if isinstance(images, torch.Tensor):
        if images.dim() != 4:
            raise ValueError("images: a tensor must be a 4-D batch (B, 3, H, W) or (B, H, W, 3), "
                             f"got shape {tuple(images.shape)}")
        if images.shape[0] == 0:
            raise ValueError("images: the batch is empty")
        items, batch = [images], True
        shapes = [tuple(images.shape[1:])]
    elif isinstance(images, (list, tuple)):
        if len(images) == 0:
            raise ValueError("images: the list is empty")
        for i, img in enumerate(images):
            if not isinstance(img, torch.Tensor):
                raise TypeError(f"images[{i}] must be a torch.Tensor, got {type(img).__name__}")
            if img.dim() != 3:
                raise ValueError(f"images[{i}] must be 3-D ({'3, H, W' if c_axis == 0 else 'H, W, 3'}),"
                                 f" got shape {tuple(img.shape)}")
        items, batch = list(images), False
        shapes = [tuple(img.shape) for img in images]
    else:
        raise TypeError("images must be a uint8 tensor (B, 3, H, W) / (B, H, W, 3) or a list of "
                        f"uint8 images, got {type(images).__name__}")
    device = items[0].device
    for i, img in enumerate(items):
        name = "images" if batch else f"images[{i}]"
        if img.dtype != torch.uint8:
            raise uint8_error(name, img.dtype, img)
        if img.device != device:
            raise ValueError(f"{name} is on {img.device}, images[0] on {device}: all images must "
                             "be on one device")
    for i, shape in enumerate(shapes):
        if shape[c_axis] != 3:
            where = "images" if batch else f"images[{i}]"
            raise ValueError(f"{where} must have 3 channels on the {input_layout} channel axis, "
                             f"got shape {tuple(items[0].shape) if batch else shape}")
        hw = shape[1:] if c_axis == 0 else shape[:2]
        if hw[0] < 1 or hw[1] < 1:
            raise ValueError(f"images[{i}] is empty, shape {shape}")
    n = items[0].shape[0] if batch else len(items)
    sizes = ([(shapes[0][1], shapes[0][2]) if c_axis == 0 else (shapes[0][0], shapes[0][1])] * n
             if batch else [(s[1], s[2]) if c_axis == 0 else (s[0], s[1]) for s in shapes])
    return items, n, device, sizes


def _out_size(size):
    if isinstance(size, bool):
        raise TypeError("size must be an int or a pair (height, width) of ints")
    if isinstance(size, int):
        h = w = size
    elif isinstance(size, (tuple, list)) and len(size) == 2 and all(
            isinstance(s, int) and not isinstance(s, bool) for s in size):
        h, w = size
    else:
        raise TypeError(f"size must be an int or a pair (height, width) of ints, got {size!r}")
    if not (1 <= h <= MAX_SIZE and 1 <= w <= MAX_SIZE):
        raise ValueError(f"size must be in [1, {MAX_SIZE}] on each side, got {(h, w)}")
    return h, w


def _param(params, name, n, device):
    """The tensor of `name` in the op's dtype, or its 'off' default."""
    t = params.get(name)
    if t is None:
        if name == "crop":
            raise ValueError("params['crop'] is required: (B, 4) int64 top, left, height, width")
        if name == "order":
            return torch.arange(4, dtype=torch.int64, device=device).expand(n, 4)
        if name in _FLAGS:
            return torch.zeros(n, dtype=torch.bool, device=device)
        fill = 1.0 if name in ("brightness", "contrast", "saturation") else 0.0
        return torch.full((n,), fill, dtype=torch.float32, device=device)
    if not isinstance(t, torch.Tensor):
        raise TypeError(f"params['{name}'] must be a tensor, got {type(t).__name__}")
    shape = (n, 4) if name in ("crop", "order") else (n,)
    if tuple(t.shape) != shape:
        raise ValueError(f"params['{name}'] must have shape {shape} (one entry per image), "
                         f"got {tuple(t.shape)}")
    if t.device != device:
        raise ValueError(f"params['{name}'] is on {t.device}, the images on {device}")
    if name in ("crop", "order"):
        if t.dtype.is_floating_point or t.dtype.is_complex or t.dtype == torch.bool:
            raise TypeError(f"params['{name}'] must be an integer tensor (int64), got {t.dtype}")
        return t.to(torch.int64)
    if name in _FLAGS:
        if t.dtype != torch.bool:
            raise TypeError(f"params['{name}'] must be a bool tensor, got {t.dtype}")
        return t
    if not t.dtype.is_floating_point:
        raise TypeError(f"params['{name}'] must be a floating-point tensor, got {t.dtype}")
    return t.to(torch.float32)


def _value_problems(p, sizes, device):
    """{name: bad (B,) mask} of every value check; numpy on the CPU (a few microseconds), torch
    ops with one read-back elsewhere."""
    if device.type == "cpu" and _np is not None:
        q = {k: v.detach().numpy() for k, v in p.items()}
        hw = _np.asarray(sizes, dtype=_np.int64).reshape(-1, 2)
        crop, lib = q["crop"], _np
        perm_ok = (_np.sort(q["order"], axis=1) == _np.arange(4)).all(axis=1)
    else:
        q, lib = p, torch
        crop = p["crop"]
        hw = torch.tensor(sizes, dtype=torch.int64, device=device)  # (B, 2)
        perm_ok = (torch.sort(p["order"], dim=1).values == torch.arange(4, device=device)).all(1)
    with _np.errstate(invalid="ignore") if lib is _np else _nullcontext():
        checks = {
            "crop": (crop[:, 0] < 0) | (crop[:, 1] < 0) | (crop[:, 2] < 1) | (crop[:, 3] < 1)
            | (crop[:, 0] + crop[:, 2] > hw[:, 0]) | (crop[:, 1] + crop[:, 3] > hw[:, 1]),
            "order": ~perm_ok,
            "hue": ~((q["hue"] >= -0.5) & (q["hue"] <= 0.5)),
        }
        for name in ("brightness", "contrast", "saturation", "blur_sigma"):
            checks[name] = ~(q[name] >= 0) | ~lib.isfinite(q[name])
    if lib is _np:
        return {k: v for k, v in checks.items() if v.any()}
    bad = torch.stack(list(checks.values())).any(dim=1).tolist()
    return {k: v for (k, v), is_bad in zip(checks.items(), bad) if is_bad}


def _check_values(p, sizes, device):
    """All value checks with one read of the parameters (one sync on CUDA)."""
    for name, mask in _value_problems(p, sizes, device).items():
        i = int(mask.nonzero()[0][0])
        if name == "crop":
            raise ValueError(f"params['crop'][{i}] = {p['crop'][i].tolist()} (top, left, height, "
                             f"width) is not a non-empty rectangle inside image {i} of size "
                             f"{tuple(sizes[i])} (H, W)")
        if name == "order":
            raise ValueError(f"params['order'][{i}] = {p['order'][i].tolist()} is not a "
                             "permutation of 0 brightness, 1 contrast, 2 saturation, 3 hue")
        what = {"hue": "in [-0.5, 0.5]", "blur_sigma": "finite and >= 0 (0 = no blur)"}.get(
            name, "finite and >= 0")
        raise ValueError(f"params['{name}'][{i}] = {p[name][i].item()} must be {what}")


def _check_options(size, interpolation, blur_kernel_size, blur_padding, dtype, mean, std):
    out_h, out_w = _out_size(size)
    if interpolation not in ("bilinear", "bicubic"):
        raise ValueError(f"interpolation must be 'bilinear' or 'bicubic', got {interpolation!r}")
    if blur_padding not in ("reflect", "zeros"):
        raise ValueError(f"blur_padding must be 'reflect' or 'zeros', got {blur_padding!r}")
    if isinstance(blur_kernel_size, bool) or not isinstance(blur_kernel_size, int):
        raise TypeError(f"blur_kernel_size must be an int, got {blur_kernel_size!r}")
    if blur_kernel_size < 1 or blur_kernel_size % 2 == 0 or blur_kernel_size > MAX_BLUR_KERNEL:
        raise ValueError(f"blur_kernel_size must be odd and in [1, {MAX_BLUR_KERNEL}], got "
                         f"{blur_kernel_size}")
    if dtype not in _OUT_DTYPES:
        raise TypeError(f"dtype must be float32, float16 or bfloat16, got {dtype}")
    mean, std = [float(m) for m in mean], [float(s) for s in std]
    if len(mean) != 3 or len(std) != 3:
        raise ValueError(f"mean and std must have 3 entries each, got {mean} and {std}")
    if any(s == 0.0 for s in std):
        raise ValueError(f"std must be non-zero, got {std}")
    return out_h, out_w, mean, std


def _check_reflect_blur(blur_padding, blur_kernel_size, out_h, out_w, blur_sigma):
    if (blur_padding == "reflect" and blur_kernel_size // 2 >= min(out_h, out_w)
            and bool((blur_sigma > 0).any())):
        raise ValueError(f"blur_kernel_size {blur_kernel_size} is too large for reflect "
                         f"padding of a {out_h} x {out_w} view (torch's reflect padding needs "
                         "kernel // 2 < the view size); use blur_padding='zeros' or a smaller "
                         "kernel")


def _launch(items, p, out_h, out_w, hwc, interpolation, blur_kernel_size, blur_padding,
            solarize_threshold, mean, std, dtype, channels_last):
    return torch.ops.jem_fast.augment_views(
        items, p["crop"], p["flip"], p["jitter"], p["brightness"], p["contrast"],
        p["saturation"], p["hue"], p["order"], p["grayscale"], p["blur_sigma"], p["solarize"],
        out_h, out_w, hwc, interpolation, blur_kernel_size, blur_padding,
        float(solarize_threshold), mean, std, dtype, channels_last)


def augment_sampled(images: Union[torch.Tensor, Sequence[torch.Tensor]],
                    params: Mapping[str, torch.Tensor], size: int, *,
                    interpolation: str, mean: Sequence[float], std: Sequence[float],
                    dtype: torch.dtype, channels_last: bool, blur_kernel_size: int,
                    blur_padding: str, solarize_threshold: float,
                    input_layout: str) -> torch.Tensor:
    """`augment` without the per-call validation, for the presets and the DataLoader transforms:
    `images` were checked by the caller (uint8, 3 channels, one device), `params` hold every
    name, drawn by jem_fast's sampler for these images (valid by construction: rectangles inside
    their images, permutations, factors in range) in the op's dtypes, and the options come from
    a validated ViewConfig. Calling it with anything else is undefined (the op still clamps
    rectangles, so nothing is read out of bounds)."""
    items = [images] if isinstance(images, torch.Tensor) else images
    mean, std = [float(m) for m in mean], [float(s) for s in std]
    if blur_padding == "reflect" and blur_kernel_size // 2 >= size:
        _check_reflect_blur(blur_padding, blur_kernel_size, size, size, params["blur_sigma"])
    return _launch(items, params, size, size, input_layout == "HWC", interpolation,
                   blur_kernel_size, blur_padding, solarize_threshold, mean, std, dtype,
                   channels_last)


def augment(images: Union[torch.Tensor, Sequence[torch.Tensor]],
            params: Mapping[str, torch.Tensor],
            size: Union[int, Sequence[int]], *,
            interpolation: str = "bicubic",
            mean: Sequence[float] = IMAGENET_MEAN,
            std: Sequence[float] = IMAGENET_STD,
            dtype: torch.dtype = torch.float32,
            channels_last: bool = False,
            blur_kernel_size: int = 23,
            blur_padding: str = "reflect",
            solarize_threshold: float = 0.5,
            input_layout: str = "CHW") -> torch.Tensor:
    """Views (B, 3, h, w) of `images` under the given per-sample `params` (module docstring)."""
    items, n, device, sizes = _image_list(images, input_layout)
    out_h, out_w, mean, std = _check_options(size, interpolation, blur_kernel_size, blur_padding,
                                             dtype, mean, std)
    if not isinstance(params, Mapping):
        raise TypeError(f"params must be a dict of tensors, got {type(params).__name__}")
    unknown = sorted(set(params) - set(_NAMES))
    if unknown:
        raise ValueError(f"params has unknown entries {unknown}; known: {list(_NAMES)}")
    p = {name: _param(params, name, n, device) for name in _NAMES}
    if not _is_compiling():
        _check_values(p, sizes, device)
        _check_reflect_blur(blur_padding, blur_kernel_size, out_h, out_w, p["blur_sigma"])
    return _launch(items, p, out_h, out_w, input_layout == "HWC", interpolation,
                   blur_kernel_size, blur_padding, solarize_threshold, mean, std, dtype,
                   channels_last)

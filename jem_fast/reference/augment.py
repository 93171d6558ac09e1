"""Pure-PyTorch reference of jem_fast.augment.functional.augment: the torchvision v2 formulas
written with plain torch ops, one image at a time, in float64 by default (the oracle of the tests)
or float32 (the eager baseline of the benchmark). No torchvision dependency.

Per image: uint8 / 255 -> crop -> interpolate(antialias=True, align_corners=False) -> flip ->
jitter ops in the sample's order (each clamped to [0, 1]; contrast against the grayscale mean of
the image at that point) -> grayscale -> Gaussian blur (separable weights, 2-D conv) -> solarize
-> normalize -> cast. Crop rectangles are clamped into the image exactly as the op does.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


def _gray(x):
    r, g, b = x.unbind(-3)
    return 0.2989 * r + 0.587 * g + 0.114 * b


def _blend(a, b, f):
    return (f * a + (1.0 - f) * b).clamp(0.0, 1.0)


def _rgb_to_hsv(x):
    r, g, b = x.unbind(-3)
    maxc, _ = x.max(dim=-3)
    minc, _ = x.min(dim=-3)
    eqc = maxc == minc
    rng = maxc - minc
    ones = torch.ones_like(maxc)
    # as torchvision, plus: max == 0 with min < 0 (bicubic overshoot) gives s = 0, not inf/NaN
    flat = eqc | (maxc == 0)
    s = torch.where(flat, torch.zeros_like(maxc), rng / torch.where(flat, ones, maxc))
    div = torch.where(eqc, ones, rng)
    rc, gc, bc = (maxc - r) / div, (maxc - g) / div, (maxc - b) / div
    h = torch.where(maxc == r, bc - gc, torch.where(maxc == g, 2.0 + rc - bc, 4.0 + gc - rc))
    h = torch.fmod(h / 6.0 + 1.0, 1.0)
    return h, s, maxc


def _hsv_to_rgb(h, s, v):
    h6 = h * 6.0
    i = torch.floor(h6)
    f = h6 - i
    i = i.to(torch.int64) % 6
    p = ((1.0 - s) * v).clamp(0.0, 1.0)
    q = ((1.0 - s * f) * v).clamp(0.0, 1.0)
    t = ((1.0 - s + s * f) * v).clamp(0.0, 1.0)
    table = [(v, t, p), (q, v, p), (p, v, t), (p, q, v), (t, p, v), (v, p, q)]
    out = torch.zeros(3, *h.shape, dtype=h.dtype)
    for k, rgb in enumerate(table):
        sel = i == k
        for c in range(3):
            out[c] = torch.where(sel, rgb[c], out[c])
    return out


def adjust_hue(x, f):
    h, s, v = _rgb_to_hsv(x)
    h = torch.remainder(h + f, 1.0)
    return _hsv_to_rgb(h, s, v)


def gaussian_kernel1d(k, sigma, dtype):
    i = torch.arange(k, dtype=dtype) - (k // 2)
    w = torch.exp(-(i * i) / (2.0 * sigma * sigma))
    return w / w.sum()


def _clamp_crop(crop, h, w):
    top = min(max(int(crop[0]), 0), h - 1)
    left = min(max(int(crop[1]), 0), w - 1)
    height = min(max(int(crop[2]), 1), h - top)
    width = min(max(int(crop[3]), 1), w - left)
    return top, left, height, width


def augment_one(img_chw, p, size, *, interpolation, mean, std, blur_kernel_size, blur_padding,
                solarize_threshold, compute_dtype):
    """One view of one (3, H, W) uint8 image; p holds this sample's parameters as Python values."""
    out_h, out_w = size
    x = img_chw.to(compute_dtype) / 255.0
    top, left, height, width = _clamp_crop(p["crop"], x.shape[-2], x.shape[-1])
    x = x[:, top:top + height, left:left + width]
    x = F.interpolate(x[None], size=(out_h, out_w), mode=interpolation, align_corners=False,
                      antialias=True)[0]  # float input: no clamp afterwards (torchvision)
    if p["flip"]:
        x = x.flip(-1)
    if p["jitter"]:
        for op in p["order"]:
            # The jem_fast contract: a factor of exactly 1 (hue 0) means the op is off, as when
            # ColorJitter is configured without it. torchvision's adjust_* would still clamp
            # (and hue would round-trip) pixels that bicubic overshoot left outside [0, 1].
            factor = p[("brightness", "contrast", "saturation", "hue")[op]]
            if factor == (0.0 if op == 3 else 1.0):
                continue
            if op == 0:
                x = (x * p["brightness"]).clamp(0.0, 1.0)
            elif op == 1:
                x = _blend(x, _gray(x).mean(), p["contrast"])
            elif op == 2:
                x = _blend(x, _gray(x)[None], p["saturation"])
            else:
                x = adjust_hue(x, p["hue"])
    if p["grayscale"]:
        x = _gray(x)[None].expand(3, -1, -1).clone()
    sigma = p["blur_sigma"]
    if sigma > 0 and blur_kernel_size > 1:
        k = blur_kernel_size
        w1 = gaussian_kernel1d(k, sigma, compute_dtype)
        w2 = (w1[:, None] * w1[None, :]).expand(3, 1, k, k)
        r = k // 2
        xp = F.pad(x[None], (r, r, r, r), mode="reflect" if blur_padding == "reflect" else "constant")
        x = F.conv2d(xp, w2, groups=3)[0]
    if p["solarize"]:
        x = torch.where(x >= solarize_threshold, 1.0 - x, x)
    m = torch.tensor(mean, dtype=compute_dtype)[:, None, None]
    s = torch.tensor(std, dtype=compute_dtype)[:, None, None]
    return (x - m) / s


def augment_reference(images, params, size, *, interpolation="bicubic", mean=IMAGENET_MEAN,
                      std=IMAGENET_STD, dtype=torch.float32, channels_last=False,
                      blur_kernel_size=23, blur_padding="reflect", solarize_threshold=0.5,
                      input_layout="CHW", compute_dtype=torch.float64):
    """Same signature and result as jem_fast.augment.functional.augment (plus compute_dtype)."""
    if isinstance(images, torch.Tensor):
        imgs = list(images.unbind(0))
    else:
        imgs = list(images)
    if input_layout == "HWC":
        imgs = [im.permute(2, 0, 1) for im in imgs]
    device = imgs[0].device
    n = len(imgs)
    size = (size, size) if isinstance(size, int) else tuple(size)
    defaults = {"flip": False, "jitter": False, "brightness": 1.0, "contrast": 1.0,
                "saturation": 1.0, "hue": 0.0, "order": [0, 1, 2, 3], "grayscale": False,
                "blur_sigma": 0.0, "solarize": False}
    values = {k: params[k].cpu().tolist() for k in params}
    outs = []
    for i in range(n):
        p = {k: (values[k][i] if k in values else v) for k, v in defaults.items()}
        p["crop"] = values["crop"][i]
        outs.append(augment_one(imgs[i].cpu(), p, size, interpolation=interpolation, mean=mean,
                                std=std, blur_kernel_size=blur_kernel_size,
                                blur_padding=blur_padding,
                                solarize_threshold=solarize_threshold,
                                compute_dtype=compute_dtype))
    out = torch.stack(outs).to(device=device, dtype=dtype)
    return out.contiguous(memory_format=torch.channels_last) if channels_last else out

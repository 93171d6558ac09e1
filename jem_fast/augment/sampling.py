"""Per-sample augmentation parameters from a counter-based RNG.

Every parameter of every view is a pure function of (seed, sample index, view index, block id):
no global RNG state is read or advanced, a batch can be re-drawn bit for bit from its seed (resume,
debugging, distributed ranks that own disjoint sample indices), and the same seed gives the same
parameters on CPU and on CUDA.

Generator: Philox-4x32-10 (Salmon et al., "Parallel random numbers: as easy as 1, 2, 3", SC'11),
written with int64 tensor ops so that it runs unchanged on any device. A 32x32 -> 64-bit product
does not fit in a signed int64, so each multiplier is split into 16-bit halves and every partial
product stays below 2^49. The implementation reproduces Random123's known-answer vectors
(tests/test_augment_sampling.py).

    key     = (seed mod 2^32, seed >> 32)                 seed in [0, 2^64)
    counter = (index mod 2^32, index >> 32, view, block)  -> four 32-bit words

Block ids (one Philox call gives four words; two words make one 53-bit uniform):

    0..9    RandomResizedCrop attempt a: u_scale, u_log_ratio
    10..19  attempt a: u_top, u_left (only the first valid attempt's pair is used)
    20      u_flip, u_jitter
    21      u_grayscale, u_blur
    22      u_solarize, (unused)
    23      u_brightness, u_contrast
    24      u_saturation, u_hue
    25      u_sigma, (unused)
    26      order: the four raw 32-bit words, argsorted

New parameters must take new block ids so that existing ones keep their values.

Bit-identical CPU/CUDA results also need every floating-point step to be correctly rounded on
both devices. Only +, -, *, sqrt, floor, round and tensor/tensor division are used (IEEE-exact
in both ATen backends, each op its own kernel so nothing is contracted into an FMA); torch.exp
is not (CUDA's is not correctly rounded), so exp(log_ratio) uses the polynomial `_exp` below,
and division by a Python scalar is avoided (ATen's CUDA kernel turns it into a multiplication by
the reciprocal). This module imports nothing from the compiled extension, so it can be loaded by
path in an environment where jem_fast is not built.

On the CPU the same generator and derivations also run as a numpy twin (batches) and a Python
twin (a per-image call: big-integer lanes for Philox, Python floats after it), which cost a
small fraction of the torch ops' dispatch and give the same bits (`backend` of
sample_views_params; tests/test_augment_per_image.py).
"""
from __future__ import annotations

import math
import numbers
import operator
from dataclasses import dataclass, fields
from typing import Dict, List, Optional, Sequence, Tuple, Union

import torch

try:
    import numpy as _np
except ImportError:  # pragma: no cover - torch works without numpy; then only the torch path
    _np = None

__all__ = ["ViewConfig", "PARAM_NAMES", "IMAGENET_MEAN", "IMAGENET_STD", "INTERPOLATIONS",
           "BLUR_PADDINGS", "SAMPLER_BACKENDS", "ImageValueRangeError", "philox4x32",
           "counter_uniforms", "derive_seed",
           "sample_view_params", "sample_views_params", "sample_views_stacked", "fallback_crop"]

# 'auto': on the CPU, Python scalars for a few lanes (a per-image call) and numpy for more;
# torch ops on other devices. All give the same bits.
SAMPLER_BACKENDS = ("auto", "torch", "numpy", "python")

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
INTERPOLATIONS = ("bilinear", "bicubic")
# 'reflect' is torchvision's GaussianBlur; 'zeros' is the SimCLR/BYOL TF code (conv2d 'SAME').
BLUR_PADDINGS = ("reflect", "zeros")

PARAM_NAMES = ("crop", "flip", "jitter", "brightness", "contrast", "saturation", "hue", "order",
               "grayscale", "blur_sigma", "solarize")

NUM_ATTEMPTS = 10
_BLOCK_CROP, _BLOCK_PLACE = 0, 10
_BLOCK_COINS_A, _BLOCK_COINS_B, _BLOCK_COINS_C = 20, 21, 22
_BLOCK_FACT_A, _BLOCK_FACT_B, _BLOCK_SIGMA = 23, 24, 25
_BLOCK_ORDER = 26
NUM_BLOCKS = 27

_MASK32 = 0xFFFFFFFF
_PHILOX_M0, _PHILOX_M1 = 0xD2511F53, 0xCD9E8D57
_PHILOX_W0, _PHILOX_W1 = 0x9E3779B9, 0xBB67AE85


class ImageValueRangeError(TypeError, ValueError):
    """Float images outside [0, 1], e.g. 0-255 data stored as floats: both a dtype problem
    (the fused kernel reads uint8) and a value problem, so it is caught as either."""


def _float_range_advice(name: str, low: float, high: float) -> str:
    return (f"{name} holds float values in [{low:g}, {high:g}]: float images must be in [0, 1]. "
            "Pass uint8 for 0-255 data (e.g. `x.to(torch.uint8)`, as decoders return it), or "
            "divide by 255")


def uint8_error(name: str, dtype: torch.dtype, image: Optional[torch.Tensor] = None) -> Exception:
    """The error of the kernel and the presets for non-uint8 images (one wording for both).

    For a float image outside [0, 1] (typically 0-255 data as floats) the message says so and
    what to pass instead; it reads the image's range, which is only done on this error path."""
    if dtype.is_floating_point and image is not None and image.numel():
        low, high = (float(v) for v in torch.aminmax(image.detach().float()))
        if not (0.0 <= low and high <= 1.0):  # NaN fails too
            return ImageValueRangeError(
                f"{_float_range_advice(name, low, high)}; the fused kernel itself reads uint8 "
                "pixels")
    hint = ""
    if dtype.is_floating_point:
        hint = (" (the fused kernel reads 8-bit pixels, as decoders return them; convert float "
                "images in [0, 1] with `(images * 255).round().to(torch.uint8)`, or use "
                "jem_fast.augment.data.ViewTransform, which accepts them)")
    return TypeError(f"{name} must be uint8, got {dtype}{hint}")


# ------------------------------------------------------------------------------ the generator

def _mulhilo(a: torch.Tensor, m: int) -> Tuple[torch.Tensor, torch.Tensor]:
    # a < 2^32 and m < 2^32: split m so that no partial product overflows int64.
    p0 = a * (m & 0xFFFF)
    t = a * (m >> 16) + (p0 >> 16)
    lo = ((t & 0xFFFF) << 16) | (p0 & 0xFFFF)
    return t >> 16, lo


def _philox_words(c0, c1, c2, c3, k0: int, k1: int, rounds: int = 10):
    k0, k1 = k0 & _MASK32, k1 & _MASK32
    for r in range(rounds):
        if r:
            k0 = (k0 + _PHILOX_W0) & _MASK32
            k1 = (k1 + _PHILOX_W1) & _MASK32
        hi0, lo0 = _mulhilo(c0, _PHILOX_M0)
        hi1, lo1 = _mulhilo(c2, _PHILOX_M1)
        c0, c1, c2, c3 = hi1 ^ c1 ^ k0, lo1, hi0 ^ c3 ^ k1, lo0
    return c0, c1, c2, c3


def philox4x32(counter: torch.Tensor, key: Tuple[int, int], rounds: int = 10) -> torch.Tensor:
    """Philox-4x32 on int64 tensors.

    Args:
        counter: (..., 4) int64 tensor of 32-bit words (values in [0, 2^32)).
        key: two 32-bit words as Python ints.
        rounds: 10 for the standard Philox-4x32-10.
    Returns: (..., 4) int64 tensor of 32-bit output words, on counter's device.
    """
    if not isinstance(counter, torch.Tensor) or counter.dtype != torch.int64 \
            or counter.shape[-1:] != (4,):
        raise TypeError("counter must be an int64 tensor of shape (..., 4)")
    # Word-major contiguous planes: the elementwise ops run several times faster than on the
    # stride-4 views unbind would give.
    planes = counter.movedim(-1, 0).contiguous().unbind(0)
    return torch.stack(_philox_words(*planes, int(key[0]), int(key[1]), rounds), dim=-1)


def _u53(hi: torch.Tensor, lo: torch.Tensor) -> torch.Tensor:
    # 27 + 26 bits -> k * 2^-53, exact in float64 and strictly below 1.
    return ((hi >> 5) * (1 << 26) + (lo >> 6)).double() * (2.0 ** -53)


def _u24(word: torch.Tensor) -> torch.Tensor:
    return (word >> 8).float() * (2.0 ** -24)


def _check_seed(seed) -> int:
    try:
        s = operator.index(seed)
    except TypeError:
        raise TypeError(f"seed must be an int in [0, 2^64), got {type(seed).__name__}") from None
    if isinstance(seed, bool):
        raise TypeError("seed must be an int in [0, 2^64), got bool")
    if not 0 <= s < 2 ** 64:
        raise ValueError(f"seed must be an int in [0, 2^64), got {s}")
    return s


def _key(seed: int) -> Tuple[int, int]:
    return seed & _MASK32, seed >> 32


def _splitmix64(x: int) -> int:
    x = (x + 0x9E3779B97F4A7C15) & 0xFFFFFFFFFFFFFFFF
    x = ((x ^ (x >> 30)) * 0xBF58476D1CE4E5B9) & 0xFFFFFFFFFFFFFFFF
    x = ((x ^ (x >> 27)) * 0x94D049BB133111EB) & 0xFFFFFFFFFFFFFFFF
    return x ^ (x >> 31)


def derive_seed(seed: int, step: int) -> int:
    """The 64-bit Philox key of training step `step` under base seed `seed`.

    Two rounds of splitmix64 (Python integers, exact): consecutive steps and consecutive seeds
    get unrelated keys, so (seed, step) never collides with (seed + 1, step - 1) as seed + step
    would.
    """
    seed = _check_seed(seed)
    step = operator.index(step)
    if step < 0:
        raise ValueError(f"step must be >= 0, got {step}")
    return _splitmix64(seed ^ _splitmix64(step & 0xFFFFFFFFFFFFFFFF))


def _counter_planes(n: int, views: torch.Tensor, blocks: int, index_offset: int,
                    device: torch.device):
    """The four counter words of every (view, sample, block), each a contiguous (V, n, blocks)."""
    shape = (views.numel(), n, blocks)
    idx = torch.arange(index_offset, index_offset + n, dtype=torch.int64, device=device)
    idx = idx.view(1, n, 1).expand(shape)
    view = views.view(-1, 1, 1).expand(shape).contiguous()
    block = torch.arange(blocks, dtype=torch.int64, device=device).view(1, 1, -1).expand(shape)
    return (idx & _MASK32).contiguous(), (idx >> 32).contiguous(), view, block.contiguous()


def _check_index_offset(index_offset, n: int) -> int:
    off = operator.index(index_offset)
    if off < 0 or off + n > 2 ** 63:
        raise ValueError(f"index_offset must be >= 0 with index_offset + batch < 2^63, got {off}")
    return off


def counter_uniforms(seed: int, n: int, view_index: int = 0, block: int = 0, *,
                     index_offset: int = 0, dtype: torch.dtype = torch.float64,
                     device: Union[str, torch.device, None] = None) -> torch.Tensor:
    """Uniforms in [0, 1) of samples index_offset .. index_offset + n - 1 at (view, block).

    Returns (n, 2) float64 (53-bit) or (n, 4) float32 (24-bit) uniforms: the words of one Philox
    block. The same arguments give bit-identical values on every device.
    """
    seed = _check_seed(seed)
    if dtype not in (torch.float64, torch.float32):
        raise ValueError(f"dtype must be torch.float64 or torch.float32, got {dtype}")
    n = operator.index(n)
    if n < 0:
        raise ValueError(f"n must be >= 0, got {n}")
    off = _check_index_offset(index_offset, n)
    for name, v in (("view_index", view_index), ("block", block)):
        if not 0 <= operator.index(v) <= _MASK32:
            raise ValueError(f"{name} must be in [0, 2^32), got {v}")
    device = torch.device(device) if device is not None else torch.device("cpu")
    idx = torch.arange(off, off + n, dtype=torch.int64, device=device)
    ctr = torch.stack((idx & _MASK32, idx >> 32, torch.full_like(idx, view_index),
                       torch.full_like(idx, block)), dim=-1)
    w = philox4x32(ctr, _key(seed))
    if dtype == torch.float64:
        return torch.stack((_u53(w[:, 0], w[:, 1]), _u53(w[:, 2], w[:, 3])), dim=-1)
    return _u24(w)


# ------------------------------------------------------------------------- exact-ish exp

_LN2_HI = 6.93147180369123816490e-01  # high bits of ln 2: k * _LN2_HI is exact for |k| < 2^11
_LN2_LO = 1.90821492927058770002e-10
_INV_LN2 = 1.44269504088896338700e+00
_EXP_COEFS = [1.0 / math.factorial(i) for i in range(14)]


def _exp(x: torch.Tensor) -> torch.Tensor:
    """exp for float64 |x| < 700 from +, * and exponent bits only, so that it rounds the same on
    every device (about 1 ulp from the true value)."""
    k = torch.round(x * _INV_LN2)
    r = (x - k * _LN2_HI) - k * _LN2_LO  # |r| <= ln2/2: Taylor to degree 13 is below 1e-17
    p = torch.full_like(r, _EXP_COEFS[-1])
    for c in reversed(_EXP_COEFS[:-1]):
        p = p * r + c
    two_k = ((k.to(torch.int64) + 1023) << 52).view(torch.float64)
    return p * two_k


# ------------------------------------------------------------------------------ configuration

def _is_real(x) -> bool:
    return isinstance(x, numbers.Real) and not isinstance(x, bool) and math.isfinite(x)


def _pair(name: str, value, lo_ok, hi_ok, expect: str) -> Tuple[float, float]:
    try:
        a, b = value
    except (TypeError, ValueError):
        raise ValueError(f"{name} must be a pair (min, max) {expect}, got {value!r}") from None
    if not (_is_real(a) and _is_real(b) and lo_ok(a) and a <= b and hi_ok(b)):
        raise ValueError(f"{name} must be a pair (min, max) {expect}, got {value!r}")
    return float(a), float(b)


@dataclass(frozen=True)
class ViewConfig:
    """Everything that defines one view slot of a recipe.

    Sampling (RandomResizedCrop with 10 attempts and torchvision's centre-crop fallback, then
    independent Bernoulli draws and factors) uses size-independent fields; size, interpolation,
    blur_kernel_size, blur_padding, solarize_threshold, mean and std are passed through to
    `jem_fast.augment.functional.augment`.

    Ranges: scale 0 < min <= max <= 1 (torchvision only warns on min > max and accepts
    max > 1, which merely wastes attempts; we reject both); ratio 0 < min <= max (width / height);
    probabilities in [0, 1]; brightness, contrast, saturation >= 0 (factor ~ U[max(0, 1 - v),
    1 + v]); hue in [0, 0.5] (shift ~ U[-hue, hue]); blur_sigma 0 < min <= max; blur_kernel_size
    odd and >= 1. Colour strengths are single numbers as in every recipe, not torchvision's
    optional (min, max) form.
    """
    size: int = 224
    scale: Tuple[float, float] = (0.08, 1.0)
    ratio: Tuple[float, float] = (3.0 / 4.0, 4.0 / 3.0)
    interpolation: str = "bicubic"
    flip_p: float = 0.5
    jitter_p: float = 0.8
    brightness: float = 0.4
    contrast: float = 0.4
    saturation: float = 0.2
    hue: float = 0.1
    grayscale_p: float = 0.2
    blur_p: float = 0.0
    blur_sigma: Tuple[float, float] = (0.1, 2.0)
    blur_kernel_size: int = 23
    blur_padding: str = "reflect"
    solarize_p: float = 0.0
    solarize_threshold: float = 0.5
    mean: Tuple[float, float, float] = IMAGENET_MEAN
    std: Tuple[float, float, float] = IMAGENET_STD

    def __post_init__(self):
        def put(name, value):
            object.__setattr__(self, name, value)

        if isinstance(self.size, bool) or not isinstance(self.size, numbers.Integral) \
                or self.size < 1:
            raise ValueError(f"size must be an int >= 1, got {self.size!r}")
        put("size", int(self.size))
        put("scale", _pair("scale", self.scale, lambda a: a > 0, lambda b: b <= 1,
                           "with 0 < min <= max <= 1"))
        ratio = _pair("ratio", self.ratio, lambda a: a > 0, lambda b: True,
                      "with 0 < min <= max")
        if max(abs(math.log(ratio[0])), abs(math.log(ratio[1]))) > 700:
            raise ValueError(f"ratio must lie within [exp(-700), exp(700)], got {self.ratio!r}")
        put("ratio", ratio)
        if self.interpolation not in INTERPOLATIONS:
            raise ValueError(f"interpolation must be one of {INTERPOLATIONS}, got "
                             f"{self.interpolation!r}")
        for name in ("flip_p", "jitter_p", "grayscale_p", "blur_p", "solarize_p"):
            v = getattr(self, name)
            if not (_is_real(v) and 0 <= v <= 1):
                raise ValueError(f"{name} must be a probability in [0, 1], got {v!r}")
            put(name, float(v))
        for name in ("brightness", "contrast", "saturation"):
            v = getattr(self, name)
            if not (_is_real(v) and v >= 0):
                raise ValueError(f"{name} must be a finite number >= 0, got {v!r}")
            put(name, float(v))
        if not (_is_real(self.hue) and 0 <= self.hue <= 0.5):
            raise ValueError(f"hue must be in [0, 0.5], got {self.hue!r}")
        put("hue", float(self.hue))
        put("blur_sigma", _pair("blur_sigma", self.blur_sigma, lambda a: a > 0, lambda b: True,
                                "with 0 < min <= max"))
        k = self.blur_kernel_size
        if isinstance(k, bool) or not isinstance(k, numbers.Integral) or k < 1 or k % 2 == 0:
            raise ValueError(f"blur_kernel_size must be an odd int >= 1, got {k!r}")
        put("blur_kernel_size", int(k))
        if self.blur_padding not in BLUR_PADDINGS:
            raise ValueError(f"blur_padding must be one of {BLUR_PADDINGS}, got "
                             f"{self.blur_padding!r}")
        if not (_is_real(self.solarize_threshold) and 0 <= self.solarize_threshold <= 1):
            raise ValueError(f"solarize_threshold must be in [0, 1] (float images), got "
                             f"{self.solarize_threshold!r}")
        put("solarize_threshold", float(self.solarize_threshold))
        for name, positive in (("mean", False), ("std", True)):
            v = getattr(self, name)
            try:
                vals = tuple(v)
            except TypeError:
                vals = ()
            if len(vals) != 3 or not all(_is_real(x) and (x > 0 or not positive) for x in vals):
                raise ValueError(f"{name} must be 3 finite numbers{' > 0' if positive else ''}, "
                                 f"got {v!r}")
            put(name, tuple(float(x) for x in vals))

    @classmethod
    def field_names(cls) -> Tuple[str, ...]:
        return tuple(f.name for f in fields(cls))


# ------------------------------------------------------------------------------ image sizes

SizesLike = Union[torch.Tensor, Sequence[Sequence[int]], Tuple[int, int]]


def _image_sizes(image_sizes, batch_size, device) -> Tuple[torch.Tensor, torch.Tensor]:
    """(H, W) as two (B,) int64 tensors on device."""
    if batch_size is not None:
        b = operator.index(batch_size)
        if b < 0:
            raise ValueError(f"batch_size must be >= 0, got {b}")
        try:
            h, w = (operator.index(x) for x in image_sizes)
        except (TypeError, ValueError):
            raise ValueError("with batch_size, image_sizes must be one (H, W) pair of ints, got "
                             f"{image_sizes!r}") from None
        if h < 1 or w < 1:
            raise ValueError(f"image_sizes must be >= 1, got {(h, w)}")
        # torch.full fills on the device: no host-to-device copy, no sync.
        return (torch.full((b,), h, dtype=torch.int64, device=device),
                torch.full((b,), w, dtype=torch.int64, device=device))
    if isinstance(image_sizes, torch.Tensor):
        if image_sizes.dim() != 2 or image_sizes.shape[1] != 2 or image_sizes.is_floating_point() \
                or image_sizes.is_complex() or image_sizes.dtype == torch.bool:
            raise ValueError("image_sizes must be an integer tensor of shape (B, 2) holding "
                             f"(H, W), got {tuple(image_sizes.shape)} {image_sizes.dtype}")
        sizes = image_sizes.to(device=device, dtype=torch.int64)
        if sizes.device.type == "cpu" and sizes.numel() and bool((sizes < 1).any()):
            raise ValueError("image_sizes must all be >= 1")
    else:
        try:
            rows = [tuple(operator.index(x) for x in hw) for hw in image_sizes]
        except TypeError:
            raise ValueError("image_sizes must be a (B, 2) tensor, a sequence of (H, W) pairs, "
                             f"or one (H, W) pair with batch_size; got {image_sizes!r}") from None
        if any(len(r) != 2 for r in rows):
            raise ValueError("image_sizes must hold (H, W) pairs")
        if any(h < 1 or w < 1 for h, w in rows):
            raise ValueError("image_sizes must all be >= 1")
        sizes = torch.tensor(rows, dtype=torch.int64).reshape(-1, 2).to(device)
    return sizes[:, 0], sizes[:, 1]


# ------------------------------------------------------------------------------ the sampler

def fallback_crop(height: torch.Tensor, width: torch.Tensor,
                  ratio: Tuple[float, float]) -> torch.Tensor:
    """torchvision's centre crop when no attempt fits: (B, 4) int64 top, left, height, width."""
    hd, wd = height.double(), width.double()
    r_min = torch.full_like(wd, min(ratio))
    r_max = max(ratio)
    in_ratio = wd / hd
    narrow = in_ratio < r_min
    wide = in_ratio > r_max
    h = torch.where(narrow, torch.round(wd / r_min).to(torch.int64), height)
    w = torch.where(wide, torch.round(hd * r_max).to(torch.int64), width)
    return torch.stack(((height - h) // 2, (width - w) // 2, h, w), dim=-1)


Words = Tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]


def _crops(words: Words, height: torch.Tensor, width: torch.Tensor,
           cfg: ViewConfig) -> torch.Tensor:
    """words: four (V, B, NUM_BLOCKS) planes; height, width: (B,). Returns (V, B, 4)."""
    att = [w[..., _BLOCK_CROP:_BLOCK_CROP + NUM_ATTEMPTS] for w in words]
    u_scale = _u53(att[0], att[1])
    u_ratio = _u53(att[2], att[3])
    H = height.view(1, -1, 1)
    W = width.view(1, -1, 1)
    area = (H * W).double()
    s_lo, s_hi = cfg.scale
    target = area * (s_lo + (s_hi - s_lo) * u_scale)
    lr_lo, lr_hi = math.log(cfg.ratio[0]), math.log(cfg.ratio[1])
    ar = _exp(lr_lo + (lr_hi - lr_lo) * u_ratio)
    w = torch.round(torch.sqrt(target * ar)).to(torch.int64)
    h = torch.round(torch.sqrt(target / ar)).to(torch.int64)
    valid = (w > 0) & (w <= W) & (h > 0) & (h <= H)
    first = valid.to(torch.uint8).argmax(dim=-1, keepdim=True)  # first True (or 0 if none)
    h = h.gather(-1, first).squeeze(-1)
    w = w.gather(-1, first).squeeze(-1)
    place = [x[..., _BLOCK_PLACE:_BLOCK_PLACE + NUM_ATTEMPTS].gather(-1, first).squeeze(-1)
             for x in words]
    H, W = H.squeeze(-1), W.squeeze(-1)
    # randint(0, n) == floor(u * n); the clamp only guards u * n rounding up to n.
    top = torch.minimum(torch.floor(_u53(place[0], place[1]) * (H - h + 1).double())
                        .to(torch.int64), H - h)
    left = torch.minimum(torch.floor(_u53(place[2], place[3]) * (W - w + 1).double())
                         .to(torch.int64), W - w)
    sampled = torch.stack((top, left, h, w), dim=-1)
    fallback = fallback_crop(height, width, cfg.ratio).unsqueeze(0).expand_as(sampled)
    return torch.where(valid.any(dim=-1, keepdim=True), sampled, fallback)


def _uniform_range(u: torch.Tensor, lo: float, hi: float) -> torch.Tensor:
    return (lo + (hi - lo) * u).to(torch.float32)


def _group_params(words: Words, height: torch.Tensor, width: torch.Tensor,
                  cfg: ViewConfig) -> Dict[str, torch.Tensor]:
    """All parameters of the views in `words` (four (V, B, NUM_BLOCKS) planes), which share
    `cfg`."""
    def u(block, half):
        return _u53(words[2 * half][..., block], words[2 * half + 1][..., block])

    jitter = u(_BLOCK_COINS_A, 1) < cfg.jitter_p
    one = torch.ones((), dtype=torch.float32, device=words[0].device)
    zero = torch.zeros((), dtype=torch.float32, device=words[0].device)

    def factor(block, half, v):
        f = _uniform_range(u(block, half), max(0.0, 1.0 - v), 1.0 + v)
        return torch.where(jitter, f, one)

    blur = u(_BLOCK_COINS_B, 1) < cfg.blur_p
    sigma = _uniform_range(u(_BLOCK_SIGMA, 0), *cfg.blur_sigma)
    return {
        "crop": _crops(words, height, width, cfg),
        "flip": u(_BLOCK_COINS_A, 0) < cfg.flip_p,
        "jitter": jitter,
        "brightness": factor(_BLOCK_FACT_A, 0, cfg.brightness),
        "contrast": factor(_BLOCK_FACT_A, 1, cfg.contrast),
        "saturation": factor(_BLOCK_FACT_B, 0, cfg.saturation),
        "hue": torch.where(jitter, _uniform_range(u(_BLOCK_FACT_B, 1), -cfg.hue, cfg.hue), zero),
        # A uniform random permutation: argsort of 4 iid 32-bit words (ties, probability
        # ~1.4e-9, break by position).
        "order": torch.argsort(torch.stack([w[..., _BLOCK_ORDER] for w in words], dim=-1),
                               dim=-1, stable=True),
        "grayscale": u(_BLOCK_COINS_B, 0) < cfg.grayscale_p,
        "blur_sigma": torch.where(blur, sigma, zero),
        "solarize": u(_BLOCK_COINS_C, 0) < cfg.solarize_p,
    }


# ------------------------------------------------------------------------------ numpy twin

# The same sampler written with numpy for parameters computed on the CPU. A per-image call (one
# image, a few views) is dominated by per-op dispatch: about 30 torch ops per Philox round plus
# one vectorized pass per distinct config. Here numpy ops (several times cheaper each), Philox
# on stacked word pairs (6 ops per round), and one pass over all views with the per-view
# constants as (V, 1) columns. Every step is the torch path's step with the same IEEE-exact
# operations in the same order (uint64 words, float64 uniforms, round-half-even, correctly
# rounded sqrt and division, no fused multiply-add), so both give bit-identical parameters for
# one seed (tests/test_augment_per_image.py checks it on random sizes, seeds and recipes).

def _philox_words_np(c0, c1, c2, c3, k0: int, k1: int, rounds: int = 10):
    # uint32 words; each product is formed in uint64 (32 x 32 bits fits) and read back as its
    # two uint32 halves through a view (little-endian: low word first), which costs no op.
    # State as pairs: mul = (c0, c2), times (M0, M1); other = (c1, c3). One round:
    # (c0, c1, c2, c3) <- (hi(c2 M1) ^ c1 ^ k0, lo(c2 M1), hi(c0 M0) ^ c3 ^ k1, lo(c0 M0))
    shape = (2,) + (1,) * c0.ndim
    mult = _np.array([_PHILOX_M0, _PHILOX_M1], dtype=_np.uint64).reshape(shape)
    mul = _np.stack(_np.broadcast_arrays(c0, c2)).astype(_np.uint32)
    other = _np.stack(_np.broadcast_arrays(c1, c3)).astype(_np.uint32)
    keys, k0, k1 = [], k0 & _MASK32, k1 & _MASK32
    for r in range(rounds):
        if r:
            k0 = (k0 + _PHILOX_W0) & _MASK32
            k1 = (k1 + _PHILOX_W1) & _MASK32
        keys.append((k0, k1))
    keys = _np.array(keys, dtype=_np.uint32).reshape((rounds,) + shape)
    little = _np.little_endian
    for r in range(rounds):
        halves = (mul.astype(_np.uint64) * mult).view(_np.uint32)
        halves = halves.reshape(halves.shape[:-1] + (halves.shape[-1] // 2, 2))
        lo, hi = (halves[..., 0], halves[..., 1]) if little else (halves[..., 1], halves[..., 0])
        mul, other = (hi[::-1] ^ other) ^ keys[r], lo[::-1]
    u64 = _np.uint64
    return mul[0].astype(u64), other[0].astype(u64), mul[1].astype(u64), other[1].astype(u64)


def _u53_np(hi, lo):
    return ((hi >> _np.uint64(5)) * _np.uint64(1 << 26) + (lo >> _np.uint64(6))).astype(
        _np.float64) * (2.0 ** -53)


def _exp_np(x):
    k = _np.round(x * _INV_LN2)
    r = (x - k * _LN2_HI) - k * _LN2_LO
    p = _np.full_like(r, _EXP_COEFS[-1])
    for c in reversed(_EXP_COEFS[:-1]):
        p = p * r + c
    two_k = ((k.astype(_np.int64) + 1023) << 52).view(_np.float64)
    return p * two_k


class _Columns:
    """Per-view constants of a config list as (V, 1) float64 columns: the same doubles the torch
    path computes from each ViewConfig as Python floats."""

    def __init__(self, configs: Sequence[ViewConfig]):
        def col(values):
            return _np.array(values, dtype=_np.float64).reshape(-1, 1)

        def span(lo_hi):
            return [lo for lo, _ in lo_hi], [hi - lo for lo, hi in lo_hi]

        self.scale_lo, self.scale_span = map(col, span([c.scale for c in configs]))
        logs = [(math.log(c.ratio[0]), math.log(c.ratio[1])) for c in configs]
        self.log_ratio_lo, self.log_ratio_span = map(col, span(logs))
        self.ratio_min = col([min(c.ratio) for c in configs])
        self.ratio_max = col([max(c.ratio) for c in configs])
        for name in ("flip_p", "jitter_p", "grayscale_p", "blur_p", "solarize_p"):
            setattr(self, name, col([getattr(c, name) for c in configs]))
        for name in ("brightness", "contrast", "saturation"):
            setattr(self, name, tuple(map(col, span(
                [(max(0.0, 1.0 - getattr(c, name)), 1.0 + getattr(c, name)) for c in configs]))))
        self.hue = tuple(map(col, span([(-c.hue, c.hue) for c in configs])))
        self.sigma = tuple(map(col, span([c.blur_sigma for c in configs])))


_COLUMNS_CACHE: Dict[Tuple[ViewConfig, ...], _Columns] = {}


_COLUMNS_BY_ID: Dict[int, Tuple[Sequence[ViewConfig], _Columns]] = {}


def _columns(configs: Sequence[ViewConfig]) -> _Columns:
    # A preset passes the same tuple every call: look it up by identity first (hashing ten
    # frozen dataclasses field by field costs ~20 us), then by value.
    hit = _COLUMNS_BY_ID.get(id(configs))
    if hit is not None and hit[0] is configs:
        return hit[1]
    key = tuple(configs)
    cols = _COLUMNS_CACHE.get(key)
    if cols is None:
        if len(_COLUMNS_CACHE) > 64:  # recipes are few; bound the caches anyway
            _COLUMNS_CACHE.clear()
        cols = _COLUMNS_CACHE[key] = _Columns(key)
    if len(_COLUMNS_BY_ID) > 64:
        _COLUMNS_BY_ID.clear()
    _COLUMNS_BY_ID[id(configs)] = (configs, cols)  # holds configs: its id stays unique
    return cols


def _crops_np(uniforms, height, width, cols: _Columns):
    """uniforms: (2, V, B, NUM_BLOCKS) float64, the two 53-bit uniforms of every block; height,
    width: (B,) int64."""
    u_scale = uniforms[0, ..., _BLOCK_CROP:_BLOCK_CROP + NUM_ATTEMPTS]
    u_ratio = uniforms[1, ..., _BLOCK_CROP:_BLOCK_CROP + NUM_ATTEMPTS]
    H = height.reshape(1, -1, 1)
    W = width.reshape(1, -1, 1)
    area = (H * W).astype(_np.float64)
    target = area * (cols.scale_lo[..., None] + cols.scale_span[..., None] * u_scale)
    ar = _exp_np(cols.log_ratio_lo[..., None] + cols.log_ratio_span[..., None] * u_ratio)
    w = _np.round(_np.sqrt(target * ar)).astype(_np.int64)
    h = _np.round(_np.sqrt(target / ar)).astype(_np.int64)
    valid = (w > 0) & (w <= W) & (h > 0) & (h <= H)
    first = valid.argmax(axis=-1)[..., None]  # first valid attempt, 0 if none
    h = _np.take_along_axis(h, first, -1)[..., 0]
    w = _np.take_along_axis(w, first, -1)[..., 0]
    # (u_top, u_left) of the chosen attempt: (2, V, B)
    u_place = _np.take_along_axis(uniforms[..., _BLOCK_PLACE:_BLOCK_PLACE + NUM_ATTEMPTS],
                                  first[None], -1)[..., 0]
    room = _np.stack((height - h, width - w))  # (2, V, B): H - h, W - w
    top, left = _np.minimum(_np.floor(u_place * (room + 1).astype(_np.float64))
                            .astype(_np.int64), room)
    sampled = _np.stack((top, left, h, w), axis=-1)
    any_valid = valid.any(axis=-1)
    if any_valid.all():
        return sampled
    # torchvision's centre crop (see fallback_crop), per view's ratio range
    hd, wd = height.astype(_np.float64), width.astype(_np.float64)
    in_ratio = wd / hd
    fh = _np.where(in_ratio < cols.ratio_min, _np.round(wd / cols.ratio_min).astype(_np.int64),
                   height)
    fw = _np.where(in_ratio > cols.ratio_max, _np.round(hd * cols.ratio_max).astype(_np.int64),
                   width)
    fallback = _np.stack(((height - fh) // 2, (width - fw) // 2, fh, fw), axis=-1)
    return _np.where(any_valid[..., None], sampled, fallback)


def _sample_stacked_np(height, width, key: int, configs: Sequence[ViewConfig],
                       view_indices: Sequence[int], off: int) -> Dict[str, "_np.ndarray"]:
    """Every parameter of every view as one (V, B, ...) numpy array per name (views in config
    order); height, width: (B,) int64 arrays."""
    n, v = height.shape[0], len(configs)
    idx = _np.arange(off, off + n, dtype=_np.uint64).reshape(1, n, 1)
    w0, w1, w2, w3 = _philox_words_np(
        idx & _np.uint64(_MASK32), idx >> _np.uint64(32),
        _np.asarray(view_indices, dtype=_np.uint64).reshape(v, 1, 1),
        _np.arange(NUM_BLOCKS, dtype=_np.uint64).reshape(1, 1, -1), *_key(key))
    cols = _columns(configs)
    uniforms = _u53_np(_np.stack((w0, w2)), _np.stack((w1, w3)))  # (2, V, B, NUM_BLOCKS)

    def u(block, half):
        return uniforms[half, ..., block]

    def uniform(x, lo_span):
        return (lo_span[0] + lo_span[1] * x).astype(_np.float32)

    jitter = u(_BLOCK_COINS_A, 1) < cols.jitter_p
    one, zero = _np.float32(1.0), _np.float32(0.0)
    blur = u(_BLOCK_COINS_B, 1) < cols.blur_p
    order_words = _np.stack((w0[..., _BLOCK_ORDER], w1[..., _BLOCK_ORDER],
                             w2[..., _BLOCK_ORDER], w3[..., _BLOCK_ORDER]), axis=-1)
    return {
        "crop": _crops_np(uniforms, height, width, cols),
        "flip": u(_BLOCK_COINS_A, 0) < cols.flip_p,
        "jitter": jitter,
        "brightness": _np.where(jitter, uniform(u(_BLOCK_FACT_A, 0), cols.brightness), one),
        "contrast": _np.where(jitter, uniform(u(_BLOCK_FACT_A, 1), cols.contrast), one),
        "saturation": _np.where(jitter, uniform(u(_BLOCK_FACT_B, 0), cols.saturation), one),
        "hue": _np.where(jitter, uniform(u(_BLOCK_FACT_B, 1), cols.hue), zero),
        "order": _np.argsort(order_words, axis=-1, kind="stable").astype(_np.int64),
        "grayscale": u(_BLOCK_COINS_B, 0) < cols.grayscale_p,
        "blur_sigma": _np.where(blur, uniform(u(_BLOCK_SIGMA, 0), cols.sigma), zero),
        "solarize": u(_BLOCK_COINS_C, 0) < cols.solarize_p,
    }


_PARAM_TRAILING = {"crop": (4,), "order": (4,)}
_PARAM_NP_DTYPES = {"crop": "int64", "order": "int64", "flip": "bool", "jitter": "bool",
                    "grayscale": "bool", "solarize": "bool", "brightness": "float32",
                    "contrast": "float32", "saturation": "float32", "hue": "float32",
                    "blur_sigma": "float32"}


# ------------------------------------------------------------------------------ scalar twin

# For a per-image call (a handful of views of one image) even numpy's per-op cost dominates:
# after a kernel call has swept the caches, ~150 small numpy ops cost ~0.3-0.5 ms. This path
# runs Philox on Python integers holding every (view, sample, block) lane in its own 64-bit
# slot (a 32 x 32-bit product never carries into the next slot, so one big-integer multiply,
# shift, mask or xor does all lanes at once), then derives each lane's parameters with Python
# floats, stopping at the first valid crop attempt. Python floats are IEEE doubles with the
# same correctly rounded +, -, *, /, sqrt and round-half-even, and the float32 casts go through
# numpy: the parameters are bit-identical to the torch and numpy paths.

_SCALAR_MAX_LANES = 32  # views x samples up to which 'auto' takes the scalar path on the CPU


def _lane_ones(lanes: int) -> int:
    ones = _LANE_ONES.get(lanes)
    if ones is None:
        ones = _LANE_ONES[lanes] = int.from_bytes(b"\x01\x00\x00\x00\x00\x00\x00\x00" * lanes,
                                                  "little")
    return ones


_LANE_ONES: Dict[int, int] = {}


def _philox_lanes(c0: int, c1: int, c2: int, c3: int, lanes: int, k0: int, k1: int,
                  rounds: int = 10):
    """Philox-4x32 on packed lanes (64 bits per lane, 32-bit words in the low halves)."""
    ones = _lane_ones(lanes)
    mask = _MASK32 * ones
    k0, k1 = k0 & _MASK32, k1 & _MASK32
    for r in range(rounds):
        if r:
            k0 = (k0 + _PHILOX_W0) & _MASK32
            k1 = (k1 + _PHILOX_W1) & _MASK32
        p0 = c0 * _PHILOX_M0
        p1 = c2 * _PHILOX_M1
        c0, c1, c2, c3 = (((p1 >> 32) & mask) ^ c1 ^ (k0 * ones), p1 & mask,
                          ((p0 >> 32) & mask) ^ c3 ^ (k1 * ones), p0 & mask)
    return c0, c1, c2, c3


def _pack(values) -> int:
    return int.from_bytes(_np.ascontiguousarray(values, dtype="<u8").tobytes(), "little")


def _unpack(packed: int, lanes: int):
    return _np.frombuffer(packed.to_bytes(8 * lanes, "little"), dtype="<u8")


_LANE_PATTERNS: Dict[Tuple, Tuple[int, int, List[int]]] = {}

# Blocks every view needs (first crop attempt and its placement, coins, factors, order); the
# other attempts only when the first does not fit, for that (view, sample) alone.
_FIRST_BLOCKS = (_BLOCK_CROP, _BLOCK_PLACE) + tuple(range(_BLOCK_COINS_A, NUM_BLOCKS))
_RETRY_BLOCKS = (tuple(range(_BLOCK_CROP + 1, _BLOCK_CROP + NUM_ATTEMPTS))
                 + tuple(range(_BLOCK_PLACE + 1, _BLOCK_PLACE + NUM_ATTEMPTS)))
_FIRST_POSITION = {b: j for j, b in enumerate(_FIRST_BLOCKS)}


def _lane_patterns(view_indices: Sequence[int], n: int, blocks: Tuple[int, ...]):
    """(packed view ids, packed block ids, one mask per sample with ones in its lanes) of the
    lane layout (view, sample, block); cached, as a recipe calls with the same few shapes."""
    key = (tuple(view_indices), n, blocks)
    cached = _LANE_PATTERNS.get(key)
    if cached is None:
        v = len(view_indices)
        shape = (v, n, len(blocks))
        views = _pack(_np.broadcast_to(_np.asarray(view_indices, dtype=_np.uint64)
                                       .reshape(v, 1, 1), shape))
        block_ids = _pack(_np.broadcast_to(_np.asarray(blocks, dtype=_np.uint64), shape))
        samples = [_pack(_np.broadcast_to((_np.arange(n) == i).astype(_np.uint64)
                                          .reshape(1, n, 1), shape)) for i in range(n)]
        if len(_LANE_PATTERNS) > 256:
            _LANE_PATTERNS.clear()
        cached = _LANE_PATTERNS[key] = (views, block_ids, samples)
    return cached


def _lane_uniforms(key: int, view_indices: Sequence[int], first_index: int, n: int,
                   blocks: Tuple[int, ...]):
    """(u0, u1, words) of the lanes (view, sample, block): the two 53-bit uniforms of every
    lane as Python floats, and its four raw words, each a flat list in lane order."""
    lanes = len(view_indices) * n * len(blocks)
    views, block_ids, samples = _lane_patterns(view_indices, n, blocks)
    c0 = c1 = 0
    for i, mask in enumerate(samples):
        c0 |= ((first_index + i) & _MASK32) * mask
        c1 |= ((first_index + i) >> 32) * mask
    w0, w1, w2, w3 = _philox_lanes(c0, c1, views, block_ids, lanes, *_key(key))
    # the uniforms, still packed: (hi >> 5) * 2^26 + (lo >> 6) per lane; then one conversion
    # each for the uniforms and for the raw words
    ones = _lane_ones(lanes)
    m27, m26 = ((1 << 27) - 1) * ones, ((1 << 26) - 1) * ones
    u_first = ((((w0 >> 5) & m27) << 26) | ((w1 >> 6) & m26))
    u_second = ((((w2 >> 5) & m27) << 26) | ((w3 >> 6) & m26))
    shift = 64 * lanes
    u = (_unpack(u_first | (u_second << shift), 2 * lanes).astype(_np.float64)
         * _TWO_M53).tolist()
    flat = _unpack(w0 | (w1 << shift) | (w2 << 2 * shift) | (w3 << 3 * shift),
                   4 * lanes).tolist()
    return u[:lanes], u[lanes:], [flat[j * lanes:(j + 1) * lanes] for j in range(4)]


def _exp_scalar(x: float) -> float:
    k = round(x * _INV_LN2)
    r = (x - k * _LN2_HI) - k * _LN2_LO
    p = _EXP_COEFS[-1]
    for c in _EXP_REVERSED:
        p = p * r + c
    return math.ldexp(p, k)  # p * 2^k, exact as the bit-built power of two of the other paths


_EXP_REVERSED = tuple(reversed(_EXP_COEFS[:-1]))
_TWO_M53 = 2.0 ** -53


def _sample_stacked_scalar(heights: Sequence[int], widths: Sequence[int], key: int,
                           configs: Sequence[ViewConfig], view_indices: Sequence[int],
                           off: int) -> Dict[str, "_np.ndarray"]:
    """`_sample_stacked_np` for a few lanes (see above); same result, bit for bit."""
    n, v = len(heights), len(configs)
    nb, pos = len(_FIRST_BLOCKS), _FIRST_POSITION
    u0, u1, words = _lane_uniforms(key, view_indices, off, n, _FIRST_BLOCKS)
    cols = _columns(configs)
    crops, orders, flags, floats = [], [], [], []
    for vi, cfg in enumerate(configs):
        s_lo, s_span = float(cols.scale_lo[vi, 0]), float(cols.scale_span[vi, 0])
        lr_lo, lr_span = float(cols.log_ratio_lo[vi, 0]), float(cols.log_ratio_span[vi, 0])
        b_lo, b_sp = float(cols.brightness[0][vi, 0]), float(cols.brightness[1][vi, 0])
        c_lo, c_sp = float(cols.contrast[0][vi, 0]), float(cols.contrast[1][vi, 0])
        s2_lo, s2_sp = float(cols.saturation[0][vi, 0]), float(cols.saturation[1][vi, 0])
        h_lo, h_sp = float(cols.hue[0][vi, 0]), float(cols.hue[1][vi, 0])
        g_lo, g_sp = float(cols.sigma[0][vi, 0]), float(cols.sigma[1][vi, 0])
        for i in range(n):
            base = (vi * n + i) * nb
            H, W = heights[i], widths[i]
            area = float(H * W)
            crop = None
            # attempt 0 from the first pass; attempts 1..9 drawn only if it does not fit
            src0, src1, at = u0, u1, base + pos[_BLOCK_CROP]
            place_at = base + pos[_BLOCK_PLACE]
            for a in range(NUM_ATTEMPTS):
                if a == 1:
                    src0, src1, _ = _lane_uniforms(key, (view_indices[vi],), off + i, 1,
                                                   _RETRY_BLOCKS)
                    at, place_at = 0, NUM_ATTEMPTS - 1
                target = area * (s_lo + s_span * src0[at])
                ar = _exp_scalar(lr_lo + lr_span * src1[at])
                cw = round(math.sqrt(target * ar))
                ch = round(math.sqrt(target / ar))
                if 0 < cw <= W and 0 < ch <= H:
                    top = min(math.floor(src0[place_at] * float(H - ch + 1)), H - ch)
                    left = min(math.floor(src1[place_at] * float(W - cw + 1)), W - cw)
                    crop = (top, left, ch, cw)
                    break
                at += 1
                place_at += 1
            if crop is None:  # torchvision's centre crop (see fallback_crop)
                hd, wd = float(H), float(W)
                in_ratio = wd / hd
                r_min, r_max = min(cfg.ratio), max(cfg.ratio)
                ch = round(wd / r_min) if in_ratio < r_min else H
                cw = round(hd * r_max) if in_ratio > r_max else W
                crop = ((H - ch) // 2, (W - cw) // 2, ch, cw)
            crops.append(crop)
            o = base + pos[_BLOCK_ORDER]
            order_words = (words[0][o], words[1][o], words[2][o], words[3][o])
            orders.append(sorted(range(4), key=order_words.__getitem__))
            coins_a, coins_b = base + pos[_BLOCK_COINS_A], base + pos[_BLOCK_COINS_B]
            jitter = u1[coins_a] < cfg.jitter_p
            sigma = (g_lo + g_sp * u0[base + pos[_BLOCK_SIGMA]] if u1[coins_b] < cfg.blur_p
                     else 0.0)
            flags.append((u0[coins_a] < cfg.flip_p, jitter, u0[coins_b] < cfg.grayscale_p,
                          u0[base + pos[_BLOCK_COINS_C]] < cfg.solarize_p))
            if jitter:
                fa, fb = base + pos[_BLOCK_FACT_A], base + pos[_BLOCK_FACT_B]
                floats.append((b_lo + b_sp * u0[fa], c_lo + c_sp * u1[fa],
                               s2_lo + s2_sp * u0[fb], h_lo + h_sp * u1[fb], sigma))
            else:
                floats.append((1.0, 1.0, 1.0, 0.0, sigma))
    # float64 -> float32 by numpy's round-to-nearest cast, as the other paths; one contiguous
    # (V, B) plane per name, so that the op does not copy them again
    fl = _np.ascontiguousarray(_np.array(floats, dtype=_np.float64).astype(_np.float32).T)
    fl = fl.reshape(5, v, n)
    fg = _np.ascontiguousarray(_np.array(flags, dtype=bool).T).reshape(4, v, n)
    return {
        "crop": _np.array(crops, dtype=_np.int64).reshape(v, n, 4),
        "flip": fg[0], "jitter": fg[1],
        "brightness": fl[0], "contrast": fl[1], "saturation": fl[2], "hue": fl[3],
        "order": _np.array(orders, dtype=_np.int64).reshape(v, n, 4),
        "grayscale": fg[2], "blur_sigma": fl[4], "solarize": fg[3],
    }


def _check_view_indices(configs, view_indices) -> List[int]:
    if view_indices is None:
        return list(range(len(configs)))
    view_indices = [operator.index(v) for v in view_indices]
    if len(view_indices) != len(configs):
        raise ValueError(f"view_indices must have one entry per config ({len(configs)}), got "
                         f"{len(view_indices)}")
    if any(not 0 <= v <= _MASK32 for v in view_indices):
        raise ValueError(f"view_indices must be in [0, 2^32), got {view_indices}")
    return view_indices


def _image_sizes_np(image_sizes, batch_size):
    """(H, W) as two (B,) int64 numpy arrays; the validation of `_image_sizes`."""
    if batch_size is None and not isinstance(image_sizes, torch.Tensor):
        try:
            rows = [tuple(operator.index(x) for x in hw) for hw in image_sizes]
        except TypeError:
            rows = None
        if rows is not None and all(len(r) == 2 and r[0] >= 1 and r[1] >= 1 for r in rows):
            sizes = _np.array(rows, dtype=_np.int64).reshape(-1, 2)
            return sizes[:, 0], sizes[:, 1]
    height, width = _image_sizes(image_sizes, batch_size, torch.device("cpu"))
    return height.numpy(), width.numpy()


def _resolve_backend(backend: str, device: torch.device, lanes: int) -> str:
    if backend not in SAMPLER_BACKENDS:
        raise ValueError(f"backend must be one of {SAMPLER_BACKENDS}, got {backend!r}")
    if backend in ("numpy", "python"):
        if _np is None:
            raise ValueError(f"backend={backend!r} needs numpy, which is not installed")
        if device.type != "cpu":
            raise ValueError(f"backend={backend!r} computes on the CPU; device is {device}")
        return backend
    if backend == "auto":
        if device.type != "cpu" or _np is None:
            return "torch"
        return "python" if lanes <= _SCALAR_MAX_LANES else "numpy"
    return backend


def _sample_stacked(image_sizes: SizesLike, seed: int, configs: Sequence[ViewConfig],
                    device, view_indices, batch_size, index_offset, backend):
    """(stacked, on_numpy): every parameter as one (V, B, ...) array per name, numpy arrays
    (on_numpy) or tensors on `device`; None when there are no configs."""
    seed = _check_seed(seed)
    configs = list(configs)
    for i, c in enumerate(configs):
        if not isinstance(c, ViewConfig):
            raise TypeError(f"configs[{i}] must be a ViewConfig, got {type(c).__name__}")
    view_indices = _check_view_indices(configs, view_indices)
    if device is None:
        device = image_sizes.device if isinstance(image_sizes, torch.Tensor) else "cpu"
    device = torch.device(device)
    if device.type == "cpu" and backend != "torch" and _np is not None:
        height, width = _image_sizes_np(image_sizes, batch_size)
        backend = _resolve_backend(backend, device, len(configs) * height.shape[0])
        off = _check_index_offset(index_offset, height.shape[0])
        if not configs:
            return None, True
        if backend == "python":
            return _sample_stacked_scalar(height.tolist(), width.tolist(), seed, configs,
                                          view_indices, off), True
        return _sample_stacked_np(height, width, seed, configs, view_indices, off), True
    _resolve_backend(backend, device, 0)
    height, width = _image_sizes(image_sizes, batch_size, device)
    n = height.numel()
    off = _check_index_offset(index_offset, n)
    if not configs:
        return None, False
    v0 = view_indices[0]
    if view_indices == list(range(v0, v0 + len(view_indices))):
        views = torch.arange(v0, v0 + len(view_indices), dtype=torch.int64, device=device)
    else:
        views = torch.tensor(view_indices, dtype=torch.int64).to(device)
    words = _philox_words(*_counter_planes(n, views, NUM_BLOCKS, off, device), *_key(seed))
    groups: Dict[ViewConfig, List[int]] = {}
    for i, c in enumerate(configs):
        groups.setdefault(c, []).append(i)
    if len(groups) == 1:
        return _group_params(words, height, width, configs[0]), False
    parts: Dict[str, List[Optional[torch.Tensor]]] = {name: [None] * len(configs)
                                                      for name in PARAM_NAMES}
    for cfg, members in groups.items():
        if members == list(range(members[0], members[-1] + 1)):
            sub = tuple(w[members[0]:members[-1] + 1] for w in words)
        else:
            sel = torch.tensor(members, dtype=torch.int64).to(device)
            sub = tuple(w.index_select(0, sel) for w in words)
        for name, value in _group_params(sub, height, width, cfg).items():
            for j, i in enumerate(members):
                parts[name][i] = value[j]
    return {name: torch.stack(values) for name, values in parts.items()}, False


def _sample_stacked_trusted(sizes, batch_size, key: int, configs: Tuple[ViewConfig, ...],
                            device: torch.device, index_offset: int):
    """`_sample_stacked` for the presets: sizes from `_image_geometry` (validated), configs a
    validated tuple, key from derive_seed, view indices 0 .. V - 1."""
    if device.type != "cpu" or _np is None:
        return _sample_stacked(sizes, key, configs, device, None, batch_size, index_offset,
                               "torch")
    if batch_size is None:
        heights = [hw[0] for hw in sizes]
        widths = [hw[1] for hw in sizes]
    else:
        heights, widths = [sizes[0]] * batch_size, [sizes[1]] * batch_size
    n = len(heights)
    off = _check_index_offset(index_offset, n)
    views = _VIEW_RANGES.get(len(configs))
    if views is None:
        views = _VIEW_RANGES[len(configs)] = tuple(range(len(configs)))
    if len(configs) * n <= _SCALAR_MAX_LANES:
        return _sample_stacked_scalar(heights, widths, key, configs, views, off), True
    return _sample_stacked_np(_np.asarray(heights, dtype=_np.int64),
                              _np.asarray(widths, dtype=_np.int64), key, configs, views,
                              off), True


_VIEW_RANGES: Dict[int, Tuple[int, ...]] = {}


def sample_views_stacked(image_sizes: SizesLike, seed: int, configs: Sequence[ViewConfig],
                         device: Union[str, torch.device, None] = None, *,
                         view_indices: Optional[Sequence[int]] = None,
                         batch_size: Optional[int] = None, index_offset: int = 0,
                         backend: str = "auto") -> Dict[str, torch.Tensor]:
    """The parameters of `sample_views_params` as one (V, B, ...) tensor per name (view v of
    name k is `result[k][v]`); the arguments are those of `sample_views_params`. With no
    configs, every tensor has V = 0."""
    stacked, on_numpy = _sample_stacked(image_sizes, seed, configs, device, view_indices,
                                        batch_size, index_offset, backend)
    if stacked is None:
        dev = torch.device(device) if device is not None else torch.device("cpu")
        n = len(_image_sizes_np(image_sizes, batch_size)[0]) if on_numpy else \
            _image_sizes(image_sizes, batch_size, dev)[0].numel()
        return {name: torch.empty((0, n) + _PARAM_TRAILING.get(name, ()),
                                  dtype=getattr(torch, _PARAM_NP_DTYPES[name]), device=dev)
                for name in PARAM_NAMES}
    if on_numpy:
        return {name: torch.from_numpy(value) for name, value in stacked.items()}
    return stacked


def sample_views_params(image_sizes: SizesLike, seed: int, configs: Sequence[ViewConfig],
                        device: Union[str, torch.device, None] = None, *,
                        view_indices: Optional[Sequence[int]] = None,
                        batch_size: Optional[int] = None,
                        index_offset: int = 0,
                        backend: str = "auto") -> List[Dict[str, torch.Tensor]]:
    """Parameters of several views of one batch: one params dict per config.

    Same result as calling `sample_view_params` once per view, but one Philox pass for all views
    and one vectorized pass per distinct config (a DINO batch costs 3 passes, not 10): this runs
    every training step, on the GPU when the images are there.

    Args:
        image_sizes: (B, 2) integer tensor or sequence of (H, W) pairs (per-sample sizes), or one
            (H, W) pair together with `batch_size`.
        seed: Philox key in [0, 2^64) (see `derive_seed` for a per-step key).
        configs: one ViewConfig per view.
        device: where the parameters are computed and returned (default: image_sizes' device if
            a tensor, else CPU).
        view_indices: counter value of each view (default 0 .. len(configs) - 1). Views with the
            same seed, sample index and view index get identical parameters.
        index_offset: global index of the first sample (e.g. rank * batch) so that ranks and
            batches never share counters under one seed.
        backend: 'auto' (on the CPU: Python scalars for up to 32 views x samples, numpy
            above; torch ops on other devices), 'torch', 'numpy' or 'python' (CPU only). All
            compute the same bits; the CPU paths cost a fraction of the torch ops' dispatch
            for the small batches of a per-image call (`Dataset.__getitem__`).
    """
    stacked, on_numpy = _sample_stacked(image_sizes, seed, configs, device, view_indices,
                                        batch_size, index_offset, backend)
    if stacked is None:
        return []
    convert = torch.from_numpy if on_numpy else (lambda t: t)
    v = len(stacked["crop"])
    return [{name: convert(value[i]) for name, value in stacked.items()} for i in range(v)]


def sample_view_params(image_sizes: SizesLike, seed: int, view_index: int, config: ViewConfig,
                       device: Union[str, torch.device, None] = None, *,
                       batch_size: Optional[int] = None,
                       index_offset: int = 0, backend: str = "auto") -> Dict[str, torch.Tensor]:
    """Per-sample parameters of one view, as consumed by `functional.augment`.

    Returns a dict with exactly the keys of PARAM_NAMES, B = number of images:
        crop (B, 4) int64 top/left/height/width; flip, jitter, grayscale, solarize (B,) bool;
        brightness, contrast, saturation (B,) float32 (1 when jitter is off); hue (B,) float32
        (0 when off); order (B, 4) int64 permutation of 0=brightness 1=contrast 2=saturation
        3=hue; blur_sigma (B,) float32, 0 = no blur.
    See `sample_views_params` for the arguments.
    """
    return sample_views_params(image_sizes, seed, [config], device, view_indices=[view_index],
                               batch_size=batch_size, index_offset=index_offset,
                               backend=backend)[0]

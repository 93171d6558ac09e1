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
"""
from __future__ import annotations

import math
import numbers
import operator
from dataclasses import dataclass, fields
from typing import Dict, List, Optional, Sequence, Tuple, Union

import torch

__all__ = ["ViewConfig", "PARAM_NAMES", "IMAGENET_MEAN", "IMAGENET_STD", "INTERPOLATIONS",
           "BLUR_PADDINGS", "philox4x32", "counter_uniforms", "derive_seed",
           "sample_view_params", "sample_views_params", "fallback_crop"]

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


def uint8_error(name: str, dtype: torch.dtype) -> str:
    """The error of the kernel and the presets for non-uint8 images (one wording for both)."""
    hint = ""
    if dtype.is_floating_point:
        hint = (" (the fused kernel reads 8-bit pixels, as decoders return them; convert float "
                "images in [0, 1] with `(images * 255).round().to(torch.uint8)`)")
    return f"{name} must be uint8, got {dtype}{hint}"


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


def sample_views_params(image_sizes: SizesLike, seed: int, configs: Sequence[ViewConfig],
                        device: Union[str, torch.device, None] = None, *,
                        view_indices: Optional[Sequence[int]] = None,
                        batch_size: Optional[int] = None,
                        index_offset: int = 0) -> List[Dict[str, torch.Tensor]]:
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
    """
    seed = _check_seed(seed)
    configs = list(configs)
    for i, c in enumerate(configs):
        if not isinstance(c, ViewConfig):
            raise TypeError(f"configs[{i}] must be a ViewConfig, got {type(c).__name__}")
    if view_indices is None:
        view_indices = list(range(len(configs)))
    else:
        view_indices = [operator.index(v) for v in view_indices]
        if len(view_indices) != len(configs):
            raise ValueError(f"view_indices must have one entry per config ({len(configs)}), got "
                             f"{len(view_indices)}")
        if any(not 0 <= v <= _MASK32 for v in view_indices):
            raise ValueError(f"view_indices must be in [0, 2^32), got {view_indices}")
    if device is None:
        device = image_sizes.device if isinstance(image_sizes, torch.Tensor) else "cpu"
    device = torch.device(device)
    height, width = _image_sizes(image_sizes, batch_size, device)
    n = height.numel()
    off = _check_index_offset(index_offset, n)
    if not configs:
        return []
    v0 = view_indices[0]
    if view_indices == list(range(v0, v0 + len(view_indices))):
        views = torch.arange(v0, v0 + len(view_indices), dtype=torch.int64, device=device)
    else:
        views = torch.tensor(view_indices, dtype=torch.int64).to(device)
    words = _philox_words(*_counter_planes(n, views, NUM_BLOCKS, off, device), *_key(seed))

    out: List[Optional[Dict[str, torch.Tensor]]] = [None] * len(configs)
    groups: Dict[ViewConfig, List[int]] = {}
    for i, c in enumerate(configs):
        groups.setdefault(c, []).append(i)
    for cfg, members in groups.items():
        if members == list(range(members[0], members[-1] + 1)):
            sub = tuple(w[members[0]:members[-1] + 1] for w in words)
        else:
            sel = torch.tensor(members, dtype=torch.int64).to(device)
            sub = tuple(w.index_select(0, sel) for w in words)
        params = _group_params(sub, height, width, cfg)
        for j, i in enumerate(members):
            out[i] = {k: v[j] for k, v in params.items()}
    return out  # type: ignore[return-value]


def sample_view_params(image_sizes: SizesLike, seed: int, view_index: int, config: ViewConfig,
                       device: Union[str, torch.device, None] = None, *,
                       batch_size: Optional[int] = None,
                       index_offset: int = 0) -> Dict[str, torch.Tensor]:
    """Per-sample parameters of one view, as consumed by `functional.augment`.

    Returns a dict with exactly the keys of PARAM_NAMES, B = number of images:
        crop (B, 4) int64 top/left/height/width; flip, jitter, grayscale, solarize (B,) bool;
        brightness, contrast, saturation (B,) float32 (1 when jitter is off); hue (B,) float32
        (0 when off); order (B, 4) int64 permutation of 0=brightness 1=contrast 2=saturation
        3=hue; blur_sigma (B,) float32, 0 = no blur.
    See `sample_views_params` for the arguments.
    """
    return sample_views_params(image_sizes, seed, [config], device, view_indices=[view_index],
                               batch_size=batch_size, index_offset=index_offset)[0]

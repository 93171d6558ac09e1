"""Batched ViT masking generators: BEiT block masks, iBOT, DINOv2's collate masking, MAE random
masking and I-JEPA multi-block masks.

Every generator builds the masks of a whole batch at once (a loop over attempts, vectorized over
the samples, not a Python loop per sample) and returns bool masks of shape (B, h, w) over the
patch grid, True = masked, moved to the requested `device`.

Randomness: every function takes `generator`, a torch.Generator, an int seed (a fresh CPU
generator seeded with it) or None (torch's global CPU generator). The block generators draw on
the CPU (they are collate-time work, like the official code that runs in DataLoader workers) and
move only the result to `device`. The same seed gives the same masks; the streams are not those
of the official code (which uses Python's `random` per sample), only the distributions are.

Why the BEiT loop is vectorized in lock-step and still exact: BEiT's per-sample algorithm is a
sequence of attempts, each attempt depending on the mask so far. Running attempt k of every
still-active sample together, with sample b's k-th attempt reading uniforms row b of step k,
gives for every sample exactly what the sequential per-sample loop gives when it is fed the
same uniforms (tests/test_masking.py checks this against a plain per-sample loop).
"""
from __future__ import annotations

import math
from typing import Callable, List, NamedTuple, Optional, Sequence, Tuple, Union

import torch

GeneratorLike = Union[torch.Generator, int, None]
SizeLike = Union[int, Sequence[int]]

__all__ = [
    "BlockMaskGenerator", "block_masks",
    "IBOTMaskGenerator", "ibot_masks",
    "DINOv2MaskGenerator", "DINOv2Masks", "dinov2_masks",
    "MAEMasks", "random_masking",
    "MultiBlockMaskGenerator", "MultiBlockMasks",
]

_BEIT_ATTEMPTS = 10        # attempts per block in BEiT / iBOT / DINOv2 (`for attempt in range(10)`)
_IJEPA_TIMEOUT = 20        # I-JEPA: failed tries before one acceptable region is dropped


# ----------------------------------------------------------------------------- validation

def _as_generator(generator: GeneratorLike) -> Optional[torch.Generator]:
    if generator is None or isinstance(generator, torch.Generator):
        return generator
    if isinstance(generator, bool) or not isinstance(generator, int):
        raise ValueError(f"generator must be a torch.Generator, an int seed or None, "
                         f"got {type(generator).__name__}")
    return torch.Generator().manual_seed(generator)


def _check_size(input_size: SizeLike, name: str = "input_size") -> Tuple[int, int]:
    if isinstance(input_size, int) and not isinstance(input_size, bool):
        input_size = (input_size, input_size)
    try:
        h, w = (int(s) for s in input_size)
        ok = all(isinstance(s, int) or float(s).is_integer() for s in input_size)
    except (TypeError, ValueError):
        raise ValueError(f"{name} must be an int or a pair of ints, got {input_size!r}") from None
    if not ok or h <= 0 or w <= 0:
        raise ValueError(f"{name} must be positive integers, got {tuple(input_size)!r}")
    return h, w


def _check_batch(batch: int) -> int:
    if isinstance(batch, bool) or not isinstance(batch, int) or batch < 1:
        raise ValueError(f"batch must be an int >= 1, got {batch!r}")
    return batch


def _check_ratio(value: float, name: str) -> float:
    value = float(value)
    if not 0.0 <= value <= 1.0:
        raise ValueError(f"{name} must be in [0, 1], got {value}")
    return value


def _check_positive(value: float, name: str) -> float:
    value = float(value)
    if not value > 0 or not math.isfinite(value):
        raise ValueError(f"{name} must be a finite number > 0, got {value}")
    return value


def _check_range(pair, name: str, low: float = 0.0, high: float = math.inf,
                 strict_low: bool = False) -> Tuple[float, float]:
    try:
        a, b = (float(x) for x in pair)
    except (TypeError, ValueError):
        raise ValueError(f"{name} must be a pair (min, max), got {pair!r}") from None
    bad_low = (a <= low or b <= low) if strict_low else (a < low or b < low)
    if bad_low or a > high or b > high or a > b:
        lo = "(" if strict_low else "["
        raise ValueError(f"{name} must satisfy min <= max within {lo}{low}, {high}], got {pair!r}")
    return a, b


# ----------------------------------------------------------------------------- BEiT core

def _draw_uniform(batch: int, generator: Optional[torch.Generator]) -> Callable[[int], torch.Tensor]:
    """The default source of the BEiT loop's uniforms: a (batch, 4) float64 row block per step
    (area, log-aspect, top, left)."""
    def draw(step: int) -> torch.Tensor:
        return torch.rand((batch, 4), generator=generator, dtype=torch.float64)
    return draw


def _beit_block_masks(target: torch.Tensor, height: int, width: int, min_area: float,
                      max_area: float, log_aspect: Tuple[float, float],
                      draw: Callable[[int], torch.Tensor]) -> torch.Tensor:
    """BEiT's MaskingGenerator for every sample of a batch at once (CPU).

    target: (B,) float64 number of patches to mask per sample (iBOT uses a non-integer
    `ratio * H * W`, so the budget is kept in floating point). Each round makes up to 10 attempts;
    an attempt draws area ~ U(min_area, budget) with budget = min(target - count, max_area),
    aspect = exp(U(log_aspect)), h = round(sqrt(area * aspect)), w = round(sqrt(area / aspect)),
    keeps the geometry only if h < height and w < width, places the block at top ~ U{0..height-h},
    left ~ U{0..width-w} and accepts it only if the patches it newly masks are in (0, budget].
    The first accepted attempt ends the round; a round without one ends the sample (undershoot).
    `draw(step)` returns (B, 4) uniforms in [0, 1): step k serves every sample's k-th attempt.
    """
    batch = target.shape[0]
    out = torch.zeros(batch, height, width, dtype=torch.bool)
    # State of the still-active samples only, compacted whenever some finish, so a step costs
    # a fixed handful of small ops on the shrinking active set. The unmasked patches are kept
    # as a uint8 `free` map and the counts as float64: PyTorch's broadcasting bool kernels and
    # bool sums are several times slower than uint8 products and sums on these small tensors.
    ids = (target > 0).nonzero().squeeze(1)
    tgt = target[ids]
    n = ids.numel()
    free = torch.ones(n, height, width, dtype=torch.uint8)
    count = torch.zeros(n, dtype=torch.float64)
    failed = torch.zeros(n, dtype=torch.float64)          # failed attempts in the current round
    rows = torch.arange(height, dtype=torch.float64)
    cols = torch.arange(width, dtype=torch.float64)
    lo, hi = log_aspect
    step = 0
    while n > 0:
        # every sample's uniforms are drawn each step, so sample b's k-th attempt reads row b
        u = draw(step)
        u = (u[ids] if n < batch else u).t()
        budget = (tgt - count).clamp_(max=max_area)
        area = (budget - min_area).mul_(u[0]).add_(min_area)
        aspect = torch.exp(u[1] * (hi - lo) + lo)
        h = torch.sqrt(area * aspect).round_()              # round half to even, as Python's
        w = torch.sqrt(area.div_(aspect)).round_()
        fits = (h < height) & (w < width)
        top = torch.floor(u[2] * (height + 1 - h))
        left = torch.floor(u[3] * (width + 1 - w))
        in_rows = ((rows >= top[:, None]) & (rows < (top + h)[:, None])).to(torch.uint8)
        in_cols = ((cols >= left[:, None]) & (cols < (left + w)[:, None])).to(torch.uint8)
        new_patches = (in_rows[:, :, None] * in_cols[:, None, :]).mul_(free)
        new = new_patches.sum((1, 2), dtype=torch.int32).double()
        accept = fits.logical_and_(new > 0).logical_and_(new <= budget)
        acc = accept.double()
        free -= new_patches.mul_(accept.to(torch.uint8)[:, None, None])
        count += new * acc
        failed = (failed + 1) * (1 - acc)
        # a rejected attempt leaves count < tgt; an accepted one resets failed to 0
        done = (count >= tgt) | (failed >= _BEIT_ATTEMPTS)
        if bool(done.any()):
            fin = done.nonzero().squeeze(1)
            out[ids[fin]] = free[fin] == 0
            keep = (~done).nonzero().squeeze(1)
            ids, tgt, free, count, failed = ids[keep], tgt[keep], free[keep], count[keep], \
                failed[keep]
            n = ids.numel()
        step += 1
    return out


def _beit_args(min_num_patches, max_num_patches, min_aspect, max_aspect):
    min_num_patches = float(min_num_patches)
    if not min_num_patches >= 0 or not math.isfinite(min_num_patches):
        raise ValueError(f"min_num_patches must be >= 0, got {min_num_patches}")
    if max_num_patches is not None:
        max_num_patches = _check_positive(max_num_patches, "max_num_patches")
    min_aspect = _check_positive(min_aspect, "min_aspect")
    max_aspect = 1.0 / min_aspect if max_aspect is None else _check_positive(max_aspect,
                                                                             "max_aspect")
    return min_num_patches, max_num_patches, (math.log(min_aspect), math.log(max_aspect))


# ----------------------------------------------------------------------------- BEiT

class BlockMaskGenerator:
    """BEiT's block-wise mask (Bao et al., 2022, microsoft/unilm beit/masking_generator.py),
    batched.

    Args:
        input_size: the patch grid (h, w), or an int for a square grid (14 = 224 / 16).
        num_masking_patches: patches to mask per sample (BEiT: 75 of 196, about 40%).
        min_num_patches: the smallest block area drawn. Default 4 as BEiT's MaskingGenerator;
            BEiT's pretraining script passes 16 (--min_mask_patches_per_block).
        max_num_patches: the largest block area (None: num_masking_patches).
        min_aspect, max_aspect: log-uniform block aspect range; max_aspect None = 1 / min_aspect.

    The loop keeps BEiT's behaviour exactly: it never masks more than num_masking_patches, and
    it stops short of it (undershoot) when a round of 10 attempts adds no patch, which happens
    when the remaining budget is smaller than any block that still fits.
    """

    def __init__(self, input_size: SizeLike = (14, 14), num_masking_patches: int = 75,
                 min_num_patches: float = 4, max_num_patches: Optional[float] = None,
                 min_aspect: float = 0.3, max_aspect: Optional[float] = None):
        self.height, self.width = _check_size(input_size)
        num_patches = self.height * self.width
        if (isinstance(num_masking_patches, bool) or not isinstance(num_masking_patches, int)
                or not 0 <= num_masking_patches <= num_patches):
            raise ValueError(f"num_masking_patches must be an int in [0, {num_patches}] "
                             f"(h * w), got {num_masking_patches!r}")
        self.num_masking_patches = num_masking_patches
        self.min_num_patches, max_num, self.log_aspect_ratio = _beit_args(
            min_num_patches, max_num_patches, min_aspect, max_aspect)
        self.max_num_patches = float(num_masking_patches) if max_num is None else max_num

    def __repr__(self) -> str:
        return (f"BlockMaskGenerator(input_size=({self.height}, {self.width}), "
                f"num_masking_patches={self.num_masking_patches}, "
                f"min_num_patches={self.min_num_patches:g}, "
                f"max_num_patches={self.max_num_patches:g}, "
                f"aspect=({math.exp(self.log_aspect_ratio[0]):.3f}, "
                f"{math.exp(self.log_aspect_ratio[1]):.3f}))")

    def __call__(self, batch: int, generator: GeneratorLike = None,
                 device: Union[torch.device, str, None] = None) -> torch.Tensor:
        """(batch, h, w) bool masks, True = masked."""
        batch = _check_batch(batch)
        g = _as_generator(generator)
        target = torch.full((batch,), float(self.num_masking_patches), dtype=torch.float64)
        mask = _beit_block_masks(target, self.height, self.width, self.min_num_patches,
                                 self.max_num_patches, self.log_aspect_ratio,
                                 _draw_uniform(batch, g))
        return mask.to(device) if device is not None else mask


def block_masks(batch: int, input_size: SizeLike = (14, 14), num_masking_patches: int = 75,
                min_num_patches: float = 4, max_num_patches: Optional[float] = None,
                min_aspect: float = 0.3, max_aspect: Optional[float] = None,
                generator: GeneratorLike = None,
                device: Union[torch.device, str, None] = None) -> torch.Tensor:
    """Functional form of BlockMaskGenerator: (batch, h, w) bool BEiT block masks."""
    return BlockMaskGenerator(input_size, num_masking_patches, min_num_patches, max_num_patches,
                              min_aspect, max_aspect)(batch, generator, device)


# ----------------------------------------------------------------------------- iBOT

class IBOTMaskGenerator:
    """iBOT's masks (Zhou et al., 2022, bytedance/ibot loader.py ImageFolderMask), batched: one
    mask per crop of a grid size.

    Per crop a prediction ratio is drawn: ratio ~ U(r - v, r + v) when v > 0, else r. With a list
    of ratios (iBOT's ViT-B/L recipe passes `--pred_ratio 0 0.3 --pred_ratio_var 0 0.2`), each
    entry is drawn that way and one of them is chosen uniformly, so about half the crops stay
    unmasked. Then, with shape 'block', BEiT's loop runs with a target of ratio * h * w patches
    (kept fractional, as in iBOT), smallest block area (min(h, w) // 3) ** 2 (16 on 14 x 14,
    4 on the 6 x 6 local crops), no largest-block cap, and log-uniform aspect in
    pred_aspect_ratio; with shape 'rand', int(ratio * h * w) patches uniformly at random.

    Args:
        input_size: patch grid of the crops masked by this call ((14, 14) global, (6, 6) local).
        pred_ratio: float or list of floats in [0, 1] (iBOT default 0.3).
        pred_ratio_var: float or list of the same length (default 0); each <= its ratio.
        pred_aspect_ratio: (min, max) aspect (default (0.3, 1 / 0.3)).
        pred_shape: 'block' or 'rand'.

    iBOT builds masks for every crop, local ones included, but only the global crops' masks
    are used by its loss; call this once per crop grid size. iBOT's pred_start_epoch (ratio 0
    before a given epoch) is left to the caller (pass pred_ratio=0).
    """

    def __init__(self, input_size: SizeLike = (14, 14),
                 pred_ratio: Union[float, Sequence[float]] = 0.3,
                 pred_ratio_var: Union[float, Sequence[float]] = 0.0,
                 pred_aspect_ratio: Tuple[float, float] = (0.3, 1 / 0.3),
                 pred_shape: str = "block"):
        self.height, self.width = _check_size(input_size)
        ratios = [pred_ratio] if isinstance(pred_ratio, (int, float)) else list(pred_ratio)
        if len(ratios) == 0:
            raise ValueError("pred_ratio must be a float or a non-empty list of floats")
        ratios = [_check_ratio(r, "pred_ratio") for r in ratios]
        if isinstance(pred_ratio_var, (int, float)):
            vars_ = [float(pred_ratio_var)] * len(ratios)
        else:
            vars_ = [float(v) for v in pred_ratio_var]
            if len(vars_) != len(ratios):
                raise ValueError(f"pred_ratio_var must have one entry per pred_ratio "
                                 f"({len(ratios)}), got {len(vars_)}")
        for r, v in zip(ratios, vars_):
            if not 0.0 <= v <= r or r + v > 1.0:
                raise ValueError(f"pred_ratio_var must satisfy 0 <= var <= ratio and "
                                 f"ratio + var <= 1, got ratio {r}, var {v}")
        self.pred_ratio, self.pred_ratio_var = ratios, vars_
        lo, hi = _check_range(pred_aspect_ratio, "pred_aspect_ratio", strict_low=True)
        self.log_aspect_ratio = (math.log(lo), math.log(hi))
        if pred_shape not in ("block", "rand"):
            raise ValueError(f"pred_shape must be 'block' or 'rand', got {pred_shape!r}")
        self.pred_shape = pred_shape
        self.min_num_patches = float((min(self.height, self.width) // 3) ** 2)

    def sample_ratios(self, batch: int, generator: Optional[torch.Generator]) -> torch.Tensor:
        """(batch,) float64 prediction ratios, one per crop."""
        r = torch.tensor(self.pred_ratio, dtype=torch.float64)
        v = torch.tensor(self.pred_ratio_var, dtype=torch.float64)
        u = torch.rand((batch, len(self.pred_ratio)), generator=generator, dtype=torch.float64)
        ratios = r + v * (2 * u - 1)                     # U(r - v, r + v); r itself when v == 0
        if len(self.pred_ratio) == 1:
            return ratios[:, 0]
        choice = torch.randint(len(self.pred_ratio), (batch,), generator=generator)
        return ratios.gather(1, choice.view(-1, 1)).squeeze(1)

    def __call__(self, batch: int, generator: GeneratorLike = None,
                 device: Union[torch.device, str, None] = None,
                 return_ratios: bool = False):
        """(batch, h, w) bool masks, True = masked; with return_ratios also the (batch,) ratios."""
        batch = _check_batch(batch)
        g = _as_generator(generator)
        ratios = self.sample_ratios(batch, g)
        high = ratios * (self.height * self.width)
        if self.pred_shape == "block":
            mask = _beit_block_masks(high, self.height, self.width, self.min_num_patches,
                                     math.inf, self.log_aspect_ratio, _draw_uniform(batch, g))
        else:
            n = self.height * self.width
            noise = torch.rand((batch, n), generator=g)
            rank = noise.argsort(1).argsort(1)
            mask = (rank < high.floor().long().view(-1, 1)).view(batch, self.height, self.width)
        if device is not None:
            mask, ratios = mask.to(device), ratios.to(device)
        return (mask, ratios) if return_ratios else mask


def ibot_masks(batch: int, input_size: SizeLike = (14, 14),
               pred_ratio: Union[float, Sequence[float]] = 0.3,
               pred_ratio_var: Union[float, Sequence[float]] = 0.0,
               pred_aspect_ratio: Tuple[float, float] = (0.3, 1 / 0.3),
               pred_shape: str = "block", generator: GeneratorLike = None,
               device: Union[torch.device, str, None] = None) -> torch.Tensor:
    """Functional form of IBOTMaskGenerator: (batch, h, w) bool masks."""
    return IBOTMaskGenerator(input_size, pred_ratio, pred_ratio_var, pred_aspect_ratio,
                             pred_shape)(batch, generator, device)


# ----------------------------------------------------------------------------- DINOv2

class DINOv2Masks(NamedTuple):
    """What dinov2.data.collate.collate_data_and_cast returns about masks.

    masks: (B, h, w) bool; collated_masks: the same flattened, (B, h * w);
    mask_indices_list: (M,) flat indices of the masked patches in collated_masks.flatten();
    masks_weight: (M,) 1 / (masked patches of its sample) for every masked patch, so the weights
    of a masked sample sum to 1; upperbound: sum over the masked samples of int(N * ratio_max of
    its stratum) (DINOv2 sizes a buffer with it); n_masked_patches: (1,) long, M.
    """
    masks: torch.Tensor
    collated_masks: torch.Tensor
    mask_indices_list: torch.Tensor
    masks_weight: torch.Tensor
    upperbound: int
    n_masked_patches: torch.Tensor


class DINOv2MaskGenerator:
    """DINOv2's iBOT masking at collate time (Oquab et al., 2024, facebookresearch/dinov2
    data/collate.py + data/masking.py), batched.

    Of the B masks (B = every global crop of the batch: DINOv2 masks 2 * batch_size crops),
    n = int(B * mask_probability) are masked, the others are empty. The masked ones take ratios
    stratified over linspace(min_ratio, max_ratio, n + 1): sample i draws its ratio uniformly
    within [p_i, p_i+1] and asks the block generator for int(N * ratio) patches. The block
    generator is BEiT's loop with min_num_patches 4, aspect (0.3, 1 / 0.3) and max_num_patches
    0.5 * N (DINOv2's train.py passes `0.5 * img_size // patch_size * img_size // patch_size`,
    0.5 * N for 224/14 and 224/16). The list is then shuffled.

    Args:
        input_size: patch grid (DINOv2 ViT/14 at 224: (16, 16)).
        mask_ratio_min_max: (min, max) ratio (cfg.ibot.mask_ratio_min_max, default (0.1, 0.5)).
        mask_probability: fraction of masked samples (cfg.ibot.mask_sample_probability, 0.5).
        min_num_patches, max_num_patches (None: 0.5 * h * w), min_aspect, max_aspect: the
            block generator's.
    """

    def __init__(self, input_size: SizeLike = (16, 16),
                 mask_ratio_min_max: Tuple[float, float] = (0.1, 0.5),
                 mask_probability: float = 0.5, min_num_patches: float = 4,
                 max_num_patches: Optional[float] = None, min_aspect: float = 0.3,
                 max_aspect: Optional[float] = None):
        self.height, self.width = _check_size(input_size)
        self.mask_ratio_min_max = _check_range(mask_ratio_min_max, "mask_ratio_min_max",
                                               high=1.0)
        self.mask_probability = _check_ratio(mask_probability, "mask_probability")
        n = self.height * self.width
        self.min_num_patches, max_num, self.log_aspect_ratio = _beit_args(
            min_num_patches, max_num_patches, min_aspect, max_aspect)
        self.max_num_patches = 0.5 * n if max_num is None else max_num

    def __call__(self, batch: int, generator: GeneratorLike = None,
                 device: Union[torch.device, str, None] = None) -> DINOv2Masks:
        batch = _check_batch(batch)
        g = _as_generator(generator)
        n_tokens = self.height * self.width
        n_masked = int(batch * self.mask_probability)
        # float32 like the official torch.linspace(*mask_ratio_tuple, n + 1)
        probs = torch.linspace(*self.mask_ratio_min_max, n_masked + 1)
        u = torch.rand(n_masked, generator=g)
        ratios = probs[:-1] + (probs[1:] - probs[:-1]) * u
        target = torch.zeros(batch, dtype=torch.float64)
        target[:n_masked] = (n_tokens * ratios).long().double()
        upperbound = int((n_tokens * probs[1:]).long().sum()) if n_masked else 0
        mask = _beit_block_masks(target, self.height, self.width, self.min_num_patches,
                                 self.max_num_patches, self.log_aspect_ratio,
                                 _draw_uniform(batch, g))
        mask = mask[torch.randperm(batch, generator=g)]
        if device is not None:
            mask = mask.to(device)
        collated = mask.flatten(1)
        mask_indices_list = collated.flatten().nonzero().flatten()
        per_sample = 1.0 / collated.sum(-1).clamp(min=1.0)
        masks_weight = per_sample.unsqueeze(-1).expand_as(collated)[collated]
        n_masked_patches = torch.full((1,), mask_indices_list.shape[0], dtype=torch.long,
                                      device=mask.device)
        return DINOv2Masks(mask, collated, mask_indices_list, masks_weight, upperbound,
                           n_masked_patches)


def dinov2_masks(batch: int, input_size: SizeLike = (16, 16),
                 mask_ratio_min_max: Tuple[float, float] = (0.1, 0.5),
                 mask_probability: float = 0.5, min_num_patches: float = 4,
                 max_num_patches: Optional[float] = None, min_aspect: float = 0.3,
                 max_aspect: Optional[float] = None, generator: GeneratorLike = None,
                 device: Union[torch.device, str, None] = None) -> DINOv2Masks:
    """Functional form of DINOv2MaskGenerator."""
    return DINOv2MaskGenerator(input_size, mask_ratio_min_max, mask_probability,
                               min_num_patches, max_num_patches, min_aspect,
                               max_aspect)(batch, generator, device)


# ----------------------------------------------------------------------------- MAE

class MAEMasks(NamedTuple):
    """MAE's random_masking outputs (facebookresearch/mae models_mae.py), without x_masked.

    mask: (B, L) float, 1 = removed, 0 = kept, in the original patch order (as MAE);
    ids_keep: (B, len_keep) the kept patches, in shuffled order (x_masked = x.gather(1, ids_keep));
    ids_restore: (B, L) argsort of ids_shuffle, to unshuffle the decoder's sequence;
    ids_shuffle: (B, L) argsort of the noise;
    masks: bool view of `mask`, True = removed, (B, h, w) when a grid was given, else (B, L).
    """
    mask: torch.Tensor
    ids_keep: torch.Tensor
    ids_restore: torch.Tensor
    ids_shuffle: torch.Tensor
    masks: torch.Tensor


def random_masking(batch: int, num_patches: SizeLike, mask_ratio: float = 0.75,
                   generator: GeneratorLike = None,
                   device: Union[torch.device, str, None] = None) -> MAEMasks:
    """MAE's per-sample random masking: noise ~ U[0, 1) of shape (B, L), ids_shuffle = its
    argsort (small noise kept), the first len_keep = int(L * (1 - mask_ratio)) kept, so every
    sample keeps exactly len_keep patches.

    num_patches: L as an int, or the grid (h, w) (then `masks` is (B, h, w)).
    The noise is drawn on the generator's device when a generator is given (else on `device`),
    the sorting happens there, and the outputs are moved to `device`.
    """
    batch = _check_batch(batch)
    if isinstance(num_patches, int) and not isinstance(num_patches, bool):
        if num_patches < 1:
            raise ValueError(f"num_patches must be >= 1, got {num_patches}")
        grid, length = None, num_patches
    else:
        grid = _check_size(num_patches, "num_patches")
        length = grid[0] * grid[1]
    mask_ratio = _check_ratio(mask_ratio, "mask_ratio")
    g = _as_generator(generator)
    draw_device = g.device if g is not None else torch.device(device or "cpu")
    len_keep = int(length * (1 - mask_ratio))
    noise = torch.rand((batch, length), generator=g, device=draw_device)
    ids_shuffle = torch.argsort(noise, dim=1)
    ids_restore = torch.argsort(ids_shuffle, dim=1)
    ids_keep = ids_shuffle[:, :len_keep]
    mask = torch.ones((batch, length), device=draw_device)
    mask[:, :len_keep] = 0
    mask = torch.gather(mask, dim=1, index=ids_restore)
    out = [mask, ids_keep, ids_restore, ids_shuffle]
    if device is not None:
        out = [t.to(device) for t in out]
    bool_mask = out[0].bool()
    if grid is not None:
        bool_mask = bool_mask.view(batch, *grid)
    return MAEMasks(*out, bool_mask)


# ----------------------------------------------------------------------------- I-JEPA

class MultiBlockMasks(NamedTuple):
    """I-JEPA's multi-block masks.

    enc_indices: nenc LongTensors (B, K_enc), the context patches of each context block,
        ascending, truncated to the smallest count over the batch and blocks (as the collator);
    pred_indices: npred LongTensors (B, K_pred), the target patches of each predictor block;
    enc_masks: (B, nenc, h, w) bool, True = patch in enc_indices (the truncated sets);
    pred_masks: (B, npred, h, w) bool, True = patch in pred_indices;
    enc_size, pred_size: the (h, w) block sizes shared by the batch.
    """
    enc_indices: List[torch.Tensor]
    pred_indices: List[torch.Tensor]
    enc_masks: torch.Tensor
    pred_masks: torch.Tensor
    enc_size: Tuple[int, int]
    pred_size: Tuple[int, int]


class MultiBlockMaskGenerator:
    """I-JEPA's multi-block masking (Assran et al., 2023, facebookresearch/ijepa
    src/masks/multiblock.py MaskCollator), batched, on a patch grid.

    Per call, one predictor block size and one context block size are drawn for the whole batch,
    each from a single uniform that sets both the scale and the aspect ratio (as the official
    _sample_block_size): max_keep = int(h * w * scale), bh = round(sqrt(max_keep * aspect)),
    bw = round(sqrt(max_keep / aspect)), each decreased until it is smaller than the grid. The
    context block is square (aspect 1). Then per sample: npred predictor blocks at
    top ~ U{0..h - bh - 1}, left ~ U{0..w - bw - 1} (the official torch.randint upper bound is
    exclusive, so blocks never touch the last row/column; kept), then nenc context blocks with
    every predictor block removed (unless allow_overlap). A block is valid when it keeps more
    than min_keep patches (the official test is `len(mask) > min_keep`); a context block that is
    not is re-drawn, and after every 20 failures the last still-used predictor block stops being
    removed. Index lists are truncated to their smallest length over the batch.

    Args:
        input_size: patch grid (h, w) (I-JEPA ViT/16 at 224: (14, 14)).
        enc_mask_scale, pred_mask_scale: (min, max) fraction of the grid per block.
        aspect_ratio: (min, max) predictor aspect.
        nenc, npred: number of context / predictor blocks.
        min_keep: a block must keep more than min_keep patches.
        allow_overlap: do not remove the predictor blocks from the context.

    Where the official loop would spin forever (a block of min_keep patches or fewer can never be
    valid), this raises ValueError naming min_keep instead.
    """

    def __init__(self, input_size: SizeLike = (14, 14),
                 enc_mask_scale: Tuple[float, float] = (0.85, 1.0),
                 pred_mask_scale: Tuple[float, float] = (0.15, 0.2),
                 aspect_ratio: Tuple[float, float] = (0.75, 1.5), nenc: int = 1, npred: int = 4,
                 min_keep: int = 10, allow_overlap: bool = False):
        self.height, self.width = _check_size(input_size)
        self.enc_mask_scale = _check_range(enc_mask_scale, "enc_mask_scale", high=1.0)
        self.pred_mask_scale = _check_range(pred_mask_scale, "pred_mask_scale", high=1.0)
        self.aspect_ratio = _check_range(aspect_ratio, "aspect_ratio", strict_low=True)
        for name, value in (("nenc", nenc), ("npred", npred)):
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ValueError(f"{name} must be an int >= 1, got {value!r}")
        if isinstance(min_keep, bool) or not isinstance(min_keep, int) or min_keep < 0:
            raise ValueError(f"min_keep must be an int >= 0, got {min_keep!r}")
        self.nenc, self.npred, self.min_keep = nenc, npred, min_keep
        self.allow_overlap = bool(allow_overlap)

    def _block_size(self, u: float, scale: Tuple[float, float],
                    aspect: Tuple[float, float]) -> Tuple[int, int]:
        mask_scale = scale[0] + u * (scale[1] - scale[0])
        max_keep = int(self.height * self.width * mask_scale)
        ar = aspect[0] + u * (aspect[1] - aspect[0])
        bh = int(round(math.sqrt(max_keep * ar)))
        bw = int(round(math.sqrt(max_keep / ar)))
        return min(bh, self.height - 1), min(bw, self.width - 1)

    def _place(self, n: int, size: Tuple[int, int],
               g: Optional[torch.Generator]) -> torch.Tensor:
        """(n, h, w) bool blocks of the given size at random exclusive-range positions."""
        bh, bw = size
        top = torch.randint(0, self.height - bh, (n,), generator=g).view(-1, 1, 1)
        left = torch.randint(0, self.width - bw, (n,), generator=g).view(-1, 1, 1)
        rows = torch.arange(self.height).view(1, -1, 1)
        cols = torch.arange(self.width).view(1, 1, -1)
        return (rows >= top) & (rows < top + bh) & (cols >= left) & (cols < left + bw)

    def _first_k(self, masks: torch.Tensor, k: int) -> torch.Tensor:
        """The k smallest True indices of every flattened mask, ascending."""
        flat = masks.flatten(-2)
        order = torch.argsort((~flat).to(torch.uint8), dim=-1, stable=True)
        return order[..., :k]

    def __call__(self, batch: int, generator: GeneratorLike = None,
                 device: Union[torch.device, str, None] = None) -> MultiBlockMasks:
        batch = _check_batch(batch)
        g = _as_generator(generator)
        # The official collator draws both sizes from a generator seeded by its step counter
        # and the positions from torch's global RNG; here one generator serves all draws.
        p_size = self._block_size(torch.rand(1, generator=g).item(), self.pred_mask_scale,
                                  self.aspect_ratio)
        e_size = self._block_size(torch.rand(1, generator=g).item(), self.enc_mask_scale,
                                  (1.0, 1.0))
        for kind, (bh, bw) in (("predictor", p_size), ("context", e_size)):
            if bh * bw <= self.min_keep:
                raise ValueError(f"min_keep={self.min_keep} is too large for the sampled "
                                 f"{kind} block of {bh} x {bw} patches on a {self.height} x "
                                 f"{self.width} grid: a block must keep more than min_keep "
                                 f"patches (the official loop would never end)")
        # Predictor blocks are never constrained, so one draw each is valid (bh * bw > min_keep).
        pred = self._place(batch * self.npred, p_size, g).view(batch, self.npred,
                                                               self.height, self.width)
        # Cumulative unions of the predictor blocks: removing the first r of them.
        unions = torch.zeros(batch, self.npred + 1, self.height, self.width, dtype=torch.bool)
        for k in range(self.npred):
            unions[:, k + 1] = unions[:, k] | pred[:, k]
        enc = torch.zeros(batch, self.nenc, self.height, self.width, dtype=torch.bool)
        for e in range(self.nenc):
            pending = torch.arange(batch)
            failures = torch.zeros(batch, dtype=torch.long)
            while pending.numel() > 0:
                block = self._place(pending.numel(), e_size, g)
                if not self.allow_overlap:
                    tries = failures[pending] // _IJEPA_TIMEOUT
                    used = (self.npred - tries).clamp(min=0)
                    block = block & ~unions[pending, used]
                valid = block.sum((1, 2)) > self.min_keep
                enc[pending[valid], e] = block[valid]
                failures[pending[~valid]] += 1
                pending = pending[~valid]
        k_pred = int(pred.sum((2, 3)).min())
        k_enc = int(enc.sum((2, 3)).min())
        pred_idx = self._first_k(pred, k_pred)             # (B, npred, k_pred)
        enc_idx = self._first_k(enc, k_enc)                # (B, nenc, k_enc)
        n = self.height * self.width
        pred_masks = torch.zeros(batch, self.npred, n, dtype=torch.bool)
        pred_masks.scatter_(2, pred_idx, True)
        enc_masks = torch.zeros(batch, self.nenc, n, dtype=torch.bool)
        enc_masks.scatter_(2, enc_idx, True)
        pred_masks = pred_masks.view(batch, self.npred, self.height, self.width)
        enc_masks = enc_masks.view(batch, self.nenc, self.height, self.width)
        if device is not None:
            pred_idx, enc_idx = pred_idx.to(device), enc_idx.to(device)
            pred_masks, enc_masks = pred_masks.to(device), enc_masks.to(device)
        return MultiBlockMasks([enc_idx[:, i] for i in range(self.nenc)],
                               [pred_idx[:, i] for i in range(self.npred)],
                               enc_masks, pred_masks, e_size, p_size)

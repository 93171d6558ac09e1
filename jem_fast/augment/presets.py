"""SSL augmentation recipes as nn.Modules that turn a batch of images into a list of views.

Each recipe is a list of `ViewConfig` slots (one per output view). A call draws every slot's
per-sample parameters from the counter-based sampler (a pure function of seed, step, sample index
and slot index; Python/numpy on the CPU, torch ops on CUDA, the same bits) and runs the fused
kernel: once per slot on a 4-D batch, once per view size on a list of images (the slots of one
size and kernel options share a call; a DINO list: 2 calls for 10 views). Every recipe value
can be overridden: recipe-specific arguments (sizes, scales, per-slot probabilities, kernel size),
any ViewConfig field as a keyword shared by all slots, and `slot_overrides={slot: {field: value}}`
for a single slot. `MultiViewAugment(views)` takes arbitrary slots.

Semantics are torchvision's tensor path (torchvision.transforms.v2 on tensors), which is also
what the PIL-based official repositories approximate; the known deviations of each recipe are
stated in its docstring.
"""
from __future__ import annotations

import dataclasses
import numbers
import operator
from typing import Any, Dict, List, Mapping, Optional, Sequence, Tuple, Union

import torch

from .sampling import (ViewConfig, derive_seed, sample_views_params, uint8_error, _check_seed,
                       _sample_stacked_trusted)

__all__ = ["MultiViewAugment", "SimCLRAugment", "BYOLAugment", "VICRegAugment",
           "BarlowTwinsAugment", "DINOAugment", "DINOv2Augment", "SwAVAugment", "MAEAugment",
           "IJEPAAugment", "PRESETS", "simclr_blur_kernel_size", "INPUT_LAYOUTS"]

INPUT_LAYOUTS = ("CHW", "HWC")
_FIELDS = frozenset(ViewConfig.field_names())
_OUTPUT_DTYPES = (torch.float32, torch.float16, torch.bfloat16, torch.float64)

Images = Union[torch.Tensor, Sequence[torch.Tensor]]


def simclr_blur_kernel_size(size: int) -> int:
    """SimCLR's blur kernel: 10% of the image size, made odd (23 at 224, 9 at 96)."""
    size = operator.index(size)
    if size < 1:
        raise ValueError(f"size must be >= 1, got {size}")
    return 2 * ((size // 10) // 2) + 1


def _functional():
    # Resolved at call time: the kernel module is written separately, and tests swap it for a
    # recording fake by setting the package attribute.
    try:
        from . import functional
    except ImportError as e:
        raise ImportError("the augmentation presets need jem_fast.augment.functional (the fused "
                          f"kernel's entry point), which could not be imported: {e}") from e
    return functional


def _image_geometry(images: Images, layout: str):
    """(image_sizes, batch_size, device) for the sampler; batch_size is None for a list."""
    def hw(t: torch.Tensor, what: str) -> Tuple[int, int]:
        if layout == "CHW":
            c, h, w = t.shape[-3:]
        else:
            h, w, c = t.shape[-3:]
        if c != 3:
            raise ValueError(f"{what} must have 3 channels in layout {layout}, got shape "
                             f"{tuple(t.shape)}")
        if h < 1 or w < 1:
            raise ValueError(f"{what} must have a non-empty image, got shape {tuple(t.shape)}")
        return h, w

    def check_dtype(t: torch.Tensor, what: str):
        # The fused kernel reads uint8 pixels only (what decoders return); checked here so that
        # no parameters are drawn for a batch the kernel would reject.
        if t.dtype != torch.uint8:
            raise uint8_error(what, t.dtype, t)

    if isinstance(images, torch.Tensor):
        if images.dim() != 4:
            raise ValueError("images must be a 4-D batch (B, 3, H, W) ('CHW') or (B, H, W, 3) "
                             f"('HWC'), or a list of 3-D images; got shape {tuple(images.shape)}")
        check_dtype(images, "images")
        if images.shape[0] < 1:
            raise ValueError("images must hold at least one image")
        return hw(images, "images"), images.shape[0], images.device
    if isinstance(images, (list, tuple)):
        if not images:
            raise ValueError("images must hold at least one image")
        sizes = []
        for i, t in enumerate(images):
            if not isinstance(t, torch.Tensor) or t.dim() != 3:
                raise ValueError(f"images[{i}] must be a 3-D tensor, got "
                                 f"{tuple(t.shape) if isinstance(t, torch.Tensor) else type(t)}")
            check_dtype(t, f"images[{i}]")
            if t.device != images[0].device:
                raise ValueError(f"images must all be on one device: images[{i}] is on "
                                 f"{t.device}, images[0] on {images[0].device}")
            sizes.append(hw(t, f"images[{i}]"))
        return sizes, None, images[0].device
    raise TypeError(f"images must be a tensor or a list of tensors, got {type(images).__name__}")


def _launch_groups(views: Sequence[ViewConfig]):
    """[(config, slots)]: slots that one kernel call can serve together (same output size and
    kernel options; sampling fields may differ), in order of first appearance."""
    groups: Dict[Tuple, Tuple[ViewConfig, List[int]]] = {}
    for i, v in enumerate(views):
        key = (v.size, v.interpolation, v.mean, v.std, v.blur_kernel_size, v.blur_padding,
               v.solarize_threshold)
        groups.setdefault(key, (v, []))[1].append(i)
    return list(groups.values())


def _index(slots, on_numpy, device):
    if on_numpy:
        return torch.tensor(slots, dtype=torch.int64).numpy()
    return torch.tensor(slots, dtype=torch.int64, device=device)


class MultiViewAugment(torch.nn.Module):
    """Views of a batch from a list of view slots.

    Args:
        views: one ViewConfig per output view.
        seed: base seed in [0, 2^64).
        dtype: output dtype of every view, passed to functional.augment.
        channels_last: output memory format, passed to functional.augment.
        input_layout: 'CHW' ((B, 3, H, W) batch or (3, H, W) images) or 'HWC'.

    forward(images, *, seed=None, step=None, index_offset=0, return_params=False):
        images: uint8 (B, 3, H, W) batch or a list of uint8 (3, H, W) images of any sizes (HWC
        with input_layout='HWC'). Parameters are a pure function of the Philox key
        `derive_seed(seed, step)`, the sample index (index_offset + i) and the slot index:
          - step given: key of (seed or self.seed, step);
          - only seed given: key of (seed, 0), so the same call repeats exactly;
          - neither: key of (self.seed, self.step), then self.step += 1 (save and restore
            `step` with your checkpoint to resume the same augmentation stream).
        Use index_offset = rank * batch_size (or a global sample id) in distributed training so
        that ranks do not draw the same parameters.
        Returns a list of (B, 3, size, size) views in slot order, and with return_params=True
        also the list of per-slot params dicts (`sampling.PARAM_NAMES`).
    """

    def __init__(self, views: Sequence[ViewConfig], *, seed: int = 0,
                 dtype: torch.dtype = torch.float32, channels_last: bool = False,
                 input_layout: str = "CHW"):
        super().__init__()
        views = tuple(views)
        if not views:
            raise ValueError("views must hold at least one ViewConfig")
        for i, v in enumerate(views):
            if not isinstance(v, ViewConfig):
                raise TypeError(f"views[{i}] must be a ViewConfig, got {type(v).__name__}")
        if dtype not in _OUTPUT_DTYPES:
            raise ValueError(f"dtype must be one of {_OUTPUT_DTYPES}, got {dtype!r}")
        if not isinstance(channels_last, bool):
            raise TypeError(f"channels_last must be a bool, got {type(channels_last).__name__}")
        if input_layout not in INPUT_LAYOUTS:
            raise ValueError(f"input_layout must be one of {INPUT_LAYOUTS}, got {input_layout!r}")
        self.views: Tuple[ViewConfig, ...] = views
        self.seed = _check_seed(seed)
        self.step = 0
        self.dtype = dtype
        self.channels_last = channels_last
        self.input_layout = input_layout
        self._groups_of: Optional[Tuple[ViewConfig, ...]] = None
        self._groups = None

    def _slot_groups(self):
        """The slot groups that share one kernel call, recomputed when `views` is replaced."""
        if self._groups_of is not self.views:
            self._groups, self._groups_of = _launch_groups(self.views), self.views
        return self._groups

    @property
    def num_views(self) -> int:
        return len(self.views)

    def _key(self, seed: Optional[int], step: Optional[int]) -> int:
        if step is not None:
            return derive_seed(self.seed if seed is None else seed, step)
        if seed is not None:
            return derive_seed(seed, 0)
        key = derive_seed(self.seed, self.step)
        self.step += 1
        return key

    def sample_params(self, images: Images, *, seed: Optional[int] = None,
                      step: Optional[int] = None,
                      index_offset: int = 0) -> List[Dict[str, torch.Tensor]]:
        """The per-slot params dicts forward would use (advances self.step the same way)."""
        sizes, batch, device = _image_geometry(images, self.input_layout)
        key = self._key(seed, step)
        return sample_views_params(sizes, key, self.views, device, batch_size=batch,
                                   index_offset=index_offset)

    def forward(self, images: Images, *, seed: Optional[int] = None, step: Optional[int] = None,
                index_offset: int = 0, return_params: bool = False):
        F = _functional()  # first: a missing kernel must not advance self.step
        sizes, batch, device = _image_geometry(images, self.input_layout)
        key = self._key(seed, step)
        return self._apply(F, images, sizes, batch, device, key, index_offset, return_params,
                           self.input_layout)

    def _apply(self, F, images, sizes, batch, device, key, index_offset, return_params, layout,
               single: bool = False):
        """Sample every slot's parameters at once and run the kernel once per launch group.

        A list of images (the per-image and collate paths) runs all slots of one output size
        and kernel options in one call on the list repeated per slot; a 4-D batch runs one
        call per slot on the batch itself. single=True (a list of one image, the per-image
        transform): the views come back as (3, h, w) tensors."""
        stacked, on_numpy = _sample_stacked_trusted(sizes, batch, key, self.views, device,
                                                    index_offset)
        n = batch if batch is not None else len(images)
        to_tensor = torch.from_numpy if on_numpy else (lambda t: t)
        views: List[Optional[torch.Tensor]] = [None] * len(self.views)
        slot_params: List[Optional[Dict[str, torch.Tensor]]] = [None] * len(self.views)
        for cfg, slots in self._slot_groups():
            options = dict(interpolation=cfg.interpolation, mean=cfg.mean, std=cfg.std,
                           dtype=self.dtype, channels_last=self.channels_last,
                           blur_kernel_size=cfg.blur_kernel_size,
                           blur_padding=cfg.blur_padding,
                           solarize_threshold=cfg.solarize_threshold, input_layout=layout)
            if isinstance(images, torch.Tensor) or len(slots) == 1:
                for s in slots:
                    slot_params[s] = {k: to_tensor(v[s]) for k, v in stacked.items()}
                    views[s] = F.augment_sampled(images, slot_params[s], cfg.size, **options)
                    if single:
                        views[s] = views[s][0]
                continue
            first, last = slots[0], slots[-1] + 1
            rows = slice(first, last) if last - first == len(slots) else _index(slots, on_numpy,
                                                                                device)
            params = {k: to_tensor(v[rows].reshape((-1,) + v.shape[2:]))
                      for k, v in stacked.items()}
            out = F.augment_sampled(list(images) * len(slots), params, cfg.size, **options)
            if single:  # n == 1: one unbind instead of a slice and a select per view
                for s, view in zip(slots, out.unbind(0)):
                    views[s] = view
                continue
            for j, s in enumerate(slots):
                views[s] = out[j * n:(j + 1) * n]
        if not return_params:
            return views
        params = [p if p is not None else {k: to_tensor(v[i]) for k, v in stacked.items()}
                  for i, p in enumerate(slot_params)]
        return views, params

    def extra_repr(self) -> str:
        sizes = ", ".join(str(v.size) for v in self.views)
        return (f"views=[{sizes}], seed={self.seed}, step={self.step}, dtype={self.dtype}, "
                f"channels_last={self.channels_last}, input_layout={self.input_layout!r}")


# ------------------------------------------------------------------------------ recipe helpers

def _shared(cls_name: str, overrides: Mapping[str, Any], reserved: Mapping[str, str]):
    for name in overrides:
        if name in reserved:
            raise TypeError(f"{cls_name}: {name!r} differs per slot here; use {reserved[name]}")
        if name not in _FIELDS:
            raise TypeError(f"{cls_name} got an unexpected argument {name!r}; shared per-slot "
                            f"options are the ViewConfig fields {sorted(_FIELDS)}")
    return dict(overrides)


def _per_slot(name: str, value, groups: Sequence[int]) -> List[Any]:
    """Expand a scalar, one value per group (e.g. global 1, global 2, locals) or one value per
    slot into a per-slot list."""
    n = sum(groups)
    if isinstance(value, numbers.Number) and not isinstance(value, bool):
        return [value] * n
    try:
        vals = list(value)
    except TypeError:
        raise ValueError(f"{name} must be a number or a sequence, got {value!r}") from None
    if len(vals) == len(groups):
        return [v for v, g in zip(vals, groups) for _ in range(g)]
    if len(vals) == n:
        return vals
    raise ValueError(f"{name} must be one number, {len(groups)} values (one per slot group) or "
                     f"{n} values (one per slot), got {len(vals)}")


def _apply_slot_overrides(views: List[ViewConfig], slot_overrides) -> List[ViewConfig]:
    if slot_overrides is None:
        return views
    if not isinstance(slot_overrides, Mapping):
        raise TypeError("slot_overrides must be a mapping {slot index: {field: value}}")
    for slot, changes in slot_overrides.items():
        if isinstance(slot, bool) or not isinstance(slot, numbers.Integral) \
                or not -len(views) <= slot < len(views):
            raise ValueError(f"slot_overrides: slot {slot!r} is not in [0, {len(views)})")
        if not isinstance(changes, Mapping):
            raise TypeError(f"slot_overrides[{slot}] must be a mapping of ViewConfig fields")
        bad = sorted(set(changes) - _FIELDS)
        if bad:
            raise TypeError(f"slot_overrides[{slot}]: unknown ViewConfig fields {bad}")
        views[slot] = dataclasses.replace(views[slot], **changes)
    return views


class _Recipe(MultiViewAugment):
    def __init__(self, views, seed, dtype, channels_last, input_layout, slot_overrides):
        super().__init__(_apply_slot_overrides(list(views), slot_overrides), seed=seed,
                         dtype=dtype, channels_last=channels_last, input_layout=input_layout)


# ------------------------------------------------------------------------------ two-view recipes

class _TwoViewRecipe(_Recipe):
    _base: Dict[str, Any] = {}
    _blur_p: Tuple[float, float] = (0.0, 0.0)
    _solarize_p: Tuple[float, float] = (0.0, 0.0)

    def __init__(self, size: int = 224, scale: Tuple[float, float] = (0.08, 1.0), *,
                 blur_p: Union[float, Sequence[float], None] = None,
                 solarize_p: Union[float, Sequence[float], None] = None,
                 blur_kernel_size: Optional[int] = None, seed: int = 0,
                 dtype: torch.dtype = torch.float32, channels_last: bool = False,
                 input_layout: str = "CHW",
                 slot_overrides: Optional[Mapping[int, Mapping[str, Any]]] = None,
                 **overrides):
        shared = {**self._base, **_shared(type(self).__name__, overrides, {})}
        blur = _per_slot("blur_p", self._blur_p if blur_p is None else blur_p, (1, 1))
        sol = _per_slot("solarize_p", self._solarize_p if solarize_p is None else solarize_p,
                        (1, 1))
        if blur_kernel_size is None:
            blur_kernel_size = simclr_blur_kernel_size(size) if isinstance(size, int) \
                and not isinstance(size, bool) and size >= 1 else 23
        views = [ViewConfig(size=size, scale=scale, blur_p=b, solarize_p=s,
                            blur_kernel_size=blur_kernel_size, **shared)
                 for b, s in zip(blur, sol)]
        super().__init__(views, seed, dtype, channels_last, input_layout, slot_overrides)


_BYOL_COLOUR = dict(brightness=0.4, contrast=0.4, saturation=0.2, hue=0.1)


class SimCLRAugment(_TwoViewRecipe):
    """SimCLR (Chen et al., 2020): two views, each RandomResizedCrop(size, scale=(0.08, 1),
    bicubic), flip 0.5, ColorJitter(0.8, 0.8, 0.8, 0.2) with p 0.8, grayscale 0.2, Gaussian blur
    p 0.5 (sigma U(0.1, 2.0)), ImageNet normalization.

    Blur kernel: 10% of the size, odd (23 at 224) as in the SimCLR code. Padding: the SimCLR TF
    code convolves with zero padding ('SAME'); the default here is torchvision's 'reflect' (the
    reference semantics of jem_fast, and what the PyTorch ports use); pass
    blur_padding='zeros' for the TF behaviour. The TF colour ops (additive brightness, random
    order of only some ops) are not reproduced: the jitter is torchvision's.

    Arguments: size, scale; blur_p and solarize_p as one number or (view 1, view 2);
    blur_kernel_size; any ViewConfig field as a keyword for both views; slot_overrides.
    """
    _base = dict(interpolation="bicubic", brightness=0.8, contrast=0.8, saturation=0.8, hue=0.2)
    _blur_p = (0.5, 0.5)
    _solarize_p = (0.0, 0.0)


class BYOLAugment(_TwoViewRecipe):
    """BYOL (Grill et al., 2020): two views, RandomResizedCrop(size, (0.08, 1), bicubic), flip 0.5,
    ColorJitter(0.4, 0.4, 0.2, 0.1) p 0.8, grayscale 0.2, blur p 1.0 / 0.1 (sigma U(0.1, 2.0),
    k = 23 at 224), solarize p 0.0 / 0.2, ImageNet normalization.

    Blur padding defaults to torchvision's 'reflect'; the BYOL TF code pads with zeros
    (blur_padding='zeros'). BYOL's TF colour semantics (additive brightness, per-channel contrast
    mean) are not reproduced. Arguments as SimCLRAugment.
    """
    _base = dict(interpolation="bicubic", **_BYOL_COLOUR)
    _blur_p = (1.0, 0.1)
    _solarize_p = (0.0, 0.2)


class VICRegAugment(_TwoViewRecipe):
    """VICReg (Bardes et al., 2022): the BYOL recipe (blur 1.0 / 0.1, solarize 0.0 / 0.2,
    bicubic). The official code blurs with PIL (radius = sigma, no kernel size); the default
    k = 23 at 224 covers more than 5 sigma_max so the Gaussian is effectively untruncated.
    Arguments as SimCLRAugment."""
    _base = dict(interpolation="bicubic", **_BYOL_COLOUR)
    _blur_p = (1.0, 0.1)
    _solarize_p = (0.0, 0.2)


class BarlowTwinsAugment(_TwoViewRecipe):
    """Barlow Twins (Zbontar et al., 2021): the BYOL recipe (blur 1.0 / 0.1, solarize 0.0 / 0.2,
    bicubic), PIL blur approximated as in VICRegAugment. Arguments as SimCLRAugment."""
    _base = dict(interpolation="bicubic", **_BYOL_COLOUR)
    _blur_p = (1.0, 0.1)
    _solarize_p = (0.0, 0.2)


# ------------------------------------------------------------------------------ multi-crop

class _MultiCropRecipe(_Recipe):
    _base: Dict[str, Any] = {}
    _global_scale: Tuple[float, float] = (0.4, 1.0)
    _local_scale: Tuple[float, float] = (0.05, 0.4)
    _num_local: int = 8
    _blur_p: Tuple[float, float, float] = (1.0, 0.1, 0.5)
    _solarize_p: Tuple[float, float, float] = (0.0, 0.2, 0.0)
    _kernel: int = 23

    def __init__(self, global_size: int = 224, global_scale: Optional[Tuple[float, float]] = None,
                 local_size: int = 96, local_scale: Optional[Tuple[float, float]] = None,
                 num_local_crops: Optional[int] = None, *,
                 blur_p: Union[float, Sequence[float], None] = None,
                 solarize_p: Union[float, Sequence[float], None] = None,
                 blur_kernel_size: Union[int, Tuple[int, int], None] = None, seed: int = 0,
                 dtype: torch.dtype = torch.float32, channels_last: bool = False,
                 input_layout: str = "CHW",
                 slot_overrides: Optional[Mapping[int, Mapping[str, Any]]] = None,
                 **overrides):
        name = type(self).__name__
        shared = {**self._base, **_shared(name, overrides, {
            "size": "global_size / local_size", "scale": "global_scale / local_scale"})}
        n_local = self._num_local if num_local_crops is None else num_local_crops
        if isinstance(n_local, bool) or not isinstance(n_local, numbers.Integral) or n_local < 0:
            raise ValueError(f"num_local_crops must be an int >= 0, got {n_local!r}")
        groups = (1, 1, int(n_local))
        blur = _per_slot("blur_p", self._default_blur_p() if blur_p is None else blur_p, groups)
        sol = _per_slot("solarize_p", self._solarize_p if solarize_p is None else solarize_p,
                        groups)
        k = self._kernel if blur_kernel_size is None else blur_kernel_size
        if isinstance(k, numbers.Integral) and not isinstance(k, bool):
            k_global = k_local = k
        else:
            try:
                k_global, k_local = k
            except (TypeError, ValueError):
                raise ValueError("blur_kernel_size must be an odd int or a pair (global, local), "
                                 f"got {k!r}") from None
        g_scale = self._global_scale if global_scale is None else global_scale
        l_scale = self._local_scale if local_scale is None else local_scale
        views = []
        for i, (b, s) in enumerate(zip(blur, sol)):
            is_global = i < 2
            views.append(ViewConfig(
                size=global_size if is_global else local_size,
                scale=g_scale if is_global else l_scale,
                blur_kernel_size=k_global if is_global else k_local,
                blur_p=b, solarize_p=s, **shared))
        super().__init__(views, seed, dtype, channels_last, input_layout, slot_overrides)

    def _default_blur_p(self):
        return self._blur_p


class DINOAugment(_MultiCropRecipe):
    """DINO (Caron et al., 2021) multi-crop: 2 global crops (224, scale (0.4, 1)) and
    num_local_crops = 8 local crops (96, scale (0.05, 0.4)), bicubic; flip 0.5, ColorJitter(0.4,
    0.4, 0.2, 0.1) p 0.8, grayscale 0.2 on every crop; blur p 1.0 / 0.1 / 0.5 (global 1 /
    global 2 / locals), solarize p 0 / 0.2 / 0; ImageNet normalization. Views come out as
    [global 1, global 2, local 1 .. local N].

    For a ResNet-50 backbone DINO uses global_scale=(0.14, 1) and local_scale=(0.05, 0.14).
    DINO blurs with PIL (radius = sigma, independent of the image size); we use a 23-tap
    torchvision Gaussian on every crop, local ones included (more than 5 sigma_max: effectively
    untruncated); blur_kernel_size accepts an int or (global, local).

    Arguments: global_size, global_scale, local_size, local_scale, num_local_crops; blur_p and
    solarize_p as one number, (global 1, global 2, locals) or one value per slot;
    blur_kernel_size; any ViewConfig field except size/scale as a keyword for all slots;
    slot_overrides={slot: {field: value}}.
    """
    _base = dict(interpolation="bicubic", **_BYOL_COLOUR)
    _global_scale = (0.4, 1.0)
    _local_scale = (0.05, 0.4)
    _num_local = 8
    _blur_p = (1.0, 0.1, 0.5)
    _solarize_p = (0.0, 0.2, 0.0)
    _kernel = 23


BLUR_PROBABILITIES = ("effective", "documented")


class DINOv2Augment(_MultiCropRecipe):
    """DINOv2 (Oquab et al., 2023) multi-crop: 2 global crops (224, scale (0.32, 1)) and 8 local
    crops (96, scale (0.05, 0.32)), bicubic; flip 0.5, ColorJitter(0.4, 0.4, 0.2, 0.1) p 0.8,
    grayscale 0.2; torchvision GaussianBlur(kernel_size=9, sigma (0.1, 2.0)), reflect padding;
    solarize p 0.2 on global 2 only; ImageNet normalization.

    Blur probabilities: DINOv2's config asks for 1.0 / 0.1 / 0.5 (global 1 / global 2 / locals),
    but its GaussianBlur wrapper passes p to RandomApply as 1 - p, so the code effectively
    blurs with 0.0 / 0.9 / 0.5. The default, blur_probabilities='effective', reproduces what the
    released models were trained with (0.0 / 0.9 / 0.5); 'documented' gives 1.0 / 0.1 / 0.5.
    An explicit blur_p overrides both.

    Other arguments as DINOAugment (blur_kernel_size defaults to 9 for every slot).
    """
    _base = dict(interpolation="bicubic", **_BYOL_COLOUR)
    _global_scale = (0.32, 1.0)
    _local_scale = (0.05, 0.32)
    _num_local = 8
    _solarize_p = (0.0, 0.2, 0.0)
    _kernel = 9
    _BLUR = {"effective": (0.0, 0.9, 0.5), "documented": (1.0, 0.1, 0.5)}

    def __init__(self, *args, blur_probabilities: str = "effective", **kwargs):
        if blur_probabilities not in BLUR_PROBABILITIES:
            raise ValueError(f"blur_probabilities must be one of {BLUR_PROBABILITIES}, got "
                             f"{blur_probabilities!r}")
        self._blur_choice = blur_probabilities
        super().__init__(*args, **kwargs)

    def _default_blur_p(self):
        return self._BLUR[self._blur_choice]


class SwAVAugment(_MultiCropRecipe):
    """SwAV (Caron et al., 2020) multi-crop: 2 crops 224 scale (0.14, 1) and 6 crops 96 scale
    (0.05, 0.14), bilinear (torchvision's RandomResizedCrop default in the SwAV code); flip 0.5;
    colour distortion s = 1: ColorJitter(0.8, 0.8, 0.8, 0.2) p 0.8, grayscale 0.2; blur p 0.5 on
    every crop (PIL radius U(0.1, 2.0) in the original; here a 23-tap Gaussian as in
    DINOAugment); no solarization.

    Normalization: the SwAV code uses std (0.228, 0.224, 0.225), a typo for ImageNet's 0.229. The
    default here is the ImageNet std (0.229, 0.224, 0.225), matching the other recipes and
    pretrained-model conventions; pass std=(0.228, 0.224, 0.225) to reproduce the original
    exactly.

    Arguments as DINOAugment (num_local_crops defaults to 6, solarize_p to 0).
    """
    _base = dict(interpolation="bilinear", brightness=0.8, contrast=0.8, saturation=0.8,
                 hue=0.2)
    _global_scale = (0.14, 1.0)
    _local_scale = (0.05, 0.14)
    _num_local = 6
    _blur_p = (0.5, 0.5, 0.5)
    _solarize_p = (0.0, 0.0, 0.0)
    _kernel = 23


# ------------------------------------------------------------------------------ single view

class _SingleViewRecipe(_Recipe):
    _base: Dict[str, Any] = {}
    _scale: Tuple[float, float] = (0.08, 1.0)

    def __init__(self, size: int = 224, scale: Optional[Tuple[float, float]] = None, *,
                 seed: int = 0, dtype: torch.dtype = torch.float32, channels_last: bool = False,
                 input_layout: str = "CHW",
                 slot_overrides: Optional[Mapping[int, Mapping[str, Any]]] = None,
                 **overrides):
        shared = {**self._base, **_shared(type(self).__name__, overrides, {})}
        view = ViewConfig(size=size, scale=self._scale if scale is None else scale, **shared)
        super().__init__([view], seed, dtype, channels_last, input_layout, slot_overrides)


_NO_COLOUR = dict(jitter_p=0.0, brightness=0.0, contrast=0.0, saturation=0.0, hue=0.0,
                  grayscale_p=0.0, blur_p=0.0, solarize_p=0.0)


class MAEAugment(_SingleViewRecipe):
    """MAE (He et al., 2022) pre-training: one view, RandomResizedCrop(224, scale (0.2, 1),
    bicubic), flip 0.5, ImageNet normalization; no colour, blur or solarization. Any ViewConfig
    field can be overridden by keyword."""
    _base = dict(interpolation="bicubic", flip_p=0.5, **_NO_COLOUR)
    _scale = (0.2, 1.0)


class IJEPAAugment(_SingleViewRecipe):
    """I-JEPA (Assran et al., 2023): one view, RandomResizedCrop(224, scale (0.3, 1), bilinear),
    no flip, no colour, blur or solarization, ImageNet normalization. Any ViewConfig field can be
    overridden by keyword."""
    _base = dict(interpolation="bilinear", flip_p=0.0, **_NO_COLOUR)
    _scale = (0.3, 1.0)


PRESETS = {
    "simclr": SimCLRAugment, "byol": BYOLAugment, "vicreg": VICRegAugment,
    "barlow_twins": BarlowTwinsAugment, "dino": DINOAugment, "dinov2": DINOv2Augment,
    "swav": SwAVAugment, "mae": MAEAugment, "ijepa": IJEPAAugment,
}

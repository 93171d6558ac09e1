"""DataLoader-ready augmentation: a per-image transform, multi-crop collate functions, JPEG decode.

Two ways to feed a training loop, both on the presets of `jem_fast.augment.presets`:

1. Per image, in the Dataset (how lightly's SimCLRTransform / DINOTransform are used)::

       transform = ViewTransform("simclr", seed=0)            # or ViewTransform(DINOAugment())
       dataset = torchvision.datasets.ImageFolder(root, transform=transform)
       loader = DataLoader(dataset, batch_size=256, num_workers=8, shuffle=True)
       for epoch in range(epochs):
           transform.set_epoch(epoch)                          # before iterating (see seeding)
           for views, labels in loader:                        # views: list of (B, 3, h, w)
               ...

   The transform takes a PIL image, a uint8 tensor (3, H, W) or (H, W, 3), a numpy (H, W, 3)
   uint8 array, or a float image in [0, 1] (quantized to uint8), and returns the list of views
   (each (3, h, w) float). The DataLoader's default collate stacks them into one batch per view.

2. Batched, in the collate function (one kernel call per view size for the whole batch, the
   fast path on the CPU)::

       collate = MultiViewCollate("dino", seed=0)              # decode=True: raw JPEG bytes in
       loader = DataLoader(dataset_of_uint8_images, batch_size=256, num_workers=8,
                           collate_fn=collate)
       for epoch in range(epochs):
           collate.set_epoch(epoch)
           for views, labels in loader:                        # views: list of (B, 3, h, w)
               ...

   or on the GPU (the CUDA kernel, when the build has it), augmenting after the transfer::

       loader = DataLoader(dataset, batch_size=256, num_workers=8,
                           collate_fn=ImageListCollate(decode=True))   # uint8 images, labels
       augment = DINOAugment(seed=0)
       for images, labels in loader:
           images = [im.cuda(non_blocking=True) for im in images]
           views = augment(images)                             # step counter advances per call

   `decode_jpegs(data, device="cuda")` decodes on the GPU with nvJPEG in the main process
   instead (give `ImageListCollate(decode=False)` raw bytes then).

Seeding (ViewTransform and MultiViewCollate). The parameters of an image are a pure function of
(seed, worker slot, epoch, n), n counting the images this copy of the transform has augmented
since the epoch was set: the Philox key is `derive_seed(derive_seed(seed, worker slot), epoch)`
and n is the sample index of the counter-based sampler. The worker slot is 1 + the DataLoader
worker id inside a worker process (torch.utils.data.get_worker_info()) and 0 in the main
process (num_workers=0). Hence:
  - workers and epochs never share parameters; without workers, the main process is one stream;
  - two runs with the same seed, num_workers and sample order give identical views (the
    DataLoader hands batch b to worker b % num_workers, in order);
  - `set_epoch(e)` (in the main process, before iterating) restarts the count under a new key.
    Workers are forked with the transform's state at each epoch's start, so this reaches them,
    except with persistent_workers=True: then the workers keep their own count across epochs
    (still distinct views every epoch, but an epoch can't be replayed alone).
  - Without any set_epoch call (how torchvision and lightly transforms are used), the key of a
    worker also mixes in the worker's torch seed (get_worker_info().seed), which the DataLoader
    draws from torch's RNG (or its `generator`) for every epoch's iterator: views still differ
    between epochs, and are reproducible under torch.manual_seed. Call set_epoch for keys that
    do not depend on torch's RNG.
Per-image and batched paths agree: in one process, a ViewTransform over images 0..N-1 gives
the same views as a MultiViewCollate (same preset and seed) on the list of those images.

Threads: DataLoader workers start with torch.set_num_threads(1) and nothing here changes it, so
the kernel (at::parallel_for) runs on one thread per worker; in the main process it uses torch's
thread count.
"""
from __future__ import annotations

import numbers
import warnings
from typing import Any, List, Optional, Sequence, Tuple, Union

import torch

from .presets import PRESETS, MultiViewAugment, _functional, _image_geometry
from .sampling import ImageValueRangeError, _float_range_advice, derive_seed, _check_seed

try:
    import numpy as _np
except ImportError:  # pragma: no cover
    _np = None

__all__ = ["ViewTransform", "MultiViewCollate", "ImageListCollate", "to_uint8_image",
           "decode_jpegs"]

AugmentLike = Union[str, MultiViewAugment]


# ------------------------------------------------------------------------------ inputs

def _float_to_uint8(t: torch.Tensor, name: str) -> torch.Tensor:
    if t.numel():
        low, high = (float(v) for v in torch.aminmax(t.detach()))
        if not (0.0 <= low and high <= 1.0):  # NaN fails too
            raise ImageValueRangeError(_float_range_advice(name, low, high))
    return (t * 255).round_().to(torch.uint8)


def _from_readonly(array) -> torch.Tensor:
    """torch.from_numpy without copying a read-only array (PIL's buffer): the kernel only reads
    it, so torch's warning about non-writable memory does not apply."""
    if array.flags.writeable:
        return torch.from_numpy(array)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)
        return torch.from_numpy(array)


def to_uint8_image(image: Any, name: str = "image") -> Tuple[torch.Tensor, str]:
    """(uint8 tensor, layout 'CHW' or 'HWC') of one image, without copying when possible.

    Accepts a PIL image (converted to RGB), a torch tensor (3, H, W) or (H, W, 3), or a numpy
    array (H, W, 3). uint8 is used as is; float images must be in [0, 1] and are quantized to
    uint8 (round(x * 255)), as the kernel reads 8-bit pixels. A tensor with 3 on both the first
    and last axis is taken as (3, H, W), torchvision's layout.
    """
    layout = None
    if not isinstance(image, torch.Tensor):
        if _np is not None and isinstance(image, _np.ndarray):
            if image.ndim != 3 or image.shape[2] != 3:
                raise ValueError(f"{name}: a numpy image must be (H, W, 3) RGB, got shape "
                                 f"{image.shape}")
            if image.dtype != _np.uint8 and not _np.issubdtype(image.dtype, _np.floating):
                raise TypeError(f"{name}: a numpy image must be uint8 (or float in [0, 1]), got "
                                f"{image.dtype}")
            image, layout = _from_readonly(_np.ascontiguousarray(image)), "HWC"
        elif hasattr(image, "convert") and hasattr(image, "mode") and hasattr(image, "size"):
            if _np is None:  # pragma: no cover
                raise TypeError(f"{name}: PIL images need numpy")
            rgb = image if image.mode == "RGB" else image.convert("RGB")
            image, layout = _from_readonly(_np.asarray(rgb)), "HWC"
        else:
            raise TypeError(f"{name} must be a PIL image, a torch tensor (3, H, W) / (H, W, 3) "
                            f"or a numpy array (H, W, 3), got {type(image).__name__}")
    if image.dim() != 3:
        raise ValueError(f"{name} must be one 3-channel image (3, H, W) or (H, W, 3), got shape "
                         f"{tuple(image.shape)}")
    if layout is None:
        if image.shape[0] == 3:
            layout = "CHW"
        elif image.shape[2] == 3:
            layout = "HWC"
        else:
            raise ValueError(f"{name} must have 3 channels first (3, H, W) or last (H, W, 3), "
                             f"got shape {tuple(image.shape)}")
    if image.dtype != torch.uint8:
        if not image.dtype.is_floating_point:
            raise TypeError(f"{name} must be uint8 (or float in [0, 1]), got {image.dtype}")
        image = _float_to_uint8(image, name)
    return image, layout


def decode_jpegs(data: Sequence[Any], device: Union[str, torch.device] = "cpu"
                 ) -> List[torch.Tensor]:
    """Decode JPEG bytes to uint8 RGB images (3, H, W) with torchvision.io.decode_jpeg.

    data: a list of `bytes` / `bytearray` / 1-D uint8 tensors of encoded JPEG files.
    device: 'cpu' (libjpeg-turbo) or 'cuda' (nvJPEG, batched; in the main process, not in
    DataLoader workers). The images come out on `device`, ready for the presets.
    (torchvision 0.29 deprecates its image decoders in favour of TorchCodec with a
    DeprecationWarning; they still work there.)
    """
    try:
        from torchvision.io import ImageReadMode, decode_jpeg
    except ImportError as e:  # pragma: no cover - torchvision is optional
        raise ImportError(f"decoding JPEGs needs torchvision ({e})") from e
    if isinstance(data, (bytes, bytearray, torch.Tensor)):
        raise TypeError("data must be a list of encoded JPEGs (bytes or 1-D uint8 tensors), got "
                        f"one {type(data).__name__}")
    encoded = []
    for i, d in enumerate(data):
        if isinstance(d, (bytes, bytearray, memoryview)):
            d = torch.frombuffer(bytearray(d), dtype=torch.uint8)
        elif not (isinstance(d, torch.Tensor) and d.dtype == torch.uint8 and d.dim() == 1):
            raise TypeError(f"data[{i}] must be JPEG bytes or a 1-D uint8 tensor, got "
                            f"{type(d).__name__}"
                            + (f" {d.dtype} {tuple(d.shape)}" if isinstance(d, torch.Tensor)
                               else ""))
        encoded.append(d)
    if not encoded:
        return []
    device = torch.device(device)
    if device.type == "cpu":
        return [decode_jpeg(d, mode=ImageReadMode.RGB) for d in encoded]
    return list(decode_jpeg(encoded, mode=ImageReadMode.RGB, device=device))


# ------------------------------------------------------------------------------ seeding

class _WorkerStream:
    """(key, index_offset) of the next images: see the module docstring."""

    def __init__(self, seed: int):
        self.seed = _check_seed(seed)
        self.epoch = 0
        self._epoch_set = False
        self._slot: Optional[int] = None
        self._key = 0
        self._count = 0

    def set_epoch(self, epoch: int) -> None:
        if isinstance(epoch, bool) or not isinstance(epoch, numbers.Integral) or epoch < 0:
            raise ValueError(f"epoch must be an int >= 0, got {epoch!r}")
        self.epoch = int(epoch)
        self._epoch_set = True
        self._slot = None  # new key, count from 0

    def take(self, n: int) -> Tuple[int, int]:
        info = torch.utils.data.get_worker_info()
        slot = 0 if info is None else info.id + 1
        if slot != self._slot:  # first call after set_epoch, or a fresh copy in a worker
            self._slot = slot
            self._key = derive_seed(derive_seed(self.seed, slot), self.epoch)
            if info is not None and not self._epoch_set:
                # A fresh fork every epoch would otherwise replay the same stream: let the
                # DataLoader's per-iterator worker seed tell the epochs apart.
                self._key = derive_seed(self._key, info.seed % 2 ** 64)
            self._count = 0
        offset = self._count
        self._count += n
        return self._key, offset


def _make_augment(augment: AugmentLike, preset_kwargs) -> MultiViewAugment:
    if isinstance(augment, MultiViewAugment):
        if preset_kwargs:
            raise TypeError("preset keyword arguments only apply with a preset name, got "
                            f"{sorted(preset_kwargs)} with a {type(augment).__name__}")
        return augment
    if isinstance(augment, str):
        if augment not in PRESETS:
            raise ValueError(f"augment must be a preset name {sorted(PRESETS)} or a "
                             f"MultiViewAugment, got {augment!r}")
        return PRESETS[augment](**preset_kwargs)
    raise TypeError(f"augment must be a preset name {sorted(PRESETS)} or a MultiViewAugment, "
                    f"got {type(augment).__name__}")


class _Seeded:
    def __init__(self, augment: AugmentLike, seed: int, preset_kwargs):
        self.augment = _make_augment(augment, preset_kwargs)
        self._stream = _WorkerStream(seed)

    @property
    def seed(self) -> int:
        return self._stream.seed

    @property
    def epoch(self) -> int:
        return self._stream.epoch

    def set_epoch(self, epoch: int) -> None:
        """Use the parameters of epoch `epoch` from the next image on (call it in the main
        process before iterating the DataLoader; see the module docstring)."""
        self._stream.set_epoch(epoch)

    def _views(self, images: List[torch.Tensor], layout: str,
               single: bool = False) -> List[torch.Tensor]:
        F = _functional()
        sizes, batch, device = _image_geometry(images, layout)
        key, offset = self._stream.take(len(images))
        return self.augment._apply(F, images, sizes, batch, device, key, offset, False, layout,
                                   single)


# ------------------------------------------------------------------------------ per image

class ViewTransform(_Seeded):
    """The views of one image, for `Dataset(transform=...)`.

    Args:
        augment: a preset name ('simclr', 'byol', 'vicreg', 'barlow_twins', 'dino', 'dinov2',
            'swav', 'mae', 'ijepa') or a MultiViewAugment (e.g. DINOAugment(num_local_crops=6));
            the preset's dtype and channels_last apply, its own seed and step do not (see
            seed).
        seed: base seed of the stream (module docstring: per worker and epoch).
        **preset_kwargs: arguments of the preset when `augment` is a name (e.g. size=96).

    __call__(image) -> list of views, each a (3, h, w) tensor of the preset's dtype, in slot
    order (for SimCLR [view 1, view 2]; DINO [global 1, global 2, local 1, ...]). `image`: see
    `to_uint8_image`.
    """

    def __init__(self, augment: AugmentLike = "simclr", *, seed: int = 0, **preset_kwargs):
        super().__init__(augment, seed, preset_kwargs)

    def __call__(self, image: Any) -> List[torch.Tensor]:
        tensor, layout = to_uint8_image(image)
        return self._views([tensor], layout, single=True)

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.augment!r}, seed={self.seed}, epoch={self.epoch})"


# ------------------------------------------------------------------------------ collate

def _split_samples(batch: Sequence[Any], name: str):
    """(images, labels or None) of a DataLoader batch: a list of images or of (image, label,
    ...) tuples (labels are the second entries)."""
    if isinstance(batch, (torch.Tensor, bytes, bytearray, str)) or not isinstance(batch,
                                                                                  Sequence):
        raise TypeError(f"{name} must be a list of samples (images or (image, label) pairs), "
                        f"got {type(batch).__name__}")
    if len(batch) == 0:
        raise ValueError(f"{name} is empty")
    if isinstance(batch[0], (tuple, list)):
        images, labels = [], []
        for i, sample in enumerate(batch):
            if not isinstance(sample, (tuple, list)) or len(sample) < 2:
                raise ValueError(f"{name}[{i}] must be an (image, label) pair like {name}[0]")
            images.append(sample[0])
            labels.append(sample[1])
        return images, labels
    return list(batch), None


def _collate_labels(labels):
    if labels is None:
        return None
    if all(isinstance(x, torch.Tensor) for x in labels):
        return torch.stack(labels)
    if all(isinstance(x, numbers.Number) for x in labels):
        return torch.as_tensor(labels)
    return torch.utils.data.default_collate(labels)


def _uint8_images(images: List[Any], decode: bool, name: str):
    """uint8 images and one layout: decoded JPEGs (decode=True) or converted images. Mixed
    layouts are converted to CHW (a permuted view, no copy)."""
    if decode:
        return decode_jpegs(images), "CHW"
    converted = [to_uint8_image(im, f"{name}[{i}]") for i, im in enumerate(images)]
    layouts = {layout for _, layout in converted}
    if len(layouts) == 1:
        return [t for t, _ in converted], layouts.pop()
    return [t if layout == "CHW" else t.permute(2, 0, 1) for t, layout in converted], "CHW"


class MultiViewCollate(_Seeded):
    """collate_fn that augments the whole batch at once: one kernel call per view size.

    Args:
        augment, seed, **preset_kwargs: as ViewTransform.
        decode: the images are encoded JPEGs (bytes or 1-D uint8 tensors), decoded here with
            torchvision.io.decode_jpeg on the CPU (in the worker).

    __call__(batch): batch is a list of images (any form `to_uint8_image` takes, of different
    sizes) or of (image, label) pairs. Returns the list of views, each (B, 3, h, w), and with
    labels `(views, labels)`, labels stacked into a tensor (default_collate for other types).
    """

    def __init__(self, augment: AugmentLike = "simclr", *, seed: int = 0, decode: bool = False,
                 **preset_kwargs):
        if not isinstance(decode, bool):
            raise TypeError(f"decode must be a bool, got {type(decode).__name__}")
        super().__init__(augment, seed, preset_kwargs)
        self.decode = decode

    def __call__(self, batch: Sequence[Any]):
        images, labels = _split_samples(batch, "batch")
        tensors, layout = _uint8_images(images, self.decode, "batch")
        views = self._views(tensors, layout)
        return views if labels is None else (views, _collate_labels(labels))

    def __repr__(self) -> str:
        return (f"{type(self).__name__}({self.augment!r}, seed={self.seed}, epoch={self.epoch}, "
                f"decode={self.decode})")


class ImageListCollate:
    """collate_fn for augmenting in the training loop (e.g. on the GPU): returns the list of
    uint8 (3, H, W) images as they are (different sizes, no stacking), and the labels stacked
    when the samples are (image, label) pairs.

    decode=True decodes JPEG bytes on the CPU in the worker; for nvJPEG on the GPU, keep
    decode=False, return the bytes from the Dataset and call decode_jpegs(batch, 'cuda') in
    the main process.
    """

    def __init__(self, decode: bool = False):
        if not isinstance(decode, bool):
            raise TypeError(f"decode must be a bool, got {type(decode).__name__}")
        self.decode = decode

    def __call__(self, batch: Sequence[Any]):
        images, labels = _split_samples(batch, "batch")
        if self.decode:
            tensors = decode_jpegs(images)
        elif images and isinstance(images[0], (bytes, bytearray)):
            tensors = images
        else:
            tensors = [t if layout == "CHW" else t.permute(2, 0, 1) for t, layout in
                       (to_uint8_image(im, f"batch[{i}]") for i, im in enumerate(images))]
        return tensors if labels is None else (tensors, _collate_labels(labels))

    def __repr__(self) -> str:
        return f"{type(self).__name__}(decode={self.decode})"

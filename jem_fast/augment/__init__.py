"""Fused per-sample augmentation for joint-embedding SSL.

- `functional.augment(images, params, size, ...)`: the fused kernel (jem_fast::augment_views)
  applying given per-sample parameters: resized crop, flip, colour jitter in per-sample order,
  grayscale, blur, solarize, normalize, in one pass per view.
- `sampling`: counter-based per-sample parameters (RandomResizedCrop, flip, jitter, order,
  grayscale, blur, solarize), identical on CPU and CUDA for one seed.
- `presets`: nn.Modules for the SimCLR, BYOL, VICReg, Barlow Twins, DINO, DINOv2, SwAV, MAE and
  I-JEPA recipes, producing lists of views.
- `data`: the DataLoader side: `ViewTransform` for `Dataset(transform=...)` (PIL, numpy or
  tensor images in, list of views out), `MultiViewCollate` (a whole batch in one kernel call per
  view size, optional JPEG decode), `ImageListCollate` + `decode_jpegs` for augmenting on the GPU
  in the training loop; per-worker, per-epoch deterministic seeding.
- `masking`: ViT patch-masking generators (BEiT/iBOT blocks, DINOv2, MAE, I-JEPA multiblock).
"""
from . import data, functional, masking, presets, sampling
from .data import ImageListCollate, MultiViewCollate, ViewTransform, decode_jpegs
from .functional import augment
from .sampling import (IMAGENET_MEAN, IMAGENET_STD, PARAM_NAMES, ImageValueRangeError,
                       ViewConfig, derive_seed, sample_view_params, sample_views_params)
from .presets import (BarlowTwinsAugment, BYOLAugment, DINOAugment, DINOv2Augment, IJEPAAugment,
                      MAEAugment, MultiViewAugment, PRESETS, SimCLRAugment, SwAVAugment,
                      VICRegAugment, simclr_blur_kernel_size)

__all__ = ["functional", "augment", "sampling", "presets", "masking", "data", "ViewTransform",
           "MultiViewCollate", "ImageListCollate", "decode_jpegs", "ImageValueRangeError",
           "ViewConfig", "PARAM_NAMES",
           "IMAGENET_MEAN", "IMAGENET_STD", "derive_seed", "sample_view_params",
           "sample_views_params", "MultiViewAugment", "SimCLRAugment", "BYOLAugment",
           "VICRegAugment", "BarlowTwinsAugment", "DINOAugment", "DINOv2Augment", "SwAVAugment",
           "MAEAugment", "IJEPAAugment", "PRESETS", "simclr_blur_kernel_size"]

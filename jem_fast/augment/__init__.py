"""Fused per-sample augmentation for joint-embedding SSL.

- `sampling`: counter-based per-sample parameters (RandomResizedCrop, flip, jitter, order,
  grayscale, blur, solarize), identical on CPU and CUDA for one seed.
- `presets`: nn.Modules for the SimCLR, BYOL, VICReg, Barlow Twins, DINO, DINOv2, SwAV, MAE and
  I-JEPA recipes, producing lists of views.
- `functional`: the fused kernel entry point `augment(images, params, size, ...)`.
- `masking`: ViT patch-masking generators.
"""
import importlib

from . import sampling, presets
from .sampling import (IMAGENET_MEAN, IMAGENET_STD, PARAM_NAMES, ViewConfig, derive_seed,
                       sample_view_params, sample_views_params)
from .presets import (BarlowTwinsAugment, BYOLAugment, DINOAugment, DINOv2Augment, IJEPAAugment,
                      MAEAugment, MultiViewAugment, PRESETS, SimCLRAugment, SwAVAugment,
                      VICRegAugment, simclr_blur_kernel_size)

_LAZY = ("functional", "masking")


def __getattr__(name):
    # Imported on first use: the kernel's entry point loads the compiled op and the presets only
    # need it at call time, so `import jem_fast.augment` stays cheap and never cycles.
    if name in _LAZY:
        try:
            return importlib.import_module(f".{name}", __name__)
        except ModuleNotFoundError as e:
            # Only a missing submodule becomes AttributeError (what getattr/hasattr expect);
            # an import error inside it propagates.
            if e.name != f"{__name__}.{name}":
                raise
            raise AttributeError(f"module {__name__!r} has no attribute {name!r} "
                                 f"({e.name} is not available)") from e
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


__all__ = ["sampling", "presets", "functional", "masking", "ViewConfig", "PARAM_NAMES",
           "IMAGENET_MEAN", "IMAGENET_STD", "derive_seed", "sample_view_params",
           "sample_views_params", "MultiViewAugment", "SimCLRAugment", "BYOLAugment",
           "VICRegAugment", "BarlowTwinsAugment", "DINOAugment", "DINOv2Augment", "SwAVAugment",
           "MAEAugment", "IJEPAAugment", "PRESETS", "simclr_blur_kernel_size"]

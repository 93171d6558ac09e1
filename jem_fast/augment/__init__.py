"""Fused per-sample augmentation for SSL views (jem_fast::augment_views)."""
from . import functional
from .functional import IMAGENET_MEAN, IMAGENET_STD, augment

__all__ = ["functional", "augment", "IMAGENET_MEAN", "IMAGENET_STD"]

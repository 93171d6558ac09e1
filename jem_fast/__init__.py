"""jem_fast: fused losses and augmentation for joint-embedding self-supervised learning."""
from ._extension import build_info
from . import ops, losses, nn, reference, distributed, cluster, augment
from .losses import (BarlowTwinsLoss, DeepClusterV2Loss, DINOLoss, InfoNCELoss,
                     NegativeCosineSimilarity, NTXentLoss, SwaVLoss, VICRegLoss, WMSELoss,
                     symmetric_negative_cosine)

__version__ = "0.1.0"
__all__ = ["build_info", "ops", "losses", "nn", "reference", "distributed", "cluster", "augment",
           "VICRegLoss", "BarlowTwinsLoss", "NTXentLoss", "InfoNCELoss", "SwaVLoss", "DINOLoss",
           "DeepClusterV2Loss", "WMSELoss", "NegativeCosineSimilarity",
           "symmetric_negative_cosine", "__version__"]

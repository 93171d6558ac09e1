"""jem_fast: fused losses and augmentation for joint-embedding self-supervised learning."""
from ._extension import build_info
from . import ops, losses, nn, reference, distributed
from .losses import (BarlowTwinsLoss, InfoNCELoss, NegativeCosineSimilarity, NTXentLoss,
                     VICRegLoss, symmetric_negative_cosine)

__version__ = "0.1.0"
__all__ = ["build_info", "ops", "losses", "nn", "reference", "distributed", "VICRegLoss",
           "BarlowTwinsLoss", "NTXentLoss", "InfoNCELoss", "NegativeCosineSimilarity",
           "symmetric_negative_cosine", "__version__"]

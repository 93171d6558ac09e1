"""jem_fast: fused losses and augmentation for joint-embedding self-supervised learning."""
from ._extension import build_info
from . import ops, losses, nn, reference, distributed, cluster
from .losses import BarlowTwinsLoss, DeepClusterV2Loss, InfoNCELoss, NTXentLoss, VICRegLoss

__version__ = "0.1.0"
__all__ = ["build_info", "ops", "losses", "nn", "reference", "distributed", "cluster", "VICRegLoss",
           "BarlowTwinsLoss", "NTXentLoss", "InfoNCELoss", "DeepClusterV2Loss",
           "__version__"]

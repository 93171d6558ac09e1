"""Drop-in loss modules (same constructor arguments, defaults and forward signature as lightly)."""
from .vicreg import VICRegLoss
from .barlow_twins import BarlowTwinsLoss
from .info_nce import InfoNCELoss
from .ntxent import NTXentLoss
from .swav import SwaVLoss
from .dino import DINOLoss
from .deepcluster import DeepClusterV2Loss
from .wmse import WMSELoss, norm_mse_loss
from .negative_cosine import (NegativeCosineSimilarity, negative_cosine_similarity,
                              symmetric_negative_cosine)

__all__ = ["VICRegLoss", "BarlowTwinsLoss", "NTXentLoss", "InfoNCELoss", "SwaVLoss", "DINOLoss",
           "DeepClusterV2Loss", "WMSELoss", "norm_mse_loss", "NegativeCosineSimilarity",
           "negative_cosine_similarity", "symmetric_negative_cosine"]

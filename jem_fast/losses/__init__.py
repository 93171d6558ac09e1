"""Drop-in loss modules (same constructor arguments, defaults and forward signature as lightly)."""
from .vicreg import VICRegLoss
from .barlow_twins import BarlowTwinsLoss
from .info_nce import InfoNCELoss
from .ntxent import NTXentLoss
from .negative_cosine import (NegativeCosineSimilarity, negative_cosine_similarity,
                              symmetric_negative_cosine)

__all__ = ["VICRegLoss", "BarlowTwinsLoss", "NTXentLoss", "InfoNCELoss",
           "NegativeCosineSimilarity", "negative_cosine_similarity", "symmetric_negative_cosine"]

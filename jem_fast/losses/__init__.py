"""Drop-in loss modules (same constructor arguments, defaults and forward signature as lightly)."""
from .vicreg import VICRegLoss
from .barlow_twins import BarlowTwinsLoss
from .info_nce import InfoNCELoss
from .ntxent import NTXentLoss
from .deepcluster import DeepClusterV2Loss

__all__ = ["VICRegLoss", "BarlowTwinsLoss", "NTXentLoss", "InfoNCELoss", "DeepClusterV2Loss"]

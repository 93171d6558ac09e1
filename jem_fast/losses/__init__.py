"""Drop-in loss modules (same constructor arguments, defaults and forward signature as lightly)."""
from .vicreg import VICRegLoss
from .barlow_twins import BarlowTwinsLoss

__all__ = ["VICRegLoss", "BarlowTwinsLoss"]

"""Modules that are not losses: the negatives memory bank, the SwAV/DeepCluster prototypes, the
EMA teacher update and its momentum schedule."""
from .memory_bank import MemoryBank
from .prototypes import SwaVPrototypes
from .ema import MomentumSchedule, cosine_momentum_schedule, update_ema

__all__ = ["MemoryBank", "SwaVPrototypes", "update_ema", "cosine_momentum_schedule",
           "MomentumSchedule"]

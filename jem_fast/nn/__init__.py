"""Modules that are not losses: the negatives memory bank, the EMA teacher update."""
from .memory_bank import MemoryBank
from .ema import MomentumSchedule, cosine_momentum_schedule, update_ema

__all__ = ["MemoryBank", "update_ema", "cosine_momentum_schedule", "MomentumSchedule"]

"""Modules that are not losses: the negatives memory bank, the SwAV/DeepCluster prototypes."""
from .memory_bank import MemoryBank
from .prototypes import SwaVPrototypes

__all__ = ["MemoryBank", "SwaVPrototypes"]

"""Modules that are not losses: the negatives memory bank."""
from .memory_bank import MemoryBank

__all__ = ["MemoryBank"]

"""MemoryBank: a FIFO queue of past keys (MoCo negatives), with lightly's semantics."""
from __future__ import annotations

from typing import Optional, Sequence, Union

import torch
import torch.distributed as dist
import torch.nn.functional as F

from ..distributed import is_distributed


class MemoryBank(torch.nn.Module):
    """FIFO queue of past keys, no gradient, ring pointer.

    Args:
        size: 0 (disabled), (num_keys, dim) (initialized now with normalized random keys, as
            lightly does), or an int num_keys (dim taken from the first batch, as older lightly
            releases did).
        gather_distributed: enqueue the keys of every rank (all-gathered, no gradient).

    Wrap-around follows lightly exactly: when a batch does not fit before the end, only its
    first part is written and the pointer returns to 0 (the rest of that batch is dropped).
    Keys are stored in float32, shape (num_keys, dim).
    """

    def __init__(self, size: Union[int, Sequence[int]] = 0, gather_distributed: bool = False):
        super().__init__()
        size_tuple = (size,) if isinstance(size, int) else tuple(int(s) for s in size)
        if any(s < 0 for s in size_tuple) or len(size_tuple) not in (1, 2):
            raise ValueError(f"memory bank size must be 0, num_keys or (num_keys, dim), got {size}")
        self.num_keys = size_tuple[0]
        self.gather_distributed = gather_distributed
        self.register_buffer("bank", torch.empty(0, dtype=torch.float32), persistent=False)
        self.register_buffer("bank_ptr", torch.zeros(1, dtype=torch.long), persistent=False)
        if len(size_tuple) == 2 and self.num_keys > 0:
            self._init(size_tuple[1], torch.device("cpu"))

    @property
    def enabled(self) -> bool:
        """Returns True when the bank holds keys (size > 0), False when disabled."""
        return self.num_keys > 0

    @torch.no_grad()
    def _init(self, dim: int, device) -> None:
        self.bank = F.normalize(torch.randn(self.num_keys, dim), dim=-1).to(device)
        self.bank_ptr = torch.zeros(1, dtype=torch.long, device=device)

    def negatives(self, like: torch.Tensor) -> Optional[torch.Tensor]:
        """The stored keys as a detached snapshot.

        Args:
            like: a (batch, dim) batch of keys; on first use it fixes the bank's dim and device.

        Returns:
            (num_keys, dim) float32 tensor, or None when the bank is disabled (size 0).
        """
        if not self.enabled:
            return None
        if self.bank.numel() == 0:
            self._init(like.shape[1], like.device)
        if self.bank.shape[1] != like.shape[1]:
            raise ValueError(f"memory bank holds keys of dim {self.bank.shape[1]}, got a batch of "
                             f"dim {like.shape[1]}")
        return self.bank.detach().clone()

    @torch.no_grad()
    def enqueue(self, keys: torch.Tensor) -> None:
        """Write keys into the queue at the ring pointer (FIFO), without gradient.

        Args:
            keys: (batch, dim) floating-point keys (stored as float32). With
                gather_distributed, the keys of every rank are written, rank by rank.
        """
        if not self.enabled:
            return
        if not isinstance(keys, torch.Tensor):
            raise TypeError(f"keys must be a torch.Tensor, got {type(keys).__name__}")
        if keys.dim() != 2:
            raise ValueError(f"keys must be 2-D (batch, dim), got shape {tuple(keys.shape)}")
        if not keys.is_floating_point():
            raise TypeError(f"keys must be a floating-point tensor, got {keys.dtype}")
        if self.bank.numel() == 0:
            self._init(keys.shape[1], keys.device)
        if keys.shape[1] != self.bank.shape[1]:
            raise ValueError(f"keys must have the memory bank's width {self.bank.shape[1]} "
                             f"(num_keys, dim) = {tuple(self.bank.shape)}, got keys of shape "
                             f"{tuple(keys.shape)}")
        keys = keys.detach()
        if self.gather_distributed and is_distributed():
            gathered = [torch.empty_like(keys) for _ in range(dist.get_world_size())]
            dist.all_gather(gathered, keys.contiguous())
            keys = torch.cat(gathered)
        n = keys.shape[0]
        ptr = int(self.bank_ptr)
        if ptr + n >= self.num_keys:
            self.bank[ptr:] = keys[: self.num_keys - ptr].to(self.bank)
            self.bank_ptr.zero_()
        else:
            self.bank[ptr:ptr + n] = keys.to(self.bank)
            self.bank_ptr[0] = ptr + n

    def forward(self, keys: torch.Tensor, update: bool = False):
        """lightly-style call.

        Args:
            keys: (batch, dim) keys of this step.
            update: also enqueue them after taking the snapshot.

        Returns:
            (keys, negatives): the keys unchanged and the (num_keys, dim) snapshot taken before
            the update (None when the bank is disabled).
        """
        negatives = self.negatives(keys)
        if update:
            self.enqueue(keys)
        return keys, negatives

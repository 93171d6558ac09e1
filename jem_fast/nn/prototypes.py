"""SwAV / DeepCluster-v2 prototypes: drop-in for lightly.models.modules.heads.SwaVPrototypes."""
from __future__ import annotations

from typing import List, Optional, Sequence, Union

import torch
from torch import Tensor, nn


class SwaVPrototypes(nn.Module):
    """One linear layer (with bias, as lightly) per prototype head.

    Args:
        input_dim: feature dimension.
        n_prototypes: an int (one head; forward returns a tensor) or a list/tuple of ints
            (several heads; forward returns a list).
        n_steps_frozen_prototypes: while `step < n_steps_frozen_prototypes` the module's
            parameters have requires_grad=False (the official SwAV code drops their gradients
            for the first iterations), after that True.

    Same parameter names, shapes and initialization order as lightly, so the same seed gives the
    same weights and the state dicts are interchangeable.
    """

    def __init__(self, input_dim: int = 128, n_prototypes: Union[List[int], int] = 3000,
                 n_steps_frozen_prototypes: int = 0):
        super().__init__()
        if isinstance(n_prototypes, bool) or not isinstance(n_prototypes, (int, list, tuple)):
            raise TypeError(f"n_prototypes must be an int or a list of ints, got {n_prototypes!r}")
        self._is_single_prototype = isinstance(n_prototypes, int)
        self.n_prototypes = [n_prototypes] if self._is_single_prototype else list(n_prototypes)
        if not self.n_prototypes or any(int(k) < 1 for k in self.n_prototypes):
            raise ValueError(f"n_prototypes must hold at least one count >= 1, got {n_prototypes!r}")
        if int(input_dim) < 1:
            raise ValueError(f"input_dim must be >= 1, got {input_dim}")
        if int(n_steps_frozen_prototypes) < 0:
            raise ValueError("n_steps_frozen_prototypes must be >= 0, got "
                             f"{n_steps_frozen_prototypes}")
        self.heads = nn.ModuleList([nn.Linear(input_dim, int(k)) for k in self.n_prototypes])
        self.n_steps_frozen_prototypes = int(n_steps_frozen_prototypes)

    def forward(self, x: Tensor, step: Optional[int] = None) -> Union[Tensor, List[Tensor]]:
        """Scores of x against every head's prototypes.

        Args:
            x: (B, input_dim) features (normalize them first, as SwAV does).
            step: the training step; required when n_steps_frozen_prototypes > 0.

        Returns:
            a (B, K) tensor for an int n_prototypes, else a list with one (B, K_h) tensor per
            head.
        """
        self._freeze_prototypes_if_required(step)
        out = [layer(x) for layer in self.heads]
        return out[0] if self._is_single_prototype else out

    @torch.no_grad()
    def normalize(self) -> None:
        """Puts every prototype (weight row) on the unit sphere, in place and without gradient.
        A zero row stays zero (lightly's division would make it NaN)."""
        for layer in self.heads:
            norm = layer.weight.norm(dim=1, keepdim=True)
            layer.weight.div_(torch.where(norm > 0, norm, torch.ones_like(norm)))

    @torch.no_grad()
    def load_centroids(self, centroids: Union[Tensor, Sequence[Tensor]]) -> None:
        """Copies k-means centroids into the prototype weights, as DeepCluster-v2 does after
        each clustering (biases are left as they are).

        Args:
            centroids: one (K_h, input_dim) tensor per head (a tensor for a single head).
        """
        cs = [centroids] if isinstance(centroids, Tensor) else list(centroids)
        if len(cs) != len(self.heads):
            raise ValueError(f"centroids: expected {len(self.heads)} tensors (one per head), got "
                             f"{len(cs)}")
        for h, (layer, c) in enumerate(zip(self.heads, cs)):
            if tuple(c.shape) != tuple(layer.weight.shape):
                raise ValueError(f"centroids[{h}] must have shape {tuple(layer.weight.shape)}, got "
                                 f"{tuple(c.shape)}")
            layer.weight.copy_(c)

    def _freeze_prototypes_if_required(self, step: Optional[int] = None) -> None:
        if self.n_steps_frozen_prototypes > 0:
            if step is None:
                raise ValueError(
                    "`n_steps_frozen_prototypes` is greater than 0, please provide the `step` "
                    "argument to the `forward()` method.")
            self.requires_grad_(step >= self.n_steps_frozen_prototypes)

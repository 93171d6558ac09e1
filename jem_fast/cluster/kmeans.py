"""Distributed spherical k-means over a feature memory (DeepCluster-v2's clustering step).

Follows the official code (facebookresearch/swav main_deepclusterv2.py, `cluster_memory`):
  * for each prototype head h (with K_h centroids) the memory bank j = h % num_banks is used
    (the official code cycles over `crops_for_assign` the same way);
  * centroids start as K_h distinct memory rows drawn at random;
  * num_iters times: E-step (nearest centroid by cosine, jem_fast::assign_to_centroids, no
    B x K matrix), M-step (per-centroid sums and counts, all-reduced over the ranks), centroids
    renormalized; then a final E-step gives the assignments;
  * a centroid whose cluster is empty keeps its previous value (the official code does the same
    through its `counts > 0` mask).

Differences from the official code, on purpose:
  * initial rows are drawn from the *whole* distributed memory (a seeded generator that every
    rank runs identically, the seed broadcast from rank 0 when not given), not from rank 0's
    part only, so W processes give exactly the run of one process on the concatenated memory;
  * sums are accumulated in float64 (whatever the memory dtype), so the all-reduced result does
    not depend on how the memory is split over the ranks, up to float64 rounding;
  * rows without an assignment are -1 (the official code uses -100), the default
    ignore_index of jem_fast.losses.DeepClusterV2Loss;
  * centroids are unit-normalized from the start (the official E-step uses raw dot products,
    which is the same ordering once memory rows are normalized, as DeepCluster-v2's are).
"""
from __future__ import annotations

from typing import List, NamedTuple, Optional, Sequence, Tuple, Union

import torch
import torch.distributed as dist

from ..distributed import is_distributed
from ..ops.assign_to_centroids import assign_to_centroids

# Rows of the memory widened to float64 at a time in the M-step: bounds the extra memory.
_M_STEP_ROWS = 65536


class KMeansResult(NamedTuple):
    """local_assignments: (num_heads, N_local) int64, the cluster of every local memory row.
    centroids: one (K_h, D) tensor per head, unit rows, in the memory's dtype.
    assignments: (num_heads, dataset_size) int64 indexed by dataset index (every rank's rows,
    -1 where no memory row has that index), when memory_index and dataset_size are given."""
    local_assignments: torch.Tensor
    centroids: List[torch.Tensor]
    assignments: Optional[torch.Tensor]


def _unit_rows(x: torch.Tensor) -> torch.Tensor:
    norm = x.norm(dim=1, keepdim=True)
    return x / torch.where(norm > 0, norm, torch.ones_like(norm))


def _world(group) -> Tuple[int, int]:
    if not is_distributed():
        return 0, 1
    return dist.get_rank(group), dist.get_world_size(group)


def _all_gather_rows(x: torch.Tensor, rows: List[int], group) -> torch.Tensor:
    """Concatenation over the ranks of x (rows[r] rows on rank r): gloo and NCCL need equal
    shapes, so every part is padded to the largest."""
    top = max(rows)
    padded = x.new_zeros((top,) + tuple(x.shape[1:]))
    padded[: x.shape[0]] = x
    parts = [torch.empty_like(padded) for _ in rows]
    dist.all_gather(parts, padded, group=group)
    return torch.cat([p[:n] for p, n in zip(parts, rows)])


def _shared_seed(seed: Optional[int], device, group) -> int:
    if seed is not None:
        return int(seed)
    value = torch.randint(0, 2**62, (1,), dtype=torch.int64)
    if is_distributed():
        value = value.to(device)
        dist.broadcast(value, src=dist.get_global_rank(group, 0) if group is not None else 0,
                       group=group)
    return int(value.item())


def spherical_kmeans(memory: torch.Tensor, num_centroids: int, num_iters: int = 10,
                     generator: Optional[torch.Generator] = None, group=None,
                     _rows: Optional[List[int]] = None) -> Tuple[torch.Tensor, torch.Tensor]:
    """Spherical k-means over the memory rows of every rank (a single process when
    torch.distributed is not initialized).

    Args:
        memory: (N_local, D) floating-point features of this rank.
        num_centroids: K, the number of clusters.
        num_iters: k-means iterations (>= 0).
        generator: a CPU torch.Generator that draws the initial rows; it must be in the same
            state on every rank (cluster_memory seeds one). Required when distributed.
        group: the process group (default: the world).

    Returns:
        (centroids, assignments): (K, D) unit-norm centroids in the memory's dtype and the
        (N_local,) int64 cluster of every local row. Empty clusters keep their previous
        centroid.
    """
    if not isinstance(memory, torch.Tensor) or memory.dim() != 2:
        raise ValueError("memory must be a 2-D tensor (num_rows, dim), got "
                         f"{getattr(memory, 'shape', type(memory).__name__)}")
    if not memory.is_floating_point():
        raise ValueError(f"memory must be a floating-point tensor, got {memory.dtype}")
    K = int(num_centroids)
    if num_iters < 0:
        raise ValueError(f"num_iters must be >= 0, got {num_iters}")
    rank, world = _world(group)
    if world > 1 and generator is None:
        raise ValueError("generator: distributed k-means needs a torch.Generator in the same state "
                         "on every rank (or use cluster_memory(..., seed=...))")
    n_local, D = memory.shape
    if _rows is None:
        _rows = _rows_per_rank(n_local, memory.device, group)
    total = sum(_rows)
    if not 1 <= K <= total:
        raise ValueError(f"num_centroids must be between 1 and the number of memory rows over "
                         f"all ranks ({total}), got {K}; reduce the number of prototypes")
    offset = sum(_rows[:rank])
    # The same permutation on every rank: each rank fills in the rows it owns, and the sum over
    # the ranks has exactly one non-zero contribution per centroid.
    pick = torch.randperm(total, generator=generator)[:K].to(memory.device)
    own = (pick >= offset) & (pick < offset + n_local)
    centroids = memory.new_zeros((K, D))
    centroids[own] = memory[pick[own] - offset]
    if world > 1:
        dist.all_reduce(centroids, group=group)
    centroids = _unit_rows(centroids)

    for it in range(num_iters + 1):
        assignment, _ = assign_to_centroids(memory, centroids)
        if it == num_iters:
            break
        sums = torch.zeros((K, D), dtype=torch.float64, device=memory.device)
        for r0 in range(0, n_local, _M_STEP_ROWS):
            sums.index_add_(0, assignment[r0:r0 + _M_STEP_ROWS],
                            memory[r0:r0 + _M_STEP_ROWS].to(torch.float64))
        counts = torch.bincount(assignment, minlength=K)
        if world > 1:
            dist.all_reduce(sums, group=group)
            dist.all_reduce(counts, group=group)
        # The mean and the sum have the same direction: normalize the sum.
        updated = _unit_rows(sums).to(memory.dtype)
        centroids = torch.where((counts > 0)[:, None], updated, centroids)
    return centroids, assignment


def _rows_per_rank(n_local: int, device, group) -> List[int]:
    if not is_distributed():
        return [n_local]
    sizes = [torch.zeros(1, dtype=torch.int64, device=device)
             for _ in range(dist.get_world_size(group))]
    dist.all_gather(sizes, torch.tensor([n_local], dtype=torch.int64, device=device), group=group)
    return [int(s.item()) for s in sizes]


@torch.no_grad()
def cluster_memory(memory_embeddings: Union[torch.Tensor, Sequence[torch.Tensor]],
                   num_prototypes: Union[int, Sequence[int]], num_iters: int = 10,
                   memory_index: Optional[torch.Tensor] = None,
                   dataset_size: Optional[int] = None, seed: Optional[int] = None,
                   group=None) -> KMeansResult:
    """DeepCluster-v2's clustering of the memory banks, one k-means per prototype head.

    Args:
        memory_embeddings: (num_banks, N_local, D) or a list of (N_local, D) tensors, this rank's
            memory (one bank per crop used for assignment). Head h clusters bank h % num_banks.
        num_prototypes: K per head (an int: one head).
        num_iters: k-means iterations (the official default is 10).
        memory_index: (N_local,) int64 dataset index of every memory row; with dataset_size, the
            result also holds `assignments` (num_heads, dataset_size) gathered from every rank.
        seed: seeds the draw of the initial centroids (the same on all ranks); None: a random seed
            drawn on rank 0 and broadcast.
        group: the process group (default: the world) when torch.distributed is initialized.

    Returns:
        KMeansResult(local_assignments (num_heads, N_local) int64, centroids: one (K_h, D)
        tensor per head, assignments (num_heads, dataset_size) int64 or None).
    """
    banks = list(memory_embeddings.unbind(0)) if isinstance(memory_embeddings, torch.Tensor) \
        and memory_embeddings.dim() == 3 else (
            [memory_embeddings] if isinstance(memory_embeddings, torch.Tensor)
            else list(memory_embeddings))
    if not banks:
        raise ValueError("memory_embeddings must hold at least one memory bank")
    n_local = banks[0].shape[0] if banks[0].dim() == 2 else -1
    for j, bank in enumerate(banks):
        if bank.dim() != 2 or bank.shape[0] != n_local or bank.shape[1] != banks[0].shape[1]:
            raise ValueError("memory_embeddings must be (num_banks, N_local, D) or a list of "
                             f"(N_local, D) tensors of one shape; bank {j} has shape "
                             f"{tuple(bank.shape)}")
    ks = [int(num_prototypes)] if isinstance(num_prototypes, int) else [int(k) for k in num_prototypes]
    if not ks:
        raise ValueError("num_prototypes must hold at least one head")
    if (memory_index is None) != (dataset_size is None):
        raise ValueError("memory_index and dataset_size must be given together")
    if memory_index is not None and (memory_index.dim() != 1 or memory_index.shape[0] != n_local):
        raise ValueError(f"memory_index must be (N_local,) = ({n_local},), got "
                         f"{tuple(memory_index.shape)}")
    device = banks[0].device
    rows = _rows_per_rank(n_local, device, group)
    generator = torch.Generator().manual_seed(_shared_seed(seed, device, group))

    local, centroids = [], []
    for h, k in enumerate(ks):
        c, a = spherical_kmeans(banks[h % len(banks)], k, num_iters, generator, group, rows)
        centroids.append(c)
        local.append(a)
    local_assignments = torch.stack(local)

    assignments = None
    if memory_index is not None:
        index = memory_index.to(device=device, dtype=torch.int64)
        if is_distributed():
            index = _all_gather_rows(index, rows, group)
            gathered = _all_gather_rows(local_assignments.T.contiguous(), rows, group).T
        else:
            gathered = local_assignments
        assignments = torch.full((len(ks), int(dataset_size)), -1, dtype=torch.int64,
                                 device=device)
        assignments[:, index] = gathered
    return KMeansResult(local_assignments, centroids, assignments)

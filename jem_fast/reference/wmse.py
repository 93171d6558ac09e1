"""W-MSE (Ermolov et al., 2021) as in the official code and lightly, written as plain loops.

One sub-batch and one view at a time, each whitened on its own: centre, covariance / (n - 1),
shrink toward the identity, Cholesky, explicit inverse of the factor. Float64-capable; no
autocast handling, no input checks. The permutations are drawn with torch.randperm from the
global generator, one per whitening iteration, exactly when the module draws them, unless given.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F


def norm_mse_reference(x0: torch.Tensor, x1: torch.Tensor) -> torch.Tensor:
    """2 - 2 * mean cosine similarity of the rows."""
    return 2 - 2 * (F.normalize(x0, dim=1) * F.normalize(x1, dim=1)).sum(dim=1).mean()


def whiten_reference(x: torch.Tensor, eps: float = 0.0, mean=None, cov=None):
    """(whitened x, mean, covariance): batch statistics unless mean and cov are given."""
    if mean is None:
        mean = x.mean(dim=0)
        xc = x - mean
        cov = xc.T @ xc / (x.shape[0] - 1)
    else:
        xc = x - mean
    eye = torch.eye(x.shape[1], dtype=x.dtype, device=x.device)
    factor = torch.linalg.cholesky((1 - eps) * cov + eps * eye)
    return xc @ torch.linalg.inv(factor).T, mean, cov


def wmse_loss_reference(x: torch.Tensor, w_size: int, num_samples: int = 2, w_iter: int = 1,
                        eps: float = 0.0, loss_fn=norm_mse_reference, perms=None,
                        running_mean=None, running_cov=None, momentum: float = 0.01,
                        use_running_stats: bool = False):
    """(loss, running_mean, running_cov).

    x is (batch_size * num_samples, D), view i in rows [i*bs, (i+1)*bs). With use_running_stats
    (eval mode) every sub-batch is whitened with the given running statistics, otherwise with
    its own; given running statistics are then updated once per (iteration, sub-batch, view),
    in that order, as new = momentum * batch + (1 - momentum) * old. Returned statistics are
    new tensors (the inputs are not modified).
    """
    bs = x.shape[0] // num_samples
    num_pairs = num_samples * (num_samples - 1) // 2
    total = x.new_zeros(())
    for it in range(w_iter):
        perm = torch.randperm(bs) if perms is None else perms[it]
        z = [[None] * bs for _ in range(num_samples)]
        for idx in perm.view(-1, w_size):
            for i in range(num_samples):
                rows = x[idx + i * bs]
                if use_running_stats:
                    zi, _, _ = whiten_reference(rows, eps, running_mean.to(x), running_cov.to(x))
                else:
                    zi, m, c = whiten_reference(rows, eps)
                    if running_mean is not None:
                        running_mean = momentum * m.detach() + (1 - momentum) * running_mean
                        running_cov = momentum * c.detach() + (1 - momentum) * running_cov
                for k, row in enumerate(idx.tolist()):
                    z[i][row] = zi[k]
        views = [torch.stack(rows) for rows in z]
        for i in range(num_samples - 1):
            for j in range(i + 1, num_samples):
                total = total + loss_fn(views[i], views[j])
    return total / (w_iter * num_pairs), running_mean, running_cov

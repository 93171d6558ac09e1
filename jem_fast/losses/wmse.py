"""WMSELoss: drop-in for lightly.loss.WMSELoss (W-MSE, Ermolov et al., 2021).

Same constructor arguments, defaults, forward signature, state_dict keys
(`whitening.running_mean` (1, D, 1, 1) and `whitening.running_variance` (D, D)), random
permutations (one torch.randperm(batch_size) per whitening iteration from the global generator)
and running-statistics updates as lightly 1.6.0. The difference is in how it runs: lightly
whitens each (iteration, sub-batch, view) in its own Python iteration with its own Cholesky;
here all of them are stacked and go through one batched Cholesky and one batched triangular
solve, and the running statistics get one closed-form update per forward.
"""
from __future__ import annotations

from typing import Callable

import torch
import torch.nn.functional as F


def _compute_dtype(dtype: torch.dtype) -> torch.dtype:
    # Whitening squares the inputs and Cholesky is unstable (and unimplemented on CPU) in half
    # precision: everything below float32 is computed in float32, float64 stays float64.
    return torch.float64 if dtype == torch.float64 else torch.float32


def norm_mse_loss(x0: torch.Tensor, x1: torch.Tensor) -> torch.Tensor:
    """Normalized MSE of lightly / the official code: 2 - 2 * mean cosine similarity of the rows.

    Args:
        x0, x1: (N, D) tensors, any floating dtypes (different ones are promoted).

    Returns:
        0-d tensor, float32 (float64 when an input is float64): computed in float32 for
        half-precision inputs, since F.normalize's eps (1e-12) underflows in fp16.
    """
    dtype = torch.promote_types(_compute_dtype(x0.dtype), _compute_dtype(x1.dtype))
    x0 = F.normalize(x0.to(dtype), dim=1)
    x1 = F.normalize(x1.to(dtype), dim=1)
    return 2 - 2 * (x0 * x1).sum(dim=1).mean()


def _whiten(x: torch.Tensor, eps: float, mean: torch.Tensor | None = None,
            cov: torch.Tensor | None = None):
    """Whiten the rows of every (..., n, D) block with its own statistics (or the given ones).

    Returns (z, mean (..., D), unshrunk cov (..., D, D), Cholesky info (...)). The inverse of
    the Cholesky factor is formed explicitly (a D x D triangular solve) and applied as a GEMM,
    as lightly does: GEMMs are what GPUs run fastest, and it keeps the rounding close to lightly.
    """
    if mean is None:
        mean = x.mean(dim=-2)
        xc = x - mean.unsqueeze(-2)
        cov = xc.transpose(-1, -2) @ xc / (x.shape[-2] - 1)
    else:
        xc = x - mean.unsqueeze(-2)
    eye = torch.eye(x.shape[-1], dtype=x.dtype, device=x.device)
    shrunk = cov if eps == 0 else (1 - eps) * cov + eps * eye
    factor, info = torch.linalg.cholesky_ex(shrunk)
    inv_factor = torch.linalg.solve_triangular(factor, eye.expand_as(factor), upper=False)
    return xc @ inv_factor.transpose(-1, -2), mean, cov, info


class Whitening2d(torch.nn.Module):
    """Holds W-MSE's running statistics under lightly's names and shapes, and whitens one batch.

    Buffers (only with track_running_stats): running_mean (1, D, 1, 1), running_variance (D, D),
    so that state_dicts load both ways with lightly's Whitening2d. forward(x) whitens an (N, D)
    batch like lightly's (returned in float32 for half-precision inputs, float64 for float64).
    """

    def __init__(self, num_features: int, momentum: float = 0.01,
                 track_running_stats: bool = True, eps: float = 0):
        super().__init__()
        self.num_features = num_features
        self.momentum = momentum
        self.track_running_stats = track_running_stats
        self.eps = eps
        if track_running_stats:
            self.register_buffer("running_mean", torch.zeros(1, num_features, 1, 1))
            self.register_buffer("running_variance", torch.eye(num_features))

    @property
    def uses_running_stats(self) -> bool:
        return self.track_running_stats and not self.training

    def running_stats(self, dtype: torch.dtype):
        return (self.running_mean.reshape(self.num_features).to(dtype),
                self.running_variance.to(dtype))

    @torch.no_grad()
    def update_running_stats(self, means: torch.Tensor, covs: torch.Tensor) -> None:
        """Apply len(means) successive momentum updates, in that order, in one step:
        r_K = (1 - m)^K r_0 + sum_k m (1 - m)^(K-1-k) s_k, what lightly's sequential
        `r = m * s + (1 - m) * r` gives, up to rounding."""
        k = means.shape[0]
        m = float(self.momentum)
        dtype = torch.promote_types(means.dtype, self.running_mean.dtype)
        powers = torch.arange(k - 1, -1, -1, dtype=torch.float64, device=means.device)
        weights = (m * (1 - m) ** powers).to(dtype)
        decay = (1 - m) ** k
        new_mean = decay * self.running_mean.reshape(-1).to(dtype) + weights @ means.to(dtype)
        new_cov = (decay * self.running_variance.to(dtype)
                   + torch.tensordot(weights, covs.to(dtype), dims=1))
        self.running_mean.copy_(new_mean.reshape(self.running_mean.shape))
        self.running_variance.copy_(new_cov)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        n, d = _check_2d(x, "x", self.num_features)
        with torch.autocast(x.device.type, enabled=False):
            xf = x.to(_compute_dtype(x.dtype))
            if self.uses_running_stats:
                z, _, _, info = _whiten(xf, self.eps, *self.running_stats(xf.dtype))
            else:
                z, mean, cov, info = _whiten(xf, self.eps)
            _raise_on_failure(xf, info, self.eps, n)
            if self.training and self.track_running_stats:
                self.update_running_stats(mean.detach()[None], cov.detach()[None])
        return z


def _check_2d(x: torch.Tensor, name: str, dim: int):
    if not isinstance(x, torch.Tensor):
        raise TypeError(f"{name} must be a torch.Tensor, got {type(x).__name__}")
    if x.dim() != 2:
        raise ValueError(f"{name} must be 2-D (batch_size * num_samples, embedding_dim), got "
                         f"shape {tuple(x.shape)}")
    if x.shape[1] != dim:
        raise ValueError(f"{name} must have embedding_dim={dim} columns, got shape "
                         f"{tuple(x.shape)}")
    if not x.is_floating_point():
        raise ValueError(f"{name} must be a floating-point tensor, got {x.dtype}")
    return x.shape


def _raise_on_failure(x: torch.Tensor, info: torch.Tensor, eps: float, rows: int) -> None:
    # One host sync for both checks; torch.linalg.cholesky would sync for its own check anyway.
    non_finite, not_pd = torch.stack([~torch.isfinite(x).all(), (info != 0).any()]).tolist()
    if non_finite:
        raise ValueError("input contains NaN or Inf; W-MSE cannot whiten non-finite embeddings")
    if not_pd:
        raise torch.linalg.LinAlgError(
            f"W-MSE: a covariance matrix to whiten is not positive definite (Cholesky failed; "
            f"eps={eps}, {rows} rows per whitening sub-batch). Its embeddings are (nearly) "
            f"linearly dependent, e.g. collapsed or duplicated: use eps > 0 (shrinkage toward "
            f"the identity, e.g. 1e-4 ... 1e-2), a larger w_size, or float64.")


class WMSELoss(torch.nn.Module):
    """W-MSE loss (Ermolov et al., 2021, https://arxiv.org/abs/2007.06346) with lightly's
    arguments, defaults and semantics.

    forward(input): input is (batch_size * num_samples, embedding_dim), view i in rows
    [i * batch_size, (i + 1) * batch_size). For each of w_iter iterations the batch is randomly
    permuted (torch.randperm from the global generator, as lightly: seed it for reproducibility)
    and split into batch_size / w_size sub-batches; each sub-batch of each view is whitened with
    its own statistics (centre, covariance / (w_size - 1), (1 - eps) * cov + eps * I, Cholesky
    factor L, z = (x - mean) L^-T) and put back at its rows. loss_fn (default norm_mse_loss)
    is applied to every pair of whitened views; the loss is the mean over iterations and pairs.

    In eval mode with track_running_stats, every sub-batch is whitened with the running mean and
    covariance instead. In training mode with track_running_stats, these are updated once per
    (iteration, sub-batch, view), in that order: new = momentum * batch + (1 - momentum) * old
    (the unshrunk covariance).

    Args:
        embedding_dim: D, the width of the input.
        momentum: of the running mean and covariance.
        eps: shrinkage weight of the identity, in [0, 1].
        track_running_stats: keep running statistics (used in eval mode).
        w_iter: whitening iterations (random permutations) per forward.
        w_size: rows per whitening sub-batch (>= 2 * embedding_dim).
        loss_fn: the loss between two whitened views (default norm_mse_loss).
        num_samples: number of views stacked in the input.

    Precision: whitening and loss_fn run with autocast disabled, in float32 for float32/fp16/bf16
    inputs and float64 for float64 ones; the loss has that dtype. Gradients reach the input in
    its own dtype.

    Errors: ValueError naming the argument for bad constructor arguments and bad input shapes or
    dtypes, and when the input holds NaN/Inf (always checked: it costs no extra device sync, the
    Cholesky check syncs anyway); torch.linalg.LinAlgError (a RuntimeError, what torch raises)
    with a hint to use eps > 0 when a covariance is not positive definite.

    Differences from lightly: lightly raises RuntimeError for a batch not divisible by
    num_samples or by w_size, returns NaN for num_samples < 2 or w_iter < 1 and a loss that
    requires grad even for an input that does not; here these are ValueErrors and the loss
    requires grad only when the input does.
    """

    def __init__(self, embedding_dim: int = 128, momentum: float = 0.01, eps: float = 0.0,
                 track_running_stats: bool = True, w_iter: int = 1, w_size: int = 256,
                 loss_fn: Callable[[torch.Tensor, torch.Tensor], torch.Tensor] = norm_mse_loss,
                 num_samples: int = 2):
        super().__init__()
        if int(embedding_dim) != embedding_dim or embedding_dim < 1:
            raise ValueError(f"embedding_dim must be an integer >= 1, got {embedding_dim}")
        if int(w_size) != w_size or embedding_dim * 2 > w_size:
            raise ValueError(f"w_size must be an integer >= 2 * embedding_dim = "
                             f"{2 * embedding_dim} (whitening fewer rows is unstable), got "
                             f"w_size={w_size}")
        if int(w_iter) != w_iter or w_iter < 1:
            raise ValueError(f"w_iter must be an integer >= 1, got {w_iter}")
        if int(num_samples) != num_samples or num_samples < 2:
            raise ValueError(f"num_samples must be an integer >= 2 (the loss compares pairs of "
                             f"views), got {num_samples}")
        if not 0 <= momentum <= 1:
            raise ValueError(f"momentum must be in [0, 1], got {momentum}")
        if not 0 <= eps <= 1:
            raise ValueError(f"eps must be in [0, 1] (shrinkage weight of the identity), got {eps}")
        if not callable(loss_fn):
            raise ValueError(f"loss_fn must be callable, got {type(loss_fn).__name__}")
        self.whitening = Whitening2d(int(embedding_dim), momentum=momentum,
                                     track_running_stats=track_running_stats, eps=eps)
        self.embedding_dim = int(embedding_dim)
        self.w_iter = int(w_iter)
        self.w_size = int(w_size)
        self.loss_f = loss_fn
        self.num_samples = int(num_samples)
        self.num_pairs = self.num_samples * (self.num_samples - 1) // 2

    def _check_input(self, input: torch.Tensor) -> int:
        rows, _ = _check_2d(input, "input", self.embedding_dim)
        if rows % self.num_samples != 0:
            raise ValueError(f"input batch size ({rows} rows) must be divisible by "
                             f"num_samples={self.num_samples}")
        bs = rows // self.num_samples
        if bs < self.w_size or bs % self.w_size != 0:
            raise ValueError(f"batch size per view ({bs} = {rows} rows / num_samples) must be "
                             f"a multiple of w_size={self.w_size} (and at least w_size)")
        return bs

    def forward(self, input: torch.Tensor) -> torch.Tensor:
        """W-MSE loss of num_samples views stacked along the batch.

        Args:
            input: (batch_size * num_samples, embedding_dim), floating-point; view i in rows
                [i * batch_size, (i + 1) * batch_size), batch_size a multiple of w_size.

        Returns:
            0-d tensor, the mean of loss_fn over iterations and pairs of whitened views;
            float32 (float64 for float64 input). The input's gradient has the input's dtype.
        """
        bs = self._check_input(input)
        wh = self.whitening
        V, T, G, w, D = self.num_samples, self.w_iter, bs // self.w_size, self.w_size, input.shape[1]
        # Drawn before any other work, one per iteration, as lightly does: same seed, same
        # sub-batches (and the same global generator state afterwards).
        perms = torch.stack([torch.randperm(bs) for _ in range(T)]).to(input.device)
        with torch.autocast(input.device.type, enabled=False):
            x = input.to(_compute_dtype(input.dtype)).reshape(V, bs, D)
            if wh.uses_running_stats:
                # The same affine map for every sub-batch: whiten each view once, in place.
                z, _, _, info = _whiten(x, wh.eps, *wh.running_stats(x.dtype))
                _raise_on_failure(x, info, wh.eps, w)
                views = [z] * T
            else:
                blocks = x[:, perms.reshape(T, G, w)]                      # (V, T, G, w, D)
                z, mean, cov, info = _whiten(blocks, wh.eps)
                _raise_on_failure(x, info, wh.eps, w)
                if wh.track_running_stats and wh.training:
                    # lightly's update order: iteration, then sub-batch, then view.
                    wh.update_running_stats(mean.detach().permute(1, 2, 0, 3).reshape(-1, D),
                                            cov.detach().permute(1, 2, 0, 3, 4).reshape(-1, D, D))
                # Back to the original row order, so that loss_fn sees the views as lightly's.
                inverse = torch.argsort(perms, dim=1)                       # (T, bs)
                z = z.reshape(V, T, bs, D).gather(2, inverse[None, :, :, None].expand(V, T, bs, D))
                views = [z[:, t] for t in range(T)]
            total = None
            for zt in views:
                for i in range(V - 1):
                    for j in range(i + 1, V):
                        term = self.loss_f(zt[i], zt[j])
                        total = term if total is None else total + term
        return total / (T * self.num_pairs)

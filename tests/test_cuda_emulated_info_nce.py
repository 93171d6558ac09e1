"""The CUDA kernels of the memory-linear InfoNCE ops (csrc/losses/info_nce_cuda.cu), run on CPU
under HIP-CPU (tests/cuda_emu).

Two levels:
  * each launcher on its own (row / column log-sum-exp, logit gradient) against float64 math on
    the same logits: masks (in range, -1, out of range, every column masked), -inf logits, large
    scales, column counts that are not multiples of the 256-thread blocks, several row slices of
    the column LSE;
  * the host loops of csrc/losses/info_nce.cpp (CUDA branch) mirrored step by step in Python, the
    GEMMs by torch (float32 accumulation for half operands, as tensor cores do), with chunks and
    tiles smaller than the batch, wrapped in an autograd.Function and driven the way
    jem_fast/losses builds CLIP, MoCo and SimCLR losses; value and gradients against
    jem_fast/reference/info_nce.py in float64 on the same rounded inputs.
"""
import pytest
import torch
import torch.nn.functional as F

from cuda_emu import emu
from cuda_emu.emu import emu_lib  # noqa: F401  (session fixture: builds the library once)
from jem_fast.reference import info_nce_loss_reference, ntxent_loss_reference

pytestmark = [pytest.mark.cuda_emu, pytest.mark.usefixtures("emu_lib")]

DTYPES = emu.DTYPE_NAMES
INF = float("inf")


def _lt(dtype):
    """info_nce.cpp logit_type: float64 for float64 inputs, float32 otherwise."""
    return torch.float64 if dtype == torch.float64 else torch.float32


def _kernel_tol(lt):
    return (2e-14, 2e-14) if lt == torch.float64 else (4e-7, 4e-7)


# ----------------------------------------------------------------------------- launchers
def row_lse(S, scale, mask=None, mask2=None, out=None):
    rows, m = S.shape
    lse = emu.Guarded((rows,), S.dtype) if out is None else None
    target = lse.t if out is None else out
    emu.call("row_lse_chunk_cuda", emu.is_double(S.dtype), S, rows, m, float(scale), mask, mask2,
             target)
    return lse.check("row lse") if out is None else out


def col_lse(S, scale, mask=None, mask2=None, out=None):
    rows, m = S.shape
    ws = emu.Guarded((emu.query_i64("col_lse_workspace_elems", rows, m),), S.dtype)
    lse = emu.Guarded((m,), S.dtype) if out is None else None
    target = lse.t if out is None else out
    emu.call("col_lse_chunk_cuda", emu.is_double(S.dtype), S, rows, m, float(scale), mask, mask2,
             ws.t, target)
    ws.check("col lse workspace")
    return lse.check("col lse") if out is None else out


def logit_grad(S, scale, mask, g, r, h=None, c=None, mask2=None):
    """In place on S (contiguous), like the CUDA branch."""
    rows, m = S.shape
    emu.call("logit_grad_chunk_cuda", emu.is_double(S.dtype), S, rows, m, float(scale), mask,
             mask2, g, r, h, c)
    return S


def _masked_logits64(S, scale, *masks):
    """scale * S in float64 with the entries (i, mask[i]) of every mask set to -inf (entries
    outside [0, M) mask nothing)."""
    L = scale * S.double()
    for mask in masks:
        if mask is None:
            continue
        for i, j in enumerate(mask.tolist()):
            if 0 <= j < S.shape[1]:
                L[i, j] = -INF
    return L


def _logits(rows, m, lt, seed, scale_range=1.0):
    g = torch.Generator().manual_seed(seed)
    return (scale_range * (2 * torch.rand(rows, m, generator=g, dtype=torch.float64) - 1)).to(lt)


# ----------------------------------------------------------------------------- kernel tests
def _masks(kind, rows, m, S):
    """(mask, mask2) per row: "none"; "one" (mask only: in range, also on the row's largest
    logit, -1, out of range, the last column); "two" (both masks, sometimes on the same column,
    sometimes only mask2)."""
    if kind == "none":
        return None, None
    first = [int(S[i].argmax()) for i in range(rows)]
    choices = [first[0], -1, m + 5, m - 1, 0]
    mask = torch.tensor([choices[i % len(choices)] if i else first[0] for i in range(rows)],
                        dtype=torch.int64)
    if kind == "one":
        return mask, None
    choices2 = [(first[i] + 1) % m for i in range(rows)]
    mask2 = torch.tensor([choices2[i] if i % 3 else (int(mask[i]) if i % 2 else -1)
                          for i in range(rows)], dtype=torch.int64)
    return mask, mask2


@pytest.mark.parametrize("lt", [torch.float32, torch.float64], ids=["f32", "f64"])
@pytest.mark.parametrize("rows,m", [(1, 1), (2, 3), (5, 257), (3, 600)])
@pytest.mark.parametrize("mask_kind", ["none", "one", "two"])
@pytest.mark.parametrize("scale", [1.0, 14.3, 100.0])
def test_row_lse(rows, m, mask_kind, scale, lt):
    S = _logits(rows, m, lt, seed=rows * m)
    mask, mask2 = _masks(mask_kind, rows, m, S)
    got = row_lse(S, scale, mask, mask2)
    want = torch.logsumexp(_masked_logits64(S, scale, mask, mask2), dim=1)
    rtol, atol = _kernel_tol(lt)
    emu.assert_close(got, want, rtol, atol * scale, "row lse")


@pytest.mark.parametrize("lt", [torch.float32, torch.float64], ids=["f32", "f64"])
def test_row_lse_masked_and_infinite_rows(lt):
    """A row with its only column masked (by either mask) and a row of -inf logits give -inf;
    -inf entries in an otherwise finite row add nothing."""
    S = _logits(5, 1, lt, seed=1)
    got = row_lse(S, 3.0, torch.tensor([0, -1, 0, 7, -1]), torch.tensor([-1, -1, 0, -1, 0]))
    assert torch.isneginf(got[[0, 2, 4]]).all()
    emu.assert_close(got[[1, 3]], 3.0 * S[[1, 3], 0].double(), 1e-6, 0, "unmasked 1-column rows")

    S = _logits(3, 300, lt, seed=2)
    S[0] = -INF
    S[1, ::2] = -INF
    mask, mask2 = torch.tensor([-1, 1, 299]), torch.tensor([5, 3, 0])
    got = row_lse(S, 2.0, mask, mask2)
    want = torch.logsumexp(_masked_logits64(S, 2.0, mask, mask2), dim=1)
    assert torch.isneginf(got[0])
    emu.assert_close(got[1:], want[1:], *_kernel_tol(lt), "rows with -inf entries")


@pytest.mark.parametrize("lt", [torch.float32, torch.float64], ids=["f32", "f64"])
@pytest.mark.parametrize("rows,m", [(1, 1), (2, 33), (7, 300), (130, 33), (257, 40)])
@pytest.mark.parametrize("mask_kind", ["none", "two"])
@pytest.mark.parametrize("scale", [1.0, 50.0])
def test_col_lse(rows, m, mask_kind, scale, lt):
    """rows > 64: several row slices merged (col_lse_slices); a masked entry (i, mask[i]) is
    left out of its column."""
    S = _logits(rows, m, lt, seed=rows + m)
    mask, mask2 = _masks(mask_kind, rows, m, S)
    got = col_lse(S, scale, mask, mask2)
    want = torch.logsumexp(_masked_logits64(S, scale, mask, mask2), dim=0)
    finite = torch.isfinite(want)
    assert torch.equal(torch.isneginf(got), ~finite)  # (1, 1) masked: an all-masked column
    rtol, atol = _kernel_tol(lt)
    emu.assert_close(got[finite], want[finite], rtol, atol * scale, "col lse")


@pytest.mark.parametrize("lt", [torch.float32, torch.float64], ids=["f32", "f64"])
def test_col_lse_infinite_and_masked_entries(lt):
    """An all -inf or all-masked column gives -inf (also when one slice of it is all -inf and
    another not)."""
    S = _logits(150, 35, lt, seed=3)
    S[:, 0] = -INF
    S[:70, 1] = -INF          # first slice(s) of column 1 empty
    S[::2, 2] = -INF
    S[149, 34] = -INF
    mask = torch.full((150,), 3, dtype=torch.int64)  # column 3 masked in every row
    mask2 = torch.arange(150) % 40 - 2                # -2, -1: nothing; 35..37: out of range
    got = col_lse(S, 5.0, mask, mask2)
    want = torch.logsumexp(_masked_logits64(S, 5.0, mask, mask2), dim=0)
    assert torch.isneginf(got[0]) and torch.isneginf(got[3])
    keep = [j for j in range(35) if j not in (0, 3)]
    emu.assert_close(got[keep], want[keep], *_kernel_tol(lt), "col lse")


@pytest.mark.parametrize("lt", [torch.float32, torch.float64], ids=["f32", "f64"])
@pytest.mark.parametrize("rows,m", [(1, 1), (3, 257), (9, 70)])
@pytest.mark.parametrize("with_cols", [False, True], ids=["rows", "rows+cols"])
@pytest.mark.parametrize("mask_kind", ["none", "one", "two"])
def test_logit_grad(rows, m, with_cols, mask_kind, lt):
    scale = 7.0
    S = _logits(rows, m, lt, seed=rows * 3 + m)
    gen = torch.Generator().manual_seed(m)
    mask, mask2 = _masks(mask_kind, rows, m, S)
    L = _masked_logits64(S, scale, mask, mask2)
    r = torch.logsumexp(L, dim=1)
    live = torch.isfinite(r)
    g = torch.randn(rows, generator=gen, dtype=torch.float64)
    want = torch.where(live[:, None], g[:, None] * torch.exp(L - r[:, None]), 0.0)
    h = c = None
    if with_cols:
        c = torch.logsumexp(L, dim=0)
        h = torch.randn(m, generator=gen, dtype=torch.float64)
        col = torch.where(torch.isfinite(c)[None, :], h[None, :] * torch.exp(L - c[None, :]), 0.0)
        want = want + col  # masked entries: exp(-inf) = 0
        h, c = h.to(lt), c.to(lt)
    got = logit_grad(S.clone(), scale, mask, g.to(lt), r.to(lt), h, c, mask2)
    rtol, atol = _kernel_tol(lt)
    emu.assert_close(got, want, 20 * rtol, atol * max(1.0, want.abs().max().item()), "dS")


@pytest.mark.parametrize("lt", [torch.float32, torch.float64], ids=["f32", "f64"])
def test_logit_grad_dead_row(lt):
    """A row whose every entry is masked (r = -inf) has no softmax: 0, plus the column part."""
    S = _logits(2, 1, lt, seed=4)
    g = torch.tensor([1.0, 2.0], dtype=lt)
    r = torch.tensor([-INF, 0.5], dtype=lt)
    h = torch.tensor([0.25], dtype=lt)
    c = torch.tensor([0.75], dtype=lt)
    got = logit_grad(S.clone(), 2.0, torch.tensor([0, -1]), g, r, h, c)
    s = S.double()
    assert got[0, 0].item() == 0.0  # masked
    want1 = 2.0 * torch.exp(2 * s[1, 0] - 0.5) + 0.25 * torch.exp(2 * s[1, 0] - 0.75)
    emu.assert_close(got[1, 0], want1, 1e-6, 0, "dS row 1")
    got = logit_grad(S.clone(), 2.0, None, g, r, h, c)  # dead row, column part only
    emu.assert_close(got[0, 0], 0.25 * torch.exp(2 * s[0, 0] - 0.75), 1e-6, 0, "dS dead row")
    got = logit_grad(S.clone(), 2.0, None, g, r, h, c, torch.tensor([-1, 0]))  # masked by mask2
    assert got[1, 0].item() == 0.0


# ----------------------------------------------------------------------------- host mirrors
def _logits_chunk(a_chunk, bt):
    """logits_chunk: a_chunk @ b^T in the logit dtype (mm_acc_out: fp32 accumulation for half)."""
    lt = _lt(a_chunk.dtype)
    return (a_chunk.to(lt) @ bt.to(lt)).contiguous()


def _mm_matrix_times(m, x):
    """host_utils.h mm_matrix_times (m on the left): half x -> m scaled into [-1, 1] and cast."""
    if x.dtype == m.dtype:
        return m @ x
    scale = m.abs().amax().clamp_min(1e-30)
    return ((m / scale).to(x.dtype).to(m.dtype) @ x.to(m.dtype)) * scale


def _part(mask, r0, rows):
    return None if mask is None else mask[r0:r0 + rows]


def _chunked_row_lse(a, b, scale, mask, mask2, chunk_rows, col=None):
    """chunked_row_lse: row LSEs of a against all of b, one chunk of rows at a time; with `col`
    (a tensor of -inf) also the column LSEs of the same chunks, masked like the rows and merged
    over the chunks with logaddexp."""
    n, m = a.shape[0], b.shape[0]
    lse = emu.Guarded((n,), _lt(a.dtype))
    bt = b.T
    for r0 in range(0, n, chunk_rows):
        rows = min(chunk_rows, n - r0)
        S = _logits_chunk(a[r0:r0 + rows], bt)
        row_lse(S, scale, _part(mask, r0, rows), _part(mask2, r0, rows), out=lse.t[r0:r0 + rows])
        if col is not None:
            col.copy_(torch.logaddexp(col, col_lse(S, scale, _part(mask, r0, rows),
                                                   _part(mask2, r0, rows))))
    return lse.check("chunked row lse")


def info_nce_lse(q, k, scale, self_column, with_columns, chunk_rows, positive_column=None):
    q, k = q.contiguous(), k.contiguous()
    lt = _lt(q.dtype)
    if with_columns and positive_column is not None:
        cols = torch.full((k.shape[0],), -INF, dtype=lt)
        rows = _chunked_row_lse(q, k, scale, self_column, positive_column, chunk_rows, cols)
        return rows, cols
    rows = _chunked_row_lse(q, k, scale, self_column, positive_column, chunk_rows)
    cols = (_chunked_row_lse(k, q, scale, None, None, chunk_rows) if with_columns
            else torch.empty(0, dtype=lt))
    return rows, cols


def info_nce_lse_backward(grad_row, grad_col, q, k, row_lse_, col_lse_, scale, self_column,
                          with_columns, need_grad_k, chunk_rows, positive_column=None):
    ct = _lt(q.dtype)
    q, k = q.contiguous(), k.contiguous()
    g = grad_row.to(ct).contiguous()
    use_cols = with_columns and grad_col is not None
    h = grad_col.to(ct).contiguous() if use_cols else None
    r = row_lse_.to(ct).contiguous()
    c = col_lse_.to(ct).contiguous() if use_cols else None
    n, m, d = q.shape[0], k.shape[0], q.shape[1]
    grad_q = torch.empty(n, d, dtype=ct)
    grad_k = torch.zeros(m, d, dtype=ct)
    for r0 in range(0, n, chunk_rows):
        rows = min(chunk_rows, n - r0)
        q_chunk = q[r0:r0 + rows]
        S = _logits_chunk(q_chunk, k.T)
        logit_grad(S, scale, _part(self_column, r0, rows), g[r0:r0 + rows], r[r0:r0 + rows], h,
                   c, _part(positive_column, r0, rows))
        if q.dtype == ct:
            grad_q[r0:r0 + rows] = scale * (S @ k)
            grad_k += scale * (S.T @ q_chunk)
        else:
            grad_q[r0:r0 + rows] = _mm_matrix_times(S, k) * scale
            grad_k += scale * _mm_matrix_times(S.T.contiguous(), q_chunk)
    return grad_q.to(q.dtype), grad_k.to(k.dtype) if need_grad_k else None


def _tile_masks(diagonal, positive, i0, ti, j0):
    """info_nce.cpp tile_masks: the diagonal on diagonal tiles, and each row's positive column
    (i + pair_offset) mod N as a tile-local index (out of range: nothing masked in this tile)."""
    mask = diagonal[:ti].contiguous() if j0 == i0 else None
    mask2 = (positive[i0:i0 + ti] - j0).contiguous() if positive is not None else None
    return mask, mask2


def _positive_columns(n, pair_offset):
    return None if pair_offset == 0 else (torch.arange(n) + pair_offset) % n


def info_nce_self_lse(z, scale, tile, pair_offset=0):
    lt = _lt(z.dtype)
    n = z.shape[0]
    lse = torch.full((n,), -INF, dtype=lt)
    diagonal = torch.arange(min(tile, n))
    positive = _positive_columns(n, pair_offset)
    for i0 in range(0, n, tile):
        ti = min(tile, n - i0)
        zi = z[i0:i0 + ti]
        for j0 in range(i0, n, tile):
            tj = min(tile, n - j0)
            S = _logits_chunk(zi, z[j0:j0 + tj].T)
            masks = _tile_masks(diagonal, positive, i0, ti, j0)
            part = row_lse(S, scale, *masks)
            lse[i0:i0 + ti] = torch.logaddexp(lse[i0:i0 + ti], part)
            if j0 != i0:
                lse[j0:j0 + tj] = torch.logaddexp(lse[j0:j0 + tj], col_lse(S, scale, *masks))
    return lse


def info_nce_self_lse_backward(grad, z, lse, scale, tile, pair_offset=0):
    lt = _lt(z.dtype)
    g = grad.to(lt).contiguous()
    r = lse.to(lt).contiguous()
    n, d = z.shape
    out = torch.zeros(n, d, dtype=lt)
    diagonal = torch.arange(min(tile, n))
    positive = _positive_columns(n, pair_offset)

    def add_scaled_product(dst, E, x):
        dst += scale * (E @ x if x.dtype == E.dtype else _mm_matrix_times(E.contiguous(), x))

    for i0 in range(0, n, tile):
        ti = min(tile, n - i0)
        zi = z[i0:i0 + ti]
        for j0 in range(i0, n, tile):
            tj = min(tile, n - j0)
            zj = z[j0:j0 + tj]
            E = _logits_chunk(zi, zj.T)
            mask, mask2 = _tile_masks(diagonal, positive, i0, ti, j0)
            logit_grad(E, scale, mask, g[i0:i0 + ti], r[i0:i0 + ti], g[j0:j0 + tj],
                       r[j0:j0 + tj], mask2)
            add_scaled_product(out[i0:i0 + ti], E, zj)
            if j0 != i0:
                add_scaled_product(out[j0:j0 + tj], E.T, zi)
    return out.to(z.dtype)


class EmuLse(torch.autograd.Function):
    """jem_fast::info_nce_lse with the emulated CUDA kernels (jem_fast/ops/info_nce.py's
    autograd registration, mirrored)."""

    @staticmethod
    def forward(ctx, q, k, scale, self_column, with_columns, chunk_rows, positive_column=None):
        rows, cols = info_nce_lse(q.detach(), k.detach(), scale, self_column, with_columns,
                                  chunk_rows, positive_column)
        ctx.save_for_backward(q, k, rows, cols)
        ctx.args = (scale, self_column, with_columns, chunk_rows, positive_column)
        ctx.set_materialize_grads(False)
        return rows, cols

    @staticmethod
    def backward(ctx, grad_row, grad_col):
        q, k, rows, cols = ctx.saved_tensors
        scale, self_column, with_columns, chunk_rows, positive_column = ctx.args
        if grad_row is None:
            grad_row = torch.zeros_like(rows)
        gq, gk = info_nce_lse_backward(grad_row, grad_col, q, k, rows, cols, scale, self_column,
                                       with_columns and grad_col is not None,
                                       ctx.needs_input_grad[1], chunk_rows, positive_column)
        return gq, gk, None, None, None, None, None


class EmuSelfLse(torch.autograd.Function):
    @staticmethod
    def forward(ctx, z, scale, tile, pair_offset=0):
        lse = info_nce_self_lse(z.detach().contiguous(), scale, tile, pair_offset)
        ctx.save_for_backward(z, lse)
        ctx.args = (scale, tile, pair_offset)
        return lse

    @staticmethod
    def backward(ctx, grad):
        z, lse = ctx.saved_tensors
        return (info_nce_self_lse_backward(grad, z.contiguous(), lse, *ctx.args), None, None,
                None)


# ----------------------------------------------------------------------------- losses
def _embeddings(n, d, dtype, seed, count=2):
    g = torch.Generator().manual_seed(seed)
    base = torch.randn(n, d, generator=g, dtype=torch.float64)
    return [(base + 1.2 * torch.randn(n, d, generator=g, dtype=torch.float64)).to(dtype)
            for _ in range(count)]


def _value_and_grads(fn, inputs):
    xs = [x.detach().clone().requires_grad_() for x in inputs]
    loss = fn(*xs)
    return [loss.detach()] + [g.detach() for g in torch.autograd.grad(loss, xs)]


def _run(loss_fn, ref_fn, inputs, dtype, scale, rows):
    """Loss value and input gradients of loss_fn (emulated kernels) against ref_fn in float64 on
    the same rounded inputs. float64: tight tolerances. Other dtypes: the error budget of the
    project's low-precision tests (tests/conftest.py), at most twice the error of the reference
    itself run in that dtype by torch (the losses normalize in the input dtype, so torch's own
    rounding is part of both), plus a floor of a few roundings of the quantities that cancel:
    the logits (size `scale`) for the loss, a row's softmax-weighted keys (size scale / rows)
    for the gradients. (For half inputs the host casts dS to the input dtype for the GEMMs, so
    gradient errors are relative to that size, not to the gradient left after the positive
    term cancels most of it.)"""
    mine = _value_and_grads(loss_fn, inputs)
    ref64 = _value_and_grads(ref_fn, [x.double() for x in inputs])
    if dtype == torch.float64:
        budgets = [1e-10 * max(1.0, r.abs().max().item()) for r in ref64]
    else:
        ref_low = _value_and_grads(ref_fn, inputs)
        u = emu.unit_roundoff(dtype)
        floors = [4 * u * scale] + [4 * u * scale / rows] * (len(ref64) - 1)
        budgets = [2 * (lo.double() - r).abs().max().item() + f
                   for lo, r, f in zip(ref_low, ref64, floors)]
    for i, (got, want, atol) in enumerate(zip(mine, ref64, budgets)):
        emu.assert_close(got, want, 0.0, atol, "loss" if i == 0 else f"grad of input {i - 1}")


def _positive(q, k, scale):
    acc = _lt(q.dtype)
    return scale * (q.to(acc) * k.to(acc)).sum(1)


@pytest.mark.parametrize("dtype_name", DTYPES)
@pytest.mark.parametrize("form", ["lse_minus_positive", "softplus_negatives"])
@pytest.mark.parametrize("n,d,chunk", [(2, 3, 1), (7, 33, 3), (40, 20, 16)])
def test_clip_symmetric_loss(n, d, chunk, form, dtype_name):
    """CLIP (InfoNCELoss(symmetric=True)): row and column LSEs, chunked; either LSE(all) minus
    the positive (column LSEs from the transposed pass) or softplus(LSE of the negatives minus
    the positive) with positive_column (column LSEs from the same chunks, masked like the rows)."""
    dtype = emu.torch_dtype(dtype_name)
    temperature = 0.25
    scale = 1.0 / temperature

    def mine(query, key):
        q, k = F.normalize(query, dim=1), F.normalize(key, dim=1)
        positive = _positive(q, k, scale)
        if form == "lse_minus_positive":
            rows, cols = EmuLse.apply(q, k, scale, None, True, chunk)
            return 0.5 * ((rows - positive).mean() + (cols - positive).mean())
        rows, cols = EmuLse.apply(q, k, scale, None, True, chunk, torch.arange(n))
        return 0.5 * (F.softplus(rows - positive).mean() + F.softplus(cols - positive).mean())

    _run(mine, lambda a, b: info_nce_loss_reference(a, b, temperature, symmetric=True),
         _embeddings(n, d, dtype, seed=n + d), dtype, scale, n)


@pytest.mark.parametrize("dtype_name", DTYPES)
@pytest.mark.parametrize("n,d,m,chunk", [(5, 16, 9, 2), (9, 7, 300, 4)])
def test_moco_loss_with_negatives(n, d, m, chunk, dtype_name):
    """InfoNCELoss with in-batch negatives plus a queue (MoCo v2/v3): two row-LSE ops merged."""
    dtype = emu.torch_dtype(dtype_name)
    temperature = 0.2
    scale = 1.0 / temperature
    query, key = _embeddings(n, d, dtype, seed=m)
    # the reference does not normalize a queue, the loss does: give it unit rows already
    negatives = F.normalize(torch.randn(m, d, generator=torch.Generator().manual_seed(1),
                                        dtype=torch.float64), dim=1).to(dtype)

    def mine(query, key):
        q, k = F.normalize(query, dim=1), F.normalize(key, dim=1)
        neg = F.normalize(negatives, dim=1)
        positive = _positive(q, k, scale)
        lse, _ = EmuLse.apply(q, k, scale, None, False, chunk)
        lse_neg, _ = EmuLse.apply(q, neg, scale, None, False, chunk)
        return (torch.logaddexp(lse, lse_neg) - positive).mean()

    _run(mine, lambda a, b: info_nce_loss_reference(a, b, temperature,
                                                    negatives=negatives.to(a.dtype)),
         [query, key], dtype, scale, n)


@pytest.mark.parametrize("dtype_name", DTYPES)
@pytest.mark.parametrize("form", ["lse_minus_positive", "softplus_negatives"])
@pytest.mark.parametrize("n,d,chunk", [(2, 5, 3), (6, 40, 5)])
def test_ntxent_loss_with_self_column(n, d, chunk, form, dtype_name):
    """NTXentLoss's distributed formula (one rank): info_nce_lse over [out0; out1] with each
    row's own column masked through self_column (and its positive through positive_column)."""
    dtype = emu.torch_dtype(dtype_name)
    scale = 1.0 / 0.5

    def mine(out0, out1):
        out0, out1 = F.normalize(out0, dim=1), F.normalize(out1, dim=1)
        positive = _positive(out0, out1, scale).repeat(2)
        z = torch.cat([out0, out1])
        own = torch.arange(n)
        self_column = torch.cat([own, own + n])
        if form == "lse_minus_positive":
            lse, _ = EmuLse.apply(z, z, scale, self_column, False, chunk)
            return (lse - positive).mean()
        lse_neg, _ = EmuLse.apply(z, z, scale, self_column, False, chunk,
                                  torch.cat([own + n, own]))
        return F.softplus(lse_neg - positive).mean()

    _run(mine, lambda a, b: ntxent_loss_reference(a, b, 0.5), _embeddings(n, d, dtype, seed=d),
         dtype, scale, 2 * n)


@pytest.mark.parametrize("dtype_name", DTYPES)
@pytest.mark.parametrize("pair_offset", [False, True],
                         ids=["lse_minus_positive", "softplus_negatives"])
@pytest.mark.parametrize("n,d,tile", [(1, 3, 2), (5, 8, 3), (9, 33, 5)])
def test_ntxent_loss_symmetric_tiles(n, d, tile, pair_offset, dtype_name):
    """NTXentLoss (one process): info_nce_self_lse over [out0; out1] in square tiles (diagonal
    tiles masked, off-diagonal tiles giving row and column LSEs), tile sizes with tails; with
    pair_offset = n each row's positive (i + n) mod 2n is masked too, in whichever tile it falls,
    and the loss is softplus(LSE of the negatives - positive)."""
    dtype = emu.torch_dtype(dtype_name)
    scale = 1.0 / 0.3

    def mine(out0, out1):
        out0, out1 = F.normalize(out0, dim=1), F.normalize(out1, dim=1)
        positive = _positive(out0, out1, scale).repeat(2)
        z = torch.cat([out0, out1])
        if not pair_offset:
            return (EmuSelfLse.apply(z, scale, tile) - positive).mean()
        return F.softplus(EmuSelfLse.apply(z, scale, tile, n) - positive).mean()

    _run(mine, lambda a, b: ntxent_loss_reference(a, b, 0.3), _embeddings(n, d, dtype, seed=n),
         dtype, scale, 2 * n)


def test_col_lse_workspace_is_enough_for_many_slices():
    """col_lse_workspace_elems covers the largest slice count the launcher picks."""
    for rows, m in [(1, 1), (64, 1), (65, 1), (4096, 1), (300, 5000)]:
        elems = emu.query_i64("col_lse_workspace_elems", rows, m)
        assert elems >= 2 * m and elems % (2 * m) == 0
        assert elems // (2 * m) <= max(1, -(-rows // 64))


def test_empty_launches_are_no_ops():
    S = torch.zeros(0, 4)
    emu.call("row_lse_chunk_cuda", False, S, 0, 4, 1.0, None, None, torch.zeros(0))
    emu.call("logit_grad_chunk_cuda", False, S, 0, 4, 1.0, None, None, S, S, None, None)
    emu.call("col_lse_chunk_cuda", False, torch.zeros(3, 0), 3, 0, 1.0, None, None, torch.zeros(1),
             torch.zeros(0))

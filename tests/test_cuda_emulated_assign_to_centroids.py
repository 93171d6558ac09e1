"""The assign-to-centroids CUDA launchers (csrc/cluster/assign_to_centroids_cuda.cu: inverse row
norms and the fold of a tile of dot products into each row's running (max, argmax)) run on the CPU
under HIP-CPU emulation (tests/cuda_emu), against
jem_fast.reference.deepcluster.assign_to_centroids_reference (float64) and the CPU op.

The CUDA branch of the host op (assign_to_centroids.cpp) is replayed with its tile loop: the dot
products of each (row block, centroid block) tile come from torch on the CPU in the accumulation
type (float16/bfloat16 products are exact in float32, accumulated in float32 as cuBLAS does), and
the tile bounds are small here so that one call covers several row and column tiles (first / last
flags, col0 offsets, rows not a multiple of the 8 warps of a block, columns strided over 32 lanes).

Ties: the lowest centroid index wins, within a lane, across lanes and across tiles (crafted tiles
with exact ties). Zero rows / centroids have cosine 0; a row with NaN or an infinite entry gets
score NaN. Magnitudes near the float32 range limits (1e30, 1e-30) are normalized without
overflow/underflow.

Tolerance: cosines are in [-1, 1]; float32 accumulation over D <= 100 terms and two inverse norms
give errors ~1e-6 (2e-5 accepted; 1e-12 in float64). An index may differ from the reference only
where the reference's best and the chosen centroid are within that tolerance (near-ties).
"""
import pytest
import torch

from cuda_emu import emu
from jem_fast.reference.deepcluster import assign_to_centroids_reference

pytestmark = pytest.mark.cuda_emu

DTYPES = [torch.float32, torch.float64, torch.float16, torch.bfloat16]


@pytest.fixture(scope="module", autouse=True)
def _lib():
    return emu.load()


def tol(dtype):
    return 1e-12 if dtype == torch.float64 else 2e-5


# ------------------------------------------------------------------------------------------------
# Launchers
# ------------------------------------------------------------------------------------------------

def inverse_row_norms(x):
    rows, D = x.shape
    out = torch.full((rows,), float("nan"), dtype=emu.acc_dtype(x.dtype))
    emu.call("cluster_inverse_row_norms_cuda", emu.dtype_code(x.dtype), x.contiguous(), rows, D,
             out)
    return out


def argmax_tile(S, col0, inv_x, inv_c, first, last, index, score):
    rows, cols = S.shape
    emu.call("cluster_argmax_tile_cuda", int(S.dtype == torch.float64), S.contiguous(), rows,
             cols, col0, inv_x, inv_c, bool(first), bool(last), index, score)


def dots(x, c):
    """cuBLAS's tile of raw dot products (mm_acc_out): the accumulation type, float32
    accumulation for half inputs."""
    acc = emu.acc_dtype(x.dtype)
    return x.to(acc) @ c.to(acc).t()


def assign_emulated(x, c, tile_rows=None, tile_cols=None):
    """The CUDA branch of jem_fast::assign_to_centroids. Default tile bounds are the host op's
    (64 MiB of dot products, at most 8192 columns)."""
    x, c = x.contiguous(), c.contiguous()
    B, K = x.shape[0], c.shape[0]
    acc = emu.acc_dtype(x.dtype)
    inv_x = inverse_row_norms(x)
    inv_c = inverse_row_norms(c)
    elem = 8 if acc == torch.float64 else 4
    cols = tile_cols or min(K, 8192)
    rows = tile_rows or max(1, min(B, (64 << 20) // (cols * elem)))
    index = torch.full((B,), -7, dtype=torch.int64)
    score = torch.full((B,), float("nan"), dtype=acc)
    for r0 in range(0, B, rows):
        nr = min(rows, B - r0)
        for k0 in range(0, K, cols):
            nc = min(cols, K - k0)
            S = dots(x[r0:r0 + nr], c[k0:k0 + nc])
            argmax_tile(S, k0, inv_x[r0:r0 + nr], inv_c, k0 == 0, k0 + nc == K,
                        index[r0:r0 + nr], score[r0:r0 + nr])
    return index, score, inv_x, inv_c


def check_against_reference(x, c, index, score):
    dtype = x.dtype
    ref_index, ref_score = assign_to_centroids_reference(x.double(), c.double())
    t = tol(dtype)
    finite = torch.isfinite(ref_score)
    assert torch.equal(torch.isnan(score), ~finite), "NaN scores differ from the reference"
    torch.testing.assert_close(score.double()[finite], ref_score[finite], rtol=0, atol=t)
    assert ((index >= 0) & (index < c.shape[0])).all()
    # the chosen centroid's exact cosine is within tolerance of the best one (near-ties)
    norm = lambda m: torch.where(m.norm(dim=1, keepdim=True) > 0,  # noqa: E731
                                 m / m.norm(dim=1, keepdim=True).clamp_min(1e-300), 0 * m)
    cos = norm(x.double()) @ norm(c.double()).t()
    chosen = cos.gather(1, index[:, None])[:, 0]
    assert (chosen[finite] >= ref_score[finite] - 2 * t).all()
    # and it is the reference's index wherever the best is not a near-tie
    top2 = cos.topk(min(2, c.shape[0]), dim=1).values
    clear = finite & ((top2[:, 0] - top2[:, -1]) > 4 * t) if c.shape[0] > 1 else finite
    assert torch.equal(index[clear], ref_index[clear])


# ------------------------------------------------------------------------------------------------
# Tests
# ------------------------------------------------------------------------------------------------

@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("B, D", [(1, 1), (7, 33), (37, 100)])
def test_inverse_row_norms(dtype, B, D):
    g = torch.Generator().manual_seed(B * 100 + D)
    x = torch.randn(B, D, generator=g, dtype=torch.float64)
    if B > 2:
        x[1] = 0  # zero row -> 0
    x = x.to(dtype)
    got = inverse_row_norms(x)
    n = x.double().norm(dim=1)
    want = torch.where(n > 0, 1 / n.clamp_min(1e-300), torch.zeros_like(n))
    torch.testing.assert_close(got.double(), want, rtol=tol(dtype) / 2, atol=0)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_inverse_row_norms_extreme_magnitudes(dtype):
    D = 40
    x = torch.randn(4, D, generator=torch.Generator().manual_seed(1), dtype=torch.float64)
    big, small = (1e30, 1e-30) if dtype == torch.float32 else (1e300, 1e-300)
    x[0] *= big       # squares overflow without the max-scaling
    x[1] *= small     # squares underflow
    x[2, :] = 0
    x[2, 7] = small   # a single tiny entry
    x = x.to(dtype)
    got = inverse_row_norms(x)
    m = x.double().abs().amax(dim=1, keepdim=True)
    n = m[:, 0] * (x.double() / m).norm(dim=1)  # torch's norm would underflow at 1e-300
    assert torch.isfinite(got).all()
    torch.testing.assert_close(got.double()[:3], 1 / n[:3], rtol=tol(dtype), atol=0)
    # non-finite entries: NaN (an infinite entry has no direction)
    y = x.clone()
    y[0, 3] = float("inf")
    y[1, 5] = float("nan")
    got = inverse_row_norms(y)
    assert torch.isnan(got[0]) and torch.isnan(got[1]) and torch.isfinite(got[2:]).all()


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("B, K, D, tile_rows, tile_cols", [
    (37, 150, 33, 13, 70),     # 3 x 3 tiles: 13-row tiles (8 warps/block: a partial block),
                               # 70-column tiles (3 lane passes), last column tile 10 wide
    (20, 300, 16, 8, 300),     # one column tile, K > 256
    (50, 40, 100, None, None),  # the host op's own tile bounds: a single tile
    (5, 1, 3, 2, 1),           # K = 1: every tile is first and last
])
def test_assign_to_centroids(dtype, B, K, D, tile_rows, tile_cols):
    g = torch.Generator().manual_seed(B + K + D)
    c = torch.randn(K, D, generator=g, dtype=torch.float64)
    # features near some centroids (clear winners), plus random ones
    pick = torch.randint(0, K, (B,), generator=g)
    x = c[pick] + 0.3 * torch.randn(B, D, generator=g, dtype=torch.float64)
    x[B // 2:] = torch.randn(B - B // 2, D, generator=g, dtype=torch.float64)
    x, c = x.to(dtype), c.to(dtype)
    index, score, _, _ = assign_emulated(x, c, tile_rows, tile_cols)
    check_against_reference(x, c, index, score)
    cpu_index, cpu_score = torch.ops.jem_fast.assign_to_centroids(x, c)
    torch.testing.assert_close(score, cpu_score, rtol=0, atol=2 * tol(dtype))


@pytest.mark.parametrize("dtype", DTYPES)
def test_zero_rows_centroids_and_nan(dtype):
    B, K, D = 12, 45, 20
    g = torch.Generator().manual_seed(4)
    c = torch.randn(K, D, generator=g, dtype=torch.float64)
    x = torch.randn(B, D, generator=g, dtype=torch.float64)
    c[0] = 0            # a zero centroid: cosine 0 with every row
    c[33] = 0
    x[2] = 0            # a zero feature row: every cosine 0 -> index 0, score 0
    x[5, 3] = float("nan")
    x[6] = float("nan")
    x[7, 1] = float("inf")
    x, c = x.to(dtype), c.to(dtype)
    index, score, _, _ = assign_emulated(x, c, tile_rows=5, tile_cols=16)
    assert score[2] == 0 and index[2] == 0
    # NaN or infinite input: score NaN (assign_to_centroids_kernels.h); the reference's
    # _unit_rows maps a NaN norm to a zero row instead, so these rows are checked here only
    for i in (5, 6, 7):
        assert torch.isnan(score[i]), f"row {i}: score {float(score[i])} (want NaN)"
    ok = torch.ones(B, dtype=torch.bool)
    ok[[5, 6, 7]] = False
    check_against_reference(x[ok], c, index[ok], score[ok])
    cpu_index, cpu_score = torch.ops.jem_fast.assign_to_centroids(x, c)
    torch.testing.assert_close(score[ok], cpu_score[ok], rtol=0, atol=2 * tol(dtype))
    # (the CPU op gives score 0 for the all-NaN row 6 and NaN for rows 5 and 7: not compared)


@pytest.mark.parametrize("is_double", [False, True])
def test_argmax_tile_ties_and_flags(is_double):
    """Crafted tiles of dot products with exact ties: the lowest column wins within a lane
    (columns j and j + 32), across lanes (j and j + 1) and across tiles (an equal value in a
    later tile does not replace the running best); first / last flags; a row whose tile is all
    NaN gets score NaN on the last tile."""
    acc = torch.float64 if is_double else torch.float32
    rows, K = 11, 100
    inv_x = torch.full((rows,), 0.5, dtype=acc)
    inv_c = torch.full((K,), 2.0, dtype=acc)   # cos = S * 0.5 * 2 = S
    S = torch.rand(rows, K, generator=torch.Generator().manual_seed(0), dtype=torch.float64) * 0.5
    S = S.to(acc)
    S[0, [40, 72]] = 0.9          # same lane (40 % 32 == 72 % 32): 40
    S[1, [41, 42]] = 0.9          # neighbouring lanes: 41
    S[2, [71, 38]] = 0.9          # the lower index sits in a later lane: 38
    S[3, [10, 60]] = 0.9          # tile 0 (cols 0..49) and tile 1 (50..99): 10 (first tile)
    S[4, [70, 95]] = 0.9          # both in the second tile, different lanes: 70
    S[5, :] = 0.25                # all equal: 0
    S[6, :] = float("nan")        # no comparable value
    S[7, :50] = float("nan")      # NaN in the first tile only: best of the second tile
    S[7, 80] = 0.95
    S[8, 99] = 0.99               # last column of the last tile
    S[9, 49] = 0.99               # last column of the first tile
    S[10, :] = -0.5               # all negative: first column
    S[10, 63] = -0.25
    index = torch.full((rows,), -7, dtype=torch.int64)
    score = torch.full((rows,), float("nan"), dtype=acc)
    for k0 in (0, 50):
        argmax_tile(S[:, k0:k0 + 50], k0, inv_x, inv_c, k0 == 0, k0 == 50, index, score)
    want_index = [40, 41, 38, 10, 70, 0, None, 80, 99, 49, 63]
    for i, w in enumerate(want_index):
        if w is None:
            assert torch.isnan(score[i]), f"row {i}: score {score[i]} (want NaN)"
        else:
            assert index[i] == w, f"row {i}: index {int(index[i])} (want {w})"
            assert score[i] == S[i, w], f"row {i}: score {score[i]} (want {S[i, w]})"

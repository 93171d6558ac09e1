"""DeepCluster-v2: the fused nearest-centroid op (vs the float64 reference), spherical k-means
(planted clusters, empty clusters, 2 and 3 gloo processes vs one process on the concatenated
memory), and the loss (vs the float64 reference, ignore_index, gradcheck)."""
import pytest
import torch
import torch.nn.functional as F

import jem_fast
from jem_fast.cluster import cluster_memory, spherical_kmeans
from jem_fast.ops import assign_to_centroids
from jem_fast.reference import assign_to_centroids_reference, deepcluster_v2_loss_reference

from conftest import DEVICES
from distributed_utils import run_gloo

# Cosines of two centroids closer than this (float64 reference on the same inputs) may swap
# places under float32 accumulation: |error| of a D-term float32 dot product of unit vectors is
# about D * 2^-24 ~ 1e-5 at D = 200, so 1e-5 covers a float32 run with margin; low-precision
# inputs are compared after rounding them, so the same float32 bound applies to them.
FP32_TIE = 1e-5


def _data(b, k, d, dtype=torch.float64, seed=0, device="cpu"):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(b, d, generator=g, dtype=torch.float64)
    c = torch.randn(k, d, generator=g, dtype=torch.float64)
    return x.to(device=device, dtype=dtype), c.to(device=device, dtype=dtype)


def check_assignment(x, c, index, score, tie_tol):
    """index is the reference argmax, or a centroid whose reference cosine is within tie_tol of
    the maximum (a near-tie that rounding may decide either way); score is that cosine."""
    ref_index, ref_score = assign_to_centroids_reference(x.double().cpu(), c.double().cpu())
    index, score = index.cpu(), score.cpu()
    assert index.dtype == torch.int64
    assert score.dtype == (torch.float64 if x.dtype == torch.float64 else torch.float32)
    assert ((index >= 0) & (index < c.shape[0])).all()
    cos = F.normalize(x.double().cpu(), dim=1) @ F.normalize(c.double().cpu(), dim=1).T
    chosen = cos.gather(1, index[:, None])[:, 0]
    assert (ref_score - chosen <= tie_tol).all(), "picked a centroid that is not (nearly) best"
    if x.shape[1] > 1:  # at D = 1 every cosine is +-1: all ties, decided by rounding on CUDA
        assert (index == ref_index).float().mean() > 0.9  # near-ties are rare on random data
    torch.testing.assert_close(score.double(), chosen, rtol=0, atol=max(tie_tol, 1e-12))


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("b,k,d", [(1, 1, 5), (1, 7, 3), (37, 1, 16), (64, 129, 1),
                                   (100, 131, 33), (257, 3001 // 7, 128), (5, 1000, 200)])
def test_assign_matches_reference(device, b, k, d):
    for dtype, tol in ((torch.float64, 1e-12), (torch.float32, FP32_TIE)):
        x, c = _data(b, k, d, dtype, seed=b + k + d, device=device)
        index, score = assign_to_centroids(x, c)
        check_assignment(x, c, index, score, tol)
        if dtype == torch.float64 and (d > 1 or device == "cpu"):
            # No near-ties at this precision: exactly the reference. (At D = 1 the CPU kernel
            # normalizes by division, so collinear rows tie exactly and the lowest index wins.)
            assert torch.equal(index.cpu(), assign_to_centroids_reference(x.cpu(), c.cpu())[0])


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_assign_low_precision(device, dtype):
    # Compared with the float64 reference on the same rounded inputs: the op accumulates in
    # float32, so the float32 tie tolerance applies (not the input dtype's).
    x, c = _data(300, 517, 64, dtype, seed=3, device=device)
    index, score = assign_to_centroids(x, c)
    check_assignment(x, c, index, score, FP32_TIE)


@pytest.mark.parametrize("device", DEVICES)
def test_assign_non_contiguous(device):
    x, c = _data(80, 90, 48, torch.float32, seed=5, device=device)
    xt = x.T.contiguous().T  # column-major
    cs = torch.stack([c, -c], dim=2)[:, :, 0]  # strided columns (stride 2): the values of c
    assert not xt.is_contiguous() and not cs.is_contiguous()
    i1, s1 = assign_to_centroids(xt, cs)
    i2, s2 = assign_to_centroids(x, c)
    assert torch.equal(i1, i2) and torch.equal(s1, s2)
    check_assignment(x, c, i1, s1, FP32_TIE)


@pytest.mark.parametrize("device", DEVICES)
def test_assign_ties_and_zero_vectors(device):
    # Duplicate centroids: the lowest index wins. The best centroid (0.6, 0.8) appears at 2 and 5.
    c = torch.tensor([[1.0, 0.0], [0.0, 1.0], [0.6, 0.8], [-1.0, 0.0], [0.0, 1.0], [0.6, 0.8],
                      [0.0, 0.0]], device=device)
    x = torch.tensor([[3.0, 4.0], [0.0, 2.0], [0.0, 0.0], [-5.0, 0.0]], device=device)
    index, score = assign_to_centroids(x, c)
    # The zero feature has cosine 0 with every centroid: tie over all -> index 0; the zero
    # centroid (6) has cosine 0 and never beats a positive cosine.
    assert index.tolist() == [2, 1, 0, 3]
    torch.testing.assert_close(score.cpu(), torch.tensor([1.0, 1.0, 0.0, 1.0]))
    assert torch.isfinite(score).all()
    ref_index, ref_score = assign_to_centroids_reference(x.double().cpu(), c.double().cpu())
    assert ref_index.tolist() == index.tolist()
    # All centroids identical (after normalization): every row gets 0.
    same = torch.tensor([[1.0, 1.0], [2.0, 2.0], [0.5, 0.5]], device=device)
    assert assign_to_centroids(torch.randn(9, 2, device=device), same)[0].eq(0).all()


@pytest.mark.parametrize("device", DEVICES)
def test_assign_extreme_magnitudes(device):
    # Norms are computed after scaling by the largest entry: no underflow/overflow of squares.
    x, c = _data(20, 30, 16, torch.float32, seed=9, device=device)
    expect = assign_to_centroids(x, c)
    for s in (1e-30, 1e30):
        index, score = assign_to_centroids(x * s, c * s if device == "cpu" else c)
        assert torch.equal(index, expect[0])
        torch.testing.assert_close(score, expect[1])


def test_assign_no_grad_and_opcheck():
    x, c = _data(19, 23, 7, torch.float32, seed=1)
    x.requires_grad_()
    index, score = assign_to_centroids(x, c)
    assert not score.requires_grad and not index.requires_grad
    for dtype in (torch.float32, torch.float64, torch.bfloat16):
        xx, cc = _data(19, 23, 7, dtype, seed=2)
        torch.library.opcheck(torch.ops.jem_fast.assign_to_centroids.default, (xx, cc),
                              test_utils=("test_schema", "test_faketensor",
                                          "test_aot_dispatch_static", "test_aot_dispatch_dynamic"))


@pytest.mark.parametrize("device", DEVICES)
def test_assign_compile_fullgraph(device):
    def step(x, c):
        index, score = assign_to_centroids(x, c)
        return index * 2, score.sum()

    x, c = _data(33, 45, 12, torch.float32, seed=4, device=device)
    got = torch.compile(step, fullgraph=True)(x, c)
    want = step(x, c)
    assert torch.equal(got[0], want[0])
    torch.testing.assert_close(got[1], want[1])


def test_assign_bad_inputs():
    x, c = _data(4, 3, 5, torch.float32)
    cases = [
        ((x[0], c), "features must be 2-D"),
        ((x, c[0]), "centroids must be 2-D"),
        ((x, c[:, :4]), "same dimension"),
        ((x, c.double()), "same dtype"),
        ((x.int(), c.int()), "float32, float64, float16 or bfloat16"),
        ((x[:0], c), "features is empty"),
        ((x, c[:0]), "centroids is empty"),
        ((x[:, :0], c[:, :0]), "dimension must be at least 1"),
    ]
    for args, msg in cases:
        with pytest.raises(RuntimeError, match=msg):
            assign_to_centroids(*args)
    # The fake kernel (torch.compile, meta tensors) checks the same things.
    with pytest.raises(RuntimeError, match="same device"):
        assign_to_centroids(x, c.to("meta"))
    with pytest.raises(RuntimeError, match="same dimension"):
        assign_to_centroids(x.to("meta"), c[:, :4].to("meta"))
    with pytest.raises(TypeError, match="features must be a torch.Tensor"):
        assign_to_centroids(x.numpy(), c)
    if not jem_fast.build_info()["with_cuda"] and torch.cuda.is_available():
        with pytest.raises(RuntimeError, match="Rebuild"):
            assign_to_centroids(x.cuda(), c.cuda())


# ---------------------------------------------------------------------------------------------
# k-means
# ---------------------------------------------------------------------------------------------

def planted(n_per, k, d, seed=0, noise=0.05):
    g = torch.Generator().manual_seed(seed)
    centers = F.normalize(torch.randn(k, d, generator=g), dim=1)
    labels = torch.arange(k).repeat_interleave(n_per)
    x = centers[labels] + noise * torch.randn(k * n_per, d, generator=g)
    perm = torch.randperm(k * n_per, generator=g)
    return F.normalize(x[perm], dim=1), labels[perm], centers


def _same_partition(a, b):
    """a and b define the same clusters up to renaming."""
    pairs = torch.unique(torch.stack([a, b]), dim=1)
    return pairs.shape[1] == torch.unique(a).numel() == torch.unique(b).numel()


def test_kmeans_recovers_planted_clusters():
    x, labels, centers = planted(40, 6, 16, seed=1)
    # k-means++ is not used (the official code is not either): retry seeds until every planted
    # cluster got a start row; with 6 clusters most seeds do.
    found = False
    for seed in range(10):
        res = cluster_memory(x, 6, num_iters=10, seed=seed)
        a = res.local_assignments[0]
        if _same_partition(a, labels):
            found = True
            break
    assert found
    c = res.centroids[0]
    torch.testing.assert_close(c.norm(dim=1), torch.ones(6))
    # Each centroid is the normalized mean of its cluster.
    for k in range(6):
        mean = F.normalize(x[a == k].double().sum(0), dim=0).float()
        torch.testing.assert_close(c[k], mean)
    # The final assignments are the nearest centroids of the final centroids.
    assert torch.equal(a, assign_to_centroids(x, c)[0])


def test_kmeans_empty_cluster_keeps_previous_centroid():
    # Two identical rows drawn as initial centroids: the second (higher index) never wins a row
    # (ties -> lowest index), its cluster is empty and it must stay where it started.
    x = F.normalize(torch.tensor([[1.0, 0.0], [1.0, 0.0], [0.0, 1.0], [0.1, 1.0]]), dim=1)
    for seed in range(50):
        g = torch.Generator().manual_seed(seed)
        pick = torch.randperm(4, generator=g)[:3]
        if set(pick[:2].tolist()) == {0, 1}:
            break
    else:
        pytest.fail("no seed draws rows 0 and 1 first")
    c, a = spherical_kmeans(x, 3, num_iters=3, generator=torch.Generator().manual_seed(seed))
    assert (a == 1).sum() == 0  # index 1 is the duplicate: empty
    torch.testing.assert_close(c[1], x[0])
    assert torch.isfinite(c).all()
    assert a.tolist()[:2] == [0, 0]


def test_cluster_memory_heads_and_dataset_index():
    x, labels, _ = planted(10, 3, 8, seed=2)
    banks = torch.stack([x, x.flip(1)])
    index = torch.randperm(40)[:30]
    res = cluster_memory(banks, [3, 5, 4], num_iters=4, memory_index=index, dataset_size=40,
                         seed=3)
    assert res.local_assignments.shape == (3, 30)
    assert [c.shape for c in res.centroids] == [(3, 8), (5, 8), (4, 8)]
    missing = torch.ones(40, dtype=torch.bool)
    missing[index] = False
    assert (res.assignments[:, missing] == -1).all()
    assert torch.equal(res.assignments[:, index], res.local_assignments)
    with pytest.raises(ValueError, match="between 1 and the number of memory rows"):
        cluster_memory(x, 41)
    with pytest.raises(ValueError, match="together"):
        cluster_memory(x, 3, memory_index=index)


def _kmeans_rank(rank, world, rows_per_rank):
    x, _, _ = planted(12, 5, 8, seed=4, noise=0.3)
    x = x[: sum(rows_per_rank)]
    start = sum(rows_per_rank[:rank])
    local = x[start:start + rows_per_rank[rank]]
    index = torch.arange(start, start + rows_per_rank[rank])
    res = cluster_memory(torch.stack([local, local.flip(1)]), [5, 7], num_iters=5,
                         memory_index=index, dataset_size=len(x), seed=11)
    return {"local": res.local_assignments, "centroids": res.centroids,
            "assignments": res.assignments}


@pytest.mark.distributed
@pytest.mark.parametrize("rows_per_rank", [[20, 20], [25, 10, 18]])
def test_kmeans_distributed_equals_single_process(rows_per_rank):
    per_rank = run_gloo(_kmeans_rank, len(rows_per_rank), rows_per_rank)
    single = _kmeans_rank(0, 1, [sum(rows_per_rank)])
    for r, out in enumerate(per_rank):
        start = sum(rows_per_rank[:r])
        assert torch.equal(out["local"], single["local"][:, start:start + rows_per_rank[r]])
        assert torch.equal(out["assignments"], single["assignments"])
        for c, c1 in zip(out["centroids"], single["centroids"]):
            torch.testing.assert_close(c, c1, rtol=0, atol=1e-7)


# ---------------------------------------------------------------------------------------------
# Loss
# ---------------------------------------------------------------------------------------------

def _loss_inputs(n=12, ks=(7, 5), seed=0, dtype=torch.float64):
    g = torch.Generator().manual_seed(seed)
    outs = [torch.randn(n, k, generator=g, dtype=torch.float64).to(dtype).requires_grad_()
            for k in ks]
    targets = [torch.randint(0, k, (n,), generator=g) for k in ks]
    return outs, targets


def test_loss_matches_reference():
    outs, targets = _loss_inputs()
    targets[0][[1, 4]] = -1
    targets[1][[0]] = -1
    loss = jem_fast.DeepClusterV2Loss(temperature=0.2)(outs, targets)
    ref = deepcluster_v2_loss_reference(outs, targets, 0.2)
    torch.testing.assert_close(loss, ref)
    g1 = torch.autograd.grad(loss, outs)
    g2 = torch.autograd.grad(ref, outs)
    for a, b in zip(g1, g2):
        torch.testing.assert_close(a, b)
    # Stacked targets and a single head give the same numbers.
    torch.testing.assert_close(jem_fast.DeepClusterV2Loss(0.2)(outs, torch.stack(targets)), ref)
    single = jem_fast.DeepClusterV2Loss()(outs[0], targets[0])
    torch.testing.assert_close(single, F.cross_entropy(outs[0] / 0.1, targets[0], ignore_index=-1))


def test_loss_ignored_rows_do_not_count():
    outs, targets = _loss_inputs(n=10, ks=(6,))
    loss_fn = jem_fast.DeepClusterV2Loss()
    targets[0][5:] = -1
    full = loss_fn(outs, targets)
    kept = loss_fn([outs[0][:5]], [targets[0][:5]])
    torch.testing.assert_close(full, kept)
    (g,) = torch.autograd.grad(full, outs)
    assert (g[5:] == 0).all()
    # Every row ignored: 0, not NaN.
    none = loss_fn(outs, [torch.full((10,), -1)])
    assert none.item() == 0.0


def test_loss_gradcheck_and_low_precision():
    outs, targets = _loss_inputs(n=6, ks=(4, 3), seed=2)
    targets[1][2] = -1
    fn = jem_fast.DeepClusterV2Loss(temperature=0.3)
    assert torch.autograd.gradcheck(lambda a, b: fn([a, b], targets), tuple(outs))
    half = [o.detach().to(torch.bfloat16).requires_grad_() for o in outs]
    loss = fn(half, targets)
    assert loss.dtype == torch.float32
    ref = deepcluster_v2_loss_reference([h.detach().double() for h in half], targets, 0.3)
    torch.testing.assert_close(loss.double(), ref, rtol=1e-5, atol=1e-6)


def test_loss_bad_inputs():
    outs, targets = _loss_inputs()
    with pytest.raises(ValueError, match="temperature"):
        jem_fast.DeepClusterV2Loss(temperature=0.0)
    fn = jem_fast.DeepClusterV2Loss()
    with pytest.raises(ValueError, match="one target vector per head"):
        fn(outs, targets[:1])
    with pytest.raises(ValueError, match="one entry per row"):
        fn(outs, [t[:3] for t in targets])
    with pytest.raises(ValueError, match="int64"):
        fn(outs, [t.int() for t in targets])

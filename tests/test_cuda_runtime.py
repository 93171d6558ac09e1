"""CUDA-only behaviour that neither the CPU kernels nor the HIP-CPU emulation can show: launch
configurations on a real GPU, CUDA-graph capture and replay (no host sync while capturing, the
augmentation descriptors baked into the graph), torch.backends.cuda.matmul.
allow_fp16_accumulation, the largest blur kernel, and every op's result against its float64
reference. Skipped without a GPU; scripts/gpu_check.sh runs them first on a lent machine.
"""
import pytest
import torch

from jem_fast.augment import functional as AF
from jem_fast.ops.assign_to_centroids import assign_to_centroids
from jem_fast.ops.barlow_twins import barlow_twins_terms
from jem_fast.ops.info_nce import logsumexp_logits, logsumexp_self_logits
from jem_fast.ops.multiview_cross_entropy import multiview_cross_entropy
from jem_fast.ops.sinkhorn_knopp import sinkhorn_knopp
from jem_fast.ops.vicreg import vicreg_terms
from jem_fast.reference.augment import augment_reference
from jem_fast.reference.barlow_twins import barlow_twins_terms_reference
from jem_fast.reference.vicreg import vicreg_terms_reference

from conftest import CUDA, make_pair
from test_augment_kernel import TOL, make_image, make_params, to_device

pytestmark = pytest.mark.skipif(not CUDA, reason="needs a CUDA device and a CUDA build of jem_fast")


def _graph(fn):
    """Captures fn() into a CUDA graph (after one warm-up on a side stream, as torch requires)
    and returns (graph, static output)."""
    stream = torch.cuda.Stream()
    stream.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(stream):
        fn()
    torch.cuda.current_stream().wait_stream(stream)
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        out = fn()
    return graph, out


@pytest.mark.parametrize("n,d", [(64, 2048), (4096, 256)])
def test_covariance_forward_launches_at_every_shape(n, d):
    # Defect 1 of the review: the finalize kernels were launched with 1024 threads and 64-72
    # registers each ("too many resources requested for launch").
    for dtype in (torch.float32, torch.float16, torch.bfloat16, torch.float64):
        z_a, z_b = make_pair(n, d, dtype=dtype, device="cuda")
        for fn, ref in ((vicreg_terms, vicreg_terms_reference),
                        (barlow_twins_terms, barlow_twins_terms_reference)):
            got = fn(z_a, z_b)
            want = ref(z_a.detach().double().cpu(), z_b.detach().double().cpu())
            tol = 1e-3 if dtype in (torch.float16, torch.bfloat16) else 1e-4
            torch.testing.assert_close(got.double().cpu(), want, rtol=tol, atol=tol)


def test_check_finite_inside_cuda_graph_capture():
    # Defect 6: .item() during capture raised "operation not permitted when stream is
    # capturing"; now the check is skipped while capturing and the replay gives the values.
    z_a, z_b = make_pair(32, 48, dtype=torch.float32, device="cuda")
    za, zb = z_a.detach(), z_b.detach()
    logits = [torch.randn(8, 100, device="cuda") for _ in range(3)]
    targets = [torch.softmax(torch.randn(8, 100, device="cuda"), -1) for _ in range(2)]
    scores = torch.randn(16, 30, device="cuda")

    def step():
        return (vicreg_terms(za, zb, check_finite=True), barlow_twins_terms(za, zb, check_finite=True),
                multiview_cross_entropy(targets, logits, 0.1, check_finite=True),
                sinkhorn_knopp(scores, 0.05, 3, check_finite=True))

    eager = [t.clone() for t in step()]
    graph, static = _graph(step)
    za.mul_(1.5)  # new inputs in the same buffers
    graph.replay()
    torch.cuda.synchronize()
    expected = step()
    for got, want in zip(static, expected):
        torch.testing.assert_close(got, want)
    assert not torch.allclose(static[0], eager[0])


def test_augment_replays_with_descriptors_of_capture_time():
    # Defect 7: descriptors went through a pinned host buffer that a replay could read after
    # it was reused; now they are kernel parameters captured into the graph.
    sizes = [(60, 50), (45, 70), (33, 33)]
    imgs = [make_image(h, w, 900 + i).cuda() for i, (h, w) in enumerate(sizes)]
    params = to_device(make_params(sizes, 90), "cuda")

    def step():
        return AF.augment(imgs, params, 24, blur_kernel_size=9)

    expected = step().clone()
    graph, static = _graph(step)
    for _ in range(3):  # other calls in between reuse whatever host/device buffers they like
        AF.augment([make_image(80, 80, 7).cuda()] * 5, to_device(make_params([(80, 80)] * 5, 91), "cuda"), 24)
        graph.replay()
    torch.cuda.synchronize()
    assert (static - expected).abs().max().item() == 0.0


@pytest.mark.parametrize("k", [57, 63])
def test_augment_largest_blur_kernels(k):
    # Defect 4: > 101 KB of shared memory from k = 57 (crash on sm_86/89/120).
    sizes = [(120, 100), (90, 140)]
    imgs = [make_image(h, w, 950 + i) for i, (h, w) in enumerate(sizes)]
    params = make_params(sizes, 95, ops=("blur", "contrast"))
    params["blur_sigma"] = torch.tensor([2.0, 5.0])
    out = AF.augment([im.cuda() for im in imgs], to_device(params, "cuda"), 70, blur_kernel_size=k)
    ref = augment_reference(imgs, params, 70, blur_kernel_size=k)
    assert (out.double().cpu() - ref).abs().max().item() <= TOL


@pytest.fixture
def fp16_accumulation():
    flag = torch.backends.cuda.matmul.allow_fp16_accumulation
    torch.backends.cuda.matmul.allow_fp16_accumulation = True
    yield
    torch.backends.cuda.matmul.allow_fp16_accumulation = flag


def test_fp16_inputs_with_fp16_accumulation_allowed(fp16_accumulation):
    # Defect 8: ATen's fp16-in/fp32-out GEMM refuses to run under this flag.
    z_a, z_b = make_pair(64, 96, dtype=torch.float16, device="cuda")
    for fn, ref in ((vicreg_terms, vicreg_terms_reference),
                    (barlow_twins_terms, barlow_twins_terms_reference)):
        got = fn(z_a, z_b)
        got.sum().backward()
        want = ref(z_a.detach().double().cpu(), z_b.detach().double().cpu())
        torch.testing.assert_close(got.double().cpu(), want, rtol=2e-3, atol=2e-3)
    q = torch.nn.functional.normalize(torch.randn(40, 32, device="cuda"), dim=1).half()
    k = torch.nn.functional.normalize(torch.randn(50, 32, device="cuda"), dim=1).half()
    lse, _ = logsumexp_logits(q.requires_grad_(), k, 10.0)
    lse.sum().backward()
    want = torch.logsumexp(10.0 * q.detach().double() @ k.double().t(), dim=1)
    torch.testing.assert_close(lse.double(), want, rtol=2e-3, atol=2e-3)
    z = torch.nn.functional.normalize(torch.randn(30, 32, device="cuda"), dim=1).half()
    assert torch.isfinite(logsumexp_self_logits(z, 5.0)).all()
    index, score = assign_to_centroids(q.detach(), k)
    want_index = (torch.nn.functional.normalize(q.detach().double(), dim=1)
                  @ torch.nn.functional.normalize(k.double(), dim=1).t()).argmax(1)
    assert (index == want_index).float().mean() > 0.95  # fp16 ties aside


def test_backward_ops_reject_a_cpu_tensor_among_cuda_ones():
    # Review item: the public *_backward ops did not check devices, so a CPU tensor would reach
    # a CUDA kernel as a host pointer.
    z_a, z_b = make_pair(16, 24, dtype=torch.float32, device="cuda")
    terms, centered, gram, colstats = torch.ops.jem_fast.vicreg_forward(
        z_a.detach(), z_b.detach(), 1e-4, False, True)
    with pytest.raises(RuntimeError, match="grad_terms must be on the same device"):
        torch.ops.jem_fast.vicreg_backward(torch.ones(3), centered, gram, colstats, False)

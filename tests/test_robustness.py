"""Robustness of every loss and op (issue 11): double backward never silently wrong, every loss
compiles with dynamic shapes, mixed devices raise, DINO's float64 center, and clear errors for
malformed calls (self_column range, chunk_rows, DeepCluster-v2 scores, augmentation dtype,
Sinkhorn-Knopp's -inf policy, MemoryBank widths)."""
import copy
import inspect

import pytest
import torch

import jem_fast
import jem_fast.losses as losses
from jem_fast.augment import SimCLRAugment
from jem_fast.augment import functional as augment_functional
from jem_fast.nn import MemoryBank
from jem_fast.ops import (assign_to_centroids, barlow_twins_terms, centered_softmax,
                          cosine_similarity_rows, logsumexp_logits, logsumexp_self_logits,
                          multiview_cross_entropy, sinkhorn_knopp, vicreg_terms)
from jem_fast.reference import dino_loss_reference

D = 6


def _randn(*shape, seed, dtype=torch.float64, device="cpu", requires_grad=True):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(*shape, generator=g, dtype=torch.float64).to(device=device, dtype=dtype)
    return x.requires_grad_(requires_grad)


def _flat(args):
    out = []
    for a in args:
        out.extend(a if isinstance(a, (list, tuple)) else [a])
    return [t for t in out if isinstance(t, torch.Tensor) and t.requires_grad]


# One case per loss class of jem_fast.losses: (constructor, inputs(n, dtype, seed)).
def _pair(n, dtype, seed):
    return (_randn(n, D, seed=seed, dtype=dtype), _randn(n, D, seed=seed + 1, dtype=dtype))


def _swav_inputs(n, dtype, seed):
    return ([_randn(n, D, seed=seed, dtype=dtype), _randn(n, D, seed=seed + 1, dtype=dtype)],
            [_randn(n, D, seed=seed + 2, dtype=dtype)])


def _dino_inputs(n, dtype, seed):
    teacher = [_randn(n, D, seed=seed + i, dtype=dtype, requires_grad=False) for i in range(2)]
    student = [_randn(n, D, seed=seed + 10 + i, dtype=dtype) for i in range(3)]
    return (teacher, student)


def _deepcluster_inputs(n, dtype, seed):
    g = torch.Generator().manual_seed(seed)
    return (_randn(n, D, seed=seed, dtype=dtype), torch.randint(0, D, (n,), generator=g))


def _wmse_inputs(n, dtype, seed):
    return (_randn(2 * n, 2, seed=seed, dtype=dtype),)


LOSS_CASES = {
    "VICRegLoss": (lambda: losses.VICRegLoss(), _pair),
    "BarlowTwinsLoss": (lambda: losses.BarlowTwinsLoss(), _pair),
    "NTXentLoss": (lambda: losses.NTXentLoss(), _pair),
    "InfoNCELoss": (lambda: losses.InfoNCELoss(symmetric=True), _pair),
    "SwaVLoss": (lambda: losses.SwaVLoss(), _swav_inputs),
    "DINOLoss": (lambda: losses.DINOLoss(output_dim=D), _dino_inputs),
    "DeepClusterV2Loss": (lambda: losses.DeepClusterV2Loss(), _deepcluster_inputs),
    "WMSELoss": (lambda: losses.WMSELoss(embedding_dim=2, w_size=4), _wmse_inputs),
    "NegativeCosineSimilarity": (lambda: losses.NegativeCosineSimilarity(), _pair),
}

# Losses built on a fused op whose backward kernel is not differentiable.
FUSED = ("VICRegLoss", "BarlowTwinsLoss", "NTXentLoss", "InfoNCELoss", "SwaVLoss", "DINOLoss",
         "NegativeCosineSimilarity")


def test_every_loss_class_is_covered():
    classes = {name for name, obj in vars(losses).items()
               if inspect.isclass(obj) and issubclass(obj, torch.nn.Module)}
    assert classes == set(LOSS_CASES)


# ---------------------------------------------------------------- double backward

# Extra configurations that take other op paths: the memory bank (info_nce_lse), InfoNCE's
# one-directional and MoCo v2 paths, SwaV's queue, symmetric_negative_cosine.
EXTRA_FUSED = {
    "NTXentLoss-memory-bank": ("NTXentLoss", lambda: losses.NTXentLoss(memory_bank_size=(16, D)),
                               _pair),
    "InfoNCELoss-asymmetric": ("InfoNCELoss", lambda: losses.InfoNCELoss(), _pair),
    "InfoNCELoss-negatives": ("InfoNCELoss",
                              lambda: (lambda q, k: losses.InfoNCELoss(in_batch_negatives=False)(
                                  q, k, _randn(5, D, seed=1, dtype=q.dtype))), _pair),
    "SwaVLoss-queue": ("SwaVLoss",
                       lambda: (lambda h, lo: losses.SwaVLoss()(
                           h, lo, [_randn(4, D, seed=i, dtype=h[0].dtype, requires_grad=False)
                                   for i in range(len(h))])),
                       _swav_inputs),
    "symmetric_negative_cosine": ("NegativeCosineSimilarity",
                                  lambda: (lambda a, b: losses.symmetric_negative_cosine(
                                      [(a, b), (b, a)])), _pair),
}


def _fused_cases():
    cases = [(name, name) + LOSS_CASES[name] for name in FUSED]
    cases += [(key,) + value for key, value in EXTRA_FUSED.items()]
    return cases


@pytest.mark.parametrize("case,loss_name,make,inputs", _fused_cases(),
                         ids=[c[0] for c in _fused_cases()])
@pytest.mark.parametrize("how", ["autograd.grad", "backward"])
def test_double_backward_raises_naming_the_loss(case, loss_name, make, inputs, how):
    """create_graph=True gives the exact first-order gradient; differentiating through it raises
    an error naming the loss (it used to drop the second-order term silently, or raise ATen's
    'mm(): functions with out=...')."""
    torch.manual_seed(0)
    loss_fn = make()
    args = inputs(8, torch.float64, 3)
    leaves = _flat(args)
    state = copy.deepcopy(loss_fn) if isinstance(loss_fn, torch.nn.Module) else loss_fn
    plain = torch.autograd.grad(state(*args).sum(), leaves)
    grads = torch.autograd.grad(loss_fn(*args).sum(), leaves, create_graph=True)
    for g, p in zip(grads, plain):
        torch.testing.assert_close(g, p, rtol=0, atol=0)
        assert g.requires_grad  # connected to the inputs, so a double backward cannot miss it
    penalty = sum((g * g).sum() for g in grads)
    with pytest.raises(RuntimeError, match=f"{loss_name}.*double backward is not supported"):
        if how == "backward":
            penalty.backward()
        else:
            torch.autograd.grad(penalty, leaves)


def test_double_backward_through_parameters_raises():
    """A gradient penalty on the parameters of a projector in front of the loss (the usual way
    a user meets double backward) raises too, instead of a penalty without this loss's term."""
    torch.manual_seed(0)
    proj = torch.nn.Linear(5, D).double()
    x_a, x_b = torch.randn(8, 5, dtype=torch.float64), torch.randn(8, 5, dtype=torch.float64)
    loss = losses.VICRegLoss()(proj(x_a), proj(x_b))
    grads = torch.autograd.grad(loss, list(proj.parameters()), create_graph=True)
    penalty = sum((g * g).sum() for g in grads)
    with pytest.raises(RuntimeError, match="VICRegLoss.*double backward"):
        penalty.backward()


def test_create_graph_without_double_backward_is_fine():
    """create_graph=True alone (no backward through the gradient) works and accumulates the
    ordinary gradient."""
    z_a, z_b = _pair(8, torch.float64, 5)
    losses.BarlowTwinsLoss()(z_a, z_b).backward(create_graph=True)
    ref_a = z_a.grad.detach().clone()
    z_a.grad = None
    losses.BarlowTwinsLoss()(z_a, z_b).backward()
    torch.testing.assert_close(ref_a, z_a.grad, rtol=0, atol=0)


@pytest.mark.parametrize("name", ["DeepClusterV2Loss", "WMSELoss"])
def test_double_backward_supported_by_plain_pytorch_losses(name):
    make, inputs = LOSS_CASES[name]
    args = inputs(4, torch.float64, 7)
    leaves = _flat(args)

    def fn(*xs):
        it = iter(xs)
        rebuilt = [[next(it) if t.requires_grad else t for t in a] if isinstance(a, list)
                   else (next(it) if isinstance(a, torch.Tensor) and a.requires_grad else a)
                   for a in args]
        torch.manual_seed(0)
        return make()(*rebuilt)

    assert torch.autograd.gradgradcheck(fn, leaves)


# ---------------------------------------------------------------- torch.compile, dynamic shapes

COMPILE_CASES = dict((k, v) for k, v in LOSS_CASES.items())
COMPILE_CASES.update({
    "InfoNCELoss-learnable": (lambda: losses.InfoNCELoss(learnable_temperature=True), _pair),
    "DINOLoss-epoch": (lambda: _DINOWithEpoch(), _dino_inputs),
    "DINOLoss-sinkhorn": (lambda: losses.DINOLoss(output_dim=D,
                                                  teacher_centering="sinkhorn_knopp"),
                          _dino_inputs),
})


class _DINOWithEpoch(torch.nn.Module):
    """DINOLoss called with `epoch` (a read of the warmup schedule) inside the compiled region."""

    def __init__(self):
        super().__init__()
        self.loss = losses.DINOLoss(output_dim=D, warmup_teacher_temp=0.02)

    def forward(self, teacher, student):
        return self.loss(teacher, student, epoch=3)


@pytest.mark.parametrize("name", sorted(COMPILE_CASES))
def test_compile_dynamic_shapes_matches_eager(name):
    """torch.compile(fullgraph=True, dynamic=True) over three batch sizes: value and gradients
    equal eager (SwaVLoss and DINOLoss failed on `math.isfinite` of a SymFloat, DINOLoss with
    `epoch` on a data-dependent read of its schedule). WMSELoss compiles with graph breaks by
    design (its NaN/Cholesky check reads a value on the host)."""
    make, inputs = COMPILE_CASES[name]
    torch._dynamo.reset()
    eager_fn = make()
    compiled_module = copy.deepcopy(eager_fn)  # stateful losses (center, bank) in lockstep
    fullgraph = not name.startswith("WMSELoss")
    compiled = torch.compile(compiled_module, fullgraph=fullgraph, dynamic=True)
    for step, n in enumerate((4, 8, 12)):
        args = inputs(n, torch.float32, 100 + step)
        args_c = [[t.detach().clone().requires_grad_(t.requires_grad) for t in a]
                  if isinstance(a, list) else
                  (a.detach().clone().requires_grad_(a.requires_grad) if a.is_floating_point()
                   else a.clone()) for a in args]
        torch.manual_seed(step)
        want = eager_fn(*args)
        torch.manual_seed(step)
        got = compiled(*args_c)
        torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-6)
        leaves, leaves_c = _flat(args), _flat(args_c)
        for a, b in zip(torch.autograd.grad(want.sum(), leaves),
                        torch.autograd.grad(got.sum(), leaves_c)):
            torch.testing.assert_close(b, a, rtol=1e-4, atol=1e-6)


# ---------------------------------------------------------------- mixed devices

def _cpu(*shape):
    return torch.randn(*shape)


def _meta(*shape):
    return torch.randn(*shape, device="meta")


MIXED = {
    "VICRegLoss": (lambda: losses.VICRegLoss()(_cpu(8, D), _meta(8, D)), ("z_a", "z_b")),
    "BarlowTwinsLoss": (lambda: losses.BarlowTwinsLoss()(_meta(8, D), _cpu(8, D)),
                        ("z_a", "z_b")),
    "NTXentLoss": (lambda: losses.NTXentLoss()(_cpu(8, D), _meta(8, D)), ("out0", "out1")),
    "InfoNCELoss": (lambda: losses.InfoNCELoss()(_cpu(8, D), _meta(8, D)), ("query", "key")),
    "InfoNCELoss-negatives": (lambda: losses.InfoNCELoss(in_batch_negatives=False)(
        _cpu(8, D), _cpu(8, D), _meta(5, D)), ("query", "negatives")),
    "SwaVLoss": (lambda: losses.SwaVLoss()([_cpu(8, D), _meta(8, D)], [_cpu(8, D)]),
                 ("high_resolution_outputs[0]", "high_resolution_outputs[1]")),
    "SwaVLoss-low": (lambda: losses.SwaVLoss()([_cpu(8, D)], [_meta(8, D)]),
                     ("high_resolution_outputs[0]", "low_resolution_outputs[0]")),
    "SwaVLoss-queue": (lambda: losses.SwaVLoss()([_cpu(8, D)], [_cpu(8, D)], [_meta(4, D)]),
                       ("high_resolution_outputs[0]", "queue_outputs[0]")),
    "DINOLoss": (lambda: losses.DINOLoss(output_dim=D)([_cpu(8, D)], [_cpu(8, D), _meta(8, D)]),
                 ("teacher_out[0]", "student_out[1]")),
    "DINOLoss-teacher": (lambda: losses.DINOLoss(output_dim=D)([_meta(8, D)],
                                                               [_cpu(8, D), _cpu(8, D)]),
                         ("teacher_out[0]", "student_out[0]")),
    "DeepClusterV2Loss": (lambda: losses.DeepClusterV2Loss()(
        _cpu(8, D), torch.zeros(8, dtype=torch.long, device="meta")), ("outputs[0]", "targets[0]")),
    "NegativeCosineSimilarity": (lambda: losses.NegativeCosineSimilarity()(_cpu(8, D),
                                                                           _meta(8, D)),
                                 ("x0", "x1")),
    "vicreg_terms": (lambda: vicreg_terms(_cpu(8, D), _meta(8, D)), ("z_a", "z_b")),
    "barlow_twins_terms": (lambda: barlow_twins_terms(_cpu(8, D), _meta(8, D)), ("z_a", "z_b")),
    "logsumexp_logits": (lambda: logsumexp_logits(_cpu(8, D), _meta(5, D), 2.0), ("q", "k")),
    "logsumexp_logits-self_column": (lambda: logsumexp_logits(
        _cpu(8, D), _cpu(5, D), 2.0, torch.zeros(8, dtype=torch.long, device="meta")),
        ("q", "self_column")),
    "multiview_cross_entropy": (lambda: multiview_cross_entropy(
        [_cpu(8, D)], [_cpu(8, D), _meta(8, D)], 0.1), ("logits[0]", "logits[1]")),
    "multiview_cross_entropy-targets": (lambda: multiview_cross_entropy(
        [_meta(8, D)], [_cpu(8, D), _cpu(8, D)], 0.1), ("logits[0]", "targets[0]")),
    "centered_softmax": (lambda: centered_softmax(_cpu(8, D), _meta(1, D), 0.1),
                         ("teacher output", "center")),
    "assign_to_centroids": (lambda: assign_to_centroids(_cpu(8, D), _meta(3, D)),
                            ("features", "centroids")),
    "cosine_similarity_rows": (lambda: cosine_similarity_rows(_cpu(8, D), _meta(8, D)),
                               ("x0", "x1")),
    # The dispatcher ops themselves (their fake kernels run for a meta argument).
    "op:vicreg_forward": (lambda: torch.ops.jem_fast.vicreg_forward(
        _cpu(8, D), _meta(8, D), 1e-4, False, True), ("z_a", "z_b")),
    "op:barlow_twins_forward": (lambda: torch.ops.jem_fast.barlow_twins_forward(
        _meta(8, D), _cpu(8, D), False, True), ("z_a", "z_b")),
    "op:info_nce_lse": (lambda: torch.ops.jem_fast.info_nce_lse(
        _cpu(8, D), _meta(5, D), 1.0, None, False, 0), ("query", "key")),
    "op:multiview_cross_entropy": (lambda: torch.ops.jem_fast.multiview_cross_entropy(
        [_cpu(8, D)], [_cpu(8, D), _meta(8, D)], 10.0, True), ("logits[0]", "logits[1]")),
    "op:centered_softmax": (lambda: torch.ops.jem_fast.centered_softmax(
        _cpu(8, D), _meta(D), 10.0), ("x", "center")),
    "op:cosine_similarity_rows": (lambda: torch.ops.jem_fast.cosine_similarity_rows(
        _meta(8, D), _cpu(8, D), 1e-8), ("x0", "x1")),
    "op:sinkhorn_plan": (lambda: torch.ops.jem_fast.sinkhorn_plan(
        _cpu(8, D), 20.0, _cpu(8), _meta(D), 8.0), ("scores", "col_potential")),
}


@pytest.mark.parametrize("name", sorted(MIXED))
def test_mixed_devices_raise_naming_arguments_and_devices(name):
    """One input on the CPU and one on the meta device used to dispatch to the fake kernel and
    return uninitialized memory as the loss (different on every call)."""
    fn, (arg_a, arg_b) = MIXED[name]
    with pytest.raises((RuntimeError, ValueError), match="same device") as info:
        fn()
    message = str(info.value)
    for arg in (arg_a, arg_b):
        assert arg in message
    assert "cpu" in message and "meta" in message


def test_augment_views_op_mixed_devices_raise():
    images = torch.zeros(2, 3, 8, 8, dtype=torch.uint8)
    crop = torch.tensor([[0, 0, 8, 8]] * 2, device="meta")
    flags = torch.zeros(2, dtype=torch.bool)
    ones, zeros = torch.ones(2), torch.zeros(2)
    order = torch.arange(4).expand(2, 4)
    with pytest.raises(RuntimeError, match="images\\[0\\] and crop must be on the same device"):
        torch.ops.jem_fast.augment_views(
            [images], crop, flags, flags, ones, ones, ones, zeros, order, flags, zeros, flags,
            4, 4, False, "bilinear", 3, "zeros", 0.5, [0.0] * 3, [1.0] * 3, torch.float32, False)


# ---------------------------------------------------------------- DINO float64 center

def test_dino_float64_teacher_keeps_a_float64_center():
    """A float64 teacher promotes the center to float64 (as lightly's `center = center * m +
    batch_center * (1 - m)` does), so from the second step the loss still equals the float64
    reference to ~1e-12 (a float32 center gave ~1e-9)."""
    K, B = 7, 5
    loss_fn = losses.DINOLoss(output_dim=K, center_momentum=0.7)  # float32 buffer, not .double()
    center = torch.zeros(K, dtype=torch.float64)
    for step in range(4):
        teacher = [_randn(B, K, seed=10 * step + i, requires_grad=False) * 3 for i in range(2)]
        student = [_randn(B, K, seed=10 * step + 5 + i) for i in range(3)]
        loss = loss_fn(teacher, student, teacher_temp=0.04)
        ref, center = dino_loss_reference(teacher, student, center, 0.04, 0.1, 0.7)
        assert loss.dtype == torch.float64
        torch.testing.assert_close(loss, ref, rtol=1e-12, atol=1e-12)
        assert loss_fn.center.dtype == torch.float64
        torch.testing.assert_close(loss_fn.center.reshape(-1), center, rtol=1e-14, atol=1e-15)
    # A float32 teacher afterwards keeps the float64 center (lightly's promotion is permanent).
    loss_fn([torch.randn(B, K)] * 2, [torch.randn(B, K)] * 3)
    assert loss_fn.center.dtype == torch.float64


def test_dino_float32_teacher_keeps_a_float32_center():
    loss_fn = losses.DINOLoss(output_dim=4)
    for dtype in (torch.float32, torch.bfloat16, torch.float16):
        loss_fn([torch.randn(3, 4, dtype=dtype)] * 2, [torch.randn(3, 4, dtype=dtype)] * 2)
        assert loss_fn.center.dtype == torch.float32


# ---------------------------------------------------------------- logsumexp_logits arguments

@pytest.mark.parametrize("bad", [7, 5, -2, 2 ** 40])
def test_self_column_out_of_range_raises(bad):
    """Only -1 means "no masked column"; other out-of-range entries used to mask nothing."""
    q, k = torch.randn(4, 3), torch.randn(5, 3)
    self_column = torch.tensor([0, -1, bad, 4])
    with pytest.raises(RuntimeError, match=r"self_column.*-1.*\[0, 4\]"):
        logsumexp_logits(q, k, 2.0, self_column)


def test_self_column_in_range_is_accepted():
    q, k = torch.randn(4, 3, dtype=torch.float64), torch.randn(5, 3, dtype=torch.float64)
    self_column = torch.tensor([0, -1, 2, 4])
    got, _ = logsumexp_logits(q, k, 2.0, self_column)
    logits = 2.0 * q @ k.T
    mask = torch.zeros_like(logits, dtype=torch.bool)
    for i, j in enumerate(self_column.tolist()):
        if j >= 0:
            mask[i, j] = True
    torch.testing.assert_close(got, torch.logsumexp(logits.masked_fill(mask, -torch.inf), 1))


def test_negative_chunk_rows_raises():
    q, k = torch.randn(4, 3), torch.randn(5, 3)
    with pytest.raises(RuntimeError, match="chunk_rows must be >= 0"):
        logsumexp_logits(q, k, 2.0, chunk_rows=-3)
    with pytest.raises(RuntimeError, match="tile_rows must be >= 0"):
        logsumexp_self_logits(q, 2.0, tile_rows=-3)
    for cls in (losses.NTXentLoss, losses.InfoNCELoss):
        with pytest.raises(ValueError, match="chunk_rows"):
            cls(chunk_rows=-3)


def test_info_nce_op_checks_in_cpp():
    """The same checks in the C++ op, for direct calls and compiled graphs (where the wrapper's
    host check is skipped). Needs the extension built from this tree."""
    q, k = torch.randn(4, 3), torch.randn(5, 3)
    op = torch.ops.jem_fast
    with pytest.raises(RuntimeError, match=r"self_column.*\[0, 4\]"):
        op.info_nce_lse(q, k, 1.0, torch.tensor([0, 1, 7, -1]), False, 0)
    with pytest.raises(RuntimeError, match=r"self_column.*\[0, 4\]"):
        op.info_nce_lse(q, k, 1.0, torch.tensor([0, 1, -2, -1]), False, 0)
    with pytest.raises(RuntimeError, match="chunk_rows must be >= 0"):
        op.info_nce_lse(q, k, 1.0, None, False, -3)
    with pytest.raises(RuntimeError, match="tile_rows must be >= 0"):
        op.info_nce_self_lse(q, 1.0, -3)
    compiled = torch.compile(lambda a, b, m: logsumexp_logits(a, b, 1.0, m)[0], fullgraph=True)
    with pytest.raises(RuntimeError, match="self_column"):
        compiled(q, k, torch.tensor([0, 1, 2 ** 40, -1]))


# ---------------------------------------------------------------- DeepClusterV2Loss

@pytest.mark.parametrize("dtype", [torch.int64, torch.int32, torch.uint8, torch.bool])
def test_deepcluster_rejects_non_floating_scores(dtype):
    scores = torch.ones(4, 3, dtype=dtype)
    with pytest.raises(TypeError, match=r"outputs\[0\] must be floating-point"):
        losses.DeepClusterV2Loss()(scores, torch.zeros(4, dtype=torch.long))


@pytest.mark.parametrize("shape", [(0, 3), (4, 0)])
def test_deepcluster_rejects_an_empty_batch(shape):
    with pytest.raises(ValueError, match=r"outputs\[0\] must be non-empty"):
        losses.DeepClusterV2Loss()(torch.randn(*shape), torch.zeros(shape[0], dtype=torch.long))


# ---------------------------------------------------------------- augmentation input dtype

@pytest.mark.parametrize("as_list", [False, True])
def test_augment_presets_say_uint8_only_with_a_conversion_hint(as_list):
    """The presets' check used to accept float images ("uint8 (or floating in [0, 1])") that
    the kernel then rejected without a hint."""
    images = torch.rand(2, 3, 16, 16)
    if as_list:
        images = list(images)
    with pytest.raises(TypeError, match="must be uint8") as info:
        SimCLRAugment(size=8)(images, seed=0)
    assert "(images * 255).round().to(torch.uint8)" in str(info.value)
    assert "floating in [0, 1]" not in str(info.value)
    # The converted batch is accepted.
    converted = ((images if not as_list else torch.stack(images)) * 255).round().to(torch.uint8)
    views = SimCLRAugment(size=8)(converted, seed=0)
    assert views[0].shape == (2, 3, 8, 8)


def test_augment_functional_float_images_hint():
    params = {"crop": torch.tensor([[0, 0, 8, 8]])}
    with pytest.raises(TypeError, match=r"uint8.*\(images \* 255\)\.round\(\)"):
        augment_functional.augment(torch.rand(1, 3, 8, 8), params, 4)


# ---------------------------------------------------------------- Sinkhorn-Knopp and -inf

def test_sinkhorn_single_minus_inf_is_an_impossible_assignment():
    """Policy (README, docstring): a -inf score is allowed and gets 0 mass; NaN, +inf and a row
    or column of -inf raise."""
    scores = torch.randn(6, 4, dtype=torch.float64)
    scores[1, 2] = -torch.inf
    q = sinkhorn_knopp(scores, 0.05, 3)
    assert torch.isfinite(q).all() and q[1, 2] == 0
    torch.testing.assert_close(q.sum(1), torch.ones(6, dtype=torch.float64))
    for bad in (torch.inf, torch.nan):
        s = scores.clone()
        s[3, 0] = bad
        with pytest.raises(RuntimeError, match=r"NaN or \+Inf"):
            sinkhorn_knopp(s, 0.05, 3)
    s = scores.clone()
    s[2] = -torch.inf
    with pytest.raises(RuntimeError, match="every score at -inf"):
        sinkhorn_knopp(s, 0.05, 3)
    s = scores.clone()
    s[:, 3] = -torch.inf
    with pytest.raises(RuntimeError, match="every score at -inf"):
        sinkhorn_knopp(s, 0.05, 3)


def test_sinkhorn_minus_inf_policy_is_documented():
    doc = sinkhorn_knopp.__doc__
    assert "-inf score is an impossible assignment" in doc and "+inf" in doc


# ---------------------------------------------------------------- MemoryBank

def test_memory_bank_rejects_keys_of_the_wrong_width():
    bank = MemoryBank(size=(16, 8))
    with pytest.raises(ValueError, match=r"keys must have the memory bank's width 8.*\(4, 5\)"):
        bank.enqueue(torch.randn(4, 5))
    with pytest.raises(ValueError, match="keys must be 2-D"):
        bank.enqueue(torch.randn(8))
    lazy = MemoryBank(size=16)
    lazy.enqueue(torch.randn(4, 8))
    with pytest.raises(ValueError, match="width 8"):
        lazy.enqueue(torch.randn(4, 6))
    # NTXentLoss with a memory bank of another width names the bank's width too.
    with pytest.raises(ValueError, match="dim 8"):
        jem_fast.NTXentLoss(memory_bank_size=(16, 8))(torch.randn(4, 5), torch.randn(4, 5))

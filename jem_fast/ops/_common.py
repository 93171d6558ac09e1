"""Small helpers shared by the op wrappers."""
from __future__ import annotations

import torch

ROUTES = ("auto", "gram", "covariance")


def acc_dtype(dtype: torch.dtype) -> torch.dtype:
    """Accumulation dtype of the kernels: float64 stays float64, everything else float32."""
    return torch.float64 if dtype == torch.float64 else torch.float32


def compute_dtype(dtype: torch.dtype, device: torch.device) -> torch.dtype:
    """dtype of the centered/normalized copies the kernels keep (mirrors host_utils.h)."""
    if device.type == "cuda":
        return dtype
    return torch.float32 if dtype in (torch.float16, torch.bfloat16) else dtype


def check_route(route: str) -> None:
    if route not in ROUTES:
        raise ValueError(f"route must be one of {ROUTES}, got {route!r}")


def shape_2d(z: torch.Tensor, name: str):
    """(rows, cols) of a 2-D tensor argument, or a TypeError/ValueError naming it."""
    if not isinstance(z, torch.Tensor):
        raise TypeError(f"{name} must be a torch.Tensor, got {type(z).__name__}")
    if z.dim() != 2:
        raise ValueError(f"{name} must be 2-D (batch, dim), got shape {tuple(z.shape)}")
    return z.shape[0], z.shape[1]


def check_devices(op: str, named, error=RuntimeError) -> None:
    """Raise `error` (RuntimeError in the ops, like their C++ checks; ValueError in the losses,
    like their other argument checks) naming two arguments on different devices.

    named: (name, tensor or None) pairs; the first tensor is the reference. Checked in the op
    wrappers before dispatch and in the fake kernels: with one input on the meta device the
    dispatcher runs the fake kernel, which would otherwise return uninitialized memory shaped
    like the other input."""
    ref_name, ref = None, None
    for name, t in named:
        if t is None:
            continue
        if not isinstance(t, torch.Tensor):
            raise TypeError(f"{op}: {name} must be a torch.Tensor, got {type(t).__name__}")
        if ref is None:
            ref_name, ref = name, t
        elif t.device != ref.device:
            raise error(f"{op}: {ref_name} and {name} must be on the same device, got "
                        f"{ref_name} on {ref.device} and {name} on {t.device}")


FLOATING_DTYPES = "float32, float64, float16 or bfloat16"


def promoted_dtype(op: str, named) -> torch.dtype:
    """torch.promote_types over the floating tensors in `named` ((name, tensor or None) pairs):
    the dtype a loss computes in when its inputs have different floating dtypes, as torch's own
    operators (and lightly's losses built on them) would. float16 with bfloat16 gives float32.

    Raises TypeError naming the first argument that is not a tensor or not floating-point (an
    integer embedding is almost always a mistake, e.g. class labels passed instead of
    projections)."""
    dtype = None
    for name, t in named:
        if t is None:
            continue
        if not isinstance(t, torch.Tensor):
            raise TypeError(f"{op}: {name} must be a torch.Tensor, got {type(t).__name__}")
        if not t.is_floating_point():
            raise TypeError(f"{op}: {name} must be a floating-point tensor ({FLOATING_DTYPES}), "
                            f"got {t.dtype}; pass the embeddings (e.g. `{name}.float()` if they "
                            f"are stored as integers)")
        dtype = t.dtype if dtype is None else torch.promote_types(dtype, t.dtype)
    return dtype


def promote_floating(op: str, named):
    """The tensors of `named` cast to promoted_dtype(op, named) (None stays None).

    The casts are autograd ops, so every input still receives its gradient in its own dtype; a
    tensor that already has the promoted dtype is returned as is (no copy)."""
    dtype = promoted_dtype(op, named)
    return [None if t is None else t.to(dtype) for _, t in named]


def named_list(name: str, tensors):
    """[(f'{name}[i]', t_i)] for check_devices."""
    return [(f"{name}[{i}]", t) for i, t in enumerate(tensors)]


def crop_list(op: str, name: str, crops, accept_stacked: bool, allow_empty: bool = False):
    """`crops` (a list or tuple of per-crop tensors) as a list, with an error that says what to
    pass when it is something else.

    accept_stacked: a 3-D (num_crops, batch, dim) tensor is taken as its num_crops crops (what
    lightly's SwaVLoss does by iterating over it); otherwise it raises with the fix. A 2-D tensor
    always raises: it is either one crop or several concatenated along the batch, and only the
    caller knows which."""
    if isinstance(crops, torch.Tensor):
        shape = tuple(crops.shape)
        if crops.dim() == 3 and accept_stacked:
            return list(crops.unbind(0))
        if crops.dim() == 3:
            raise TypeError(
                f"{op}: {name} must be a list with one (batch, dim) tensor per crop, got one "
                f"stacked tensor of shape {shape}; pass `list({name}.unbind(0))` (or the list "
                f"you stacked)")
        if crops.dim() == 2:
            raise TypeError(
                f"{op}: {name} must be a list with one (batch, dim) tensor per crop, got one "
                f"tensor of shape {shape}; if it holds the crops concatenated along the batch "
                f"(the official DINO/SwAV code's layout), pass `list({name}.chunk(num_crops))`, "
                f"and for a single crop pass `[{name}]`")
        raise TypeError(f"{op}: {name} must be a list with one (batch, dim) tensor per crop, got "
                        f"a tensor of shape {shape}")
    if not isinstance(crops, (list, tuple)):
        raise TypeError(f"{op}: {name} must be a list with one (batch, dim) tensor per crop, got "
                        f"{type(crops).__name__}")
    crops = list(crops)
    if not crops and not allow_empty:
        raise ValueError(f"{op}: {name} must be a non-empty list with one (batch, dim) tensor "
                         f"per crop, got an empty list")
    return crops


DOUBLE_BACKWARD_HINT = (
    "its gradient comes from a fused backward kernel that is not itself differentiable. A "
    "backward with create_graph=True still gives the correct first-order gradient; this error "
    "is raised only when something is differentiated through that gradient (a gradient penalty, "
    "Hessian-vector products, MAML-style meta-learning). For those, compute the loss with the "
    "plain-PyTorch formulas of jem_fast.reference (or lightly's loss), which support double "
    "backward.")


class _NoDoubleBackward(torch.autograd.Function):
    """Identity on first-order gradients, whose own backward raises.

    Applied by the registered backward formulas when they run with grad mode on (a backward with
    create_graph=True). Its inputs include the op's differentiable inputs (or a saved output that
    depends on them), so the returned gradients are connected to the graph of those inputs: any
    double backward through them, by .backward() or by torch.autograd.grad(..., inputs), reaches
    this node and raises, instead of silently dropping the second-order term."""

    @staticmethod
    def forward(ctx, message, num_grads, *tensors):
        ctx.message = message
        return tuple(tensors[:num_grads])

    @staticmethod
    def backward(ctx, *grads):
        raise RuntimeError(ctx.message)


def guard_double_backward(what: str, grads, anchors):
    """`grads` (tensors or None, as returned by a backward formula) unchanged in a plain backward.
    With grad mode on (backward with create_graph=True) they are passed through _NoDoubleBackward,
    connected to `anchors` (the saved inputs or outputs that depend on the op's inputs), so that a
    double backward raises an error naming `what` (the loss and op)."""
    if not torch.is_grad_enabled():
        return grads
    anchors = [a for a in anchors if isinstance(a, torch.Tensor) and a.requires_grad]
    present = [i for i, g in enumerate(grads) if g is not None]
    if not anchors or not present:
        return grads
    message = f"{what}: double backward is not supported: {DOUBLE_BACKWARD_HINT}"
    wrapped = _NoDoubleBackward.apply(message, len(present), *(grads[i] for i in present),
                                      *anchors)
    out = list(grads)
    for i, g in zip(present, wrapped):
        out[i] = g
    return tuple(out)

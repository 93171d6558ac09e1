"""EMA (momentum) teacher utilities: BYOL, MoCo, DINO, I-JEPA.

    teacher <- momentum * teacher + (1 - momentum) * student    ==  teacher.lerp_(student, 1 - m)

update_ema does it for every parameter in one multi-tensor call per (device, dtype) group
(torch._foreach_lerp_: on CUDA a handful of fused launches instead of one or two per tensor). The
lerp form rounds a little differently from lightly's `mul_(m); add_(p, alpha=1 - m)` (one rounding
step instead of two; both are within an ulp or two of the exact value) and is exact at the
ends: momentum 1 leaves the teacher untouched, momentum 0 copies the student.
"""
from __future__ import annotations

import math
import warnings
from collections import OrderedDict
from typing import Iterable, List, Optional, Tuple, Union

import torch

TensorsOrModule = Union[torch.nn.Module, Iterable[torch.Tensor]]

BUFFER_MODES = ("none", "copy", "ema")


def _named_tensors(obj: TensorsOrModule, name: str, what: str) -> List[Tuple[str, torch.Tensor]]:
    if isinstance(obj, torch.nn.Module):
        items = obj.named_parameters() if what == "parameters" else obj.named_buffers()
        return list(items)
    if isinstance(obj, torch.Tensor):
        raise TypeError(f"{name} must be an nn.Module or an iterable of tensors, got a single "
                        "tensor (wrap it in a list)")
    try:
        tensors = list(obj)
    except TypeError:
        raise TypeError(f"{name} must be an nn.Module or an iterable of tensors, got "
                        f"{type(obj).__name__}") from None
    for k, t in enumerate(tensors):
        if not isinstance(t, torch.Tensor):
            raise TypeError(f"{name}[{k}] must be a torch.Tensor, got {type(t).__name__}")
    return [(f"[{k}]", t) for k, t in enumerate(tensors)]


def _pair_up(teacher, student, what):
    t_items = _named_tensors(teacher, "teacher", what)
    s_items = _named_tensors(student, "student", what)
    if len(t_items) != len(s_items):
        raise ValueError(f"teacher and student must have the same number of {what}, got "
                         f"{len(t_items)} and {len(s_items)}")
    pairs = []
    for (t_name, t), (s_name, s) in zip(t_items, s_items):
        if t.shape != s.shape:
            raise ValueError(f"teacher {what[:-1]} {t_name} and student {what[:-1]} {s_name} must "
                             f"have the same shape, got {tuple(t.shape)} and {tuple(s.shape)}")
        pairs.append((t_name, t, s))
    return pairs


def _check_momentum(momentum) -> float:
    m = float(momentum)
    if not 0.0 <= m <= 1.0:  # also rejects NaN
        raise ValueError(f"momentum must be in [0, 1], got {momentum}")
    return m


def _lerp_groups(pairs, weight: float) -> None:
    """teacher.lerp_(student, weight) for every pair, one foreach call per (device, dtype)."""
    groups: "OrderedDict[tuple, Tuple[list, list]]" = OrderedDict()
    for _, t, s in pairs:
        if s.device != t.device or s.dtype != t.dtype:
            s = s.to(device=t.device, dtype=t.dtype)  # a copy; same-typed models avoid it
        dst, src = groups.setdefault((t.device, t.dtype), ([], []))
        dst.append(t)
        src.append(s)
    for dst, src in groups.values():
        if weight == 1.0:
            torch._foreach_copy_(dst, src)
        else:
            torch._foreach_lerp_(dst, src, weight)


@torch.no_grad()
def update_ema(teacher: TensorsOrModule, student: TensorsOrModule, momentum: float,
               buffers: str = "none") -> None:
    """In place: teacher = momentum * teacher + (1 - momentum) * student, for every parameter.

    Args:
        teacher, student: nn.Modules (their parameters, in registration order; the two must
            have the same structure) or iterables of tensors, paired by position. Tensors of
            different dtype or device than their teacher tensor are converted (a copy).
            Argument order as in EMA libraries (target first); note lightly's
            update_momentum(model, model_ema, m) has the student first.
        momentum: in [0, 1]; 1 is a no-op for parameters (no work at all), 0 copies the
            student.
        buffers (modules only): what happens to registered buffers, e.g. BatchNorm running
            stats. "none" (default): left alone, as lightly's update_momentum, solo-learn, DINO
            and the official BYOL do (the teacher's BN layers keep the statistics of its own
            forward passes). "copy": copied from the student. "ema": floating-point buffers
            averaged like parameters; integer buffers (num_batches_tracked) copied.

    Returns:
        None; the teacher is updated in place, without gradient.
    """
    m = _check_momentum(momentum)
    if buffers not in BUFFER_MODES:
        raise ValueError(f"buffers must be one of {BUFFER_MODES}, got {buffers!r}")
    modules = isinstance(teacher, torch.nn.Module) and isinstance(student, torch.nn.Module)
    if buffers != "none" and not modules:
        raise ValueError(f"buffers={buffers!r} needs nn.Module teacher and student (an iterable "
                         "of tensors has no buffers)")
    params = _pair_up(teacher, student, "parameters")
    for name, t, _ in params:
        if not t.is_floating_point():
            raise TypeError(f"teacher parameter {name} must be floating-point, got {t.dtype}")
    if m != 1.0:
        _lerp_groups(params, 1.0 - m)
    if buffers == "none":
        return
    buf = _pair_up(teacher, student, "buffers")
    floating = [p for p in buf if p[1].is_floating_point()]
    exact = [p for p in buf if not p[1].is_floating_point()]
    if buffers == "copy" or m == 0.0:
        floating, exact = [], buf
    if floating and m != 1.0:
        _lerp_groups(floating, 1.0 - m)
    for _, t, s in exact:
        t.copy_(s)


def cosine_momentum_schedule(step: int, max_steps: int, start: float = 0.996, end: float = 1.0,
                             period: Optional[int] = None) -> float:
    """BYOL's momentum schedule, lightly.utils.scheduler.cosine_schedule's semantics exactly:

        end - (end - start) * (cos(pi * step / (max_steps - 1)) + 1) / 2

    so step 0 gives `start` and step max_steps - 1 (and every later step) gives `end`; max_steps
    <= 1 gives `end`. A step beyond max_steps warns (RuntimeWarning), as lightly does.

    Args:
        step: the current step (>= 0).
        max_steps: the total number of steps (>= 0).
        start, end: the momentum at step 0 and at the last step.
        period: optional; a full cosine cycle every `period` steps,
            end - (end - start) * (cos(2 pi step / period) + 1) / 2, no end clamp.

    Returns:
        the momentum, a Python float. Negative step or max_steps, or period <= 0, raise
        ValueError.
    """
    if step < 0:
        raise ValueError(f"Current step number {step} can't be negative.")
    if max_steps < 0:
        raise ValueError(f"Total step number {max_steps} can't be negative.")
    if period is None and step > max_steps:
        warnings.warn(f"Current step number {step} exceeds max_steps {max_steps}.",
                      category=RuntimeWarning)
    if period is not None and period <= 0:
        raise ValueError(f"Period {period} must be >= 1")
    if period is not None:
        return float(end - (end - start) * (math.cos(2 * math.pi * step / period) + 1) / 2)
    if max_steps <= 1 or step >= max_steps - 1:
        return float(end)
    return float(end - (end - start) * (math.cos(math.pi * step / (max_steps - 1)) + 1) / 2)


class MomentumSchedule:
    """A cosine momentum schedule bound to its settings: `schedule(step)` ->
    cosine_momentum_schedule(step, max_steps, start, end). Typical BYOL step:

        m = schedule(global_step)
        update_ema(teacher, student, m)

    Args:
        max_steps: the total number of steps (>= 0).
        start, end: the momentum at step 0 and at the last step, in [0, 1].
    """

    def __init__(self, max_steps: int, start: float = 0.996, end: float = 1.0):
        for name, value in (("start", start), ("end", end)):
            if not 0.0 <= float(value) <= 1.0:
                raise ValueError(f"{name} momentum must be in [0, 1], got {value}")
        if max_steps < 0:
            raise ValueError(f"max_steps must be >= 0, got {max_steps}")
        self.max_steps, self.start, self.end = int(max_steps), float(start), float(end)

    def __call__(self, step: int) -> float:
        return cosine_momentum_schedule(step, self.max_steps, self.start, self.end)

    def __repr__(self) -> str:
        return (f"MomentumSchedule(max_steps={self.max_steps}, start={self.start}, "
                f"end={self.end})")

"""DINOLoss: drop-in for lightly.loss.DINOLoss on the fused teacher softmax and multi-view
cross-entropy ops."""
from __future__ import annotations

import operator
from typing import List, Optional

import torch
import torch.distributed as dist

from ..distributed import is_distributed
from ..ops._common import check_devices, crop_list, named_list, promote_floating
from ..ops.multiview_cross_entropy import centered_softmax, multiview_cross_entropy
from ..ops.sinkhorn_knopp import sinkhorn_knopp

CENTERINGS = ("center", "sinkhorn_knopp")


def _epoch_index(epoch) -> int:
    """`epoch` as a non-negative int (Python, NumPy or 0-d torch integer), or an error that says
    what to pass: the warmup schedule has one temperature per whole epoch."""
    if isinstance(epoch, bool) or isinstance(epoch, float) or (
            isinstance(epoch, torch.Tensor) and (epoch.is_floating_point() or epoch.numel() != 1)):
        raise TypeError(
            f"DINOLoss: epoch must be the integer index of the current epoch (0, 1, 2, ...), got "
            f"{epoch!r}; pass `epoch=int(epoch)` (the warmup schedule has one teacher "
            f"temperature per whole epoch), or pass teacher_temp=... for a per-step schedule")
    try:
        index = operator.index(epoch)
    except TypeError:
        raise TypeError(f"DINOLoss: epoch must be the integer index of the current epoch "
                        f"(0, 1, 2, ...), got {type(epoch).__name__} {epoch!r}; pass "
                        f"`epoch=int(epoch)`") from None
    if index < 0:
        raise ValueError(f"DINOLoss: epoch must be >= 0 (the 0-based epoch index), got {index}")
    return index


class DINOLoss(torch.nn.Module):
    """DINO loss (Caron et al., 2021) with lightly's arguments, defaults and forward signature.

    p_t = softmax((teacher_t - center) / T_teacher), no gradient; the loss is the mean over
    every (teacher crop t, student crop v) pair with v != t (the teacher crops are the first
    student crops) of -mean_b sum_k p_t log_softmax(student_v / T_student); then
    center <- m center + (1 - m) mean of the teacher rows (all-reduced over ranks when
    torch.distributed is initialized, as in lightly and the official code).

    Fused: the teacher softmax (centering + sharpening) is one pass per teacher crop; all pairs
    cost one log-sum-exp per student crop and one dot per pair, reading each student crop once
    forward and once backward and writing its gradient once. No (V, B, K) stack or log-softmax.

    Teacher temperature: `teacher_temp` passed to forward wins; otherwise, with `epoch`, lightly's
    linear warmup linspace(warmup_teacher_temp, teacher_temp, warmup_teacher_temp_epochs)[epoch]
    then constant; otherwise teacher_temp.

    jem_fast extras: `teacher_centering="sinkhorn_knopp"` replaces the centered softmax by
    DINOv2's Sinkhorn-Knopp centering of the concatenated teacher crops (epsilon = teacher
    temperature, `sinkhorn_iterations`, normalized over all ranks when distributed; the center
    buffer is then not used or updated); `check_finite` raises instead of returning NaN.

    Args:
        output_dim: K, the width of the teacher and student outputs (and of the center).
        warmup_teacher_temp, teacher_temp, warmup_teacher_temp_epochs: the teacher
            temperature rises linearly from warmup_teacher_temp to teacher_temp over the first
            warmup_teacher_temp_epochs epochs (pass `epoch` to forward), then stays.
        student_temp: temperature of the student's log-softmax.
        center_momentum: m of the center's moving average.
        center_mode: only "mean" (lightly's only mode).
        teacher_centering: "center" (DINO) or "sinkhorn_knopp" (DINOv2).
        sinkhorn_iterations: iterations of the Sinkhorn-Knopp centering.
        check_finite: raise instead of returning a NaN loss.

    Differences from lightly, on purpose: teacher outputs are treated as constants (the official
    code detaches them; lightly would backpropagate into a teacher that requires grad); the loss
    is float32 (float64 when any input is float64) whatever the input dtypes; crops of
    different floating dtypes are promoted to one (torch.promote_types, e.g. float16 with
    float32 computes in float32), also where lightly raises (a float64 student with a float32
    teacher). The center is updated from the teacher outputs in their own dtype, as lightly.
    """

    def __init__(self, output_dim: int = 65536, warmup_teacher_temp: float = 0.04,
                 teacher_temp: float = 0.04, warmup_teacher_temp_epochs: int = 30,
                 student_temp: float = 0.1, center_momentum: float = 0.9,
                 center_mode: str = "mean", teacher_centering: str = "center",
                 sinkhorn_iterations: int = 3, check_finite: bool = True):
        super().__init__()
        if center_mode != "mean":
            raise ValueError(f"Unknown mode '{center_mode}'. Valid modes are ['mean'].")
        if teacher_centering not in CENTERINGS:
            raise ValueError(f"teacher_centering must be one of {CENTERINGS}, got "
                             f"{teacher_centering!r}")
        if output_dim < 1:
            raise ValueError(f"output_dim must be >= 1, got {output_dim}")
        for name, value in (("teacher_temp", teacher_temp), ("student_temp", student_temp),
                            ("warmup_teacher_temp", warmup_teacher_temp)):
            if not value > 0:
                raise ValueError(f"{name} must be > 0, got {value}")
        if not 0.0 <= center_momentum <= 1.0:
            raise ValueError(f"center_momentum must be in [0, 1], got {center_momentum}")
        self.output_dim = output_dim
        self.teacher_temp = teacher_temp
        self.student_temp = student_temp
        self.center_momentum = center_momentum
        self.warmup_teacher_temp_epochs = warmup_teacher_temp_epochs
        self.teacher_temp_schedule = torch.linspace(start=warmup_teacher_temp, end=teacher_temp,
                                                    steps=warmup_teacher_temp_epochs)
        # The same values as Python floats: indexing the tensor with `epoch` would be a
        # data-dependent read under torch.compile(dynamic=True).
        self._teacher_temps = [float(t) for t in self.teacher_temp_schedule]
        self.teacher_centering = teacher_centering
        self.sinkhorn_iterations = sinkhorn_iterations
        self.check_finite = check_finite
        self.register_buffer("center", torch.zeros(1, 1, output_dim))

    def teacher_temperature(self, teacher_temp: Optional[float] = None,
                            epoch: Optional[int] = None) -> float:
        """The teacher temperature forward uses.

        Args:
            teacher_temp: an explicit temperature; wins when given.
            epoch: the integer epoch index (0-based) of the warmup schedule.

        Returns:
            teacher_temp if given; else the warmup schedule's value at `epoch` during the first
            warmup_teacher_temp_epochs epochs; else the constructor's teacher_temp.
        """
        if teacher_temp is not None:
            return float(teacher_temp)
        if epoch is not None:
            epoch = _epoch_index(epoch)
            if epoch < self.warmup_teacher_temp_epochs:
                return self._teacher_temps[epoch]
        return float(self.teacher_temp)

    def _check_views(self, teacher_out, student_out) -> None:
        for name, views in (("teacher_out", teacher_out), ("student_out", student_out)):
            for i, x in enumerate(views):
                if not isinstance(x, torch.Tensor):
                    raise TypeError(f"DINOLoss: {name}[{i}] must be a torch.Tensor, got "
                                    f"{type(x).__name__}")
                if x.dim() != 2 or x.shape[-1] != self.output_dim:
                    raise ValueError(f"{name}[{i}] must have shape (batch, {self.output_dim}), "
                                     f"got {tuple(x.shape)}")
        check_devices("DINOLoss", named_list("teacher_out", teacher_out)
                      + named_list("student_out", student_out), error=ValueError)
        if len(teacher_out) * len(student_out) - min(len(teacher_out), len(student_out)) == 0:
            raise ValueError(
                "DINOLoss requires at least two views in total (the diagonal matching the same "
                f"view index is excluded), but got {len(teacher_out)} teacher view(s) and "
                f"{len(student_out)} student view(s)")

    def teacher_probabilities(self, teacher_out: List[torch.Tensor],
                              temperature: float) -> List[torch.Tensor]:
        """The teacher's target distributions, no gradient.

        Args:
            teacher_out: list of (B, output_dim) teacher outputs, one per global crop.
            temperature: the teacher temperature.

        Returns:
            list of (B, output_dim) probability rows, float32 (float64 for float64 inputs):
            softmax((t - center) / temperature), or DINOv2's Sinkhorn-Knopp codes of the
            concatenated crops with teacher_centering="sinkhorn_knopp".
        """
        if self.teacher_centering == "sinkhorn_knopp":
            stacked = torch.cat([t.detach() for t in teacher_out])
            q = sinkhorn_knopp(stacked, temperature, self.sinkhorn_iterations,
                               gather_distributed=True, check_finite=self.check_finite)
            return list(q.split(teacher_out[0].shape[0]))
        return [centered_softmax(t, self.center, temperature) for t in teacher_out]

    def forward(self, teacher_out: List[torch.Tensor], student_out: List[torch.Tensor],
                teacher_temp: Optional[float] = None, epoch: Optional[int] = None) -> torch.Tensor:
        """DINO loss of the teacher's and the student's crops.

        Args:
            teacher_out: list of (B, output_dim) teacher outputs, one tensor per global crop
                (not stacked, not concatenated: `list(t.chunk(num_crops))` splits the official
                code's concatenated layout).
            student_out: list of (B, output_dim) student outputs, one per crop, the global crops
                first (student crop i is skipped for teacher crop i).
            teacher_temp: optional teacher temperature for this call (wins over the schedule).
            epoch: optional integer epoch index (0-based) for the warmup schedule.
            Different floating dtypes across crops are promoted to one (torch.promote_types).

        Returns:
            0-d tensor, the mean cross-entropy over the (teacher, student) crop pairs; float32
            (float64 when any input is float64). Updates the center (centering="center").
        """
        teacher_out = crop_list("DINOLoss", "teacher_out", teacher_out, accept_stacked=False)
        student_out = crop_list("DINOLoss", "student_out", student_out, accept_stacked=False)
        self._check_views(teacher_out, student_out)
        temperature = self.teacher_temperature(teacher_temp, epoch)
        promoted = promote_floating("DINOLoss", named_list("teacher_out", teacher_out)
                                    + named_list("student_out", student_out))
        teachers, students = promoted[:len(teacher_out)], promoted[len(teacher_out):]
        probs = self.teacher_probabilities(teachers, temperature)
        loss = multiview_cross_entropy(probs, students, self.student_temp, self.check_finite)
        if self.teacher_centering == "center":
            self.update_center(teacher_out)
        return loss

    @torch.no_grad()
    def update_center(self, teacher_out: List[torch.Tensor]) -> None:
        """center <- m center + (1 - m) mean over every teacher row (all ranks).

        As in lightly (`center = center * m + batch_center * (1 - m)` promotes), a float64
        teacher turns the center buffer into float64 for good; other dtypes keep it float32.

        Args:
            teacher_out: list of (B, output_dim) teacher outputs, one per global crop.
        """
        rows = sum(t.shape[0] for t in teacher_out)
        acc = torch.float32  # float64 (any teacher crop) stays float64
        for t in teacher_out:
            acc = torch.promote_types(acc, t.dtype)
        batch_center = sum(t.detach().sum(dim=0, dtype=acc) for t in teacher_out) / rows
        if is_distributed():
            dist.all_reduce(batch_center)
            batch_center /= dist.get_world_size()
        promoted = torch.promote_types(self.center.dtype, batch_center.dtype)
        if promoted != self.center.dtype:
            self.center = self.center.to(promoted)
        self.center.mul_(self.center_momentum).add_(
            batch_center.reshape(self.center.shape).to(self.center.dtype),
            alpha=1 - self.center_momentum)

"""Errors a newcomer meets read like advice: each names the argument and says what to pass."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from jem_fast import losses

K = 12


def _crops(count, batch=6, dim=K, seed=0):
    g = torch.Generator().manual_seed(seed)
    return [torch.randn(batch, dim, generator=g, requires_grad=True) for _ in range(count)]


# ---------------------------------------------------------------- DINO: lists of crops

@pytest.mark.parametrize("which", ["teacher_out", "student_out"])
def test_dino_stacked_tensor_says_to_pass_a_list(which):
    teacher, student = _crops(2), _crops(4, seed=1)
    args = {"teacher_out": teacher, "student_out": student}
    args[which] = torch.stack(args[which])                      # (V, N, K)
    with pytest.raises(TypeError) as info:
        losses.DINOLoss(output_dim=K)(args["teacher_out"], args["student_out"])
    message = str(info.value)
    assert which in message and "list with one (batch, dim) tensor per crop" in message
    assert f"list({which}.unbind(0))" in message
    assert str(tuple(args[which].shape)) in message


@pytest.mark.parametrize("which", ["teacher_out", "student_out"])
def test_dino_concatenated_tensor_says_how_to_split_it(which):
    """The official DINO code's heads return all crops concatenated along the batch."""
    teacher, student = _crops(2), _crops(4, seed=1)
    args = {"teacher_out": teacher, "student_out": student}
    args[which] = torch.cat(args[which])                        # (V * N, K)
    with pytest.raises(TypeError) as info:
        losses.DINOLoss(output_dim=K)(args["teacher_out"], args["student_out"])
    message = str(info.value)
    assert which in message and f"list({which}.chunk(num_crops))" in message
    assert f"[{which}]" in message  # the single-crop case


def test_dino_split_as_advised_works():
    teacher, student = _crops(2), _crops(4, seed=1)
    loss_fn = losses.DINOLoss(output_dim=K)
    expected = loss_fn(teacher, student)
    again = losses.DINOLoss(output_dim=K)(list(torch.cat(teacher).chunk(2)),
                                          list(torch.stack(student).unbind(0)))
    torch.testing.assert_close(again, expected)


@pytest.mark.parametrize("epoch", [1.5, 3.0, torch.tensor(2.0), True])
def test_dino_float_epoch_says_to_pass_the_integer_epoch(epoch):
    """lightly indexes its schedule with `epoch` (IndexError for any float during warmup)."""
    loss_fn = losses.DINOLoss(output_dim=K, warmup_teacher_temp=0.04, teacher_temp=0.07,
                              warmup_teacher_temp_epochs=10)
    with pytest.raises(TypeError) as info:
        loss_fn(_crops(2), _crops(4, seed=1), epoch=epoch)
    message = str(info.value)
    assert "epoch must be the integer index of the current epoch" in message
    assert "epoch=int(epoch)" in message and "teacher_temp" in message


def test_dino_negative_epoch_raises():
    with pytest.raises(ValueError, match=r"epoch must be >= 0"):
        losses.DINOLoss(output_dim=K)(_crops(2), _crops(4, seed=1), epoch=-1)


@pytest.mark.parametrize("epoch", [3, np.int64(3), torch.tensor(3)])
def test_dino_integer_epochs_of_any_kind_select_the_warmup_temperature(epoch):
    loss_fn = losses.DINOLoss(output_dim=K, warmup_teacher_temp=0.04, teacher_temp=0.07,
                              warmup_teacher_temp_epochs=10)
    expected = 0.04 + 3 * (0.07 - 0.04) / 9
    assert loss_fn.teacher_temperature(epoch=epoch) == pytest.approx(expected)
    assert loss_fn.teacher_temperature(epoch=10) == pytest.approx(0.07)
    loss_fn(_crops(2), _crops(4, seed=1), epoch=epoch)


# ---------------------------------------------------------------- SwAV: lists of crops

@pytest.mark.parametrize("which", ["high_resolution_outputs", "low_resolution_outputs"])
def test_swav_concatenated_tensor_says_how_to_split_it(which):
    args = {"high_resolution_outputs": _crops(2), "low_resolution_outputs": _crops(3, seed=1)}
    args[which] = torch.cat(args[which])
    with pytest.raises(TypeError) as info:
        losses.SwaVLoss()(args["high_resolution_outputs"], args["low_resolution_outputs"])
    message = str(info.value)
    assert which in message and f"list({which}.chunk(num_crops))" in message
    assert f"[{which}]" in message


def test_swav_stacked_tensor_is_taken_as_its_crops_as_lightly_does():
    """lightly's SwaVLoss iterates over a stacked (V, N, K) tensor: one crop per row of dim 0.
    Accepting it keeps the drop-in promise; it equals the list form."""
    high, low = _crops(2), _crops(3, seed=1)
    expected = losses.SwaVLoss()(high, low)
    got = losses.SwaVLoss()(torch.stack(high), torch.stack(low))
    torch.testing.assert_close(got, expected)
    lightly_loss = pytest.importorskip("lightly.loss")
    theirs = lightly_loss.SwaVLoss()(torch.stack(high), torch.stack(low))
    torch.testing.assert_close(got, theirs, rtol=1e-5, atol=1e-6)


def test_swav_queue_outputs_must_be_a_list_too():
    with pytest.raises(TypeError, match=r"queue_outputs must be a list .*chunk\(num_crops\)"):
        losses.SwaVLoss()(_crops(2), _crops(2, seed=1), queue_outputs=torch.randn(12, K))


def test_non_tensor_crops_name_the_argument():
    with pytest.raises(TypeError, match=r"DINOLoss: student_out must be a list .* got dict"):
        losses.DINOLoss(output_dim=K)(_crops(2), {"a": 1})
    with pytest.raises(TypeError, match=r"DINOLoss: student_out\[1\] must be a torch.Tensor"):
        losses.DINOLoss(output_dim=K)(_crops(2), [_crops(1)[0], [1.0] * K])


# ---------------------------------------------------------------- integer embeddings

def test_integer_embeddings_say_what_to_pass():
    with pytest.raises(TypeError) as info:
        losses.VICRegLoss()(torch.randn(8, 4), torch.ones(8, 4, dtype=torch.int64))
    message = str(info.value)
    assert "z_b must be a floating-point tensor" in message and "z_b.float()" in message


# ---------------------------------------------------------------- augmentation input range

def test_augment_float_images_in_0_255_say_what_to_pass():
    """0-255 data stored as floats (e.g. a PIL image through np.asarray(...).astype(float))."""
    from jem_fast.augment import SimCLRAugment
    images = torch.rand(2, 3, 16, 16) * 255
    with pytest.raises((TypeError, ValueError)) as info:
        SimCLRAugment(size=8)(images, seed=0)
    message = str(info.value)
    assert "images" in message and "uint8" in message and "[0, 1]" in message
    # The advice must not be to multiply by 255 again (data that is already 0-255).
    assert "(images * 255)" not in message

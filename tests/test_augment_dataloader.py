"""The DataLoader side of the augmentation (jem_fast.augment.data): the per-image transform on
PIL / numpy / tensor inputs, per-worker and per-epoch seeding through a real DataLoader with
workers, one thread per worker, the multi-crop collate functions (shapes, labels, JPEG decode),
per-image equal to batched, and bad inputs named in the error."""
import dataclasses
import numpy as np
import pytest
import torch
from torch.utils.data import DataLoader, Dataset

import jem_fast.augment as A
from jem_fast.augment.data import (ImageListCollate, MultiViewCollate, ViewTransform,
                                   decode_jpegs, to_uint8_image)

PIL = pytest.importorskip("PIL.Image")


def small_preset(**kw):
    # 16-pixel views keep the kernel cheap; SimCLR's 10% blur kernel is 1 tap at this size
    return A.SimCLRAugment(size=16, **kw)


def small_dino():
    return A.DINOAugment(global_size=24, local_size=12, num_local_crops=3, blur_kernel_size=5)


def hwc_image(h=40, w=52, seed=0):
    g = np.random.default_rng(seed)
    return g.integers(0, 256, size=(h, w, 3), dtype=np.uint8)


def same(a, b):
    return len(a) == len(b) and all(torch.equal(x, y) for x, y in zip(a, b))


# ------------------------------------------------------------------------------ inputs

def test_transform_accepts_pil_numpy_and_tensors():
    arr = hwc_image()
    t = ViewTransform(small_preset(), seed=5)
    outs = []
    for image in (PIL.fromarray(arr), arr, torch.from_numpy(arr),
                  torch.from_numpy(arr).permute(2, 0, 1), torch.from_numpy(arr).permute(2, 0, 1)
                  .contiguous(), torch.from_numpy(arr).float() / 255, arr.astype(np.float64) / 255,
                  np.ascontiguousarray(arr[:, ::-1])[:, ::-1]):
        t.set_epoch(0)  # restart the stream: the same parameters for every form
        outs.append(t(image))
    assert [tuple(v.shape) for v in outs[0]] == [(3, 16, 16)] * 2
    assert outs[0][0].dtype == torch.float32
    for o in outs[1:]:
        assert same(o, outs[0])
    # grayscale PIL images are converted to RGB, as lightly's transforms do
    t.set_epoch(0)
    gray = t(PIL.fromarray(arr[..., 0]))
    t.set_epoch(0)
    assert same(gray, t(np.repeat(arr[..., :1], 3, axis=2)))


def test_transform_by_preset_name_and_options():
    t = ViewTransform("dino", seed=1, global_size=32, local_size=16, num_local_crops=2,
                      blur_kernel_size=5)
    views = t(hwc_image())
    assert [tuple(v.shape) for v in views] == [(3, 32, 32)] * 2 + [(3, 16, 16)] * 2
    assert "DINOAugment" in repr(t)


def test_consecutive_calls_and_epochs_differ_same_seed_repeats():
    arr = hwc_image()
    t = ViewTransform(small_preset(), seed=2)
    first, second = t(arr), t(arr)
    assert not torch.equal(first[0], second[0])
    assert not torch.equal(first[0], first[1])  # the two views of one image differ
    t.set_epoch(1)
    epoch1 = t(arr)
    assert not torch.equal(epoch1[0], first[0])
    t.set_epoch(0)
    assert same(t(arr), first) and same(t(arr), second)
    other = ViewTransform(small_preset(), seed=3)
    assert not torch.equal(other(arr)[0], first[0])


@pytest.mark.parametrize("image,exc,match", [
    (torch.zeros(3, 8, 8, dtype=torch.int32), TypeError, "image must be uint8"),
    (torch.rand(3, 8, 8) * 255, A.ImageValueRangeError, r"image holds float values .* float "
                                                         r"images must be in \[0, 1\]"),
    (np.full((8, 8, 3), 200.0), A.ImageValueRangeError, "divide by 255"),
    (torch.zeros(8, 8, dtype=torch.uint8), ValueError, "image must be one 3-channel image"),
    (torch.zeros(1, 3, 8, 8, dtype=torch.uint8), ValueError, "image must be one"),
    (torch.zeros(4, 8, 8, dtype=torch.uint8), ValueError, "image must have 3 channels"),
    (np.zeros((8, 8), dtype=np.uint8), ValueError, r"image: a numpy image must be \(H, W, 3\)"),
    (np.zeros((8, 8, 3), dtype=np.int16), TypeError, "image: a numpy image must be uint8"),
    ([[0, 1], [2, 3]], TypeError, "image must be a PIL image"),
])
def test_bad_images_name_the_argument(image, exc, match):
    with pytest.raises(exc, match=match):
        ViewTransform(small_preset())(image)


def test_float_images_in_0_255_read_like_advice():
    with pytest.raises(A.ImageValueRangeError) as err:
        ViewTransform(small_preset())(torch.rand(3, 8, 8) * 255)
    msg = str(err.value)
    assert "float images must be in [0, 1]" in msg and "uint8 for 0-255 data" in msg
    assert "divide by 255" in msg
    assert isinstance(err.value, ValueError) and isinstance(err.value, TypeError)


def test_bad_constructor_and_epoch_arguments():
    with pytest.raises(ValueError, match="augment"):
        ViewTransform("simclrr")
    with pytest.raises(TypeError, match="augment"):
        ViewTransform(3)
    with pytest.raises(TypeError, match="preset keyword"):
        ViewTransform(small_preset(), size=32)
    with pytest.raises(ValueError, match="seed"):
        ViewTransform("simclr", seed=-1)
    with pytest.raises(ValueError, match="epoch"):
        ViewTransform("simclr").set_epoch(-1)
    with pytest.raises(ValueError, match="epoch"):
        ViewTransform("simclr").set_epoch(1.5)
    with pytest.raises(TypeError, match="decode"):
        MultiViewCollate("simclr", decode="yes")


# ------------------------------------------------------------------------------ workers

class SameImage(Dataset):
    """N copies of one image: any repeated parameters would show up as equal views."""

    def __init__(self, n, transform=None, with_threads=False):
        self.n, self.transform, self.with_threads = n, transform, with_threads
        self.image = hwc_image(36, 44, seed=9)

    def __len__(self):
        return self.n

    def __getitem__(self, i):
        out = self.transform(self.image) if self.transform is not None else self.image
        if self.with_threads:
            return out, torch.get_num_threads()
        return out, i


def epoch_views(loader, transform, epoch):
    transform.set_epoch(epoch)
    views = []
    for batch_views, _ in loader:
        views.append(torch.stack(batch_views, dim=1))  # (B, V, 3, h, w)
    return torch.cat(views)


def distinct_rows(x):
    flat = x.flatten(1)
    return all(not torch.equal(flat[i], flat[j]) for i in range(len(flat))
               for j in range(i + 1, len(flat)))


def run_twice(make_transform, num_workers, epochs=(0, 1)):
    runs = []
    for _ in range(2):
        transform = make_transform()
        loader = DataLoader(SameImage(8, transform), batch_size=2, num_workers=num_workers)
        runs.append([epoch_views(loader, transform, e) for e in epochs])
    return runs


@pytest.mark.parametrize("num_workers", [0, 2])
def test_worker_seeding_distinct_and_reproducible(num_workers):
    runs = run_twice(lambda: ViewTransform(small_preset(), seed=11), num_workers)
    (a0, a1), (b0, b1) = runs
    assert a0.shape == (8, 2, 3, 16, 16)
    # distinct across samples (and so across workers) and across epochs
    assert distinct_rows(torch.cat([a0, a1]))
    # identical across two runs with the same seed
    assert torch.equal(a0, b0) and torch.equal(a1, b1)


@pytest.mark.parametrize("num_workers", [0, 2])
def test_epochs_differ_without_set_epoch(num_workers):
    """How torchvision/lightly transforms are used: no set_epoch. Fresh worker forks every epoch
    must not replay the first epoch's parameters; under torch.manual_seed a run repeats."""
    def run():
        torch.manual_seed(5)
        transform = ViewTransform(small_preset(), seed=11)
        loader = DataLoader(SameImage(8, transform), batch_size=2, num_workers=num_workers)
        return [torch.cat([torch.stack(v, dim=1) for v, _ in loader]) for _ in range(2)]
    (a0, a1), (b0, b1) = run(), run()
    assert distinct_rows(torch.cat([a0, a1]))
    assert torch.equal(a0, b0) and torch.equal(a1, b1)


def test_float_parameters_that_require_grad_are_accepted():
    from jem_fast.augment import functional as AF
    images = torch.randint(0, 256, (2, 3, 20, 24), dtype=torch.uint8)
    crop = torch.tensor([[0, 0, 20, 24], [2, 2, 16, 16]])
    brightness = torch.tensor([1.1, 0.9], requires_grad=True)
    out = AF.augment(images, {"crop": crop, "jitter": torch.tensor([True, True]),
                              "brightness": brightness}, 8)
    expected = AF.augment(images, {"crop": crop, "jitter": torch.tensor([True, True]),
                                   "brightness": brightness.detach()}, 8)
    assert torch.equal(out, expected)


def test_replacing_views_takes_effect():
    aug = small_preset()
    image = torch.randint(0, 256, (3, 30, 30), dtype=torch.uint8)
    assert aug([image])[0].shape[-1] == 16
    aug.views = tuple(dataclasses.replace(v, size=12) for v in aug.views)
    assert all(v.shape[-1] == 12 for v in aug([image]))


def test_workers_and_main_process_use_different_streams():
    make = lambda: ViewTransform(small_preset(), seed=11)  # noqa: E731
    main = run_twice(make, 0, epochs=(0,))[0][0]
    workers = run_twice(make, 2, epochs=(0,))[0][0]
    assert not torch.equal(main, workers)
    # worker w gets batches w, w + 2, ...: its first sample is the first of its stream, so the
    # first samples of both workers differ from each other and from the main process's
    assert distinct_rows(torch.stack([main[0], workers[0], workers[2]]))


def test_one_thread_per_worker():
    loader = DataLoader(SameImage(4, ViewTransform(small_preset()), with_threads=True),
                        batch_size=2, num_workers=2)
    threads = torch.cat([t for _, t in loader])
    assert threads.tolist() == [1, 1, 1, 1]


def test_collate_in_workers_distinct_and_reproducible():
    def run():
        torch.manual_seed(0)  # no set_epoch: the workers' torch seeds take part in the key
        collate = MultiViewCollate(small_dino(), seed=4)
        loader = DataLoader(SameImage(8), batch_size=2, num_workers=2, collate_fn=collate)
        out = []
        for views, labels in loader:
            assert [tuple(v.shape) for v in views] == [(2, 3, 24, 24)] * 2 + [(2, 3, 12, 12)] * 3
            out.append((views, labels))
        return out
    a, b = run(), run()
    assert torch.cat([lab for _, lab in a]).tolist() == list(range(8))
    for (va, _), (vb, _) in zip(a, b):
        assert same(va, vb)
    firsts = torch.cat([v[0] for v, _ in a])  # global crop 1 of all 8 samples
    assert distinct_rows(firsts)


# ------------------------------------------------------------------------------ collate

def sized_images(sizes, seed=0):
    g = torch.Generator().manual_seed(seed)
    return [torch.randint(0, 256, (3, h, w), dtype=torch.uint8, generator=g) for h, w in sizes]


def test_per_image_transform_equals_the_batched_collate():
    imgs = sized_images([(40, 60), (90, 30), (25, 25), (64, 48)])
    transform = ViewTransform(small_dino(), seed=8)
    per_image = [transform(im) for im in imgs]
    collate = MultiViewCollate(small_dino(), seed=8)
    views, labels = collate([(im, i) for i, im in enumerate(imgs)])
    assert labels.tolist() == [0, 1, 2, 3]
    assert [tuple(v.shape) for v in views] == [(4, 3, 24, 24)] * 2 + [(4, 3, 12, 12)] * 3
    for i, single in enumerate(per_image):
        for s, v in zip(single, views):
            assert torch.equal(s, v[i])
    # the next batch continues the stream: equal to the transform's next images
    more = sized_images([(30, 30), (50, 70)], seed=1)
    batched = collate(more)  # no labels: views only
    for i, im in enumerate(more):
        assert same(transform(im), [v[i] for v in batched])


def test_collate_mixed_inputs_and_labels():
    arr = hwc_image(30, 40)
    batch = [(PIL.fromarray(arr), torch.tensor([1.0, 2.0])), (arr, torch.tensor([3.0, 4.0])),
             (torch.from_numpy(arr).permute(2, 0, 1), torch.tensor([5.0, 6.0]))]
    views, labels = MultiViewCollate(small_preset(), seed=0)(batch)
    assert [tuple(v.shape) for v in views] == [(3, 3, 16, 16)] * 2
    assert labels.shape == (3, 2)
    with pytest.raises(ValueError, match="batch is empty"):
        MultiViewCollate(small_preset())([])
    with pytest.raises(TypeError, match="batch must be a list"):
        MultiViewCollate(small_preset())(torch.zeros(2, 3, 8, 8, dtype=torch.uint8))
    with pytest.raises(TypeError, match=r"batch\[1\] must be uint8"):
        MultiViewCollate(small_preset())([arr, torch.zeros(3, 8, 8, dtype=torch.int64)])


def jpegs(sizes, seed=0):
    from torchvision.io import encode_jpeg
    return [encode_jpeg(im, quality=90) for im in sized_images(sizes, seed)]


def test_jpeg_decode_in_the_collate():
    pytest.importorskip("torchvision")
    from torchvision.io import decode_jpeg
    encoded = jpegs([(40, 56), (64, 32), (24, 24)])
    as_bytes = [bytes(e.numpy()) for e in encoded]
    decoded = [decode_jpeg(e) for e in encoded]
    got = MultiViewCollate(small_dino(), seed=3, decode=True)(
        [(b, i) for i, b in enumerate(as_bytes)])
    want = MultiViewCollate(small_dino(), seed=3)([(d, i) for i, d in enumerate(decoded)])
    assert same(got[0], want[0]) and torch.equal(got[1], want[1])
    images, labels = ImageListCollate(decode=True)([(e, 7) for e in encoded])
    assert [tuple(im.shape) for im in images] == [(3, 40, 56), (3, 64, 32), (3, 24, 24)]
    assert all(im.dtype == torch.uint8 for im in images) and labels.tolist() == [7, 7, 7]
    assert all(torch.equal(a, b) for a, b in zip(decode_jpegs(as_bytes), decoded))
    # without decode, bytes pass through for decode_jpegs(..., 'cuda') in the main process
    passed, _ = ImageListCollate()([(b, 0) for b in as_bytes])
    assert passed == as_bytes
    with pytest.raises(TypeError, match=r"data\[1\] must be JPEG bytes"):
        decode_jpegs([as_bytes[0], torch.zeros(2, 2, dtype=torch.uint8)])
    with pytest.raises(TypeError, match="data must be a list"):
        decode_jpegs(as_bytes[0])


def test_image_list_collate_for_the_training_loop():
    arr = hwc_image(20, 30)
    images, labels = ImageListCollate()([(arr, 0), (torch.from_numpy(arr).permute(2, 0, 1), 1)])
    assert [tuple(im.shape) for im in images] == [(3, 20, 30)] * 2
    assert torch.equal(images[0], images[1]) and labels.tolist() == [0, 1]
    views = small_preset()(images, seed=0)  # the training loop's batched call
    assert [tuple(v.shape) for v in views] == [(2, 3, 16, 16)] * 2


def test_to_uint8_image_keeps_memory():
    arr = hwc_image()
    t, layout = to_uint8_image(arr)
    assert layout == "HWC" and t.data_ptr() == arr.__array_interface__["data"][0]
    chw = torch.zeros(3, 5, 3, dtype=torch.uint8)  # 3 on both axes: torchvision's CHW
    assert to_uint8_image(chw)[1] == "CHW"

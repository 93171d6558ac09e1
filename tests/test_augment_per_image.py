"""The per-image fast path: the numpy and Python-scalar twins of the counter-based sampler
give the torch path's parameters bit for bit, presets on a list run one kernel call per view
size and equal the checked functional path, a per-image call equals the batched call, value
checks on the CPU (numpy) reject what the torch checks rejected, and float images outside
[0, 1] get advice."""
import numpy as np
import pytest
import torch

import jem_fast.augment as A
from jem_fast.augment import functional as AF
from jem_fast.augment import sampling as S
from jem_fast.augment.sampling import ViewConfig

DINO_LIKE = ([ViewConfig(size=224, scale=(0.4, 1.0), blur_p=1.0),
              ViewConfig(size=224, scale=(0.4, 1.0), blur_p=0.1, solarize_p=0.2)]
             + [ViewConfig(size=96, scale=(0.05, 0.4), blur_p=0.5)] * 3)
ODD = [ViewConfig(scale=(0.9, 1.0), ratio=(0.2, 5.0), brightness=1.5, contrast=0.0, hue=0.5,
                  jitter_p=1.0, blur_sigma=(0.5, 0.5), blur_p=1.0, grayscale_p=1.0),
       ViewConfig(scale=(1.0, 1.0), ratio=(1.0, 1.0), jitter_p=0.0, flip_p=1.0),
       ViewConfig(scale=(0.01, 0.02), ratio=(0.5, 0.6), solarize_p=1.0)]


def random_sizes(g, n, thin):
    sizes = [(int(torch.randint(1, 700, (1,), generator=g)),
              int(torch.randint(1, 700, (1,), generator=g))) for _ in range(n)]
    # thin images only fit the centre-crop fallback
    return [(h, 1 + w % 4) if thin else (h, w) for h, w in sizes]


@pytest.mark.parametrize("configs", [DINO_LIKE, ODD, [ViewConfig()]], ids=["dino", "odd", "one"])
def test_cpu_samplers_are_bit_identical_to_torch(configs):
    g = torch.Generator().manual_seed(1)
    for trial in range(40):
        sizes = random_sizes(g, int(torch.randint(1, 12, (1,), generator=g)), trial % 4 == 0)
        seed = int(torch.randint(0, 2 ** 62, (1,), generator=g)) * 4 + trial % 4
        offset = int(torch.randint(0, 2 ** 40, (1,), generator=g)) if trial % 2 else 0
        views = None if trial % 3 else [7 * i + 2 ** 31 for i in range(len(configs))]
        want = S.sample_views_params(sizes, seed, configs, backend="torch", index_offset=offset,
                                     view_indices=views)
        for backend in ("numpy", "python"):
            got = S.sample_views_params(sizes, seed, configs, backend=backend,
                                        index_offset=offset, view_indices=views)
            for w, o in zip(want, got):
                assert list(w) == list(o) == list(S.PARAM_NAMES)
                for k in w:
                    assert o[k].dtype == w[k].dtype and o[k].shape == w[k].shape, k
                    assert torch.equal(o[k], w[k]), (backend, trial, k)


def test_numpy_philox_known_answers():
    # Random123's kat_vectors, through the numpy twin
    for ctr, key, want in [((0, 0, 0, 0), (0, 0), (0x6627E8D5, 0xE169C58D, 0xBC57AC4C,
                                                     0x9B00DBD8)),
                           ((0x243F6A88, 0x85A308D3, 0x13198A2E, 0x03707344),
                            (0xA4093822, 0x299F31D0),
                            (0xD16CFE09, 0x94FDCCEB, 0x5001E420, 0x24126EA1))]:
        words = S._philox_words_np(*(np.array([c], dtype=np.uint64) for c in ctr), *key)
        assert [int(w[0]) for w in words] == list(want)


def test_packed_lane_philox_known_answers():
    # three lanes in one Python integer each: the Random123 vectors, independently per lane
    lanes = [((0, 0, 0, 0), (0x6627E8D5, 0xE169C58D, 0xBC57AC4C, 0x9B00DBD8)),
             ((0xFFFFFFFF,) * 4, None), ((1, 2, 3, 4), None)]
    packed = [sum(c[w] << (64 * i) for i, (c, _) in enumerate(lanes)) for w in range(4)]
    out = S._philox_lanes(*packed, len(lanes), 0, 0)
    for i, (ctr, want) in enumerate(lanes):
        got = [(word >> (64 * i)) & 0xFFFFFFFF for word in out]
        ref = S.philox4x32(torch.tensor([ctr], dtype=torch.int64), (0, 0))[0].tolist()
        assert got == ref
        if want is not None:
            assert got == list(want)


def test_default_backend_on_cpu_is_numpy_and_stacked_layout():
    sizes = [(40, 50), (60, 30)]
    stacked = S.sample_views_stacked(sizes, 3, DINO_LIKE)
    per_view = S.sample_views_params(sizes, 3, DINO_LIKE, backend="torch")
    for v, p in enumerate(per_view):
        for k in p:
            assert torch.equal(stacked[k][v], p[k])
    assert stacked["crop"].shape == (len(DINO_LIKE), 2, 4)
    with pytest.raises(ValueError, match="backend"):
        S.sample_views_params(sizes, 3, DINO_LIKE, backend="jax")
    empty = S.sample_views_stacked(sizes, 3, [])
    assert empty["crop"].shape == (0, 2, 4) and empty["hue"].dtype == torch.float32


def images_of(sizes, seed=0):
    g = torch.Generator().manual_seed(seed)
    return [torch.randint(0, 256, (3, h, w), dtype=torch.uint8, generator=g) for h, w in sizes]


@pytest.mark.parametrize("preset", ["simclr", "dino", "swav", "mae"])
def test_preset_on_a_list_equals_checked_functional_calls(preset):
    aug = A.PRESETS[preset](num_local_crops=2) if preset in ("dino", "swav") else \
        A.PRESETS[preset]()
    imgs = images_of([(120, 90), (64, 200), (33, 40)])
    views, params = aug(imgs, seed=3, return_params=True)
    for v, cfg, p in zip(views, aug.views, params):
        ref = AF.augment(imgs, p, cfg.size, interpolation=cfg.interpolation, mean=cfg.mean,
                         std=cfg.std, blur_kernel_size=cfg.blur_kernel_size,
                         blur_padding=cfg.blur_padding,
                         solarize_threshold=cfg.solarize_threshold)
        assert v.shape == (3, 3, cfg.size, cfg.size)
        assert torch.equal(v, ref)


def test_per_image_calls_equal_the_batched_call():
    aug = A.DINOAugment(num_local_crops=3)
    imgs = images_of([(80, 100), (150, 60), (50, 50), (200, 220)], seed=1)
    batched = aug(imgs, seed=9)
    for i, img in enumerate(imgs):
        single = aug([img], seed=9, index_offset=i)
        for s, b in zip(single, batched):
            assert torch.equal(s[0], b[i])
    # a 4-D batch (one call per slot) equals the list path too
    same = [im[:, :50, :50] for im in imgs]
    as_batch = aug(torch.stack(same), seed=4)
    as_list = aug([s.contiguous() for s in same], seed=4)
    for x, y in zip(as_batch, as_list):
        assert torch.equal(x, y)


def test_numpy_value_checks_reject_bad_params():
    imgs = images_of([(20, 30), (25, 25)])
    p = S.sample_view_params([(20, 30), (25, 25)], 0, 0, ViewConfig())
    AF.augment(imgs, p, 16)
    bad = [("crop", torch.tensor([[0, 0, 20, 30], [1, 0, 25, 25]]), r"crop'\]\[1\]"),
           ("order", torch.tensor([[0, 1, 2, 3], [0, 0, 2, 3]]), r"order'\]\[1\]"),
           ("hue", torch.tensor([0.0, 0.6]), r"hue'\]\[1\]"),
           ("brightness", torch.tensor([float("nan"), 1.0]), r"brightness'\]\[0\]"),
           ("blur_sigma", torch.tensor([0.0, -1.0]), r"blur_sigma'\]\[1\]")]
    for name, value, match in bad:
        with pytest.raises(ValueError, match=match):
            AF.augment(imgs, dict(p, **{name: value}), 16)


@pytest.mark.parametrize("call", ["functional", "preset", "preset_batch"])
def test_float_images_in_0_255_get_advice(call):
    img = torch.rand(3, 20, 20) * 255
    with pytest.raises(A.ImageValueRangeError) as err:
        if call == "functional":
            AF.augment([img], {"crop": torch.tensor([[0, 0, 10, 10]])}, 8)
        elif call == "preset":
            A.MAEAugment()([img])
        else:
            A.MAEAugment()(img.unsqueeze(0))
    msg = str(err.value)
    assert "images" in msg and "float images must be in [0, 1]" in msg
    assert "uint8 for 0-255 data" in msg and "divide by 255" in msg
    assert isinstance(err.value, TypeError) and isinstance(err.value, ValueError)
    # float in [0, 1]: the presets and the kernel still ask for uint8, saying how to convert
    with pytest.raises(TypeError, match="uint8"):
        A.MAEAugment()([img / 255])


def test_slots_of_one_size_apart_share_a_call_and_match():
    # slots 0 and 2 (size 32) share one kernel call although slot 1 (size 16) sits between them
    aug = A.MultiViewAugment([ViewConfig(size=32, blur_kernel_size=5, blur_p=1.0),
                              ViewConfig(size=16, blur_kernel_size=5),
                              ViewConfig(size=32, blur_kernel_size=5, hue=0.4)])
    assert [slots for _, slots in aug._slot_groups()] == [[0, 2], [1]]
    imgs = images_of([(40, 50), (70, 30)])
    views, params = aug(imgs, seed=2, return_params=True)
    for v, cfg, p in zip(views, aug.views, params):
        assert torch.equal(v, AF.augment(imgs, p, cfg.size, blur_kernel_size=5))
    per_image = [aug([im], seed=2, index_offset=i) for i, im in enumerate(imgs)]
    for i, single in enumerate(per_image):
        for s, b in zip(single, views):
            assert torch.equal(s[0], b[i])

"""SSL recipe presets (jem_fast.augment.presets) through a recording fake of
functional.augment: views and sizes, the exact per-slot options, the probabilities the sampled
parameters realize, overrides, seeds and steps, input forms, bad arguments."""
import math
import types

import pytest
import torch

import jem_fast.augment as A
from jem_fast.augment import presets as P
from jem_fast.augment.sampling import IMAGENET_MEAN, IMAGENET_STD, PARAM_NAMES, ViewConfig


class RecordingAugment:
    """Stands in for functional.augment and functional.augment_sampled (the presets' unchecked
    entry): records every call, returns zeros of the output shape."""

    def __init__(self):
        self.calls = []

    def __call__(self, images, params, size, **options):
        self.calls.append(dict(images=images, params=params, size=size, options=options))
        b = images.shape[0] if isinstance(images, torch.Tensor) else len(images)
        dtype = options.get("dtype", torch.float32)
        out = torch.zeros(b, 3, size, size, dtype=dtype)
        if options.get("channels_last"):
            out = out.contiguous(memory_format=torch.channels_last)
        return out


@pytest.fixture
def fake(monkeypatch):
    rec = RecordingAugment()
    monkeypatch.setattr(A, "functional", types.SimpleNamespace(augment=rec, augment_sampled=rec),
                        raising=False)
    return rec


def batch(b=4, h=64, w=80):
    return torch.randint(0, 256, (b, 3, h, w), dtype=torch.uint8,
                         generator=torch.Generator().manual_seed(0))


OPTION_KEYS = {"interpolation", "mean", "std", "dtype", "channels_last", "blur_kernel_size",
               "blur_padding", "solarize_threshold", "input_layout"}


def slot(size, scale, interpolation, blur_p, solarize_p, k, *, jitter=(0.4, 0.4, 0.2, 0.1),
         flip_p=0.5, jitter_p=0.8, grayscale_p=0.2, std=IMAGENET_STD):
    b, c, s, h = jitter
    return dict(size=size, scale=scale, interpolation=interpolation, blur_p=blur_p,
                solarize_p=solarize_p, blur_kernel_size=k, brightness=b, contrast=c,
                saturation=s, hue=h, flip_p=flip_p, jitter_p=jitter_p, grayscale_p=grayscale_p,
                mean=IMAGENET_MEAN, std=std, ratio=(3 / 4, 4 / 3), blur_sigma=(0.1, 2.0),
                blur_padding="reflect", solarize_threshold=0.5)


SIMCLR_J = (0.8, 0.8, 0.8, 0.2)
RECIPES = {
    "simclr": (P.SimCLRAugment, [slot(224, (0.08, 1.0), "bicubic", 0.5, 0.0, 23, jitter=SIMCLR_J),
                                 slot(224, (0.08, 1.0), "bicubic", 0.5, 0.0, 23,
                                      jitter=SIMCLR_J)]),
    "byol": (P.BYOLAugment, [slot(224, (0.08, 1.0), "bicubic", 1.0, 0.0, 23),
                             slot(224, (0.08, 1.0), "bicubic", 0.1, 0.2, 23)]),
    "vicreg": (P.VICRegAugment, [slot(224, (0.08, 1.0), "bicubic", 1.0, 0.0, 23),
                                 slot(224, (0.08, 1.0), "bicubic", 0.1, 0.2, 23)]),
    "barlow_twins": (P.BarlowTwinsAugment, [slot(224, (0.08, 1.0), "bicubic", 1.0, 0.0, 23),
                                            slot(224, (0.08, 1.0), "bicubic", 0.1, 0.2, 23)]),
    "dino": (P.DINOAugment, [slot(224, (0.4, 1.0), "bicubic", 1.0, 0.0, 23),
                             slot(224, (0.4, 1.0), "bicubic", 0.1, 0.2, 23)]
             + [slot(96, (0.05, 0.4), "bicubic", 0.5, 0.0, 23)] * 8),
    "dinov2": (P.DINOv2Augment, [slot(224, (0.32, 1.0), "bicubic", 0.0, 0.0, 9),
                                 slot(224, (0.32, 1.0), "bicubic", 0.9, 0.2, 9)]
               + [slot(96, (0.05, 0.32), "bicubic", 0.5, 0.0, 9)] * 8),
    "swav": (P.SwAVAugment, [slot(224, (0.14, 1.0), "bilinear", 0.5, 0.0, 23, jitter=SIMCLR_J)] * 2
             + [slot(96, (0.05, 0.14), "bilinear", 0.5, 0.0, 23, jitter=SIMCLR_J)] * 6),
    "mae": (P.MAEAugment, [slot(224, (0.2, 1.0), "bicubic", 0.0, 0.0, 23, jitter=(0, 0, 0, 0),
                                jitter_p=0.0, grayscale_p=0.0)]),
    "ijepa": (P.IJEPAAugment, [slot(224, (0.3, 1.0), "bilinear", 0.0, 0.0, 23,
                                    jitter=(0, 0, 0, 0), flip_p=0.0, jitter_p=0.0,
                                    grayscale_p=0.0)]),
}


@pytest.mark.parametrize("name", list(RECIPES))
def test_recipe_views_and_exact_options(fake, name):
    cls, want = RECIPES[name]
    assert P.PRESETS[name] is cls
    aug = cls()
    assert isinstance(aug, torch.nn.Module) and aug.num_views == len(want)
    for i, (got, exp) in enumerate(zip(aug.views, want)):
        assert got == ViewConfig(**exp), (name, i)
    x = batch()
    views = aug(x, seed=3)
    assert len(views) == len(want) == len(fake.calls)
    for v, call, exp in zip(views, fake.calls, want):
        assert v.shape == (4, 3, exp["size"], exp["size"]) and v.dtype == torch.float32
        assert call["images"] is x and call["size"] == exp["size"]
        opts = call["options"]
        assert set(opts) == OPTION_KEYS
        assert opts["interpolation"] == exp["interpolation"]
        assert opts["mean"] == exp["mean"] and opts["std"] == exp["std"]
        assert opts["blur_kernel_size"] == exp["blur_kernel_size"]
        assert opts["blur_padding"] == "reflect" and opts["solarize_threshold"] == 0.5
        assert opts["dtype"] == torch.float32 and opts["channels_last"] is False
        assert opts["input_layout"] == "CHW"
        assert tuple(call["params"]) == PARAM_NAMES
        assert call["params"]["crop"].shape == (4, 4)


def coin_rates(params):
    return {"flip": params["flip"].double().mean().item(),
            "jitter": params["jitter"].double().mean().item(),
            "grayscale": params["grayscale"].double().mean().item(),
            "blur": (params["blur_sigma"] > 0).double().mean().item(),
            "solarize": params["solarize"].double().mean().item()}


@pytest.mark.parametrize("name", ["byol", "dino", "dinov2", "swav", "ijepa"])
def test_sampled_probabilities_match_the_recipe(fake, name):
    cls, want = RECIPES[name]
    n = 3000
    aug = cls(num_local_crops=1) if name in ("dino", "dinov2", "swav") else cls()
    x = torch.zeros(n, 3, 16, 16, dtype=torch.uint8)
    views, params = aug(x, seed=1, return_params=True)
    assert [c["params"] for c in fake.calls] == params
    for p, exp in zip(params, want):
        rates = coin_rates(p)
        for key, prob in (("flip", exp["flip_p"]), ("jitter", exp["jitter_p"]),
                          ("grayscale", exp["grayscale_p"]), ("blur", exp["blur_p"]),
                          ("solarize", exp["solarize_p"])):
            tol = 4 * math.sqrt(prob * (1 - prob) / n) + 1e-12
            assert abs(rates[key] - prob) <= tol, (name, key, rates[key], prob)
        b = exp["brightness"]
        on = p["jitter"]
        if on.any():
            assert p["brightness"][on].min() >= 1 - b - 1e-6
            assert p["brightness"][on].max() <= 1 + b + 1e-6
        sig = p["blur_sigma"][p["blur_sigma"] > 0]
        assert ((sig >= 0.1 - 1e-6) & (sig <= 2.0 + 1e-6)).all()
        frac = (p["crop"][:, 2] * p["crop"][:, 3]).double() / 256
        # integer rounding on a 16 x 16 image: allow one row/column either side
        assert frac.min() >= exp["scale"][0] - 2 / 16 and frac.max() <= 1.0


def test_dinov2_blur_probabilities_option():
    eff = P.DINOv2Augment()
    doc = P.DINOv2Augment(blur_probabilities="documented")
    assert [v.blur_p for v in eff.views[:3]] == [0.0, 0.9, 0.5]
    assert [v.blur_p for v in doc.views[:3]] == [1.0, 0.1, 0.5]
    assert all(v.blur_p == 0.5 for v in doc.views[2:])
    explicit = P.DINOv2Augment(blur_p=(0.3, 0.4, 0.6), blur_probabilities="documented")
    assert [v.blur_p for v in explicit.views[:3]] == [0.3, 0.4, 0.6]
    assert "effective" in P.DINOv2Augment.__doc__ and "1 - p" in P.DINOv2Augment.__doc__
    with pytest.raises(ValueError, match="blur_probabilities"):
        P.DINOv2Augment(blur_probabilities="paper")


def test_two_view_overrides(fake):
    aug = P.SimCLRAugment(size=160, scale=(0.2, 0.9), blur_p=(0.2, 0.7), solarize_p=0.1,
                          hue=0.3, interpolation="bilinear", blur_padding="zeros",
                          mean=(0.5, 0.5, 0.5), std=(0.25, 0.25, 0.25),
                          slot_overrides={1: {"flip_p": 0.0, "grayscale_p": 1.0}},
                          dtype=torch.bfloat16, channels_last=True)
    v0, v1 = aug.views
    assert v0.size == v1.size == 160 and v0.scale == (0.2, 0.9)
    assert v0.blur_kernel_size == 17 == P.simclr_blur_kernel_size(160)
    assert (v0.blur_p, v1.blur_p, v0.solarize_p, v1.solarize_p) == (0.2, 0.7, 0.1, 0.1)
    assert v0.hue == v1.hue == 0.3 and v0.brightness == 0.8
    assert (v0.flip_p, v0.grayscale_p, v1.flip_p, v1.grayscale_p) == (0.5, 0.2, 0.0, 1.0)
    views = aug(batch(), seed=0)
    assert all(v.dtype == torch.bfloat16 and v.shape == (4, 3, 160, 160) for v in views)
    assert views[0].is_contiguous(memory_format=torch.channels_last)
    for call in fake.calls:
        o = call["options"]
        assert o["dtype"] == torch.bfloat16 and o["channels_last"] is True
        assert o["interpolation"] == "bilinear" and o["blur_padding"] == "zeros"
        assert o["mean"] == (0.5, 0.5, 0.5) and o["std"] == (0.25, 0.25, 0.25)
        assert o["blur_kernel_size"] == 17
    assert not fake.calls[1]["params"]["flip"].any()
    assert fake.calls[1]["params"]["grayscale"].all()
    assert P.BYOLAugment(blur_kernel_size=9).views[1].blur_kernel_size == 9


def test_multicrop_overrides(fake):
    aug = P.DINOAugment(global_size=192, global_scale=(0.14, 1.0), local_size=112,
                        local_scale=(0.05, 0.14), num_local_crops=3, blur_p=0.25,
                        solarize_p=(0.0, 0.5, 0.1), blur_kernel_size=(19, 11),
                        slot_overrides={-1: {"scale": (0.1, 0.2)}, 0: {"hue": 0.0}})
    assert [v.size for v in aug.views] == [192, 192, 112, 112, 112]
    assert [v.scale for v in aug.views] == [(0.14, 1.0)] * 2 + [(0.05, 0.14)] * 2 + [(0.1, 0.2)]
    assert [v.blur_p for v in aug.views] == [0.25] * 5
    assert [v.solarize_p for v in aug.views] == [0.0, 0.5, 0.1, 0.1, 0.1]
    assert [v.blur_kernel_size for v in aug.views] == [19, 19, 11, 11, 11]
    assert aug.views[0].hue == 0.0 and aug.views[1].hue == 0.1
    views = aug(batch(), seed=0)
    assert [tuple(v.shape) for v in views] == [(4, 3, 192, 192)] * 2 + [(4, 3, 112, 112)] * 3
    assert [c["options"]["blur_kernel_size"] for c in fake.calls] == [19, 19, 11, 11, 11]
    per_slot = P.SwAVAugment(num_local_crops=2, blur_p=[0.1, 0.2, 0.3, 0.4])
    assert [v.blur_p for v in per_slot.views] == [0.1, 0.2, 0.3, 0.4]
    assert P.SwAVAugment(std=(0.228, 0.224, 0.225)).views[0].std == (0.228, 0.224, 0.225)
    assert P.DINOAugment(num_local_crops=0).num_views == 2
    assert P.MAEAugment(scale=(0.5, 1.0), size=112).views[0].scale == (0.5, 1.0)
    assert P.IJEPAAugment(flip_p=0.5).views[0].flip_p == 0.5


def test_swav_std_choice_documented():
    assert P.SwAVAugment().views[0].std == IMAGENET_STD
    assert "0.228" in P.SwAVAugment.__doc__


def test_blur_defaults_documented():
    assert P.simclr_blur_kernel_size(224) == 23 and P.simclr_blur_kernel_size(96) == 9
    assert P.simclr_blur_kernel_size(32) == 3
    assert "'reflect'" in P.SimCLRAugment.__doc__ and "zeros" in P.SimCLRAugment.__doc__


# ------------------------------------------------------------------------------ seeds and steps

def crops(params):
    return torch.stack([p["crop"] for p in params])


def test_seed_and_step_determinism(fake):
    x = batch(8)
    aug = P.BYOLAugment(seed=5)
    _, a = aug(x, seed=11, return_params=True)
    _, b = aug(x, seed=11, return_params=True)
    assert aug.step == 0 and torch.equal(crops(a), crops(b))
    _, s0 = aug(x, return_params=True)
    _, s1 = aug(x, return_params=True)
    assert aug.step == 2 and not torch.equal(crops(s0), crops(s1))
    # the auto counter is the same as passing the step explicitly
    _, again = aug(x, step=1, return_params=True)
    assert aug.step == 2 and torch.equal(crops(again), crops(s1))
    fresh = P.BYOLAugment(seed=5)
    assert torch.equal(crops(fresh.sample_params(x)), crops(s0))
    assert not torch.equal(crops(P.BYOLAugment(seed=6).sample_params(x)), crops(s0))
    # explicit seed equals step 0 of that seed
    assert torch.equal(crops(aug.sample_params(x, seed=11, step=0)), crops(a))
    # the two views of a step differ
    assert not torch.equal(s0[0]["crop"], s0[1]["crop"])


def test_index_offset_selects_global_samples(fake):
    x = batch(8)
    aug = P.DINOAugment(num_local_crops=2)
    full = aug.sample_params(x, seed=4)
    half = aug.sample_params(x[4:], seed=4, index_offset=4)
    for f, h in zip(full, half):
        for k in f:
            assert torch.equal(f[k][4:], h[k]), k


def test_list_of_images_of_different_sizes(fake):
    g = torch.Generator().manual_seed(0)
    imgs = [torch.randint(0, 256, (3, h, w), dtype=torch.uint8, generator=g)
            for h, w in [(50, 70), (300, 20), (33, 33), (1000, 10)]]
    aug = P.DINOAugment(num_local_crops=1)
    views, params = aug(imgs, seed=2, return_params=True)
    assert [tuple(v.shape) for v in views] == [(4, 3, 224, 224)] * 2 + [(4, 3, 96, 96)]
    # a list runs the slots of one size in one call, on the list repeated per slot: the two
    # global crops together (parameters of slot 0 then slot 1), then the local crop
    assert [c["size"] for c in fake.calls] == [224, 96]
    assert [len(c["images"]) for c in fake.calls] == [8, 4]
    assert all(a is b for c in fake.calls for a, b in zip(c["images"], imgs * 2))
    for k in params[0]:
        assert torch.equal(fake.calls[0]["params"][k], torch.cat([params[0][k], params[1][k]]))
        assert torch.equal(fake.calls[1]["params"][k], params[2][k])
    for p in params:
        top, left, h, w = p["crop"].unbind(1)
        for i, img in enumerate(imgs):
            H, W = img.shape[1:]
            assert 0 <= top[i] and top[i] + h[i] <= H and 0 <= left[i] and left[i] + w[i] <= W
    # the 1000 x 10 image can only take torchvision's centre-crop fallback
    assert params[0]["crop"][3].tolist() == [493, 0, 13, 10]


def test_hwc_layout(fake):
    x = torch.zeros(2, 40, 90, 3, dtype=torch.uint8)
    aug = P.MAEAugment(input_layout="HWC")
    _, params = aug(x, seed=0, return_params=True)
    assert fake.calls[0]["options"]["input_layout"] == "HWC"
    top, left, h, w = params[0]["crop"].unbind(1)
    assert (top + h <= 40).all() and (left + w <= 90).all()
    with pytest.raises(ValueError, match="images"):
        aug(torch.zeros(2, 3, 40, 90, dtype=torch.uint8))


def test_generic_multiview_module(fake):
    views = [ViewConfig(size=32, blur_p=1.0), ViewConfig(size=16, interpolation="bilinear")]
    aug = P.MultiViewAugment(views, seed=1)
    out = aug(batch(3), step=7)
    assert [tuple(v.shape) for v in out] == [(3, 3, 32, 32), (3, 3, 16, 16)]
    assert fake.calls[1]["options"]["interpolation"] == "bilinear"
    assert (fake.calls[0]["params"]["blur_sigma"] > 0).all()
    assert "views=[32, 16]" in repr(aug)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_params_on_the_images_device(fake):
    x = batch(4).cuda()
    aug = P.BYOLAugment()
    aug(x, seed=0)
    cpu = aug.sample_params(x.cpu(), seed=0)
    for call, ref in zip(fake.calls, cpu):
        for k, v in call["params"].items():
            assert v.device.type == "cuda" and torch.equal(v.cpu(), ref[k])


# ------------------------------------------------------------------------------ bad arguments

@pytest.mark.parametrize("make,exc,name", [
    (lambda: P.SimCLRAugment(colour=0.5), TypeError, "colour"),
    (lambda: P.DINOAugment(size=224), TypeError, "size"),
    (lambda: P.SwAVAugment(scale=(0.1, 1)), TypeError, "scale"),
    (lambda: P.BYOLAugment(blur_p=(1.0, 0.1, 0.5)), ValueError, "blur_p"),
    (lambda: P.DINOAugment(solarize_p=(0.0, 0.2)), ValueError, "solarize_p"),
    (lambda: P.DINOAugment(num_local_crops=-1), ValueError, "num_local_crops"),
    (lambda: P.DINOAugment(blur_kernel_size=(23, 9, 5)), ValueError, "blur_kernel_size"),
    (lambda: P.DINOAugment(blur_kernel_size=8), ValueError, "blur_kernel_size"),
    (lambda: P.BYOLAugment(blur_p=1.5), ValueError, "blur_p"),
    (lambda: P.SimCLRAugment(size=0), ValueError, "size"),
    (lambda: P.MAEAugment(scale=(0.5, 0.2)), ValueError, "scale"),
    (lambda: P.SimCLRAugment(hue=0.7), ValueError, "hue"),
    (lambda: P.BYOLAugment(dtype=torch.int32), ValueError, "dtype"),
    (lambda: P.BYOLAugment(input_layout="NHWC"), ValueError, "input_layout"),
    (lambda: P.BYOLAugment(channels_last=1), TypeError, "channels_last"),
    (lambda: P.BYOLAugment(seed=-3), ValueError, "seed"),
    (lambda: P.BYOLAugment(slot_overrides={2: {"flip_p": 0.0}}), ValueError, "slot_overrides"),
    (lambda: P.BYOLAugment(slot_overrides={0: {"flipp": 0.0}}), TypeError, "slot_overrides"),
    (lambda: P.BYOLAugment(slot_overrides={0: {"flip_p": 2.0}}), ValueError, "flip_p"),
    (lambda: P.MultiViewAugment([]), ValueError, "views"),
    (lambda: P.MultiViewAugment([{"size": 224}]), TypeError, "views"),
])
def test_bad_constructor_arguments(make, exc, name):
    with pytest.raises(exc, match=name):
        make()


def test_bad_call_arguments(fake):
    aug = P.BYOLAugment()
    with pytest.raises(ValueError, match="images"):
        aug(torch.zeros(3, 32, 32, dtype=torch.uint8))
    with pytest.raises(ValueError, match="images"):
        aug(torch.zeros(2, 1, 32, 32, dtype=torch.uint8))
    with pytest.raises(ValueError, match="images"):
        aug(torch.zeros(0, 3, 32, 32, dtype=torch.uint8))
    with pytest.raises(ValueError, match="images"):
        aug([])
    with pytest.raises(ValueError, match=r"images\[1\]"):
        aug([torch.zeros(3, 8, 8, dtype=torch.uint8), torch.zeros(8, 8, dtype=torch.uint8)])
    with pytest.raises(TypeError, match="images"):
        aug(torch.zeros(2, 3, 8, 8, dtype=torch.int32))
    with pytest.raises(TypeError, match="images"):
        aug("not images")
    with pytest.raises(ValueError, match="seed"):
        aug(batch(), seed=-1)
    with pytest.raises(ValueError, match="step"):
        aug(batch(), step=-1)
    with pytest.raises(ValueError, match="index_offset"):
        aug(batch(), seed=0, index_offset=-1)
    assert aug.step == 0 and not fake.calls

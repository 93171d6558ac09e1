"""Masking generators (jem_fast.augment.masking): BEiT block masks against a plain per-sample
reimplementation of BEiT's loop fed the same uniforms, iBOT ratios, DINOv2's collate outputs,
MAE's random_masking, I-JEPA's multi-block masks, determinism, devices and bad arguments."""
import math

import pytest
import torch

import jem_fast.augment.masking as M

from conftest import DEVICES

LOG_ASPECT = (math.log(0.3), math.log(1 / 0.3))


# ----------------------------------------------------------------------------- helpers

def beit_reference(target, height, width, min_area, max_area, log_aspect, uniforms):
    """BEiT's MaskingGenerator.__call__ / _mask for one sample, written as a plain loop, with
    random.uniform / random.randint replaced by the given uniforms: attempt k reads uniforms[k]
    (area, aspect, top, left). Returns the mask, the number of attempts it used and the patches
    each round added."""
    mask = [[False] * width for _ in range(height)]
    count, k, rounds = 0, 0, []
    while count < target:
        budget = min(target - count, max_area)
        delta = 0
        for _ in range(10):
            u = [float(x) for x in uniforms[k]]
            k += 1
            area = min_area + (budget - min_area) * u[0]
            aspect = math.exp(log_aspect[0] + (log_aspect[1] - log_aspect[0]) * u[1])
            h = int(round(math.sqrt(area * aspect)))
            w = int(round(math.sqrt(area / aspect)))
            if w < width and h < height:
                top = math.floor(u[2] * (height - h + 1))
                left = math.floor(u[3] * (width - w + 1))
                num_masked = sum(mask[i][j] for i in range(top, top + h)
                                 for j in range(left, left + w))
                if 0 < h * w - num_masked <= budget:
                    for i in range(top, top + h):
                        for j in range(left, left + w):
                            if not mask[i][j]:
                                mask[i][j] = True
                                delta += 1
            if delta > 0:
                break
        rounds.append(delta)
        if delta == 0:
            break
        count += delta
    return torch.tensor(mask), k, rounds


def run_core_with_uniforms(target, height, width, min_area, max_area, log_aspect, seed,
                           steps=2000):
    batch = target.shape[0]
    g = torch.Generator().manual_seed(seed)
    uniforms = torch.rand((steps, batch, 4), generator=g, dtype=torch.float64)
    mask = M._beit_block_masks(target, height, width, min_area, max_area, log_aspect,
                               lambda step: uniforms[step])
    return mask, uniforms


def components(mask):
    """4-connected components of a 2-D bool mask, as lists of (i, j)."""
    h, w = mask.shape
    seen, comps = set(), []
    for i in range(h):
        for j in range(w):
            if mask[i, j] and (i, j) not in seen:
                stack, comp = [(i, j)], []
                seen.add((i, j))
                while stack:
                    a, b = stack.pop()
                    comp.append((a, b))
                    for da, db in ((1, 0), (-1, 0), (0, 1), (0, -1)):
                        x, y = a + da, b + db
                        if 0 <= x < h and 0 <= y < w and mask[x, y] and (x, y) not in seen:
                            seen.add((x, y))
                            stack.append((x, y))
                comps.append(comp)
    return comps


def is_rectangle(comp):
    rows = [p[0] for p in comp]
    cols = [p[1] for p in comp]
    return len(comp) == (max(rows) - min(rows) + 1) * (max(cols) - min(cols) + 1)


# ----------------------------------------------------------------------------- BEiT

@pytest.mark.parametrize("case", [
    # (target, height, width, min_area, max_area, log_aspect)
    (75, 14, 14, 16, 75, LOG_ASPECT),          # BEiT pretraining
    (75, 14, 14, 4, 75, LOG_ASPECT),           # MaskingGenerator default min
    (40, 8, 12, 4, 10, LOG_ASPECT),            # capped block size, non-square grid
    (10, 4, 4, 9, 10, (0.0, 0.0)),             # often undershoots at 9
    (58.8, 14, 14, 16, math.inf, LOG_ASPECT),  # iBOT: fractional budget, no cap
    (0, 5, 5, 4, 4, LOG_ASPECT),               # nothing to mask
])
def test_block_masks_match_per_sample_beit_loop(case):
    target, height, width, min_area, max_area, log_aspect = case
    batch = 48
    t = torch.full((batch,), float(target), dtype=torch.float64)
    mask, uniforms = run_core_with_uniforms(t, height, width, min_area, max_area, log_aspect,
                                            seed=int(target * 10) + height)
    for b in range(batch):
        ref, used, rounds = beit_reference(target, height, width, min_area, max_area,
                                           log_aspect, uniforms[:, b])
        assert used < uniforms.shape[0]
        assert torch.equal(mask[b], ref), f"sample {b}"
        assert int(ref.sum()) <= target
        if int(ref.sum()) < target:                   # undershoot: the last round added nothing
            assert rounds[-1] == 0 and all(r > 0 for r in rounds[:-1])


def test_block_masks_per_sample_targets_match_reference():
    target = torch.tensor([0, 5, 25, 60, 100, 128, 3, 77], dtype=torch.float64)
    mask, uniforms = run_core_with_uniforms(target, 16, 16, 4, 128, LOG_ASPECT, seed=3)
    for b in range(target.shape[0]):
        ref, _, _ = beit_reference(float(target[b]), 16, 16, 4, 128, LOG_ASPECT,
                                   uniforms[:, b])
        assert torch.equal(mask[b], ref)


@pytest.mark.parametrize("min_num", [4, 16])
def test_block_masks_never_exceed_target_and_mostly_reach_it(min_num):
    m = M.block_masks(256, (14, 14), 75, min_num_patches=min_num, generator=0)
    assert m.shape == (256, 14, 14) and m.dtype == torch.bool
    counts = m.sum((1, 2))
    assert int(counts.max()) <= 75
    assert (counts == 75).float().mean() > 0.5
    assert counts.float().mean() > 70


def test_block_masks_forced_undershoot_to_zero():
    # Square blocks of area >= 8 on 3 x 3 have side 3, which never fits (h < 3 is required):
    # the first round adds nothing and the loop stops with nothing masked.
    m = M.block_masks(16, (3, 3), 8, min_num_patches=9, min_aspect=1.0, generator=0)
    assert m.sum() == 0


def test_block_masks_undershoot_only_when_a_round_adds_nothing():
    # 4 x 4, square blocks, target 10, min 9: the first block is 3 x 3 (9 patches); the last
    # patch needs a 1 x 1 block outside it within 10 attempts, which often fails.
    t = torch.full((400,), 10.0, dtype=torch.float64)
    mask, uniforms = run_core_with_uniforms(t, 4, 4, 9, 10, (0.0, 0.0), seed=11)
    counts = mask.sum((1, 2))
    assert set(counts.tolist()) == {9, 10}
    for b in torch.nonzero(counts == 9).flatten()[:20].tolist():
        ref, used, rounds = beit_reference(10, 4, 4, 9, 10, (0.0, 0.0), uniforms[:, b])
        assert torch.equal(mask[b], ref)
        assert rounds == [9, 0]                       # one 3 x 3 block, then a barren round


def test_single_block_is_a_rectangle_within_bounds_inclusive_positions():
    # Aspect fixed at 2 and area 18: every block is 6 x 3 (h = round(sqrt(36)), w = 3) and the
    # target is one block, so each mask is one 6 x 3 rectangle; top/left are uniform over the
    # inclusive ranges 0..height-h and 0..width-w, edges included.
    m = M.block_masks(400, (10, 13), 18, min_num_patches=18, max_num_patches=18,
                      min_aspect=2.0, max_aspect=2.0, generator=5)
    tops, lefts = set(), set()
    for b in range(m.shape[0]):
        (comp,) = components(m[b])
        assert is_rectangle(comp) and len(comp) == 18
        rows = sorted({p[0] for p in comp})
        cols = sorted({p[1] for p in comp})
        assert len(rows) == 6 and len(cols) == 3
        tops.add(rows[0])
        lefts.add(cols[0])
    assert tops == set(range(0, 5)) and lefts == set(range(0, 11))


def test_first_block_is_a_rectangle():
    # Target 1 block's worth: with min = max = target, every accepted block must add exactly
    # the target in one go from an empty mask, so each non-empty mask is one rectangle.
    m = M.block_masks(100, (14, 14), 16, min_num_patches=16, max_num_patches=16,
                      min_aspect=1.0, generator=2)
    for b in range(100):
        if m[b].any():
            comps = components(m[b])
            assert len(comps) == 1 and is_rectangle(comps[0]) and len(comps[0]) == 16


def test_block_masks_determinism_and_generator_forms():
    a = M.block_masks(32, generator=123)
    b = M.block_masks(32, generator=123)
    c = M.block_masks(32, generator=torch.Generator().manual_seed(123))
    d = M.block_masks(32, generator=124)
    assert torch.equal(a, b) and torch.equal(a, c) and not torch.equal(a, d)
    gen = M.BlockMaskGenerator()
    torch.manual_seed(0)
    e = gen(8)
    torch.manual_seed(0)
    assert torch.equal(e, gen(8))


def test_block_masks_distribution_positions_cover_grid():
    m = M.block_masks(512, (14, 14), 75, min_num_patches=16, generator=9)
    freq = m.float().mean(0)
    assert freq.min() > 0.01          # every patch, edges and corners included, gets masked
    assert abs(float(freq.mean()) - 75 / 196) < 0.02


@pytest.mark.parametrize("device", DEVICES)
def test_outputs_on_device(device):
    assert M.block_masks(4, generator=0, device=device).device.type == device
    assert M.ibot_masks(4, generator=0, device=device).device.type == device
    d = M.dinov2_masks(4, generator=0, device=device)
    assert all(t.device.type == device for t in (d.masks, d.collated_masks,
                                                 d.mask_indices_list, d.masks_weight,
                                                 d.n_masked_patches))
    r = M.random_masking(4, (14, 14), generator=0, device=device)
    assert all(t.device.type == device for t in r)
    if device == "cuda":
        g = torch.Generator(device="cuda").manual_seed(0)
        r = M.random_masking(4, 196, generator=g, device="cuda")
        assert r.mask.device.type == "cuda" and (r.mask.sum(1) == 147).all()
    j = M.MultiBlockMaskGenerator()(4, generator=0, device=device)
    assert all(t.device.type == device for t in j.enc_indices + j.pred_indices)
    assert j.enc_masks.device.type == device and j.pred_masks.device.type == device
    cpu = M.block_masks(4, generator=0)
    assert torch.equal(M.block_masks(4, generator=0, device=device).cpu(), cpu)


# ----------------------------------------------------------------------------- iBOT

def test_ibot_min_block_and_fractional_target():
    gen = M.IBOTMaskGenerator((14, 14))
    assert gen.min_num_patches == 16
    assert M.IBOTMaskGenerator((6, 6)).min_num_patches == 4
    assert M.IBOTMaskGenerator((14, 9)).min_num_patches == 9
    m = gen(128, generator=0)
    # ratio 0.3 on 196 patches: target 58.8, the count can reach 58 but never 59
    counts = m.sum((1, 2))
    assert int(counts.max()) <= 58 and float(counts.float().mean()) > 50


def test_ibot_ratio_ranges():
    gen = M.IBOTMaskGenerator((14, 14), pred_ratio=0.3, pred_ratio_var=0.2)
    m, r = gen(400, generator=1, return_ratios=True)
    assert float(r.min()) >= 0.1 and float(r.max()) <= 0.5 and float(r.std()) > 0.05
    assert (m.sum((1, 2)).double() <= r * 196).all()
    # the list form of iBOT's ViT-B recipe: half the crops at 0, the rest in [0.1, 0.5]
    gen = M.IBOTMaskGenerator((14, 14), pred_ratio=[0.0, 0.3], pred_ratio_var=[0.0, 0.2])
    m, r = gen(1000, generator=2, return_ratios=True)
    zero = r == 0
    assert 0.4 < float(zero.float().mean()) < 0.6
    assert (m[zero].sum((1, 2)) == 0).all()
    assert float(r[~zero].min()) >= 0.1 and float(r[~zero].max()) <= 0.5


def test_ibot_rand_shape_exact_counts():
    gen = M.IBOTMaskGenerator((6, 6), pred_ratio=0.3, pred_ratio_var=0.1, pred_shape="rand")
    m, r = gen(64, generator=3, return_ratios=True)
    assert torch.equal(m.sum((1, 2)), (r * 36).floor().long())


# ----------------------------------------------------------------------------- DINOv2

@pytest.mark.parametrize("batch", [1, 2, 7, 64])
def test_dinov2_collate_outputs(batch):
    gen = M.DINOv2MaskGenerator((16, 16))
    assert gen.max_num_patches == 128
    out = gen(batch, generator=batch)
    n_tok = 256
    n_masked = int(batch * 0.5)
    assert out.masks.shape == (batch, 16, 16)
    assert torch.equal(out.collated_masks, out.masks.flatten(1))
    counts = out.collated_masks.sum(1)
    # the masked samples are those with patches (int(N * ratio) >= 25 > 0 here)
    assert int((counts > 0).sum()) == n_masked
    assert torch.equal(out.mask_indices_list, out.collated_masks.flatten().nonzero().flatten())
    assert out.n_masked_patches.tolist() == [int(counts.sum())]
    assert out.masks_weight.shape == out.mask_indices_list.shape
    sample_of = out.mask_indices_list // n_tok
    sums = torch.zeros(batch, dtype=out.masks_weight.dtype).index_add_(0, sample_of,
                                                                      out.masks_weight)
    torch.testing.assert_close(sums[counts > 0], torch.ones(n_masked))
    probs = torch.linspace(0.1, 0.5, n_masked + 1)
    assert out.upperbound == int((n_tok * probs[1:]).long().sum())
    assert int(counts.max()) <= 128


def test_dinov2_stratified_ratios_and_shuffle():
    # Without the block loop's undershoot (targets below the cap), each masked sample's count
    # lies in its own stratum [int(N p_i), int(N p_{i+1})]; sorted counts fall one per stratum.
    batch, n_tok = 64, 256
    out = M.dinov2_masks(batch, (16, 16), generator=7)
    counts = out.collated_masks.sum(1)
    masked = counts[counts > 0].sort().values
    assert masked.numel() == 32
    probs = torch.linspace(0.1, 0.5, 33)
    lo = (n_tok * probs[:-1]).long()
    hi = (n_tok * probs[1:]).long()
    # the block loop can undershoot a little; it never overshoots
    assert (masked <= hi).all()
    assert float((masked >= lo - 8).float().mean()) > 0.9
    # the masked samples are shuffled, not the first half
    pos = torch.nonzero(counts > 0).flatten()
    assert not torch.equal(pos, torch.arange(32))


def test_dinov2_mask_probability_options():
    out = M.dinov2_masks(10, (14, 14), mask_ratio_min_max=(0.2, 0.3), mask_probability=0.3,
                         generator=0)
    counts = out.collated_masks.sum(1)
    assert int((counts > 0).sum()) == 3
    assert int(counts.max()) <= int(196 * 0.3)
    out = M.dinov2_masks(10, (14, 14), mask_probability=0.0, generator=0)
    assert out.collated_masks.sum() == 0 and out.mask_indices_list.numel() == 0
    assert out.upperbound == 0 and out.n_masked_patches.tolist() == [0]


# ----------------------------------------------------------------------------- MAE

@pytest.mark.parametrize("ratio", [0.0, 0.5, 0.75, 0.9, 1.0])
def test_mae_random_masking(ratio):
    batch, L = 16, 196
    r = M.random_masking(batch, (14, 14), ratio, generator=0)
    keep = int(L * (1 - ratio))
    assert r.mask.dtype == torch.float32 and r.mask.shape == (batch, L)
    assert (r.mask.sum(1) == L - keep).all()
    assert r.ids_keep.shape == (batch, keep)
    assert r.masks.shape == (batch, 14, 14) and torch.equal(r.masks.flatten(1), r.mask.bool())
    # the kept patches are exactly the zeros of the mask
    kept = torch.zeros(batch, L).scatter_(1, r.ids_keep, 1.0)
    assert torch.equal(kept, 1 - r.mask)
    # ids_restore inverts the shuffle
    ar = torch.arange(L).expand(batch, L)
    assert torch.equal(torch.gather(r.ids_shuffle, 1, r.ids_restore), ar)
    assert torch.equal(torch.gather(r.ids_restore, 1, r.ids_shuffle), ar)
    # MAE's decoder unshuffle: [kept tokens, mask tokens] gathered by ids_restore -> original
    x = torch.arange(L, dtype=torch.float32).expand(batch, L)
    x_kept = torch.gather(x, 1, r.ids_keep)
    seq = torch.cat([x_kept, torch.full((batch, L - keep), -1.0)], dim=1)
    restored = torch.gather(seq, 1, r.ids_restore)
    assert torch.equal(restored == -1, r.mask.bool())
    assert torch.equal(restored[restored >= 0], x[restored >= 0])


def test_mae_same_as_mae_formula_and_int_length():
    g = torch.Generator().manual_seed(4)
    noise = torch.rand((3, 50), generator=g)
    ids_shuffle = noise.argsort(1)
    r = M.random_masking(3, 50, 0.6, generator=4)
    assert torch.equal(r.ids_shuffle, ids_shuffle)
    assert r.masks.shape == (3, 50)
    assert torch.equal(M.random_masking(3, 50, 0.6, generator=4).mask, r.mask)


# ----------------------------------------------------------------------------- I-JEPA

@pytest.mark.parametrize("allow_overlap", [False, True])
@pytest.mark.parametrize("seed", range(6))
def test_ijepa_multiblock(seed, allow_overlap):
    gen = M.MultiBlockMaskGenerator(allow_overlap=allow_overlap)
    batch = 32
    out = gen(batch, generator=seed)
    assert len(out.enc_indices) == 1 and len(out.pred_indices) == 4
    k_enc = out.enc_indices[0].shape[1]
    k_pred = out.pred_indices[0].shape[1]
    for t in out.enc_indices + out.pred_indices:
        assert t.dtype == torch.long and t.shape[0] == batch
        assert int(t.min()) >= 0 and int(t.max()) < 196
        assert (t[:, 1:] > t[:, :-1]).all()                     # ascending, distinct
    assert all(t.shape[1] == k_pred for t in out.pred_indices)
    assert k_enc > gen.min_keep and k_pred > gen.min_keep
    bh, bw = out.pred_size
    assert k_pred == bh * bw                                    # unconstrained, all full
    assert out.pred_masks.shape == (batch, 4, 14, 14)
    assert out.enc_masks.shape == (batch, 1, 14, 14)
    assert (out.enc_masks.sum((2, 3)) == k_enc).all()
    # index lists and masks agree
    for i, t in enumerate(out.pred_indices):
        assert torch.equal(out.pred_masks[:, i].flatten(1).nonzero()[:, 1].view(batch, -1), t)
    # predictor blocks are rectangles of the shared size, off the last row / column
    for b in range(4):
        for i in range(4):
            (comp,) = components(out.pred_masks[b, i])
            assert is_rectangle(comp) and len(comp) == bh * bw
            assert max(p[0] for p in comp) < 13 and max(p[1] for p in comp) < 13
    if not allow_overlap:
        union = out.pred_masks.any(1)
        assert not (out.enc_masks[:, 0] & union).any()
    eh, ew = out.enc_size
    assert eh == ew and eh * ew >= k_enc


def test_ijepa_block_sizes_share_one_draw():
    gen = M.MultiBlockMaskGenerator()
    # u = 0: smallest scale with the smallest aspect; u = 1: the largest with the largest
    assert gen._block_size(0.0, (0.15, 0.2), (0.75, 1.5)) == (
        round(math.sqrt(int(196 * 0.15) * 0.75)), round(math.sqrt(int(196 * 0.15) / 0.75)))
    assert gen._block_size(1.0, (0.85, 1.0), (1.0, 1.0)) == (13, 13)   # 14 capped to 13


def test_ijepa_constraint_relaxation_when_context_too_small():
    # A small context block (scale 0.2) on a grid crowded by large predictor blocks: most
    # constrained draws keep <= min_keep patches, so the official relaxation (drop the last
    # predictor block after every 20 failures) must kick in; the result stays valid.
    gen = M.MultiBlockMaskGenerator((8, 8), enc_mask_scale=(0.3, 0.3),
                                    pred_mask_scale=(0.3, 0.3), aspect_ratio=(1.0, 1.0),
                                    npred=4, min_keep=8)
    rounds = []
    place = gen._place
    gen._place = lambda n, size, g: rounds.append(n) or place(n, size, g)
    out = gen(16, generator=0)
    assert len(rounds) - 1 > M._IJEPA_TIMEOUT         # some context block needed relaxation
    assert (out.enc_masks.sum((2, 3)) > 8).all()
    assert out.enc_indices[0].shape[1] > 8


def test_ijepa_nenc_and_truncation():
    gen = M.MultiBlockMaskGenerator(nenc=2, npred=3)
    out = gen(8, generator=1)
    assert len(out.enc_indices) == 2 and len(out.pred_indices) == 3
    k = out.enc_indices[0].shape[1]
    assert out.enc_indices[1].shape[1] == k
    assert out.enc_masks.shape == (8, 2, 14, 14)
    assert (out.enc_masks.sum((2, 3)) == k).all()


def test_ijepa_determinism():
    gen = M.MultiBlockMaskGenerator()
    a, b, c = gen(8, generator=3), gen(8, generator=3), gen(8, generator=4)
    assert all(torch.equal(x, y) for x, y in zip(a.enc_indices + a.pred_indices,
                                                 b.enc_indices + b.pred_indices))
    assert not torch.equal(a.enc_masks, c.enc_masks) or not torch.equal(a.pred_masks,
                                                                        c.pred_masks)


def test_ijepa_min_keep_too_large_raises_instead_of_hanging():
    gen = M.MultiBlockMaskGenerator(min_keep=100)
    with pytest.raises(ValueError, match="min_keep"):
        gen(2, generator=0)


# ----------------------------------------------------------------------------- errors

@pytest.mark.parametrize("call,name", [
    (lambda: M.block_masks(0), "batch"),
    (lambda: M.block_masks(2.5), "batch"),
    (lambda: M.block_masks(2, input_size=(0, 14)), "input_size"),
    (lambda: M.block_masks(2, input_size=(14,)), "input_size"),
    (lambda: M.block_masks(2, input_size=-3), "input_size"),
    (lambda: M.block_masks(2, num_masking_patches=197), "num_masking_patches"),
    (lambda: M.block_masks(2, num_masking_patches=-1), "num_masking_patches"),
    (lambda: M.block_masks(2, min_aspect=0), "min_aspect"),
    (lambda: M.block_masks(2, max_aspect=-1.0), "max_aspect"),
    (lambda: M.block_masks(2, min_num_patches=-1), "min_num_patches"),
    (lambda: M.block_masks(2, max_num_patches=0), "max_num_patches"),
    (lambda: M.block_masks(2, generator="seed"), "generator"),
    (lambda: M.ibot_masks(2, pred_ratio=1.5), "pred_ratio"),
    (lambda: M.ibot_masks(2, pred_ratio=0.1, pred_ratio_var=0.2), "pred_ratio_var"),
    (lambda: M.ibot_masks(2, pred_ratio=[0.1, 0.3], pred_ratio_var=[0.0]), "pred_ratio_var"),
    (lambda: M.ibot_masks(2, pred_aspect_ratio=(0.0, 3.0)), "pred_aspect_ratio"),
    (lambda: M.ibot_masks(2, pred_shape="grid"), "pred_shape"),
    (lambda: M.dinov2_masks(2, mask_ratio_min_max=(0.5, 0.1)), "mask_ratio_min_max"),
    (lambda: M.dinov2_masks(2, mask_ratio_min_max=(0.1, 1.5)), "mask_ratio_min_max"),
    (lambda: M.dinov2_masks(2, mask_probability=-0.1), "mask_probability"),
    (lambda: M.random_masking(2, 196, mask_ratio=1.2), "mask_ratio"),
    (lambda: M.random_masking(2, 0), "num_patches"),
    (lambda: M.random_masking(0, 196), "batch"),
    (lambda: M.MultiBlockMaskGenerator(pred_mask_scale=(0.2, 1.2)), "pred_mask_scale"),
    (lambda: M.MultiBlockMaskGenerator(enc_mask_scale=(0.9, 0.8)), "enc_mask_scale"),
    (lambda: M.MultiBlockMaskGenerator(aspect_ratio=(0.0, 1.5)), "aspect_ratio"),
    (lambda: M.MultiBlockMaskGenerator(npred=0), "npred"),
    (lambda: M.MultiBlockMaskGenerator(nenc=0), "nenc"),
    (lambda: M.MultiBlockMaskGenerator(min_keep=-1), "min_keep"),
    (lambda: M.MultiBlockMaskGenerator(input_size=(14, 0)), "input_size"),
])
def test_bad_arguments_raise_value_error_naming_them(call, name):
    with pytest.raises(ValueError, match=name):
        call()

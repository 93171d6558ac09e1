"""Run a function in W gloo processes on this machine and collect what each rank returns."""
import os
import socket
import tempfile

import torch
import torch.distributed as dist
import torch.multiprocessing as mp


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _entry(rank, world, port, out_dir, fn, args):
    os.environ["MASTER_ADDR"] = "127.0.0.1"
    os.environ["MASTER_PORT"] = str(port)
    torch.set_num_threads(1)
    dist.init_process_group("gloo", rank=rank, world_size=world)
    try:
        result = fn(rank, world, *args)
        torch.save(result, os.path.join(out_dir, f"rank{rank}.pt"))
    finally:
        dist.destroy_process_group()


def run_gloo(fn, world: int, *args):
    """fn(rank, world, *args) runs on every rank (it must be importable: a module-level
    function); returns the list of its per-rank return values."""
    with tempfile.TemporaryDirectory() as out_dir:
        mp.spawn(_entry, args=(world, _free_port(), out_dir, fn, args), nprocs=world, join=True)
        return [torch.load(os.path.join(out_dir, f"rank{r}.pt")) for r in range(world)]


def loss_and_grads_on_slice(loss_fn, z_a, z_b, rank, rows_per_rank):
    """This rank's slice of a global batch through loss_fn: loss and both input gradients."""
    rows = slice(rank * rows_per_rank, (rank + 1) * rows_per_rank)
    a = z_a.detach()[rows].clone().requires_grad_()
    b = z_b.detach()[rows].clone().requires_grad_()
    loss = loss_fn(a, b)
    loss.backward()
    return {"loss": loss.detach(), "grad_a": a.grad, "grad_b": b.grad}


def assert_equals_single_process(per_rank, reference, z_a, z_b, rows_per_rank, what):
    """The contract of every gather_distributed loss: the mean over ranks of the loss is the
    single-process loss on the concatenated batch, and each rank's gradient divided by the world
    size (DDP's averaging) is the single-process gradient of its slice."""
    world = len(per_rank)
    ref = reference(z_a, z_b)
    ref_a, ref_b = torch.autograd.grad(ref, (z_a, z_b))
    losses = torch.stack([r["loss"] for r in per_rank])
    torch.testing.assert_close(losses.mean(), ref.detach(), msg=f"{what}: value")
    for rank, r in enumerate(per_rank):
        rows = slice(rank * rows_per_rank, (rank + 1) * rows_per_rank)
        torch.testing.assert_close(r["grad_a"] / world, ref_a[rows], msg=f"{what}: rank {rank} grad z_a")
        torch.testing.assert_close(r["grad_b"] / world, ref_b[rows], msg=f"{what}: rank {rank} grad z_b")

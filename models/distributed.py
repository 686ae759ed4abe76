"""Data-parallel training under ``torchrun``: the process group, the rank's device, and the few
collectives the trainer needs.

``torchrun --nproc_per_node=N …`` sets ``WORLD_SIZE``/``RANK``/``LOCAL_RANK``; :func:`setup` then
joins the process group (NCCL when every rank has a GPU of its own, gloo otherwise — also for two
ranks sharing one GPU, which NCCL refuses). Without those variables everything here is a no-op for a
single process, so the trainer has one code path.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

import torch
import torch.distributed as dist
from torch.distributed.rendezvous import rendezvous


@dataclass(frozen=True)
class World:
    rank: int = 0
    size: int = 1
    local_rank: int = 0

    @property
    def main(self) -> bool:
        return self.rank == 0


def world() -> World:
    """This process's place in the job (a single process when not started by torchrun)."""
    if dist.is_available() and dist.is_initialized():
        return World(dist.get_rank(), dist.get_world_size(), int(os.environ.get("LOCAL_RANK", 0)))
    return World()


def setup(device: str = "auto") -> World:
    """Joins the process group when started by torchrun (``WORLD_SIZE`` > 1); idempotent."""
    size = int(os.environ.get("WORLD_SIZE", "1"))
    if size > 1 and not dist.is_initialized():
        wants_gpu = device != "cpu" and torch.cuda.is_available()
        own_gpu = wants_gpu and torch.cuda.device_count() >= int(os.environ.get("LOCAL_WORLD_SIZE", size))
        # torchrun's store outlives a restart of the workers: keys of a round under its own prefix, or a
        # rank of the new round can read a killed rank's address and fail to connect.
        store, rank, size = next(rendezvous("env://"))
        attempt = os.environ.get("TORCHELASTIC_RESTART_COUNT", "0")
        store = dist.PrefixStore(f"recall/attempt-{attempt}", store)
        dist.init_process_group("nccl" if own_gpu else "gloo", store=store, rank=rank, world_size=size)
        if wants_gpu:
            torch.cuda.set_device(int(os.environ.get("LOCAL_RANK", 0)) % torch.cuda.device_count())
    return world()


def teardown() -> None:
    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()


def rank_device(device: torch.device) -> torch.device:
    """On CUDA, the rank's GPU (ranks share GPUs round-robin when there are fewer GPUs than ranks)."""
    if device.type == "cuda" and device.index is None and world().size > 1:
        return torch.device("cuda", world().local_rank % torch.cuda.device_count())
    return device


def _comm_device(device: torch.device) -> torch.device:
    """Where a small collective's tensor lives: gloo gathers only CPU tensors."""
    return device if dist.get_backend() == "nccl" else torch.device("cpu")


def gather(t: torch.Tensor) -> torch.Tensor:
    """Every rank's 1-D ``t`` concatenated in rank order (sizes may differ between ranks), on ``t``'s device."""
    w = world()
    if w.size == 1:
        return t
    home, t = t.device, t.to(_comm_device(t.device))
    n = torch.tensor([t.numel()], device=t.device)
    sizes = [torch.zeros_like(n) for _ in range(w.size)]
    dist.all_gather(sizes, n)
    longest = int(max(s.item() for s in sizes))
    padded = torch.zeros(longest, dtype=t.dtype, device=t.device)
    padded[: t.numel()] = t
    parts = [torch.zeros_like(padded) for _ in range(w.size)]
    dist.all_gather(parts, padded)
    return torch.cat([p[: int(s.item())] for p, s in zip(parts, sizes, strict=True)]).to(home)


def total(x: float, device: torch.device) -> float:
    """The sum of ``x`` over ranks."""
    if world().size == 1:
        return x
    t = torch.tensor([x], dtype=torch.float64, device=_comm_device(device))
    dist.all_reduce(t)
    return float(t.item())


def broadcast_flags(flags: list[bool], device: torch.device) -> list[bool]:
    """Rank 0's ``flags`` on every rank (rank 0 decides early stopping; the others follow)."""
    if world().size == 1:
        return flags
    t = torch.tensor(flags, dtype=torch.uint8, device=_comm_device(device))
    dist.broadcast(t, src=0)
    return [bool(v) for v in t.tolist()]

"""torchrun's environment. No cluster code of our own: torchrun
(or Slurm/Kubernetes launching torchrun) starts the processes and sets RANK,
WORLD_SIZE, LOCAL_RANK, LOCAL_WORLD_SIZE, MASTER_ADDR/PORT; we only read them.

One process started without torchrun is a one-rank run: DDP, FSDP2 and HSDP
still need a process group, so :meth:`Dist.ensure_process_group` starts one of
one rank over a file store in a fresh temporary directory (gloo on the CPU,
NCCL on a GPU), and the same configs run with or without torchrun."""

from __future__ import annotations

import os
import tempfile
from dataclasses import dataclass
from typing import Optional

import torch
import torch.distributed as dist
from torch import nn


@dataclass
class Dist:
    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    device: torch.device = torch.device("cpu")
    local_world_size: int = 1       # ranks on this node (torchrun's LOCAL_WORLD_SIZE)

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def enabled(self) -> bool:
        return self.world_size > 1

    def all_sum(self, t: torch.Tensor) -> torch.Tensor:
        if self.enabled:
            t = t.clone()
            dist.all_reduce(t)
        return t

    def all_max(self, t: torch.Tensor) -> torch.Tensor:
        if self.enabled:
            t = t.clone()
            dist.all_reduce(t, op=dist.ReduceOp.MAX)
        return t

    def barrier(self) -> None:
        if self.enabled:
            dist.barrier()

    def ensure_process_group(self) -> None:
        """A process group for this run: torchrun's (already started by
        :func:`init_distributed`, or started here from its environment when it ran
        one process), else one of one rank on a private file store."""
        if dist.is_initialized():
            if dist.get_world_size() != self.world_size:
                raise RuntimeError(f"a process group of {dist.get_world_size()} ranks is already running, "
                                   f"but this run has WORLD_SIZE {self.world_size}")
            return
        backend = "nccl" if self.device.type == "cuda" else "gloo"
        device_id = self.device if self.device.type == "cuda" else None
        if "MASTER_ADDR" in os.environ and "RANK" in os.environ:       # torchrun --nproc_per_node 1
            dist.init_process_group(backend=backend, device_id=device_id)
            return
        if self.world_size != 1:
            raise RuntimeError(f"WORLD_SIZE is {self.world_size} but MASTER_ADDR/RANK are not set: "
                               "start multi-rank runs with torchrun")
        store = dist.FileStore(os.path.join(tempfile.mkdtemp(prefix="kosmos-pg-"), "store"), 1)
        dist.init_process_group(backend=backend, store=store, rank=0, world_size=1, device_id=device_id)


def init_distributed(device: Optional[str] = None) -> Dist:
    """Read torchrun's variables; start the process group when there is more than one rank."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    rank = int(os.environ.get("RANK", "0"))
    local = int(os.environ.get("LOCAL_RANK", "0"))
    local_world = int(os.environ.get("LOCAL_WORLD_SIZE", str(world)))
    if device is None:
        device = "cuda" if torch.cuda.is_available() else "cpu"
    if device == "cuda":
        torch.cuda.set_device(local)
        dev = torch.device("cuda", local)
    else:
        dev = torch.device("cpu")
    if world > 1 and not dist.is_initialized():
        dist.init_process_group(backend="nccl" if dev.type == "cuda" else "gloo",
                                device_id=dev if dev.type == "cuda" else None)
    return Dist(rank, world, local, dev, local_world)


def unwrap(model: nn.Module) -> nn.Module:
    return getattr(model, "module", model)

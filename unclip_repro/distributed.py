"""The process group under `torchrun`: NCCL on GPUs, gloo on CPUs; one process otherwise.

Training (DDP) and the harness (sharded FID generation) both start here, so a run's rank,
world size and device are read in one place.
"""

from __future__ import annotations

import datetime
import os
from typing import NamedTuple

import torch
import torch.distributed as dist


class Process(NamedTuple):
    """This process's place in the run."""

    rank: int
    world: int
    device: torch.device


def setup(
    device: str | torch.device | None = None, timeout: datetime.timedelta | None = None
) -> Process:
    """Rank, world size and device, starting the process group under torchrun. `device`
    None means the local GPU if there is one, else the CPU; `timeout` bounds collectives
    (torch's default: 10 minutes)."""
    cuda = torch.cuda.is_available() if device is None else torch.device(device).type == "cuda"
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world == 1:
        return Process(0, 1, torch.device(device or ("cuda" if cuda else "cpu")))
    if not dist.is_initialized():
        dist.init_process_group("nccl" if cuda else "gloo", timeout=timeout)
    if cuda:
        local = int(os.environ.get("LOCAL_RANK", "0"))
        torch.cuda.set_device(local)
        return Process(dist.get_rank(), world, torch.device("cuda", local))
    return Process(dist.get_rank(), world, torch.device("cpu"))

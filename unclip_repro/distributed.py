"""The process group under `torchrun`: NCCL on GPUs, gloo on CPUs; one process otherwise.

Training (DDP, or FSDP's `fully_shard` for the large presets) and the harness (sharded FID
generation) both start here, so a run's rank, world size and device are read in one place.
"""

from __future__ import annotations

import datetime
import os
from typing import NamedTuple

import torch
import torch.distributed as dist
from torch import nn
from torch.distributed.checkpoint.state_dict import (
    StateDictOptions,
    get_model_state_dict,
    get_optimizer_state_dict,
    set_model_state_dict,
    set_optimizer_state_dict,
)
from torch.distributed.fsdp import fully_shard


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


# FSDP (torch's own `fully_shard`, "FSDP2"): for components that do not fit one GPU with their
# optimiser state (the `paper` sizes). It runs on gloo too, so it is tested on CPUs.
_FULL = StateDictOptions(full_state_dict=True, cpu_offload=True)


def shard(module: nn.Module, blocks: tuple[type[nn.Module], ...]) -> nn.Module:
    """Shard `module` in place over every rank: each submodule of a type in `blocks` (its
    parameters gathered only around its own forward and backward), then the root (the rest)."""
    for sub in module.modules():
        if isinstance(sub, blocks) and sub is not module:
            fully_shard(sub)
    fully_shard(module)
    return module


def full_state_dict(module: nn.Module) -> dict[str, torch.Tensor]:
    """The whole (unsharded) state dict of a sharded `module`, on the CPU of rank 0 ({} on the
    other ranks). A collective: every rank calls it."""
    return get_model_state_dict(module, options=_FULL)


def load_full_state_dict(module: nn.Module, state: dict[str, torch.Tensor]) -> None:
    """Load a whole state dict (every rank holds it) into a sharded `module`."""
    set_model_state_dict(module, state, options=StateDictOptions(full_state_dict=True))


def full_optimizer_state(module: nn.Module, optimizer: torch.optim.Optimizer) -> dict:
    """The optimiser's whole state, keyed by parameter name, on rank 0 ({} elsewhere)."""
    return get_optimizer_state_dict(module, optimizer, options=_FULL)


def load_full_optimizer_state(
    module: nn.Module, optimizer: torch.optim.Optimizer, state: dict
) -> None:
    """Load a whole optimiser state keyed by parameter name (every rank holds it)."""
    set_optimizer_state_dict(
        module, optimizer, state, options=StateDictOptions(full_state_dict=True)
    )

"""Device choice and `torchrun` process groups (gloo on CPU, nccl on CUDA). No launcher of our own."""

from __future__ import annotations

import os
import secrets
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.distributed as dist


@dataclass(frozen=True)
class Runtime:
    rank: int
    world_size: int
    local_rank: int
    device: torch.device

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def distributed(self) -> bool:
        return self.world_size > 1


def pick_device(name: str = "auto", local_rank: int = 0, world_size: int = 1) -> torch.device:
    """The device this process trains on.

    'auto': the local accelerator if there is one (under torchrun, the rank's local GPU), else the CPU.
    'cuda' under torchrun: each rank's local GPU (`cuda:LOCAL_RANK`); 'cuda:N' under torchrun is refused,
    since it would put every rank on the same GPU. Anything else is taken as given."""
    if name == "auto":
        if torch.cuda.is_available():
            return torch.device("cuda", local_rank % torch.cuda.device_count())
        if getattr(torch.backends, "mps", None) is not None and torch.backends.mps.is_available():
            return torch.device("mps")
        return torch.device("cpu")
    device = torch.device(name)
    if world_size > 1 and device.type == "cuda":
        if device.index is not None:
            raise ValueError(f"--device {name} under torchrun would put all {world_size} ranks on one GPU; "
                             f"pass --device cuda (each rank takes its local GPU, cuda:LOCAL_RANK)")
        return torch.device("cuda", local_rank)
    return device


def check_shared_folder(folder: Path, runtime: "Runtime") -> None:
    """Every rank must see the run folder rank 0 writes to (on several nodes: a shared file system).

    Rank 0 writes a random token into `folder`; every rank reads it back. A rank that cannot makes every
    rank fail at once with the same message, instead of one rank hanging later."""
    if not runtime.distributed:
        return
    token = [secrets.token_hex(8) if runtime.is_main else None]
    marker = folder / ".ranks_see_this_folder"
    if runtime.is_main:
        folder.mkdir(parents=True, exist_ok=True)
        marker.write_text(token[0])
    dist.broadcast_object_list(token, src=0)
    seen = marker.exists() and marker.read_text() == token[0]
    blind = torch.tensor([0.0 if seen else 1.0], device=runtime.device)
    dist.all_reduce(blind, op=dist.ReduceOp.SUM)
    if blind.item() > 0:
        raise RuntimeError(f"{int(blind.item())} of {runtime.world_size} ranks cannot see the run folder {folder} "
                           f"that rank 0 writes; across nodes it must be on a shared file system (NFS, Lustre...)")


def init_runtime(device: str = "auto") -> Runtime:
    """Join the process group when started by torchrun (WORLD_SIZE > 1), else run alone."""
    world_size = int(os.environ.get("WORLD_SIZE", "1"))
    rank = int(os.environ.get("RANK", "0"))
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    chosen = pick_device(device, local_rank, world_size)
    if world_size > 1 and not dist.is_initialized():
        if chosen.type == "cuda":
            torch.cuda.set_device(chosen)
        dist.init_process_group(backend="nccl" if chosen.type == "cuda" else "gloo")
    return Runtime(rank=rank, world_size=world_size, local_rank=local_rank, device=chosen)


def shutdown(runtime: Runtime) -> None:
    if runtime.distributed and dist.is_initialized():
        dist.barrier()
        dist.destroy_process_group()


def any_rank(flag: bool, runtime: Runtime) -> bool:
    """True on every rank when `flag` is true on at least one (keeps ranks stepping in lock-step)."""
    if not runtime.distributed:
        return flag
    value = torch.tensor([1.0 if flag else 0.0], device=runtime.device)
    dist.all_reduce(value, op=dist.ReduceOp.MAX)
    return bool(value.item() > 0)

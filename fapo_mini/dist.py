"""torchrun / DDP set-up and the few collective helpers the trainers need.

Every script runs unchanged under `python script.py` (one process) and
`torchrun --nproc_per_node N script.py` (N processes): `setup()` reads the
environment torchrun sets (RANK, WORLD_SIZE, LOCAL_RANK) and falls back to a
single process when it is absent. A process group exists only when
WORLD_SIZE > 1, so every helper here is a no-op in a single process and the
trainers never branch on "distributed or not".

Many nodes need nothing here: torchrun's c10d rendezvous (--nnodes, --node-rank,
--rdzv-endpoint) sets the same variables, RANK counting over every node's processes.

Simplified away: model parallelism (FSDP2 sharding is parallel.py), and device selection
beyond "cuda:LOCAL_RANK if CUDA, else CPU".
"""

import os
from dataclasses import dataclass
from datetime import timedelta

import torch
import torch.distributed as dist


@dataclass
class DistInfo:
    """Where this process sits: its global rank, the number of processes, its rank on the node, its device."""

    rank: int
    world_size: int
    local_rank: int
    device: torch.device

    @property
    def is_main(self) -> bool:
        return self.rank == 0


def _env_int(name: str, default: int) -> int:
    value = os.environ.get(name)
    if value is None:
        return default
    try:
        return int(value)
    except ValueError:
        raise ValueError(f"environment variable {name}={value!r} is not an integer") from None


def setup(timeout_min: float = 60.0) -> DistInfo:
    """Read torchrun's environment, pick the device, start the process group when WORLD_SIZE > 1.

    CUDA: device cuda:LOCAL_RANK (made the current device), backend nccl.
    CPU:  device cpu, backend gloo (how the tests and the toy world run several ranks).
    A collective that waits more than `timeout_min` minutes for a rank ends the run. NCCL's own
    default is 10 minutes: less than one rank's GenRM judge can take at the authors' 16384-token
    critique cap (recipes/README.md), while the ranks wait for the slowest at the update.
    """
    world_size = _env_int("WORLD_SIZE", 1)
    rank = _env_int("RANK", 0)
    local_rank = _env_int("LOCAL_RANK", 0)
    if world_size < 1 or not 0 <= rank < world_size:
        raise ValueError(f"bad torchrun environment: RANK={rank}, WORLD_SIZE={world_size}")
    if torch.cuda.is_available():
        if local_rank >= torch.cuda.device_count():
            raise ValueError(f"LOCAL_RANK={local_rank} but only {torch.cuda.device_count()} CUDA devices are visible")
        device = torch.device("cuda", local_rank)
        torch.cuda.set_device(device)
    else:
        device = torch.device("cpu")
    if world_size > 1 and not dist.is_initialized():
        if device.type == "cuda":
            # device_id binds the group to this GPU now, so collectives never guess the device.
            dist.init_process_group(backend="nccl", device_id=device, timeout=timedelta(minutes=timeout_min))
        else:
            dist.init_process_group(backend="gloo", timeout=timedelta(minutes=timeout_min))
    return DistInfo(rank=rank, world_size=world_size, local_rank=local_rank, device=device)


def _initialized() -> bool:
    return dist.is_available() and dist.is_initialized()


def cleanup() -> None:
    """Tear the process group down: every rank calls it once, at the end of a script.

    First a barrier: no rank tears down and exits (closing its connections) while a peer is still
    in a collective, and while this rank waits there, with the GIL released, gloo's worker threads
    can finish releasing the tensors of the collectives they ran. Then destroy_process_group.
    That does not end gloo's threads (2 workers, 1 socket loop) while anything holds the group,
    and torch does (torch.distributed.nn.functional keeps `group.WORLD` as a default argument,
    FSDP2 its device mesh), so they live until interpreter shutdown. They must be idle by then:
    Python ends a thread that asks for the GIL during shutdown, and inside a C++ destructor that
    is `terminate called without an active exception` (SIGABRT), which a resumed --fsdp run once
    printed on its way out.
    """
    if _initialized():
        dist.barrier()
        dist.destroy_process_group()


def print0(*args, **kwargs) -> None:
    """print() on rank 0 only (works before setup() too: it reads RANK)."""
    if _env_int("RANK", 0) == 0:
        print(*args, **kwargs)


def all_reduce_sum(t: torch.Tensor) -> torch.Tensor:
    """Sum `t` over all ranks, in place, and return it. No-op in a single process."""
    if _initialized():
        dist.all_reduce(t, op=dist.ReduceOp.SUM)
    return t


def barrier() -> None:
    """Wait until every rank gets here. No-op in a single process."""
    if _initialized():
        dist.barrier()


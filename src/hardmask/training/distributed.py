"""Process-group setup for one training job: one task per GPU, NCCL on GPUs and gloo on CPUs.

A job learns its place from whoever started it, in this order:

1. a submitit job (``SUBMITIT_EXECUTOR`` is ``slurm`` or ``local``): rank, local rank and task count come
   from ``submitit.JobEnvironment``; the rendezvous is the job's first host on a port derived from the job id,
   so every task of a job computes the same address without talking to the others;
2. ``torchrun`` (``RANK``, ``WORLD_SIZE``, ``LOCAL_RANK``, ``MASTER_ADDR``, ``MASTER_PORT``);
3. otherwise a single process, with no process group at all.

Collectives below are no-ops in a single process, so the training loop calls them unconditionally.
"""

from __future__ import annotations

import datetime
import logging
import os
import zlib
from collections.abc import Iterable
from dataclasses import dataclass, field

import torch
import torch.distributed as tdist

from hardmask.errors import HardmaskError

log = logging.getLogger("hardmask.distributed")

# Rendezvous ports derived from a job id fall in [PORT_BASE, PORT_BASE + PORT_SPAN): above the well-known and
# registered service ports, below Linux's default ephemeral range (32768+), where clients' own sockets live.
PORT_BASE = 12000
PORT_SPAN = 20000
# Gradients are averaged in flat buckets of about this size: few collectives, bounded extra memory.
GRAD_BUCKET_BYTES = 32 * 2**20


class DistributedSetupError(HardmaskError, RuntimeError):
    """The launcher's description of the job is inconsistent or cannot be honoured on this machine."""


@dataclass(frozen=True)
class DistContext:
    """Where this process sits in its job. ``device`` is None when the launcher does not pin one (CPU or
    single process): the config's ``base.device`` decides then."""

    rank: int = 0
    local_rank: int = 0
    world_size: int = 1
    device: str | None = None
    is_main: bool = field(init=False)  # global rank 0: the only rank that writes files and MLflow records

    def __post_init__(self) -> None:
        if not 0 <= self.rank < self.world_size:
            raise DistributedSetupError(f"rank {self.rank} outside world of size {self.world_size}")
        object.__setattr__(self, "is_main", self.rank == 0)

    @classmethod
    def single(cls, device: str | None = None) -> DistContext:
        return cls(rank=0, local_rank=0, world_size=1, device=device)

    @property
    def distributed(self) -> bool:
        return self.world_size > 1


@dataclass(frozen=True)
class LaunchInfo:
    """What the launcher says about this process, before any process group exists."""

    source: str  # "submitit-slurm", "submitit-local" or "torchrun"
    rank: int
    local_rank: int
    world_size: int
    master_addr: str
    master_port: int


def port_for_job(job_id: str) -> int:
    """The rendezvous port every task of a job derives alike from the job id (``"123_4"`` array ids too)."""
    return PORT_BASE + zlib.crc32(job_id.encode()) % PORT_SPAN


def detect_launch() -> LaunchInfo | None:
    """The launcher's view of this process, or None for a plain single process."""
    executor = os.environ.get("SUBMITIT_EXECUTOR", "")
    if executor in ("slurm", "local"):
        import submitit

        env = submitit.JobEnvironment()
        return LaunchInfo(
            source=f"submitit-{executor}",
            rank=env.global_rank,
            local_rank=env.local_rank,
            world_size=env.num_tasks,
            master_addr=env.hostnames[0],
            master_port=port_for_job(str(env.job_id)),
        )
    torchrun_keys = ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT")
    if all(key in os.environ for key in torchrun_keys):
        return LaunchInfo(
            source="torchrun",
            rank=int(os.environ["RANK"]),
            local_rank=int(os.environ["LOCAL_RANK"]),
            world_size=int(os.environ["WORLD_SIZE"]),
            master_addr=os.environ["MASTER_ADDR"],
            master_port=int(os.environ["MASTER_PORT"]),
        )
    return None


def init_distributed(backend: str | None = None, timeout_s: float = 600.0) -> DistContext:
    """Join the job's process group (created here once) and return this process's context.

    ``backend`` defaults to NCCL when CUDA is available and gloo otherwise. With NCCL each task takes the GPU
    of its local rank, so a job must run one task per GPU.
    """
    if tdist.is_available() and tdist.is_initialized():  # a second call inside the same process
        return _context_of_current_group()
    launch = detect_launch()
    if launch is None or launch.world_size == 1:
        return DistContext.single()

    backend = backend or ("nccl" if torch.cuda.is_available() else "gloo")
    device = _pin_gpu(launch.local_rank) if backend == "nccl" else None
    init_method = f"tcp://{launch.master_addr}:{launch.master_port}"
    log.info(
        "rank %d/%d (local %d) joining %s via %s (%s)",
        launch.rank,
        launch.world_size,
        launch.local_rank,
        backend,
        init_method,
        launch.source,
    )
    tdist.init_process_group(
        backend=backend,
        init_method=init_method,
        rank=launch.rank,
        world_size=launch.world_size,
        timeout=datetime.timedelta(seconds=timeout_s),
    )
    return DistContext(
        rank=launch.rank, local_rank=launch.local_rank, world_size=launch.world_size, device=device
    )


def _pin_gpu(local_rank: int) -> str:
    visible = torch.cuda.device_count()
    if local_rank >= visible:
        raise DistributedSetupError(
            f"task with local rank {local_rank} needs its own GPU but {visible} are visible; run one task "
            f"per GPU (cluster.slurm.tasks_per_node = cluster.slurm.gpus_per_node)"
        )
    torch.cuda.set_device(local_rank)
    return f"cuda:{local_rank}"


def _context_of_current_group() -> DistContext:
    rank, world = tdist.get_rank(), tdist.get_world_size()
    launch = detect_launch()
    local_rank = launch.local_rank if launch is not None else rank
    device = f"cuda:{torch.cuda.current_device()}" if tdist.get_backend() == "nccl" else None
    return DistContext(rank=rank, local_rank=local_rank, world_size=world, device=device)


def cleanup() -> None:
    """Leave the process group (safe to call when there is none)."""
    if tdist.is_available() and tdist.is_initialized():
        tdist.destroy_process_group()


def _active() -> bool:
    return tdist.is_available() and tdist.is_initialized() and tdist.get_world_size() > 1


def barrier(dist: DistContext | None = None) -> None:
    """Wait for every rank. ``dist`` pins the GPU NCCL synchronises on; a no-op in a single process."""
    if not _active():
        return
    if tdist.get_backend() == "nccl" and dist is not None and dist.device is not None:
        tdist.barrier(device_ids=[torch.device(dist.device).index])
    else:
        tdist.barrier()


def all_reduce_mean(value: torch.Tensor | float) -> torch.Tensor | float:
    """The mean of ``value`` over all ranks, of the same kind as ``value`` (a float stays a float)."""
    if not _active():
        return value
    if isinstance(value, torch.Tensor):
        reduced = value.detach().clone()
        tdist.all_reduce(reduced, op=tdist.ReduceOp.SUM)
        return reduced / tdist.get_world_size()
    device = "cuda" if tdist.get_backend() == "nccl" else "cpu"
    reduced = torch.tensor([float(value)], dtype=torch.float64, device=device)
    tdist.all_reduce(reduced, op=tdist.ReduceOp.SUM)
    return float(reduced.item()) / tdist.get_world_size()


def all_reduce_grads(params: Iterable[torch.nn.Parameter], bucket_bytes: int = GRAD_BUCKET_BYTES) -> None:
    """Average ``.grad`` over ranks in place: the gradient of the mean loss over the global batch.

    Parameters whose grad is None are skipped; every rank must agree on which those are (the model's graph
    does not depend on the data here). Gradients travel in flat buckets of one dtype and device.
    """
    if not _active():
        return
    world = tdist.get_world_size()
    bucket: list[torch.Tensor] = []
    size = 0
    for grad in (p.grad for p in params if p.grad is not None):
        if bucket and (
            grad.dtype != bucket[0].dtype or grad.device != bucket[0].device or size >= bucket_bytes
        ):
            _reduce_bucket(bucket, world)
            bucket, size = [], 0
        bucket.append(grad)
        size += grad.numel() * grad.element_size()
    if bucket:
        _reduce_bucket(bucket, world)


def _reduce_bucket(grads: list[torch.Tensor], world: int) -> None:
    flat = torch.cat([g.reshape(-1) for g in grads])  # [sum of numels]
    tdist.all_reduce(flat, op=tdist.ReduceOp.SUM)
    flat /= world
    offset = 0
    for g in grads:
        g.copy_(flat[offset : offset + g.numel()].view_as(g))
        offset += g.numel()

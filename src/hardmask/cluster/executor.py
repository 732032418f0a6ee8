"""submitit executors built from the ``cluster`` config section.

``cluster.executor`` picks where jobs run:

- ``local``: subprocesses on this machine, ``cluster.local_tasks`` processes per job (one per GPU when there
  are GPUs, DDP over gloo on CPUs);
- ``debug``: in this process, one after the other (no pickling, breakpoints work);
- ``slurm``: ``sbatch`` job arrays with the resources of ``cluster.slurm``.

``cluster.slurm.time_min`` is also the local executor's time limit; ``cluster.slurm.max_num_timeout`` bounds
the requeues after a time-out for both (preemptions requeue without limit).
"""

from __future__ import annotations

import shutil
from pathlib import Path

import submitit

from hardmask.config import ClusterSection


class ClusterSetupError(RuntimeError):
    """The configured executor cannot be used on this machine."""


def make_executor(cluster_cfg: ClusterSection, folder: str | Path, name: str) -> submitit.Executor:
    """An executor for ``cluster_cfg.executor`` that keeps its pickles and logs in ``folder/<job id>/``."""
    folder = Path(folder) / "%j"  # submitit puts each job's files into its own directory
    slurm = cluster_cfg.slurm
    kind = cluster_cfg.executor
    if kind == "debug":
        return submitit.AutoExecutor(folder=folder, cluster="debug")
    if kind == "local":
        executor = submitit.AutoExecutor(
            folder=folder, cluster="local", local_max_num_timeout=slurm.max_num_timeout
        )
        executor.update_parameters(
            name=name,
            timeout_min=slurm.time_min,
            tasks_per_node=cluster_cfg.local_tasks,
            # the local executor hides every GPU it is not given (CUDA_VISIBLE_DEVICES="")
            gpus_per_node=min(cluster_cfg.local_tasks, _visible_gpus()),
        )
        return executor
    if shutil.which("sbatch") is None or shutil.which("srun") is None:
        raise ClusterSetupError(
            "cluster.executor=slurm but the SLURM client commands (sbatch, srun) are not on PATH; "
            "start a local SLURM with `scripts/slurm.sh install && scripts/slurm.sh start` "
            "or set cluster.executor=local"
        )
    executor = submitit.AutoExecutor(
        folder=folder, cluster="slurm", slurm_max_num_timeout=slurm.max_num_timeout
    )
    options = {
        "slurm_partition": slurm.partition,
        "slurm_account": slurm.account,
        "slurm_qos": slurm.qos,
    }
    executor.update_parameters(
        name=name,
        timeout_min=slurm.time_min,
        nodes=slurm.nodes,
        gpus_per_node=slurm.gpus_per_node,
        tasks_per_node=slurm.tasks_per_node,
        cpus_per_task=slurm.cpus_per_task,
        mem_gb=slurm.mem_gb,
        slurm_array_parallelism=cluster_cfg.array_parallelism,
        slurm_additional_parameters=dict(slurm.additional_parameters),
        slurm_setup=list(slurm.setup),
        **{key: value for key, value in options.items() if value is not None},
    )
    return executor


def _visible_gpus() -> int:
    import torch

    return torch.cuda.device_count() if torch.cuda.is_available() else 0

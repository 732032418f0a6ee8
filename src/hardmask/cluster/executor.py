"""submitit executors built from the ``cluster`` config section.

``cluster.executor`` picks where jobs run:

- ``local``: subprocesses on this machine, ``cluster.local_tasks`` processes per job (one per GPU when there
  are GPUs, DDP over gloo on CPUs); with one process per job, each job is a worker that trains several runs in
  turn (:class:`hardmask.cluster.job.LocalWorker`);
- ``debug``: in this process, one after the other (no pickling, breakpoints work);
- ``slurm``: ``sbatch`` job arrays with the resources of ``cluster.slurm``.

``cluster.slurm.time_min`` is also the local executor's time limit per run (a local worker gets it once for
every run it may train); ``cluster.slurm.max_num_timeout`` bounds
the requeues after a time-out for both (preemptions requeue without limit).
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import submitit

from hardmask.config import ClusterSection
from hardmask.errors import HardmaskError


class ClusterSetupError(HardmaskError, RuntimeError):
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


@contextlib.contextmanager
def detached_local_jobs(console_log: Path) -> Iterator[None]:
    """Start submitit's local job controllers in a session of their own, their console output going to
    ``console_log``.

    Why: started as children of the train stage, they share its terminal, so a Ctrl-C reaches them too; each
    prints KeyboardInterrupt tracebacks over the stage's output and kills its training task a second later,
    before the task has closed its MLflow run. Detached, only the stage gets the Ctrl-C and stops its jobs
    itself (:meth:`hardmask.cluster.job.JobWatch.cancel`). submitit's local executor has no option for this,
    so the ``subprocess`` its launcher sees is swapped for the duration of the submission.
    """
    from submitit.local import local

    original = local.subprocess
    console_log.parent.mkdir(parents=True, exist_ok=True)
    with open(console_log, "ab") as sink:

        class _Detached:
            def __getattr__(self, name: str):
                return getattr(original, name)

            @staticmethod
            def Popen(*args, **kwargs):  # noqa: N802 (the name submitit calls)
                kwargs.update(start_new_session=True, stdin=subprocess.DEVNULL, stdout=sink, stderr=sink)
                return original.Popen(*args, **kwargs)

        local.subprocess = _Detached()
        try:
            yield
        finally:
            local.subprocess = original


def interrupt_local_job(job_id: str) -> None:
    """Ctrl-C for one local job: SIGINT to its training tasks (the controller's children), which close their
    MLflow runs and exit, after which the controller ends by itself."""
    import psutil

    try:
        tasks = psutil.Process(int(job_id)).children()
    except (psutil.Error, ValueError):
        return
    for task in tasks:
        with contextlib.suppress(psutil.Error):
            task.send_signal(signal.SIGINT)


def describe_slurm() -> str:
    """What the cluster offers, from ``sinfo``: one line per partition (state, nodes, CPUs and memory per
    node, GPUs, time limit), for messages about a refused job; empty where SLURM cannot be asked."""
    sinfo = shutil.which("sinfo")
    if sinfo is None:
        return ""
    fields = "%P|%a|%D|%c|%m|%G|%l"  # partition, availability, nodes, CPUs/node, memory MB/node, gres, limit
    try:
        out = subprocess.run(
            [sinfo, "--noheader", "--format", fields], capture_output=True, text=True, timeout=30, check=True
        ).stdout
    except (OSError, subprocess.SubprocessError):
        return ""
    lines = ["The cluster offers (sinfo):"]
    for row in sorted(set(out.strip().splitlines())):
        partition, avail, nodes, cpus, mem, gres, limit = (row.split("|") + [""] * 7)[:7]
        gpus = "no GPUs" if gres in ("", "(null)") else gres
        lines.append(
            f"  partition {partition} ({avail}): {nodes} nodes, {cpus} CPUs and {mem} MB per node, {gpus}, "
            f"time limit {limit}"
        )
    return "\n".join(lines) if len(lines) > 1 else ""


# The device files through which Linux GPU drivers serve CUDA: NVIDIA's, AMD ROCm's (HIP builds), WSL's.
GPU_DEVICE_FILES = ("/dev/nvidiactl", "/dev/kfd", "/dev/dxg")


def _visible_gpus() -> int:
    """The GPUs torch can use here. Where Linux has none of the GPU drivers' device files there are none, and
    torch is not imported to say so (1.2 s of the train stage before its first job)."""
    if sys.platform == "linux" and not any(os.path.exists(path) for path in GPU_DEVICE_FILES):
        return 0
    import torch

    return torch.cuda.device_count() if torch.cuda.is_available() else 0

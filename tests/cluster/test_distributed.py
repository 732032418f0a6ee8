"""Distributed context: launcher detection, single-process fallback, and a real 2-process gloo job."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import pytest
import torch

from hardmask.cluster import TrainJob, make_executor
from hardmask.training.distributed import (
    PORT_BASE,
    PORT_SPAN,
    DistContext,
    DistributedSetupError,
    LaunchInfo,
    all_reduce_grads,
    all_reduce_mean,
    detect_launch,
    init_distributed,
    port_for_job,
)

from ..conftest import make_tiny_config
from .standins import DDPResult, assert_two_ranks_match_single_process, ddp_train

LAUNCH_VARS = (
    "SUBMITIT_EXECUTOR", "RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT",
    "SLURM_JOB_ID", "SLURM_NTASKS", "SLURM_PROCID", "SLURM_LOCALID", "SLURM_JOB_NODELIST", "SLURM_NODEID",
    "SLURM_JOB_NUM_NODES", "SLURM_ARRAY_JOB_ID", "SLURM_ARRAY_TASK_ID",
)  # fmt: skip


@pytest.fixture
def clean_launch_env(monkeypatch: pytest.MonkeyPatch) -> pytest.MonkeyPatch:
    for name in LAUNCH_VARS:
        monkeypatch.delenv(name, raising=False)
    return monkeypatch


def _set_env(monkeypatch: pytest.MonkeyPatch, **values: str) -> None:
    for name, value in values.items():
        monkeypatch.setenv(name, value)


def test_context_marks_rank_zero_as_main_and_rejects_impossible_ranks():
    assert DistContext(rank=0, local_rank=0, world_size=2).is_main
    assert not DistContext(rank=1, local_rank=1, world_size=2).is_main
    single = DistContext.single()
    assert (single.rank, single.world_size, single.device) == (0, 1, None)
    assert single.is_main and not single.distributed
    with pytest.raises(DistributedSetupError, match="rank 2 outside world of size 2"):
        DistContext(rank=2, local_rank=0, world_size=2)
    with pytest.raises(dataclasses.FrozenInstanceError):
        single.rank = 1  # type: ignore[misc]


def test_port_is_derived_from_the_job_id_alike_for_every_task():
    assert port_for_job("123") == port_for_job("123")  # what every task of job 123 computes
    assert len({port_for_job(j) for j in ("123", "124", "123_0", "123_1")}) == 4
    assert all(PORT_BASE <= port_for_job(str(j)) < PORT_BASE + PORT_SPAN for j in range(500))


def test_plain_process_runs_single_without_a_process_group(clean_launch_env):
    assert detect_launch() is None
    dist = init_distributed()
    assert dist == DistContext.single()
    assert not torch.distributed.is_initialized()
    grad = torch.tensor([1.0, 2.0])
    weights = torch.nn.Parameter(torch.zeros(2))
    weights.grad = grad.clone()
    all_reduce_grads([weights])  # no-ops in a single process
    assert torch.equal(weights.grad, grad)
    assert all_reduce_mean(3.5) == 3.5


def test_torchrun_variables_are_read(clean_launch_env):
    _set_env(clean_launch_env, RANK="3", WORLD_SIZE="4", LOCAL_RANK="1", MASTER_ADDR="n1", MASTER_PORT="2900")
    expected = LaunchInfo("torchrun", rank=3, local_rank=1, world_size=4, master_addr="n1", master_port=2900)
    assert detect_launch() == expected


def test_submitit_slurm_job_rendezvous_on_first_host_and_job_port(clean_launch_env):
    _set_env(
        clean_launch_env,
        SUBMITIT_EXECUTOR="slurm",
        SLURM_JOB_ID="991",
        SLURM_NTASKS="4",
        SLURM_PROCID="3",
        SLURM_LOCALID="1",
        SLURM_JOB_NODELIST="gpu[07-08]",
        SLURM_NODEID="1",
        SLURM_JOB_NUM_NODES="2",
    )
    expected = LaunchInfo("submitit-slurm", 3, 1, 4, master_addr="gpu07", master_port=port_for_job("991"))
    assert detect_launch() == expected


def test_nccl_with_more_tasks_than_gpus_names_the_fix(clean_launch_env):
    if torch.cuda.device_count() >= 2:
        pytest.skip("needs a machine with fewer than 2 GPUs")
    _set_env(clean_launch_env, RANK="1", WORLD_SIZE="2", LOCAL_RANK="1", MASTER_ADDR="x", MASTER_PORT="1")
    with pytest.raises(DistributedSetupError, match="one task per GPU"):
        init_distributed(backend="nccl")


def test_two_task_gloo_job_equals_the_single_process_result_and_only_rank0_tracks(
    tmp_path: Path, mlflow_uri: str
):
    """A 2-process job on the local executor: all-reduced loss and gradients equal the full-batch ones."""
    from mlflow.tracking import MlflowClient

    cfg = make_tiny_config(
        tmp_path, cluster={"executor": "local", "local_tasks": 2}, tracking={"uri": mlflow_uri}
    )
    executor = make_executor(cfg.cluster, tmp_path / "logs", name="ddp-test")
    job = executor.submit(TrainJob("tests.cluster.standins:ddp_train"), cfg.dump(), "baseline_vit", 3)
    ranks: list[DDPResult] = job.results()
    single = ddp_train(cfg, "baseline_vit", 4, tmp_path / "single", DistContext.single())

    assert_two_ranks_match_single_process(ranks, single)
    client = MlflowClient(mlflow_uri)
    experiment = client.get_experiment_by_name(cfg.tracking.experiment)
    job_runs = client.search_runs([experiment.experiment_id], "tags.kind = 'train' and tags.seed = '3'")
    assert [r.info.run_id for r in job_runs] == [ranks[0].mlflow_run_id]
    assert job_runs[0].data.metrics["train/loss"] == pytest.approx(single.loss, rel=1e-12)

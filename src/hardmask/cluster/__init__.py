"""Job submission through submitit: executors from the config, the resumable training job, job arrays."""

from hardmask.cluster.executor import ClusterSetupError, make_executor
from hardmask.cluster.job import (
    DEFAULT_TARGET,
    JobFailure,
    SubmissionError,
    TrainingJobsFailed,
    TrainJob,
    submit_training,
    supersede_stale_runs,
)

__all__ = [
    "DEFAULT_TARGET",
    "ClusterSetupError",
    "JobFailure",
    "SubmissionError",
    "TrainJob",
    "TrainingJobsFailed",
    "make_executor",
    "submit_training",
    "supersede_stale_runs",
]

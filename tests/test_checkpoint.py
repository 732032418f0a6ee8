"""Which config changes forbid resuming a checkpoint (training_config_diff)."""

from __future__ import annotations

from hardmask.checkpoint import describe_config_diff, training_config_diff

from .conftest import make_tiny_config


def test_only_keys_that_change_the_computation_count(tmp_path):
    cfg = make_tiny_config(tmp_path)
    (tmp_path / "elsewhere").mkdir()
    moved = make_tiny_config(
        tmp_path / "elsewhere",  # every path differs
        data={"loader": {"num_workers": 3, "eval_batch_size": 7}},
        train={"checkpoint_every_steps": 1, "variants": ["oracle_mask"], "num_threads": 2},
        cluster={"executor": "slurm"},
        tracking={"experiment": "other"},
        evaluate={"leave_one_part_out": False},
        report={"html": False},
    )
    assert training_config_diff(cfg.dump(), moved.dump()) == {}
    changed = make_tiny_config(
        tmp_path, optim={"lr": 0.5}, loss={"entropy": 0.0}, data={"loader": {"batch_size": 8}}
    )
    diff = training_config_diff(cfg.dump(), changed.dump())
    assert set(diff) == {"optim.lr", "loss.entropy", "data.loader.batch_size"}
    assert diff["optim.lr"] == (cfg.optim.lr, 0.5)
    assert describe_config_diff(diff, limit=1) == "data.loader.batch_size: 16 -> 8 and 2 more"


def test_keys_present_on_one_side_only_are_differences(tmp_path):
    current = make_tiny_config(tmp_path).dump()
    older = {**current, "loss": {k: v for k, v in current["loss"].items() if k != "foreground_presence"}}
    assert list(training_config_diff(older, current)) == ["loss.foreground_presence"]

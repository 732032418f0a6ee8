"""Atomic writes: whole or nothing, with the permissions the user's umask gives (readable by colleagues)."""

from __future__ import annotations

import os
import signal
import stat

import pytest
import torch

from hardmask.io import atomic_dir, atomic_torch_save, atomic_write_json, atomic_write_text


@pytest.fixture
def umask_022():
    old = os.umask(0o022)
    yield
    os.umask(old)


def test_files_and_folders_get_the_permissions_of_the_users_umask(tmp_path, umask_022):
    atomic_write_text(tmp_path / "a.txt", "x")
    atomic_write_json(tmp_path / "b.json", {"a": 1})
    with atomic_dir(tmp_path / "folder") as tmp:
        (tmp / "inside.csv").write_text("1")
    mode = lambda p: stat.S_IMODE(p.stat().st_mode)  # noqa: E731
    assert mode(tmp_path / "a.txt") == mode(tmp_path / "b.json") == 0o644
    assert mode(tmp_path / "folder") == 0o755
    os.umask(0o077)  # a private user keeps private files
    atomic_write_text(tmp_path / "c.txt", "x")
    assert mode(tmp_path / "c.txt") == 0o600


def test_a_failed_write_leaves_the_previous_file_and_no_temporary(tmp_path):
    target = tmp_path / "kept.txt"
    atomic_write_text(target, "old")
    with pytest.raises(RuntimeError), atomic_dir(tmp_path / "d") as tmp:
        (tmp / "x").write_text("half")
        raise RuntimeError("crash")
    assert target.read_text() == "old" and sorted(p.name for p in tmp_path.iterdir()) == ["kept.txt"]


def test_the_same_checkpoint_saved_twice_has_the_same_bytes(tmp_path):
    # DVC hashes the runs' checkpoints: equal content must give equal bytes, wherever it is written
    state = {"model": {"weight": torch.arange(6.0).reshape(2, 3)}, "loop": {"epoch": 3}}
    atomic_torch_save(state, tmp_path / "a" / "last.pt")
    atomic_torch_save(state, tmp_path / "b" / "last.pt")
    assert (tmp_path / "a" / "last.pt").read_bytes() == (tmp_path / "b" / "last.pt").read_bytes()
    assert torch.load(tmp_path / "a" / "last.pt", weights_only=True)["loop"] == {"epoch": 3}


class _CtrlCWhilePickled:
    """Pickled inside torch.save: Ctrl-C arrives in the middle of the checkpoint write."""

    def __reduce__(self):
        signal.raise_signal(signal.SIGINT)
        return (float, (0.0,))


def test_ctrl_c_during_a_checkpoint_write_takes_effect_once_the_file_is_whole(tmp_path):
    # (torch.save cut by the KeyboardInterrupt raised a RuntimeError from its zip writer: the run that Ctrl-C
    # stopped was recorded as failed, not killed)
    path = tmp_path / "last.pt"
    previous = signal.signal(signal.SIGINT, signal.default_int_handler)  # also where the tests ignore SIGINT
    try:
        with pytest.raises(KeyboardInterrupt):
            atomic_torch_save({"weights": torch.arange(3.0), "marker": _CtrlCWhilePickled()}, path)
    finally:
        signal.signal(signal.SIGINT, previous)
    assert torch.equal(torch.load(path, weights_only=False)["weights"], torch.arange(3.0))  # our own file
    assert [p.name for p in tmp_path.iterdir()] == ["last.pt"]  # no temporary file left

"""``hardmask predict`` end to end: a tiny trained run, predictions on real images, the TorchScript export
against the eager model on both stage-2 paths, the MLflow path, and the messages of bad input."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
from PIL import Image

from hardmask.checkpoint import save_checkpoint
from hardmask.cli import main
from hardmask.config import Config, save_config
from hardmask.data import build_eval_transform, generate_synthetic
from hardmask.data.common import list_images, read_rgb
from hardmask.evaluation.checkpoints import LoadedRun, load_checkpoint_file
from hardmask.export import METADATA_NAME, OUTPUT_NAMES, inference_model, stage2_impl
from hardmask.models import build_model
from hardmask.models.backbone import input_normalization
from hardmask.training.loop import train

from .conftest import make_tiny_config

CPU = torch.device("cpu")
ATOL = 1e-5
# torch 2.14 deprecates torch.jit (the export module says why it is still the format); the tests load files
pytestmark = [
    pytest.mark.filterwarnings(r"ignore:.*torch\.jit\.load.* is deprecated:FutureWarning"),
    pytest.mark.xdist_group("predict"),  # one worker trains the module's run
]


# ------------------------------------------------------------------------------------------------ fixtures
class Trained:
    """One tiny two_stage_hard run (one epoch) logged to a tiny MLflow store, and a folder of test images."""

    def __init__(self, root: Path) -> None:
        self.cfg: Config = make_tiny_config(root, optim={"epochs": 1}, tracking={"log_checkpoints": True})
        generate_synthetic(self.cfg.data.synthetic, self.cfg.data_root, seed=self.cfg.base.seed)
        self.run_dir = root / "runs" / "two_stage_hard" / "seed0"
        self.mlflow_run_id = train(self.cfg, "two_stage_hard", 0, self.run_dir).mlflow_run_id
        self.images = root / "images"
        self.image_files = _write_images(self.cfg.data_root, self.images)

    def model(self, which: str = "best") -> LoadedRun:
        return load_checkpoint_file(self.run_dir / "checkpoints" / f"{which}.pt", which=which, device=CPU)


def _write_images(data_root: Path, folder: Path) -> list[Path]:
    """A few benchmark test images as PNG and JPEG, one nested and one not square (resize + crop)."""
    tests = [p for p in list_images(data_root) if p.name.startswith("test_") and p.parent.parent == data_root]
    sources = tests[:3] + tests[-2:]  # both classes (one folder per class)
    (folder / "nested").mkdir(parents=True)
    written = []
    for i, source in enumerate(sources):
        image = Image.open(source).convert("RGB")
        if i == 0:
            image = image.resize((48, 40))  # wider than high: the shorter side goes to 32, then a centre crop
        target = folder / ("nested" if i % 2 else ".") / f"img{i}.{'png' if i < 3 else 'jpg'}"
        image.save(target)
        written.append(target.resolve().relative_to(folder.resolve()))
    return written


@pytest.fixture(scope="module")
def trained(tmp_path_factory) -> Trained:
    return Trained(tmp_path_factory.mktemp("predict"))


def _model_inputs(run: LoadedRun, paths: list[Path]) -> torch.Tensor:
    """The images as evaluation transforms them (built here independently of hardmask.predict)."""
    mean, std = input_normalization(run.model)
    transform = build_eval_transform(run.train_cfg.data.image_size, mean, std)
    return torch.stack([transform(image=read_rgb(p))["image"] for p in paths])  # [B,3,H,W]


def _random_checkpoint(root: Path, cfg: Config, variant: str, num_classes: int = 2) -> Path:
    """A run directory whose best.pt holds a randomly initialised ``variant`` (no training needed)."""
    torch.manual_seed(0)
    model = build_model(variant, cfg.model, num_classes=num_classes, image_size=cfg.data.image_size)
    run_dir = root / variant
    state = {"variant": variant, "seed": 0, "config": cfg.dump(), "model": model.state_dict()}
    save_checkpoint(run_dir / "checkpoints" / "best.pt", state)
    return run_dir


# ------------------------------------------------------------------------------------------------ predictions
def test_predictions_match_the_eager_model_with_overlays(trained, tmp_path):
    out = tmp_path / "out"
    single = trained.images / trained.image_files[0]
    assert main(["predict", "--run", str(trained.run_dir), str(trained.images), str(single),
                 "--out", str(out), "--device", "cpu", "--batch-size", "2"]) == 0  # fmt: skip

    table = pd.read_csv(out / "predictions.csv")
    paths = [Path(p) for p in table["path"]]
    assert len(table) == len(trained.image_files)  # the file given twice (folder + file) is predicted once
    assert {p.resolve() for p in paths} == {(trained.images / f).resolve() for f in trained.image_files}
    probs = table[["prob_round", "prob_long"]].to_numpy()
    np.testing.assert_allclose(probs.sum(axis=1), 1.0, atol=1e-6)
    assert list(table["class_name"]) == [("round", "long")[p] for p in table["pred"]]

    run = trained.model()
    with torch.no_grad():
        out_eager = run.model(_model_inputs(run, paths))
    np.testing.assert_allclose(probs, out_eager.logits.softmax(-1).numpy(), atol=1e-6)
    assert list(table["pred"]) == out_eager.logits.argmax(-1).tolist()
    np.testing.assert_allclose(table["fg_fraction"], out_eager.hard_mask.float().mean(1).numpy(), atol=1e-6)
    for overlay in table["overlay"]:
        assert (out / overlay).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_last_checkpoint_on_request(trained, tmp_path):
    out = tmp_path / "out"
    argv = [
        "predict",
        "--run",
        str(trained.run_dir),
        "--checkpoint",
        "last",
        "--no-overlays",
        "--out",
        str(out),
    ]
    assert main([*argv, str(trained.images)]) == 0
    table = pd.read_csv(out / "predictions.csv")
    run = trained.model("last")
    with torch.no_grad():
        logits = run.model(_model_inputs(run, [Path(p) for p in table["path"]])).logits
    np.testing.assert_allclose(table[["prob_round", "prob_long"]], logits.softmax(-1).numpy(), atol=1e-6)


def test_without_the_dataset_classes_are_indices(trained, tmp_path):
    """A checkpoint whose training data is not on disk: class indices, no names (and nothing else missing)."""
    state = torch.load(trained.run_dir / "checkpoints" / "best.pt", weights_only=True)
    state["config"]["base"]["data_dir"] = str(tmp_path / "gone")
    run_dir = tmp_path / "moved"
    save_checkpoint(run_dir / "checkpoints" / "best.pt", state)
    out = tmp_path / "out"
    assert (
        main(["predict", "--run", str(run_dir), str(trained.images), "--out", str(out), "--no-overlays"]) == 0
    )
    table = pd.read_csv(out / "predictions.csv")
    assert "class_name" not in table and "overlay" not in table
    assert [c for c in table if c.startswith("prob_")] == ["prob_0", "prob_1"]
    assert not (out / "overlays").exists()


def test_mlflow_run_gives_the_same_predictions_as_the_run_directory(trained, tmp_path, monkeypatch):
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    params = tmp_path / "params.yaml"
    save_config(trained.cfg, params)  # its tracking.uri names the tiny store
    by_dir, by_mlflow = tmp_path / "dir", tmp_path / "mlflow"
    main(["predict", "--run", str(trained.run_dir), str(trained.images), "--out", str(by_dir)])
    main(["predict", "--mlflow-run", trained.mlflow_run_id, "--params", str(params), str(trained.images),
          "--out", str(by_mlflow)])  # fmt: skip
    pd.testing.assert_frame_equal(
        pd.read_csv(by_dir / "predictions.csv"), pd.read_csv(by_mlflow / "predictions.csv")
    )


# ------------------------------------------------------------------------------------------------ export
def _compare(exported: torch.jit.ScriptModule, run: LoadedRun, images: torch.Tensor) -> dict[str, float]:
    """Worst difference of every output of ``exported`` against the eager model on both stage-2 paths."""
    model = inference_model(run)
    worst: dict[str, float] = {}
    with torch.no_grad():
        got = exported(images)
        for impl in ("packed", "dense"):
            with stage2_impl(model, impl):
                expected = model(images)
            assert len(got) == len(expected)
            for name, a, b in zip(OUTPUT_NAMES, got, expected):
                assert a.shape == b.shape and a.dtype == b.dtype, name
                if a.dtype == torch.bool:
                    assert torch.equal(a, b), f"{name} differs from the eager {impl} path"
                else:
                    worst[f"{name}/{impl}"] = float((a - b).abs().max())
    return worst


def test_export_matches_the_eager_model_on_both_stage2_paths(trained, tmp_path):
    export = tmp_path / "model.pt"
    assert main(["predict", "--run", str(trained.run_dir), "--export", str(export)]) == 0
    exported = torch.jit.load(str(export))
    run = trained.model()

    real = _model_inputs(run, [trained.images / f for f in trained.image_files][:4])  # export traced at 2
    random = torch.randn(5, 3, 32, 32, generator=torch.Generator().manual_seed(1))
    for images in (real, random):
        worst = _compare(exported, run, images)
        assert max(worst.values()) <= ATOL, worst
    with torch.no_grad():
        kept = exported(real)[1].float().mean()
    assert 0 < kept < 1  # the masks keep some tokens and drop others: the comparison exercises the masking

    meta = json.loads(export.with_suffix(".json").read_text())
    assert meta["input"]["image_size"] == 32 and meta["input"]["shape"] == ["B", 3, 32, 32]
    assert meta["input"]["mean"] == list(input_normalization(run.model)[0])
    assert meta["class_names"] == ["round", "long"] and meta["num_classes"] == 2
    assert [o["name"] for o in meta["outputs"]] == ["logits", "hard_mask", "part_maps"]
    assert meta["outputs"][1] == {"name": "hard_mask", "shape": ["B", 4, 4], "dtype": "bool"}
    assert max(meta["check"]["vs_eager"]["packed"].values()) <= ATOL


def test_export_metadata_is_inside_the_file(trained, tmp_path):
    export = tmp_path / "model.pt"
    main(["predict", "--run", str(trained.run_dir), "--export", str(export)])
    extra = {METADATA_NAME: ""}
    torch.jit.load(str(export), _extra_files=extra)
    assert json.loads(extra[METADATA_NAME]) == json.loads(export.with_suffix(".json").read_text())


@pytest.mark.parametrize("variant", ["baseline_vit", "two_stage_soft", "stage1_only", "two_stage_hard"])
def test_every_image_only_variant_exports_exactly(trained, tmp_path, variant):
    """Randomly initialised models (masks far from all-kept or all-dropped), three classes: the class count
    comes from the weights, and the dataset's two names do not fit, so classes are indices."""
    run_dir = _random_checkpoint(tmp_path, trained.cfg, variant, num_classes=3)
    export = tmp_path / "model.pt"
    main(
        [
            "predict",
            "--run",
            str(run_dir),
            str(trained.images),
            "--export",
            str(export),
            "--out",
            str(tmp_path),
        ]
    )
    run = load_checkpoint_file(run_dir / "checkpoints" / "best.pt", which="best", device=CPU)
    images = _model_inputs(run, [trained.images / f for f in trained.image_files])
    worst = _compare(torch.jit.load(str(export)), run, images)
    assert max(worst.values()) <= ATOL, worst
    meta = json.loads(export.with_suffix(".json").read_text())
    assert meta["num_classes"] == 3 and meta["class_names"] is None
    table = pd.read_csv(tmp_path / "predictions.csv")
    assert [c for c in table if c.startswith("prob_")] == ["prob_0", "prob_1", "prob_2"]
    assert ("fg_fraction" in table) == (variant != "baseline_vit")


# ------------------------------------------------------------------------------------------------ errors
def _fails(argv: list[str], capsys) -> str:
    """The one-line message of a ``hardmask`` command that ends with status 2."""
    with pytest.raises(SystemExit) as exit_info:
        main(argv)
    assert exit_info.value.code == 2
    err = capsys.readouterr().err
    assert "Traceback" not in err
    return err.strip().splitlines()[-1]


def test_bad_model_sources_are_one_line_errors(trained, tmp_path, capsys, monkeypatch):
    from mlflow.tracking import MlflowClient

    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    images, uri = str(trained.images), trained.cfg.tracking.uri
    missing = tmp_path / "nope"
    assert f"--run {missing}: no such directory" in _fails(["predict", "--run", str(missing), images], capsys)

    empty_run = tmp_path / "empty_run"
    empty_run.mkdir()
    message = _fails(["predict", "--run", str(empty_run), images], capsys)
    assert f"{empty_run / 'checkpoints' / 'best.pt'}: checkpoint not found" in message
    assert "--checkpoint last" in message

    unknown = "0" * 32
    message = _fails(["predict", "--mlflow-run", unknown, "--tracking-uri", uri, images], capsys)
    assert f"--mlflow-run {unknown}: no such run in the MLflow store" in message

    client = MlflowClient(tracking_uri=uri)
    bare = client.create_run(client.get_experiment_by_name(trained.cfg.tracking.experiment).experiment_id)
    run_id = bare.info.run_id
    message = _fails(["predict", "--mlflow-run", run_id, "--tracking-uri", uri, images], capsys)
    assert f"--mlflow-run {run_id}: the run (kind: unknown) has no artifact checkpoints/best.pt" in message

    no_store = f"sqlite:///{tmp_path / 'absent.db'}"
    message = _fails(["predict", "--mlflow-run", run_id, "--tracking-uri", no_store, images], capsys)
    assert "no such database file" in message and not (tmp_path / "absent.db").exists()

    message = _fails(
        ["predict", "--mlflow-run", run_id, "--params", str(missing / "params.yaml"), images], capsys
    )
    assert "--params" in message and "--tracking-uri" in message

    message = _fails(["predict", "--mlflow-run", run_id, "--checkpoint", "last", images], capsys)
    assert "--checkpoint last" in message and "best.pt only" in message


def test_oracle_mask_cannot_predict_on_plain_images(trained, tmp_path, capsys):
    run_dir = _random_checkpoint(tmp_path, trained.cfg, "oracle_mask")
    message = _fails(["predict", "--run", str(run_dir), str(trained.images)], capsys)
    assert message.startswith("error: variant oracle_mask:") and "ground-truth foreground mask" in message


def test_bad_images_are_one_line_errors(trained, tmp_path, capsys):
    run = ["predict", "--run", str(trained.run_dir), "--out", str(tmp_path / "out")]
    empty = tmp_path / "empty"
    (empty / "sub").mkdir(parents=True)
    (empty / "notes.txt").write_text("not an image")
    assert f"no images found in {empty}" in _fails([*run, str(empty)], capsys)
    assert f"{tmp_path / 'absent.png'}: no such file or directory" in _fails(
        [*run, str(tmp_path / "absent.png")], capsys
    )
    assert "no images given" in _fails(run, capsys)

    broken = tmp_path / "broken"
    broken.mkdir()
    (broken / "bad.png").write_bytes(b"\x89PNG\r\n\x1a\n not really")
    message = _fails([*run, str(trained.images), str(broken)], capsys)
    assert f"{broken / 'bad.png'}: cannot read image" in message and "remove it" in message

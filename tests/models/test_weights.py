"""Backbone weights from local files, the offline error, and the authors' released checkpoint layout."""

from __future__ import annotations

import pytest
import timm
import torch
from safetensors.torch import save_file

from hardmask.config import BackboneSection
from hardmask.models import WeightsError, create_backbone, load_reference_checkpoint
from tests.conftest import PAPER, changed
from tests.models.tiny import IMAGE_SIZE, TINY_KWARGS, tiny_model


def reference_vit(image_size: int = IMAGE_SIZE, seed: int = 1) -> torch.nn.Module:
    torch.manual_seed(seed)
    return timm.create_model("vit_tiny_patch16_224", num_classes=0, img_size=image_size, **TINY_KWARGS)


def backbone_cfg(**fields) -> BackboneSection:
    """The paper's backbone settings for a tiny ViT, random weights unless ``fields`` say otherwise."""
    fields = {"name": "vit_tiny_patch16_224", "kwargs": TINY_KWARGS, "pretrained": False, **fields}
    return changed(PAPER.model.backbone, **fields)


def assert_same_weights(model: torch.nn.Module, state: dict[str, torch.Tensor]) -> None:
    own = model.state_dict()
    for key, value in state.items():
        torch.testing.assert_close(own[key], value, rtol=0, atol=0, msg=key)


@pytest.mark.parametrize("layout", ["plain", "wrapped", "ddp", "safetensors"])
def test_local_checkpoint_is_loaded(tmp_path, layout):
    state = reference_vit().state_dict()
    path = tmp_path / ("w.safetensors" if layout == "safetensors" else "w.pth")
    if layout == "safetensors":
        save_file(state, str(path))
    elif layout == "plain":
        torch.save(state, path)
    elif layout == "wrapped":
        torch.save({"model": state, "epoch": 3}, path)
    else:
        torch.save({"model_state": {"module." + k: v for k, v in state.items()}}, path)
    vit = create_backbone(backbone_cfg(checkpoint_path=str(path)), IMAGE_SIZE)
    assert_same_weights(vit, state)


def test_local_checkpoint_at_another_resolution_is_resampled(tmp_path):
    torch.save(reference_vit(image_size=64).state_dict(), tmp_path / "w.pth")
    vit = create_backbone(backbone_cfg(checkpoint_path=str(tmp_path / "w.pth")), IMAGE_SIZE)
    assert vit.pos_embed.shape[1] == 1 + (IMAGE_SIZE // 8) ** 2


def test_missing_file_and_wrong_architecture_are_clear_errors(tmp_path):
    with pytest.raises(WeightsError, match="weights file not found"):
        create_backbone(backbone_cfg(checkpoint_path=str(tmp_path / "nope.pth")), IMAGE_SIZE)
    other = timm.create_model(
        "vit_tiny_patch16_224", num_classes=0, img_size=32, patch_size=8, embed_dim=48, depth=2
    )
    torch.save(other.state_dict(), tmp_path / "other.pth")
    with pytest.raises(WeightsError, match="do not fit the model"):
        create_backbone(backbone_cfg(checkpoint_path=str(tmp_path / "other.pth")), IMAGE_SIZE)


class _Payload:  # an arbitrary pickled object: weights_only=True must refuse it
    pass


def test_checkpoints_are_loaded_without_unpickling_code(tmp_path):
    torch.save({"model": reference_vit().state_dict(), "extra": _Payload()}, tmp_path / "w.pth")
    with pytest.raises(WeightsError, match="weights_only=True"):
        create_backbone(backbone_cfg(checkpoint_path=str(tmp_path / "w.pth")), IMAGE_SIZE)


def test_pretrained_offline_without_cache_names_the_fix(tmp_path, monkeypatch):
    import huggingface_hub.constants as hub

    monkeypatch.setattr(hub, "HF_HUB_OFFLINE", True)
    monkeypatch.setattr(hub, "HF_HUB_CACHE", str(tmp_path / "empty-cache"))
    cfg = changed(PAPER.model.backbone, name="vit_tiny_patch16_224", pretrained=True)
    with pytest.raises(WeightsError, match="model.backbone.checkpoint_path"):
        create_backbone(cfg, 224)


def to_reference_layout(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Our key layout -> the authors' (FullTwoStageModelDoubleClassify in DDP), written out independently."""
    out = {}
    for key, value in state.items():
        if key.startswith("stage1.backbone."):
            out["module.stage_1." + key.removeprefix("stage1.backbone.")] = value
        elif key.startswith("stage2.backbone."):
            out["module.stage_2." + key.removeprefix("stage2.backbone.")] = value
        else:  # stage1.fc_landmarks / modulation / fc_class_landmarks, stage2.fc_norm / head
            out["module." + key.replace("stage1.", "stage_1.", 1).replace("stage2.", "stage_2.", 1)] = value
    out["module.stage_2.prefix_attn_mask"] = torch.ones(1, 1)
    return out


def test_reference_checkpoint_loads_into_the_two_stage_model(tmp_path):
    source = tiny_model(seed=5)
    state = {k: torch.randn_like(v) for k, v in source.state_dict().items()}
    reference = to_reference_layout(state)
    assert "module.stage_1.fc_landmarks.weight" in reference and "module.stage_2.head.weight" in reference
    torch.save({"model_state": reference, "finished_epoch": 27}, tmp_path / "snapshot_best.pt")
    target = tiny_model(seed=6)
    load_reference_checkpoint(target, tmp_path / "snapshot_best.pt")
    assert_same_weights(target, state)


def test_reference_checkpoint_with_foreign_keys_is_rejected(tmp_path):
    reference = to_reference_layout(tiny_model().state_dict())
    reference["module.stage_3.weight"] = torch.zeros(1)
    torch.save({"model_state": reference}, tmp_path / "bad.pt")
    with pytest.raises(WeightsError, match="unexpected key 'stage_3.weight'"):
        load_reference_checkpoint(tiny_model(), tmp_path / "bad.pt")
    smaller = to_reference_layout(tiny_model(num_parts=2).state_dict())  # K=2 prototypes into a K=3 model
    torch.save({"model_state": smaller}, tmp_path / "k2.pt")
    with pytest.raises(WeightsError, match="shapes do not fit"):
        load_reference_checkpoint(tiny_model(), tmp_path / "k2.pt")


def test_sincos_pos_embed_gives_each_patch_its_row_and_column():
    torch.manual_seed(0)
    vit = create_backbone(backbone_cfg(pos_embed_init="sincos"), IMAGE_SIZE)
    h, w = vit.patch_embed.grid_size
    table = vit.pos_embed[0, -h * w :].detach()  # [h*w, D], raster order
    quarter = vit.embed_dim // 4
    # first frequency band: sin(row) in channel 0, sin(col) in channel `quarter` (timm's stacking: rows, then
    # columns, each sin block then cos block)
    rows = torch.arange(h).repeat_interleave(w).float()
    cols = torch.arange(w).repeat(h).float()
    torch.testing.assert_close(table[:, 0], torch.sin(rows))
    torch.testing.assert_close(table[:, quarter], torch.sin(cols))
    torch.testing.assert_close(table[:, 2 * quarter], torch.cos(rows))
    if vit.pos_embed.shape[1] > h * w:  # the class token's own position row starts at 0
        assert vit.pos_embed[0, : -h * w].abs().sum() == 0
    assert vit.pos_embed.requires_grad  # a starting point, still trained


def test_default_pos_embed_is_timms_small_random_init():
    torch.manual_seed(0)
    vit = create_backbone(backbone_cfg(), IMAGE_SIZE)
    assert 0.005 < float(vit.pos_embed.detach().std()) < 0.05


def test_sincos_pos_embed_is_replaced_by_loaded_weights(tmp_path):
    state = reference_vit().state_dict()
    torch.save(state, tmp_path / "w.pth")
    vit = create_backbone(
        backbone_cfg(pos_embed_init="sincos", checkpoint_path=str(tmp_path / "w.pth")), IMAGE_SIZE
    )
    torch.testing.assert_close(vit.pos_embed, state["pos_embed"], rtol=0, atol=0)


def test_sincos_pos_embed_needs_a_width_divisible_by_four():
    cfg = backbone_cfg(kwargs={**TINY_KWARGS, "embed_dim": 30, "num_heads": 2}, pos_embed_init="sincos")
    with pytest.raises(WeightsError, match="divisible by 4"):
        create_backbone(cfg, IMAGE_SIZE)

"""recipe=paper is the paper's method on every dataset, value for value (method spec §2, §3, §4, §10).

Each section is compared whole: a key the schema gains later, or a default-study setting that leaks into the
paper recipe, fails here until someone writes down what the paper does for it.
"""

from __future__ import annotations

import math

import pytest

from hardmask.config import compose_config

from .conftest import REPO, leaf_values

# training_instructions.md of the authors' code, as digested in method.md §1-§3 (decisions of §10 where the
# paper and the code differ); the per-dataset values are in PER_DATASET.
PAPER_MODEL = {
    "backbone": {
        "name": "vit_base_patch14_reg4_dinov2.lvd142m",  # --model_arch hf_hub:timm/vit_base_patch14_reg4_...
        "kwargs": {},
        "pretrained": True,  # --pretrained_start_weights
        "checkpoint_path": None,
        "pos_embed_init": "timm",  # loaded weights replace it; never the from-scratch sin-cos start
        "drop_path_stage1": 0.0,
        "drop_path_stage2": 0.0,
    },
    "gumbel_tau": 1.0,  # -softmax_temperature 1
    "gumbel_softmax": True,  # --gumbel_softmax
    "stochastic_eval": False,  # §10.3: deterministic evaluation
    "part_dropout": 0.3,
    "part_dropout_stage2": 0.3,
    "mask_grad": "none",  # §10.1: the code's boolean mask
    "stage2_impl": "packed",  # §10.9: exact, the fast path
    "stage1_position_free": False,  # not in the paper
    "freeze_backbone": True,  # --freeze_backbone
    "freeze_params_stage1": False,
    "freeze_stage2": False,
    "freeze_params_stage2": False,
    "oracle_patch_threshold": 0.5,  # only the oracle variant and fg IoU read it
}
PAPER_LOSS = {
    "classification_stage2": 1.0,
    "classification_stage1": 1.0,
    "presence": 1.0,
    "enforced_presence": 2.0,
    "foreground_presence": 0.0,  # not in the paper
    "equivariance": 1.0,
    "orthogonality": 1.0,
    "total_variation": 1.0,
    "entropy": 1.0,
    "concentration": 0.0,
    "label_smoothing": 0.0,
    "eq_degrees": 90.0,
    "eq_translate": 0.11,
    "eq_scale": [0.8, 1.4],
}
PAPER_OPTIM = {
    "optimizer": "adamw",
    "lr": 1e-6,  # per 16 images, square-root scaled
    "reference_batch_size": 16,
    "sqrt_batch_scaling": True,
    "scratch_lr_factor": 1e4,
    "modulation_lr_factor": 1e4,
    "finer_lr_factor": 1e3,
    "stage2_lr_factor": 1.0,
    "weight_decay": 0.05,
    "normalized_weight_decay": True,
    "betas": [0.9, 0.999],
    "warmup_epochs": 0.0,
    "min_lr_ratio": 0.0,
    "grad_clip": 2.0,
    "grad_accumulation": 1,
    "ema_decay": None,
    "amp": "off",  # the paper's command has no --use_amp
}
# dataset: (image size, K, images per GPU, GPUs, epochs). Epochs: 90 in the CUB example; elsewhere the
# parser's 28 (the paper's value is open, method spec App. B #7).
PER_DATASET = {
    "waterbirds": (518, 4, 16, 8, 28),
    "cub": (518, 8, 16, 8, 90),
    "cub_waterbirds": (518, 8, 16, 8, 90),
    "metashift": (224, 2, 32, 4, 28),
    "imagenet": (224, 1, 128, 8, 28),
    "imagenet9": (224, 1, 128, 8, 28),
}
CUB_ORIGINAL = {
    "hflip": 0.5,
    "degrees": 90.0,
    "translate": 0.2,
    "scale": [0.8, 1.2],
    "color_jitter": 0.0,
    "planckian_jitter": 0.8,
}


def test_every_dataset_of_conf_is_checked():
    assert {p.stem for p in (REPO / "conf" / "dataset").glob("*.yaml")} == set(PER_DATASET) | {"synthetic"}


@pytest.mark.parametrize("dataset", sorted(PER_DATASET))
def test_the_paper_recipe_is_the_paper_and_nothing_else(dataset):
    cfg = compose_config([f"dataset={dataset}", "recipe=paper"], conf_dir=REPO / "conf")
    image_size, num_parts, per_gpu, gpus, epochs = PER_DATASET[dataset]
    assert cfg.model.model_dump(mode="json") == {**PAPER_MODEL, "num_parts": num_parts}
    assert cfg.loss.model_dump(mode="json") == PAPER_LOSS
    assert cfg.optim.model_dump(mode="json") == {**PAPER_OPTIM, "epochs": epochs}
    assert cfg.data.dataset == dataset and cfg.data.image_size == image_size
    assert cfg.data.loader.batch_size == per_gpu
    # the effective learning rate of the paper's runs: 2.83e-6 at batch 128, 8e-6 at ImageNet's 1024
    scaled = cfg.optim.lr * math.sqrt(per_gpu * gpus / cfg.optim.reference_batch_size)
    assert scaled == pytest.approx(8e-6 if dataset.startswith("imagenet") else 2.828e-6, rel=1e-3)
    if not dataset.startswith("imagenet"):  # ImageNet uses timm's recipe (method spec §4.1)
        assert cfg.data.augment.model_dump(mode="json") == CUB_ORIGINAL


def test_the_default_study_differs_from_the_paper_only_where_its_recipe_says():
    """recipe/from_scratch.yaml is the one list of the default study's deviations from the paper."""
    from hardmask.config import read_yaml

    study = leaf_values(compose_config([], conf_dir=REPO / "conf").dump())
    paper = leaf_values(compose_config(["recipe=paper"], conf_dir=REPO / "conf").dump())
    differing = {key for key in study if study[key] != paper[key]}
    declared = set(leaf_values(read_yaml(REPO / "conf" / "recipe" / "from_scratch.yaml"))) - {"defaults"}
    assert differing == declared

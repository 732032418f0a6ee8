"""A fast in-memory proxy of the training loop, for exploring settings before confirming them with sweep.py.

Same models, losses, parameter groups and schedule as ``hardmask.training.loop.train``; what differs, to
iterate several times faster on a shared 2-core machine: the train and val splits are decoded once into
tensors (no JPEG decoding or albumentations per step), augmentation is a random horizontal flip only, and
nothing is checkpointed or tracked. Validation only (never test). Results go to experiments/quick.jsonl;
numbers that enter the study table are re-measured with sweep.py (the real loop).

    python -m experiments.quick --name q_oracle_lr3e-3 --variants oracle_mask --set optim.lr=3e-3
"""

from __future__ import annotations

import argparse
import json
import math
import os
import time
from pathlib import Path

import torch
from experiments.sweep import REPO, cpu_seconds, ensure_data, setting_config
from torch import nn

from hardmask.config import Config
from hardmask.metrics import foreground_iou, group_accuracy_table, pool_mask_to_patches
from hardmask.models import VARIANTS, build_model, get_variant
from hardmask.runtime import seed_everything
from hardmask.training.trainer import Trainer

RESULTS = REPO / "experiments" / "quick.jsonl"


def load_split(cfg: Config, split: str, mean, std) -> dict[str, torch.Tensor]:
    from hardmask.data import build_dataset

    dataset = build_dataset(cfg, split, train=False, mean=mean, std=std)
    samples = [dataset[i] for i in range(len(dataset))]
    return {
        key: torch.stack([torch.as_tensor(s[key]) for s in samples])
        for key in ("image", "label", "group", "fg_mask")
    }


@torch.no_grad()
def evaluate(
    model: nn.Module, data: dict[str, torch.Tensor], variant: str, threshold: float
) -> dict[str, float]:
    model.eval()
    preds, masks = [], []
    for start in range(0, len(data["label"]), 500):
        images = data["image"][start : start + 500]
        fg = data["fg_mask"][start : start + 500] if get_variant(variant).takes_fg_mask else None
        out = model(images, fg_mask=fg)
        preds.append(out.logits.argmax(-1))
        if out.hard_mask is not None:
            masks.append(out.hard_mask)
    pred = torch.cat(preds).numpy()
    label, group = data["label"].numpy(), data["group"].numpy()
    table = group_accuracy_table(pred, label, group)
    result = {"avg": float((pred == label).mean()), "wga": float(table["acc"].min())}
    result["groups"] = [round(float(a), 3) for a in table["acc"]]
    if masks and not get_variant(variant).takes_fg_mask:
        hard = torch.cat(masks).numpy()
        grid = int(math.isqrt(hard.shape[1]))
        truth = pool_mask_to_patches(data["fg_mask"].numpy(), (grid, grid), threshold)
        result["fg_iou"] = foreground_iou(hard, truth)
        result["fg_frac"] = float(hard.mean())
        result["gt_frac"] = float(truth.mean())
        any_object = pool_mask_to_patches(data["fg_mask"].numpy(), (grid, grid), 1e-6)
        result["precision"] = float((hard & truth).sum() / max(1, hard.sum()))  # kept tokens that are object
        result["recall"] = float((hard & truth).sum() / max(1, truth.sum()))
        result["boundary_share"] = float((hard & any_object & ~truth).sum() / max(1, hard.sum()))
    return result


def train_quick(cfg: Config, variant: str, seed: int, train: dict, val: dict) -> tuple[nn.Module, list]:
    """The training loop's step (:class:`Trainer`) on in-memory batches, flips as the only augmentation."""
    seed_everything(seed)
    model = build_model(
        variant, cfg.model, num_classes=int(train["label"].max()) + 1, image_size=cfg.data.image_size
    )
    batch = cfg.data.loader.batch_size
    n = len(train["label"])
    steps = n // batch
    trainer = Trainer(cfg, variant, model, torch.device("cpu"), batches_per_epoch=steps)
    generator = torch.Generator().manual_seed(seed)
    history = []
    for epoch in range(cfg.optim.epochs):
        model.train()
        order = torch.randperm(n, generator=generator)
        for step in range(steps):
            idx = order[step * batch : (step + 1) * batch]
            images, fg = train["image"][idx], train["fg_mask"][idx]
            flip = torch.rand(len(idx), generator=generator) < cfg.data.augment.hflip
            images = torch.where(flip[:, None, None, None], images.flip(-1), images)
            fg = torch.where(flip[:, None, None], fg.flip(-1), fg)
            trainer.step({"image": images, "label": train["label"][idx], "fg_mask": fg})
        stats = trainer.end_epoch()
        row = {"epoch": epoch + 1, "train_acc": round(stats.pop("train_acc"), 3)}
        row |= {k.removeprefix("train_"): round(v, 4) for k, v in stats.items() if k != "images"}
        scores = evaluate(model, val, variant, cfg.model.oracle_patch_threshold)
        row |= {f"val_{k}": (round(v, 4) if isinstance(v, float) else v) for k, v in scores.items()}
        history.append(row)
        print(variant, json.dumps(row), flush=True)
    return model, history


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--name", required=True)
    parser.add_argument("--variants", nargs="+", default=["oracle_mask"], choices=VARIANTS)
    parser.add_argument("--seeds", nargs="+", type=int, default=[0])
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE")
    parser.add_argument("--params", type=Path, default=REPO / "params.yaml")
    parser.add_argument("--note", default="")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--save", action="store_true", help="keep the final weights (for inspection)")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    cfg = setting_config(args.name, args.set, args.params, ("val",))
    ensure_data(cfg)
    from hardmask.models.backbone import input_normalization

    mean, std = input_normalization(build_model("baseline_vit", cfg.model, 2, cfg.data.image_size))
    t0 = time.perf_counter()
    train = load_split(cfg, "train", mean, std)
    val = load_split(cfg, "val", mean, std)
    print(f"loaded in {time.perf_counter() - t0:.1f}s", flush=True)
    for seed in args.seeds:
        for variant in args.variants:
            wall, cpu, load = time.perf_counter(), cpu_seconds(), os.getloadavg()[0]
            model, history = train_quick(cfg, variant, seed, train, val)
            if args.save:
                path = REPO / "runs" / "experiments" / "quick" / f"{args.name}_{variant}_seed{seed}.pt"
                path.parent.mkdir(parents=True, exist_ok=True)
                torch.save({"model": model.state_dict(), "config": cfg.dump(), "variant": variant}, path)
            record = {
                "setting": args.name,
                "note": args.note,
                "overrides": args.set,
                "variant": variant,
                "seed": seed,
                "wall_s": round(time.perf_counter() - wall, 1),
                "cpu_s": round(cpu_seconds() - cpu, 1),
                "load1": round(load, 2),
                "final": history[-1],
                "best_val_wga": max(h["val_wga"] for h in history),
                "val_wga": [h["val_wga"] for h in history],
                "val_avg": [h["val_avg"] for h in history],
            }
            print("RESULT", json.dumps(record), flush=True)
            with RESULTS.open("a") as fh:
                fh.write(json.dumps(record) + "\n")


if __name__ == "__main__":
    main()

"""The prepare step: make the configured dataset available and describe it in a manifest.

The built-in benchmark is generated (replaced atomically, skipped when its manifest matches the config); a
real dataset is checked or downloaded. Either way ``<base.data_dir>/<dataset>/manifest.json`` records the
dataset, its root, a fingerprint and the groups, and ``<base.reports_dir>/samples.png`` shows samples per
group (outside ``figures/``, which the report stage owns).
"""

from __future__ import annotations

import hashlib
import logging
import os
import time
from pathlib import Path

from hardmask import layout
from hardmask.config import Config
from hardmask.data import build_dataset, ensure_dataset, generate_synthetic, is_up_to_date
from hardmask.data.preview import save_sample_grid
from hardmask.data.synthetic import load_manifest
from hardmask.io import atomic_write_json

log = logging.getLogger("hardmask.prepare")
MANIFEST = "manifest.json"
PREVIEW_SPLIT = {"imagenet9": "original"}  # datasets without a train split


def listing_fingerprint(root: Path) -> str:
    """sha256 over the relative path and size of every data file below ``root`` (cheap for 1M files)."""
    digest = hashlib.sha256()
    for dirpath, dirnames, filenames in os.walk(root):
        dirnames.sort()
        for name in sorted(filenames):
            path = Path(dirpath) / name
            if path == root / MANIFEST:  # our own output, when the manifest lives in the dataset root
                continue
            digest.update(f"{path.relative_to(root)}\0{path.stat().st_size}\n".encode())
    return digest.hexdigest()


def prepare(cfg: Config, num_workers: int = 2) -> dict:
    """Make the dataset available and return its manifest."""
    start = time.perf_counter()
    root = cfg.data_root
    if cfg.data.dataset == "synthetic":
        if is_up_to_date(cfg.data.synthetic, root, cfg.base.seed):
            log.info("%s: generated benchmark is up to date, skipping", root)
            synthetic = load_manifest(root)
        else:
            generated = time.perf_counter()
            synthetic = generate_synthetic(
                cfg.data.synthetic, root, seed=cfg.base.seed, num_workers=num_workers
            )
            seconds = time.perf_counter() - generated
            log.info("%s: generated %s images in %.1f s", root, synthetic.counts, seconds)
        manifest = {"dataset": "synthetic", "root": str(root), **synthetic.to_json()}
    else:
        ensure_dataset(cfg)
        manifest = {"dataset": cfg.data.dataset, "root": str(root), "fingerprint": listing_fingerprint(root)}
    split = PREVIEW_SPLIT.get(cfg.data.dataset, "train")
    dataset = build_dataset(cfg, split, train=False)
    manifest["preview_split_size"] = len(dataset)
    manifest["groups"] = list(dataset.group_spec.names)
    save_sample_grid(dataset, layout.samples_figure(cfg), per_group=4, seed=cfg.base.seed)
    log.info("prepared %s in %.1f s", cfg.data.dataset, time.perf_counter() - start)
    atomic_write_json(layout.dataset_manifest(cfg), manifest)
    return manifest

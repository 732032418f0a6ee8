"""The built-in benchmark: shapes on procedural places with a spurious place-class correlation.

Written in the Waterbirds on-disk format (:mod:`hardmask.data.waterbirds`) so that one loader serves it and
the real dataset. What it is built to test (docs/datasets.md has the full rationale):

- **The class is in the object's shape only.** Each class is a fixed layout of 3-5 elliptic parts (body, head,
  tail, ...). Colour, texture, rotation, mirroring, scale and position are drawn independently of the class.
- **The place is in the large-scale structure of the background only.** All places draw their two tones from
  the same low-saturation palette at a random phase; they differ in how the tones are arranged (isotropic
  blobs, horizontal waves, vertical stripes, diagonal dunes) at a scale of 15-30 px. So a few pixels of
  background at the object's border carry neither a per-pixel colour cue nor much of the arrangement, while
  the whole image shows the place at a glance. Objects are saturated, backgrounds are not: foreground is
  separable, as DINOv2 features make it in the paper.
- **Objects are large relative to the patch** (extent 0.75-0.95 of the side, 25-40 % of the pixels at the
  defaults): at 64 px and ViT patch 8 an object covers many interior patches whose pixels are all object.
- **Train** aligns the place with the class (``spurious_prob``); **val/test** balance all label x place
  groups. **OOD variants** put the same objects (index i is one object in every variant) on neutral grey
  (``only_fg``), a random place (``mixed_rand``), the class's train place (``mixed_same``); ``only_bg`` shows
  the background of a random place without the object (empty mask; label of the removed object, as
  ImageNet-9's only_bg).

Every image is rendered from its own seed ``SeedSequence([seed, split_code, index, stream])``, so generation
is bit-identical for a seed whatever the number of worker processes.
"""

from __future__ import annotations

import colorsys
import hashlib
import json
import os
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from functools import partial
from multiprocessing import Pool
from pathlib import Path

import numpy as np
import pandas as pd
from PIL import Image
from scipy import special

from hardmask.config import SyntheticSection
from hardmask.data.common import DataError
from hardmask.data.groups import GroupSpec
from hardmask.data.waterbirds import SPLIT_CODES
from hardmask.io import atomic_dir, atomic_write_json

GENERATOR_VERSION = 1
MANIFEST_NAME = "manifest.json"
OOD_OBJECT_CODE = 100  # seed stream of the objects shared by the OOD variants
GREY_PLACE = -1  # background code of only_fg


# --------------------------------------------------------------------------------------------- templates
@dataclass(frozen=True)
class Ellipse:
    """One part in the template frame (object extent about 1, y down): centre, semi-axes, angle in degrees."""

    part_id: int
    cx: float
    cy: float
    rx: float
    ry: float
    angle: float = 0.0


PART_NAMES = ("background", "body", "head", "tail", "neck", "wing")
BODY, HEAD, TAIL, NECK, WING = 1, 2, 3, 4, 5

# Drawn in order: a later part covers an earlier one (wings lie on the body).
CLASS_TEMPLATES: dict[str, tuple[Ellipse, ...]] = {
    "round": (
        Ellipse(TAIL, -0.36, 0.10, 0.16, 0.09, 25),
        Ellipse(BODY, -0.02, 0.06, 0.32, 0.32),
        Ellipse(HEAD, 0.28, -0.25, 0.16, 0.16),
        Ellipse(WING, -0.07, 0.10, 0.20, 0.12, -20),
    ),
    "long": (
        Ellipse(TAIL, -0.44, 0.16, 0.12, 0.07, -10),
        Ellipse(NECK, 0.33, -0.10, 0.10, 0.22, 25),
        Ellipse(BODY, -0.02, 0.15, 0.44, 0.20),
        Ellipse(HEAD, 0.41, -0.34, 0.14, 0.13),
        Ellipse(WING, -0.04, 0.12, 0.25, 0.08, -5),
    ),
    "cross": (
        Ellipse(BODY, 0.0, 0.0, 0.16, 0.46),
        Ellipse(WING, 0.0, -0.04, 0.46, 0.15),
        Ellipse(HEAD, 0.0, -0.34, 0.15, 0.15),
    ),
    "twin": (
        Ellipse(BODY, -0.22, 0.08, 0.27, 0.27),
        Ellipse(TAIL, 0.26, 0.08, 0.22, 0.22),
        Ellipse(NECK, 0.03, 0.08, 0.12, 0.08),
        Ellipse(HEAD, 0.0, -0.30, 0.14, 0.14),
    ),
}
CLASS_NAMES = tuple(CLASS_TEMPLATES)
PLACE_NAMES = ("land", "water", "forest", "desert")  # blobs, horizontal waves, vertical waves, diagonal waves


def aligned_place(label: np.ndarray | int, n_places: int) -> np.ndarray | int:
    """The place the train split associates with a class."""
    return label % n_places


# --------------------------------------------------------------------------------------------- rendering
@dataclass(frozen=True)
class RenderSettings:
    image_size: int
    object_scale: tuple[float, float]
    rotation_deg: float
    jpeg_quality: int


@dataclass(frozen=True)
class ImageJob:
    """Everything a worker needs to render and write one image."""

    rel_path: str  # <class_dir>/<name>.jpg
    label: int
    background: int  # index into PLACE_NAMES, or GREY_PLACE
    has_object: bool
    object_entropy: tuple[int, ...]
    background_entropy: tuple[int, ...]


def _rng(entropy: Sequence[int]) -> np.random.Generator:
    return np.random.default_rng(np.random.SeedSequence(list(entropy)))


def _hsv(h: float, s: float, v: float) -> np.ndarray:
    return np.array(colorsys.hsv_to_rgb(h % 1.0, s, v), dtype=np.float32)


def smooth_noise(rng: np.random.Generator, size: int, cells: int) -> np.ndarray:
    """Zero-mean, unit-std random field [size, size] with features about ``size / cells`` px wide."""
    coarse = rng.standard_normal((cells + 3, cells + 3)).astype(np.float32)
    # bicubic upsampling of a coarse grid; the one-cell margin keeps the border as smooth as the centre
    big = np.asarray(Image.fromarray(coarse, mode="F").resize((size + 2 * size // cells,) * 2, Image.BICUBIC))
    margin = size // cells
    field_ = big[margin : margin + size, margin : margin + size]
    return (field_ - field_.mean()) / (field_.std() + 1e-6)


def _pixel_grid(size: int) -> tuple[np.ndarray, np.ndarray]:
    coords = (np.arange(size, dtype=np.float32) + 0.5) / size  # pixel centres in [0, 1]
    return np.meshgrid(coords, coords)  # x [S,S], y [S,S]


def render_background(rng: np.random.Generator, place: int, size: int) -> np.ndarray:
    """float32 [S, S, 3] in [0, 1]: two palette tones arranged by the place's large-scale pattern.

    Every place mixes its tones through ``sin(phase)`` with a phase uniform at each pixel (waves: a random
    offset; blobs: a smooth Gaussian field mapped through its CDF), so the per-pixel distribution of colours
    is the same for all places and only the spatial arrangement tells them apart.
    """
    if place == GREY_PLACE:
        return np.full((size, size, 3), 0.5, dtype=np.float32)
    x, y = _pixel_grid(size)
    if place == 0:  # blobs: isotropic smooth field, phase = its normal CDF
        phase = np.pi * (special.ndtr(smooth_noise(rng, size, cells=3)) - 0.5)
    else:  # waves across a direction, gently bent
        wavelength = rng.uniform(0.40, 0.55)
        direction = {1: 0.0, 2: 90.0, 3: 45.0 * rng.choice([-1, 1])}[place] + rng.uniform(-8, 8)
        theta = np.deg2rad(direction)
        along, across = x * np.cos(theta) + y * np.sin(theta), -x * np.sin(theta) + y * np.cos(theta)
        bend = 0.04 * np.sin(2 * np.pi * along / rng.uniform(0.8, 1.2) + rng.uniform(0, 2 * np.pi))
        phase = 2 * np.pi * (across + bend) / wavelength + rng.uniform(0, 2 * np.pi)
    mix = (1 / (1 + np.exp(-2.0 * np.sin(phase))))[..., None]  # [S,S,1] share of the light tone
    hue = rng.uniform()
    dark = _hsv(hue + rng.uniform(-0.08, 0.08), rng.uniform(0.05, 0.25), rng.uniform(0.25, 0.45))
    light = _hsv(hue + rng.uniform(-0.08, 0.08), rng.uniform(0.05, 0.25), rng.uniform(0.60, 0.80))
    return (dark * (1 - mix) + light * mix).astype(np.float32)


def render_object(
    rng: np.random.Generator, label: int, settings: RenderSettings
) -> tuple[np.ndarray, np.ndarray]:
    """Part-id map uint8 [S, S] (0 = background) and object colours float32 [S, S, 3] of one random pose."""
    size = settings.image_size
    template = CLASS_TEMPLATES[CLASS_NAMES[label]]
    scale = rng.uniform(*settings.object_scale)
    rotation = np.deg2rad(rng.uniform(-settings.rotation_deg, settings.rotation_deg))
    mirror = rng.choice([-1.0, 1.0])
    # Centre: uniform over the positions that keep the rotated parts' bounding box inside the image.
    lo, hi = _rotated_extent(template, rotation, mirror)
    centre = []
    for d in range(2):
        low, high = -lo[d] * scale, 1 - hi[d] * scale
        centre.append(rng.uniform(low, high) if low <= high else 0.5 - (lo[d] + hi[d]) * scale / 2)
    x, y = _pixel_grid(size)
    # pixel -> template frame: undo translation, rotation, scale and mirroring
    dx, dy = x - centre[0], y - centre[1]
    u = (np.cos(rotation) * dx + np.sin(rotation) * dy) / scale * mirror
    v = (-np.sin(rotation) * dx + np.cos(rotation) * dy) / scale
    parts = np.zeros((size, size), dtype=np.uint8)
    for part in template:
        a = np.deg2rad(part.angle)
        pu, pv = u - part.cx, v - part.cy
        lu, lv = np.cos(a) * pu + np.sin(a) * pv, -np.sin(a) * pu + np.cos(a) * pv
        parts[(lu / part.rx) ** 2 + (lv / part.ry) ** 2 <= 1.0] = part.part_id

    # Colour: a saturated base hue for the object, each part a nearby shade, a fine mottled texture.
    hue, sat, val = rng.uniform(), rng.uniform(0.55, 0.90), rng.uniform(0.55, 0.95)
    palette = np.stack(
        [
            _hsv(hue + rng.uniform(-0.06, 0.06), sat, np.clip(val + rng.uniform(-0.15, 0.15), 0.4, 1.0))
            for _ in PART_NAMES
        ]
    )  # [len(PART_NAMES), 3], indexed by part id (row 0 is never shown)
    texture = 1.0 + rng.uniform(0.03, 0.12) * smooth_noise(rng, size, cells=max(2, size // 6))
    colours = palette[parts] * texture[..., None]
    return parts, colours.astype(np.float32)


def _rotated_extent(
    template: Sequence[Ellipse], rotation: float, mirror: float
) -> tuple[np.ndarray, np.ndarray]:
    """Bounding box (min xy, max xy) of the template after mirroring and rotation, unscaled."""
    lo, hi = np.full(2, np.inf), np.full(2, -np.inf)
    for part in template:
        angle = rotation + mirror * np.deg2rad(part.angle)
        cu = mirror * part.cx
        cx = np.cos(rotation) * cu - np.sin(rotation) * part.cy
        cy = np.sin(rotation) * cu + np.cos(rotation) * part.cy
        half = np.array(
            [
                np.hypot(part.rx * np.cos(angle), part.ry * np.sin(angle)),
                np.hypot(part.rx * np.sin(angle), part.ry * np.cos(angle)),
            ]
        )
        lo, hi = np.minimum(lo, np.array([cx, cy]) - half), np.maximum(hi, np.array([cx, cy]) + half)
    return lo, hi


def render_image(job: ImageJob, settings: RenderSettings) -> tuple[np.ndarray, np.ndarray]:
    """The composed image uint8 [S, S, 3] and its part-id map uint8 [S, S]."""
    size = settings.image_size
    background = render_background(_rng(job.background_entropy), job.background, size)
    if job.has_object:
        parts, colours = render_object(_rng(job.object_entropy), job.label, settings)
    else:
        parts, colours = np.zeros((size, size), dtype=np.uint8), np.zeros((size, size, 3), dtype=np.float32)
    fg = (parts > 0)[..., None]
    image = np.where(fg, colours, background)
    noise = 0.02 * _rng((*job.background_entropy, 1)).standard_normal(image.shape, dtype=np.float32)  # sensor
    return np.clip((image + noise) * 255 + 0.5, 0, 255).astype(np.uint8), parts


def _write_image(job: ImageJob, settings: RenderSettings, out_root: Path) -> float:
    """Render one image, write image / mask / parts; returns the object's share of the pixels."""
    image, parts = render_image(job, settings)
    rel = Path(job.rel_path)
    Image.fromarray(image).save(out_root / rel, quality=settings.jpeg_quality)
    png = rel.with_suffix(".png")
    Image.fromarray(((parts > 0) * 255).astype(np.uint8)).save(out_root / "masks" / png)
    Image.fromarray(parts).save(out_root / "parts" / png)
    return float((parts > 0).mean())


# --------------------------------------------------------------------------------------------- assignment
def _balanced_labels(rng: np.random.Generator, n: int, n_classes: int) -> np.ndarray:
    return rng.permutation(np.resize(np.arange(n_classes), n))


def _balanced_places(rng: np.random.Generator, labels: np.ndarray, n_places: int) -> np.ndarray:
    """Places independent of the label, every (label, place) group within one image of the others."""
    places = np.empty_like(labels)
    for label in np.unique(labels):
        members = np.flatnonzero(labels == label)
        places[members] = rng.permutation(np.resize(np.arange(n_places), len(members)))
    return places


def _train_places(
    rng: np.random.Generator, labels: np.ndarray, n_places: int, p_aligned: float
) -> np.ndarray:
    """The class's place with probability ``p_aligned``, else one of the other places uniformly."""
    aligned = rng.random(len(labels)) < p_aligned
    other = (aligned_place(labels, n_places) + rng.integers(1, n_places, len(labels))) % n_places
    return np.where(aligned, aligned_place(labels, n_places), other)


@dataclass(frozen=True)
class SplitPlan:
    name: str
    labels: np.ndarray  # [n] int64
    places: np.ndarray  # [n] int64, the place shown (or recorded: only_fg records the class's place)
    background: np.ndarray  # [n] int64, the background actually rendered (GREY_PLACE for only_fg)
    has_object: bool
    object_code: int  # seed stream of the objects (shared by the OOD variants)


def plan_splits(cfg: SyntheticSection, seed: int) -> list[SplitPlan]:
    """Labels and places of every split, drawn from per-split seeds (independent of the image rendering)."""
    C, P = cfg.n_classes, cfg.n_places
    plans = []
    for name, n in (("train", cfg.n_train), ("val", cfg.n_val), ("test", cfg.n_test)):
        rng = _rng((seed, SPLIT_CODES[name]))
        labels = _balanced_labels(rng, n, C)
        places = (
            _train_places(rng, labels, P, cfg.spurious_prob)
            if name == "train"
            else _balanced_places(rng, labels, P)
        )
        plans.append(SplitPlan(name, labels, places, places, True, SPLIT_CODES[name]))
    if cfg.ood_variants:
        rng = _rng((seed, OOD_OBJECT_CODE))
        labels = _balanced_labels(rng, cfg.n_ood, C)
        same = aligned_place(labels, P)
        for name in cfg.ood_variants:
            own = _rng((seed, SPLIT_CODES[name]))
            if name == "only_fg":
                plans.append(
                    SplitPlan(name, labels, same, np.full_like(labels, GREY_PLACE), True, OOD_OBJECT_CODE)
                )
            elif name == "mixed_same":
                plans.append(SplitPlan(name, labels, same, same, True, OOD_OBJECT_CODE))
            else:  # mixed_rand, only_bg: a place independent of the class, groups balanced
                places = _balanced_places(own, labels, P)
                plans.append(SplitPlan(name, labels, places, places, name != "only_bg", OOD_OBJECT_CODE))
    return plans


# --------------------------------------------------------------------------------------------- generation
@dataclass(frozen=True)
class SyntheticManifest:
    """What was generated and from what (no timings: the manifest is part of the DVC output, which must be a
    function of its inputs). ``fingerprint`` identifies the data."""

    fingerprint: str  # sha256 over the generation parameters and metadata.csv
    params_sha256: str
    params: dict
    counts: dict[str, int]  # split -> images
    group_counts: dict[str, dict[str, int]]  # split -> group name -> images
    train_aligned_fraction: float
    mean_fg_fraction: dict[str, float]  # split -> mean object share of the pixels
    num_files: int
    bytes: int
    class_names: tuple[str, ...]
    place_names: tuple[str, ...]

    def to_json(self) -> dict:
        return asdict(self)

    @classmethod
    def from_json(cls, data: dict) -> SyntheticManifest:
        data = dict(data)
        data["class_names"], data["place_names"] = tuple(data["class_names"]), tuple(data["place_names"])
        return cls(**{k: v for k, v in data.items() if k in cls.__dataclass_fields__})


def synthetic_params(cfg: SyntheticSection, seed: int) -> dict:
    return {
        "generator_version": GENERATOR_VERSION,
        "seed": int(seed),
        "synthetic": cfg.model_dump(mode="json"),
    }


def _sha256(*chunks: bytes) -> str:
    digest = hashlib.sha256()
    for chunk in chunks:
        digest.update(chunk)
    return digest.hexdigest()


def _params_sha256(params: dict) -> str:
    return _sha256(json.dumps(params, sort_keys=True).encode())


def load_manifest(root: str | Path) -> SyntheticManifest | None:
    path = Path(root) / MANIFEST_NAME
    if not path.is_file():
        return None
    try:
        return SyntheticManifest.from_json(json.loads(path.read_text()))
    except (ValueError, TypeError, KeyError):
        return None


def is_up_to_date(cfg: SyntheticSection, root: str | Path, seed: int) -> bool:
    """True when ``root`` holds exactly what ``generate_synthetic(cfg, root, seed)`` would write."""
    manifest = load_manifest(root)
    meta = Path(root) / "metadata.csv"
    if manifest is None or not meta.is_file():
        return False
    if manifest.params_sha256 != _params_sha256(synthetic_params(cfg, seed)):
        return False
    return manifest.fingerprint == _sha256(manifest.params_sha256.encode(), meta.read_bytes())


def _check_replaceable(root: Path) -> None:
    """Refuse to swap out a directory that is not a generated benchmark (a mistyped ``data.root``)."""
    if root.exists() and any(root.iterdir()) and not (root / MANIFEST_NAME).is_file():
        raise DataError(
            f"{root}: exists, is not empty and holds no {MANIFEST_NAME}; refusing to replace it with the "
            "generated benchmark. Point data.root at an empty or generated directory."
        )


def _directory_size(root: Path) -> tuple[int, int]:
    files, size = 0, 0
    for dirpath, _, filenames in os.walk(root):
        for name in filenames:
            files += 1
            size += (Path(dirpath) / name).stat().st_size
    return files, size


def _image_jobs(cfg: SyntheticSection, seed: int) -> tuple[list[ImageJob], pd.DataFrame]:
    """One render job per image and the matching metadata rows (without ``fg_fraction``)."""
    class_dirs = [f"{c + 1:03d}.{CLASS_NAMES[c]}" for c in range(cfg.n_classes)]
    jobs, rows = [], []
    for plan in plan_splits(cfg, seed):
        code = SPLIT_CODES[plan.name]
        for i, (label, place, background) in enumerate(zip(plan.labels, plan.places, plan.background)):
            rel = f"{class_dirs[label]}/{plan.name}_{i:06d}.jpg"
            object_entropy, background_entropy = (seed, plan.object_code, i, 0), (seed, code, i, 1)
            jobs.append(
                ImageJob(
                    rel, int(label), int(background), plan.has_object, object_entropy, background_entropy
                )
            )
            rows.append((rel, int(label), code, int(place), plan.name, PLACE_NAMES[place]))
    meta = pd.DataFrame(rows, columns=["img_filename", "y", "split", "place", "split_name", "place_name"])
    meta.insert(0, "img_id", np.arange(1, len(meta) + 1))
    return jobs, meta


def _render_all(
    jobs: list[ImageJob], settings: RenderSettings, out_root: Path, num_workers: int
) -> list[float]:
    for sub in ("", "masks", "parts"):
        for class_dir in {Path(job.rel_path).parent for job in jobs}:
            (out_root / sub / class_dir).mkdir(parents=True, exist_ok=True)
    render = partial(_write_image, settings=settings, out_root=out_root)
    if num_workers <= 1:
        return [render(job) for job in jobs]
    with Pool(num_workers) as pool:
        return pool.map(render, jobs, chunksize=max(1, len(jobs) // (8 * num_workers)))


def _summary(
    cfg: SyntheticSection, seed: int, meta: pd.DataFrame, meta_bytes: bytes, out_root: Path
) -> SyntheticManifest:
    params = synthetic_params(cfg, seed)
    params_sha = _params_sha256(params)
    spec = GroupSpec(CLASS_NAMES[: cfg.n_classes], PLACE_NAMES[: cfg.n_places])
    groups = spec.group_of(meta["y"].to_numpy(), meta["place"].to_numpy())
    by_split = meta.groupby("split_name", sort=False)
    train = meta[meta["split_name"] == "train"]
    num_files, size = _directory_size(out_root)
    return SyntheticManifest(
        fingerprint=_sha256(params_sha.encode(), meta_bytes),
        params_sha256=params_sha,
        params=params,
        counts={name: len(rows) for name, rows in by_split},
        group_counts={
            name: {k: int(v) for k, v in spec.counts(groups[rows.index.to_numpy()]).items()}
            for name, rows in by_split
        },
        train_aligned_fraction=float((train["place"] == aligned_place(train["y"], cfg.n_places)).mean()),
        mean_fg_fraction={name: round(float(rows["fg_fraction"].mean()), 4) for name, rows in by_split},
        num_files=num_files + 1,  # + the manifest itself
        bytes=size,
        class_names=spec.class_names,
        place_names=spec.place_names,
    )


def generate_synthetic(
    cfg: SyntheticSection, root: str | Path, seed: int, num_workers: int = 2
) -> SyntheticManifest:
    """Write the benchmark to ``root`` (atomically replacing it) and return its manifest.

    ``num_workers`` processes render the images; the output does not depend on it.
    """
    if cfg.n_classes > len(CLASS_NAMES) or cfg.n_places > len(PLACE_NAMES):
        raise DataError(
            f"synthetic benchmark supports up to {len(CLASS_NAMES)} classes and {len(PLACE_NAMES)} places"
        )
    root = Path(root)
    _check_replaceable(root)
    settings = RenderSettings(cfg.image_size, tuple(cfg.object_scale), cfg.rotation_deg, cfg.jpeg_quality)
    jobs, meta = _image_jobs(cfg, seed)
    with atomic_dir(root) as tmp:
        meta["fg_fraction"] = np.round(_render_all(jobs, settings, tmp, num_workers), 5)
        meta_bytes = meta.to_csv(index=False, lineterminator="\n").encode()
        (tmp / "metadata.csv").write_bytes(meta_bytes)
        manifest = _summary(cfg, seed, meta, meta_bytes, tmp)
        atomic_write_json(tmp / MANIFEST_NAME, manifest.to_json())
    return manifest

"""Fetching the public datasets: resumable downloads, verified archives, safe atomic extraction.

- :func:`download` resumes a partial ``<dest>.part`` with an HTTP Range request, checks size and SHA-256 when
  they are known, and only then renames the file into place; a finished file is not fetched again.
- :func:`extract_archive` validates every member first (no absolute paths, no ``..``, no links pointing
  outside the target, no device files), extracts into a temporary directory inside the target and renames each
  top-level entry into place; entries already present are left alone, so a finished extraction is skipped.
- :func:`ensure_dataset` knows where each dataset comes from (method spec §4); with ``data.download: false``,
  or for datasets that cannot be downloaded (MetaShift, ImageNet-1k), a missing dataset is an error saying how
  to get it and where to put it.
"""

from __future__ import annotations

import hashlib
import logging
import os
import shutil
import tarfile
import tempfile
import urllib.error
import urllib.request
import zipfile
from dataclasses import dataclass
from pathlib import Path, PurePosixPath

from hardmask.config import Config
from hardmask.data.common import DataError
from hardmask.io import atomic_path

log = logging.getLogger("hardmask.data")
CHUNK = 1 << 20


# ----------------------------------------------------------------------------------------------- download
def sha256_of(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        for chunk in iter(lambda: fh.read(CHUNK), b""):
            digest.update(chunk)
    return digest.hexdigest()


def _verify(path: Path, url: str, sha256: str | None, size: int | None) -> None:
    actual = path.stat().st_size
    if size is not None and actual != size:
        raise DataError(f"{path}: downloaded {actual} bytes from {url}, expected {size}; run again to resume")
    if sha256 is not None:
        got = sha256_of(path)
        if got != sha256.lower():
            path.unlink()
            raise DataError(
                f"{path}: SHA-256 mismatch for {url}: expected {sha256}, got {got} (file removed)"
            )


def download(
    url: str, dest: str | Path, sha256: str | None = None, size: int | None = None, timeout: float = 60
) -> Path:
    """Download ``url`` to ``dest`` unless it is already there; resume ``<dest>.part`` if a previous try broke
    off."""
    dest = Path(dest)
    if dest.is_file():
        return dest
    dest.parent.mkdir(parents=True, exist_ok=True)
    part = dest.with_name(dest.name + ".part")
    offset = part.stat().st_size if part.is_file() else 0
    if size is None or offset < size:
        request = urllib.request.Request(url, headers={"Range": f"bytes={offset}-"} if offset else {})
        try:
            with urllib.request.urlopen(request, timeout=timeout) as response:
                resumed = response.status == 206
                if offset and not resumed:
                    log.info("%s: server ignored the range request; downloading from the start", url)
                log.info(
                    "downloading %s -> %s (%s)", url, dest, f"resuming at {offset} B" if resumed else "new"
                )
                with open(part, "ab" if resumed else "wb") as fh:
                    shutil.copyfileobj(response, fh, CHUNK)
        except urllib.error.HTTPError as exc:
            if exc.code != 416:  # 416: nothing left to send, the partial file is complete
                raise DataError(f"{url}: download failed with HTTP {exc.code} {exc.reason}") from exc
        except (urllib.error.URLError, OSError) as exc:
            raise DataError(f"{url}: download failed ({exc}); run again to resume from {part}") from exc
    _verify(part, url, sha256, size)
    os.replace(part, dest)
    return dest


# ----------------------------------------------------------------------------------------------- extraction
def _check_member(archive: Path, name: str, link: str | None = None) -> str:
    """The member's top-level entry; raises if the member or its link target would land outside the target."""
    path = PurePosixPath(name)
    if path.is_absolute() or name.startswith(("/", "\\")) or ".." in path.parts:
        raise DataError(f"{archive}: unsafe member '{name}' (absolute path or '..'); refusing to extract")
    if link is not None:
        depth = 0
        for part in (path.parent / link).parts:
            depth += -1 if part == ".." else 1
            if depth < 0 or PurePosixPath(link).is_absolute():
                raise DataError(
                    f"{archive}: member '{name}' links to '{link}', outside the target; refusing to extract"
                )
    parts = [p for p in path.parts if p not in (".", "")]
    return parts[0] if parts else ""


def _members(archive: Path) -> set[str]:
    """Validate every member; return the top-level entries."""
    tops: set[str] = set()
    if zipfile.is_zipfile(archive):
        with zipfile.ZipFile(archive) as zf:
            for name in zf.namelist():
                tops.add(_check_member(archive, name))
    else:
        try:
            with tarfile.open(archive) as tf:
                for member in tf:
                    if not (member.isfile() or member.isdir() or member.issym() or member.islnk()):
                        raise DataError(
                            f"{archive}: member '{member.name}' is a device or fifo; refusing to extract"
                        )
                    link = member.linkname if (member.issym() or member.islnk()) else None
                    if member.islnk():  # hard-link names are relative to the archive root, not the member
                        _check_member(archive, member.linkname)
                        link = None
                    tops.add(_check_member(archive, member.name, link))
        except tarfile.TarError as exc:
            raise DataError(f"{archive}: not a readable tar or zip archive ({exc})") from exc
    tops.discard("")
    if not tops:
        raise DataError(f"{archive}: the archive is empty")
    return tops


def extract_archive(archive: str | Path, target: str | Path) -> list[Path]:
    """Extract ``archive`` into ``target`` and return its top-level entries; entries present are kept."""
    archive, target = Path(archive), Path(target)
    tops = sorted(_members(archive))
    entries = [target / top for top in tops]
    if all(e.exists() for e in entries):
        log.info("%s: already extracted in %s", archive.name, target)
        return entries
    target.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{archive.name}.", suffix=".extract", dir=target))
    try:
        if zipfile.is_zipfile(archive):
            with zipfile.ZipFile(archive) as zf:
                zf.extractall(tmp)
        else:
            with tarfile.open(archive) as tf:
                tf.extractall(
                    tmp, filter="data"
                )  # the stdlib's own safety filter, on top of the checks above
        for top, entry in zip(tops, entries):
            if not entry.exists():
                os.replace(tmp / top, entry)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return entries


# ----------------------------------------------------------------------------------------------- datasets
@dataclass(frozen=True)
class Archive:
    url: str
    filename: str
    into: str = "."  # where it goes, relative to the dataset root
    extract: bool = True  # False: copy the file as it is (in_to_in9.json)
    sha256: str | None = None
    size: int | None = None


@dataclass(frozen=True)
class DatasetSource:
    marker: str  # relative path whose presence means the dataset is in place
    archives: tuple[Archive, ...]
    instructions: str


WATERBIRDS_URL = "https://nlp.stanford.edu/data/dro/waterbird_complete95_forest2water2.tar.gz"
CUB_URL = "https://data.caltech.edu/records/65de6-vp158/files/CUB_200_2011.tgz?download=1"
CUB_SEGMENTATIONS_URL = "https://data.caltech.edu/records/w9d68-gec53/files/segmentations.tgz?download=1"
IN9_URL = "https://github.com/MadryLab/backgrounds_challenge/releases/download/data/backgrounds_challenge_data.tar.gz"
IN9_MAPPING_URL = "https://raw.githubusercontent.com/MadryLab/backgrounds_challenge/master/in_to_in9.json"

_CUB = (
    Archive(CUB_URL, "CUB_200_2011.tgz"),
    Archive(CUB_SEGMENTATIONS_URL, "CUB_200_2011_segmentations.tgz", into="CUB_200_2011"),
)
DATASET_SOURCES: dict[str, DatasetSource] = {
    "waterbirds": DatasetSource(
        "waterbird_complete95_forest2water2/metadata.csv",
        (Archive(WATERBIRDS_URL, "waterbird_complete95_forest2water2.tar.gz"),),
        f"Download {WATERBIRDS_URL} and extract it into the dataset root.",
    ),
    "cub": DatasetSource(
        "CUB_200_2011/images.txt",
        _CUB,
        f"Download {CUB_URL} (and the masks {CUB_SEGMENTATIONS_URL} into CUB_200_2011/) and extract them "
        "into the dataset root.",
    ),
    "cub_waterbirds": DatasetSource(
        "CUB_200_2011/waterbird_complete95_forest2water2/metadata.csv",
        (*_CUB, Archive(WATERBIRDS_URL, "waterbird_complete95_forest2water2.tar.gz", into="CUB_200_2011")),
        f"Extract CUB-200-2011 ({CUB_URL}) into the dataset root and the Waterbirds tarball "
        f"({WATERBIRDS_URL}) inside its CUB_200_2011/ folder.",
    ),
    "imagenet9": DatasetSource(
        "bg_challenge/original",
        (
            Archive(IN9_URL, "backgrounds_challenge_data.tar.gz"),
            Archive(IN9_MAPPING_URL, "in_to_in9.json", extract=False),
        ),
        f"Download {IN9_URL} and {IN9_MAPPING_URL} and extract/copy them into the dataset root.",
    ),
    "metashift": DatasetSource(
        "MetaDatasetCatDog/train",
        (),
        "MetaShift cannot be downloaded automatically: build MetaDatasetCatDog with "
        "https://github.com/Wuyxin/DISC and place it in the dataset root "
        "(MetaDatasetCatDog/{train,test}/{cat,dog}/<context>/...).",
    ),
    "imagenet": DatasetSource(
        "train",
        (),
        "ImageNet-1k cannot be downloaded automatically: get it from https://image-net.org/download.php and "
        "place train/<wnid>/ and val/<wnid>/ (validation sorted into class folders) in the dataset root.",
    ),
}


def ensure_dataset(cfg: Config, sources: dict[str, DatasetSource] = DATASET_SOURCES) -> Path:
    """Make sure ``cfg.data.dataset`` is in ``cfg.data_root``, downloading it if allowed; return the root."""
    name, root = cfg.data.dataset, cfg.data_root
    if name == "synthetic":
        raise DataError(
            "the synthetic benchmark is generated, not downloaded: run `python stages/prepare.py`"
        )
    source = sources[name]
    if (root / source.marker).exists():
        return root
    if not source.archives or not cfg.data.download:
        how = "" if not source.archives else " Set `data.download: true` to fetch it automatically, or:"
        raise DataError(
            f"{root / source.marker}: {name} not found.{how} {source.instructions} (dataset root: {root})"
        )
    cache = Path(cfg.base.data_dir) / "downloads"
    for archive in source.archives:
        local = download(archive.url, cache / archive.filename, sha256=archive.sha256, size=archive.size)
        into = root / archive.into
        if archive.extract:
            extract_archive(local, into)
        elif not (into / archive.filename).exists():
            with atomic_path(into / archive.filename) as tmp:
                shutil.copyfile(local, tmp)
    if not (root / source.marker).exists():
        raise DataError(
            f"{root / source.marker}: still missing after downloading {name}; the archive layout changed?"
        )
    return root

"""Downloads against a loopback HTTP server: resume, checksum, safe extraction, skipping what is present."""

from __future__ import annotations

import hashlib
import io
import tarfile
from pathlib import Path

import pytest

from hardmask.data import DataError, WaterbirdsDataset, download, ensure_dataset, extract_archive
from hardmask.data.download import DATASET_SOURCES, Archive, DatasetSource

from ..conftest import make_tiny_config
from .conftest import make_waterbirds_folder, tar_gz_of

ARCHIVE = "/files/waterbird_complete95_forest2water2.tar.gz"


@pytest.fixture
def waterbirds_tarball(tmp_path, http_server) -> bytes:
    source = make_waterbirds_folder(tmp_path / "src", with_segmentations=False)
    body = tar_gz_of(source, "waterbird_complete95_forest2water2")
    http_server.files[ARCHIVE] = body
    return body


def test_download_resumes_a_partial_file(tmp_path, http_server, waterbirds_tarball):
    body, dest = waterbirds_tarball, tmp_path / "dl" / "wb.tar.gz"
    dest.parent.mkdir()
    half = len(body) // 2
    (dest.parent / "wb.tar.gz.part").write_bytes(body[:half])
    sha = hashlib.sha256(body).hexdigest()
    assert download(http_server.base_url + ARCHIVE, dest, sha256=sha, size=len(body)) == dest
    assert dest.read_bytes() == body
    assert http_server.requests == [(ARCHIVE, f"bytes={half}-")]
    assert http_server.bytes_sent == len(body) - half
    assert not (dest.parent / "wb.tar.gz.part").exists()


def test_complete_partial_file_is_not_requested_again(tmp_path, http_server, waterbirds_tarball):
    dest = tmp_path / "wb.tar.gz"
    (tmp_path / "wb.tar.gz.part").write_bytes(waterbirds_tarball)
    download(http_server.base_url + ARCHIVE, dest, size=len(waterbirds_tarball))
    assert dest.read_bytes() == waterbirds_tarball and http_server.requests == []
    (tmp_path / "again.part").write_bytes(waterbirds_tarball)  # size unknown: the server answers 416
    download(http_server.base_url + ARCHIVE, tmp_path / "again")
    assert (tmp_path / "again").read_bytes() == waterbirds_tarball
    assert http_server.requests == [(ARCHIVE, f"bytes={len(waterbirds_tarball)}-")]


def test_download_restarts_when_the_server_ignores_ranges(tmp_path, http_server, waterbirds_tarball):
    http_server.honour_range = False
    dest = tmp_path / "wb.tar.gz"
    (tmp_path / "wb.tar.gz.part").write_bytes(b"garbage that must not stay in front")
    download(http_server.base_url + ARCHIVE, dest, sha256=hashlib.sha256(waterbirds_tarball).hexdigest())
    assert dest.read_bytes() == waterbirds_tarball


def test_checksum_mismatch_is_an_error(tmp_path, http_server, waterbirds_tarball):
    dest = tmp_path / "wb.tar.gz"
    with pytest.raises(DataError, match=r"SHA-256 mismatch for http://127\.0\.0\.1.*expected 0{64}"):
        download(http_server.base_url + ARCHIVE, dest, sha256="0" * 64)
    assert not dest.exists() and not (tmp_path / "wb.tar.gz.part").exists()


def test_size_mismatch_and_http_errors(tmp_path, http_server, waterbirds_tarball):
    with pytest.raises(DataError, match="expected 5 bytes|downloaded .* expected 5"):
        download(http_server.base_url + ARCHIVE, tmp_path / "a", size=5)
    with pytest.raises(DataError, match="HTTP 404"):
        download(http_server.base_url + "/missing.tar.gz", tmp_path / "b")


def test_present_file_is_not_downloaded_again(tmp_path, http_server, waterbirds_tarball):
    dest = tmp_path / "wb.tar.gz"
    download(http_server.base_url + ARCHIVE, dest)
    download(http_server.base_url + ARCHIVE, dest)
    assert len(http_server.requests) == 1


def test_extract_and_skip_when_present(tmp_path, waterbirds_tarball):
    archive = tmp_path / "wb.tar.gz"
    archive.write_bytes(waterbirds_tarball)
    target = tmp_path / "data"
    entries = extract_archive(archive, target)
    assert entries == [target / "waterbird_complete95_forest2water2"]
    assert len(WaterbirdsDataset(target, "train")) == 4
    marker = entries[0] / "user_edit.txt"
    marker.write_text("kept")
    extract_archive(archive, target)  # already there: nothing replaced
    assert marker.read_text() == "kept"
    assert [p.name for p in target.iterdir()] == ["waterbird_complete95_forest2water2"]  # no temp dir left


def _evil_tar(path: Path, kind: str) -> None:
    with tarfile.open(path, "w:gz") as tf:
        ok = tarfile.TarInfo("dataset/ok.txt")
        ok.size = 2
        tf.addfile(ok, io.BytesIO(b"ok"))
        if kind == "symlink":
            link = tarfile.TarInfo("dataset/passwd")
            link.type, link.linkname = tarfile.SYMTYPE, "../../etc/passwd"
            tf.addfile(link)
        else:
            name = {"dotdot": "dataset/../../escaped.txt", "absolute": "/tmp/hardmask_escaped.txt"}[kind]
            evil = tarfile.TarInfo(name)
            evil.size = 4
            tf.addfile(evil, io.BytesIO(b"evil"))


@pytest.mark.parametrize(
    "kind,message",
    [
        ("dotdot", "unsafe member 'dataset/../../escaped.txt'"),
        ("absolute", "unsafe member '/tmp/"),
        ("symlink", "links to"),
    ],
)
def test_traversal_attempts_are_rejected(tmp_path, kind, message):
    archive = tmp_path / "evil.tar.gz"
    _evil_tar(archive, kind)
    target = tmp_path / "a" / "b"
    with pytest.raises(DataError, match=message):
        extract_archive(archive, target)
    assert not target.exists() or not any(target.iterdir()), (
        "nothing may be extracted from a rejected archive"
    )
    assert not (tmp_path / "escaped.txt").exists() and not Path("/tmp/hardmask_escaped.txt").exists()


def test_ensure_dataset_downloads_and_extracts(tmp_path, http_server, waterbirds_tarball):
    sources = {
        "waterbirds": DatasetSource(
            DATASET_SOURCES["waterbirds"].marker,
            (
                Archive(
                    http_server.base_url + ARCHIVE,
                    "wb.tar.gz",
                    sha256=hashlib.sha256(waterbirds_tarball).hexdigest(),
                ),
            ),
            "instructions",
        )
    }
    cfg = make_tiny_config(tmp_path, data={"dataset": "waterbirds", "download": True})
    root = ensure_dataset(cfg, sources)
    assert root == tmp_path / "data" / "waterbirds"
    assert (tmp_path / "data" / "downloads" / "wb.tar.gz").is_file()
    assert len(WaterbirdsDataset(root, "test")) == 2
    ensure_dataset(cfg, sources)  # present: no second request
    assert len(http_server.requests) == 1


def test_ensure_dataset_explains_how_to_get_missing_data(tmp_path):
    cfg = make_tiny_config(tmp_path, data={"dataset": "waterbirds", "download": False})
    with pytest.raises(
        DataError, match=r"waterbirds not found\. Set `data.download: true`.*nlp\.stanford\.edu"
    ):
        ensure_dataset(cfg)
    cfg = make_tiny_config(tmp_path, data={"dataset": "metashift", "download": True})
    with pytest.raises(
        DataError, match=r"MetaDatasetCatDog/train: metashift not found.*github.com/Wuyxin/DISC"
    ):
        ensure_dataset(cfg)
    cfg = make_tiny_config(tmp_path, data={"dataset": "imagenet", "download": True})
    with pytest.raises(DataError, match="image-net.org"):
        ensure_dataset(cfg)

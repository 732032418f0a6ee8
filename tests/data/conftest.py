"""Data-test fixtures: a tiny generated benchmark, miniature real-dataset layouts, a loopback HTTP server."""

from __future__ import annotations

import http.server
import io
import tarfile
import threading
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from hardmask.data import generate_synthetic
from tests.conftest import PAPER, changed

# Small enough to generate in about a second, large enough for the binomial check of the train split.
TINY_SYNTHETIC = changed(PAPER.data.synthetic, image_size=32, n_train=400, n_val=24, n_test=40, n_ood=16)


@pytest.fixture(scope="session")
def synthetic_root(tmp_path_factory) -> Path:
    """The tiny benchmark, generated once per session (read-only for the tests)."""
    root = tmp_path_factory.mktemp("synthetic") / "bench"
    generate_synthetic(TINY_SYNTHETIC, root, seed=0)
    return root


def write_image(
    path: Path, size_wh: tuple[int, int], colour: tuple[int, int, int], mode: str = "RGB"
) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new(mode, size_wh, colour if mode == "RGB" else colour[0]).save(path)


def write_mask(path: Path, mask: np.ndarray) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(mask.astype(np.uint8)).save(path)


def centre_box_mask(size_wh: tuple[int, int], value: int = 255) -> np.ndarray:
    w, h = size_wh
    mask = np.zeros((h, w), dtype=np.uint8)
    mask[h // 4 : 3 * h // 4, w // 4 : 3 * w // 4] = value
    return mask


# ------------------------------------------------------------------------------------- real Waterbirds layout
WATERBIRDS_ROWS = [  # img_filename, y, split, place  (several species per label, as in the real data)
    ("001.Black_footed_Albatross/Black_Footed_Albatross_0001_1.jpg", 1, 0, 1),
    ("001.Black_footed_Albatross/Black_Footed_Albatross_0002_2.jpg", 1, 0, 0),
    ("002.Laysan_Albatross/Laysan_Albatross_0003_3.jpg", 1, 1, 1),
    ("002.Laysan_Albatross/Laysan_Albatross_0004_4.jpg", 1, 2, 0),
    ("009.Brewer_Blackbird/Brewer_Blackbird_0005_5.jpg", 0, 0, 0),
    ("009.Brewer_Blackbird/Brewer_Blackbird_0006_6.jpg", 0, 0, 0),
    ("010.Red_winged_Blackbird/Red_Winged_Blackbird_0007_7.jpg", 0, 1, 0),
    ("010.Red_winged_Blackbird/Red_Winged_Blackbird_0008_8.jpg", 0, 2, 1),
]
WATERBIRDS_SIZE = (48, 36)  # W x H: not square, like the real 500 x 375-ish images


def make_waterbirds_folder(parent: Path, with_segmentations: bool = True) -> Path:
    """A miniature of waterbird_complete95_forest2water2/ (+ CUB-style segmentations/ beside it)."""
    root = parent / "waterbird_complete95_forest2water2"
    lines = ["img_id,img_filename,y,split,place,place_filename"]
    for i, (name, y, split, place) in enumerate(WATERBIRDS_ROWS, start=1):
        write_image(root / name, WATERBIRDS_SIZE, (40 * i, 200 if y else 20, 100))
        lines.append(f"{i},{name},{y},{split},{place},/x/{place}.jpg")
        if with_segmentations:
            write_mask(
                parent / "segmentations" / Path(name).with_suffix(".png"),
                centre_box_mask(WATERBIRDS_SIZE, 204),
            )
    (root / "metadata.csv").write_text("\n".join(lines) + "\n")
    return root


# ------------------------------------------------------------------------------------- loopback HTTP server
@dataclass
class ServedFiles:
    """What the loopback server serves and what it saw."""

    files: dict[str, bytes] = field(default_factory=dict)
    requests: list[tuple[str, str | None]] = field(default_factory=list)  # (path, Range header)
    bytes_sent: int = 0
    honour_range: bool = True
    base_url: str = ""


@pytest.fixture
def http_server() -> Iterator[ServedFiles]:
    served = ServedFiles()

    class Handler(http.server.BaseHTTPRequestHandler):
        def do_GET(self) -> None:  # noqa: N802 (http.server API)
            served.requests.append((self.path, self.headers.get("Range")))
            body = served.files.get(self.path)
            if body is None:
                self.send_error(404)
                return
            start, status = 0, 200
            range_header = self.headers.get("Range")
            if range_header and served.honour_range:
                start = int(range_header.removeprefix("bytes=").split("-")[0])
                if start >= len(body):
                    self.send_error(416)
                    return
                status = 206
            chunk = body[start:]
            self.send_response(status)
            self.send_header("Content-Length", str(len(chunk)))
            if status == 206:
                self.send_header("Content-Range", f"bytes {start}-{len(body) - 1}/{len(body)}")
            self.end_headers()
            # counted before writing: the client can finish reading before this thread runs again
            served.bytes_sent += len(chunk)
            self.wfile.write(chunk)

        def log_message(self, *args) -> None:
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    served.base_url = f"http://127.0.0.1:{server.server_address[1]}"
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield served
    finally:
        server.shutdown()
        server.server_close()
        thread.join()


def tar_gz_of(directory: Path, arcname: str) -> bytes:
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w:gz") as tf:
        tf.add(directory, arcname=arcname)
    return buffer.getvalue()

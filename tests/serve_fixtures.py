"""A small calibrated detector and encoded images for the service tests (brick texture, real Lite0 weights)."""
from __future__ import annotations

import io
import socket
import struct
import zlib

import numpy as np
from PIL import Image

SIZE = 64


def brick_crops(n: int, seed: int = 0, size: int = 96) -> list[np.ndarray]:
    from fastmsfd.demo_data import load_texture, random_crop

    src, rng = load_texture("brick"), np.random.default_rng(seed)
    return [(np.repeat(random_crop(src, rng, 0, src.shape[1], size)[..., None], 3, 2) * 255).astype(np.uint8)
            for _ in range(n)]


def defective_crop(seed: int = 5) -> np.ndarray:
    from fastmsfd.demo_data import add_defect, load_texture, random_crop

    src, rng = load_texture("brick"), np.random.default_rng(seed)
    img, _ = add_defect(random_crop(src, rng, 0, src.shape[1], 96), "stain", rng)
    return (np.repeat(img[..., None], 3, 2) * 255).astype(np.uint8)


def encode(arr: np.ndarray, fmt: str = "PNG", mode: str | None = None) -> bytes:
    im = Image.fromarray(arr)
    if mode == "P":  # an adaptive palette: a grey image keeps its levels (the web palette would quantise them)
        im = im.convert("P", palette=Image.ADAPTIVE, colors=256)
    elif mode:
        im = im.convert(mode)
    buf = io.BytesIO()
    im.save(buf, format=fmt)
    return buf.getvalue()


def png_header_only(width: int, height: int) -> bytes:
    """A PNG whose header declares width x height pixels, with almost no data: a huge-dimension upload."""
    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))
    ihdr = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", zlib.compress(b"\0" * 16)) + \
        chunk(b"IEND", b"")


def make_model(path) -> None:
    from fastmsfd import Detector

    det = Detector(image_size=SIZE, runtime="torch")
    det.calibrate(brick_crops(8), quantile=0.9)
    det.save(path)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]

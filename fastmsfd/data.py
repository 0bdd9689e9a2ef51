"""Image decoding, input conversion and dataset layouts (plain folders, MVTec AD).

Every failure names the file and the problem (fastmsfd.errors).
"""
from __future__ import annotations

import io
import os
import warnings
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Iterable, Sequence

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image, ImageOps, UnidentifiedImageError

from .errors import DataError, ImageDecodeError
from .geometry import content_box, pad_edges

IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff", ".webp", ".pgm", ".ppm")
# Refuse images above this many pixels before decoding them (a decompression bomb's header is enough).
MAX_PIXELS = 120_000_000


def _pixels_to_rgb(im: Image.Image) -> np.ndarray:
    if im.mode in ("I;16", "I;16L", "I;16B", "I;16N", "I"):
        arr = np.asarray(im, dtype=np.float64)
        arr = arr / 257.0 if arr.max(initial=0) > 255 or im.mode.startswith("I;16") else arr
        gray = np.clip(np.rint(arr), 0, 255).astype(np.uint8)
        return np.repeat(gray[..., None], 3, axis=2)
    if im.mode == "F":
        arr = np.nan_to_num(np.asarray(im, dtype=np.float32))
        gray = np.clip(np.rint(arr), 0, 255).astype(np.uint8)
        return np.repeat(gray[..., None], 3, axis=2)
    if im.mode == "P" and "transparency" in im.info:
        im = im.convert("RGBA")
    return np.asarray(im.convert("RGB"))


def read_image(path: str | os.PathLike) -> np.ndarray:
    """Decode an image file to uint8 RGB (H, W, 3): any common format, EXIF orientation applied,
    grayscale / palette / 16-bit / CMYK / alpha converted. Raises ImageDecodeError naming the file."""
    path = Path(path)
    if not path.is_file():
        raise ImageDecodeError(f"{path}: file not found" if not path.exists() else f"{path}: not a regular file")
    if path.stat().st_size == 0:
        raise ImageDecodeError(f"{path}: empty file (0 bytes)")
    return _decode(path, str(path), MAX_PIXELS)


def decode_bytes(data: bytes, name: str = "image", max_pixels: int = MAX_PIXELS) -> np.ndarray:
    """Like read_image, for encoded bytes (an upload); errors name `name`."""
    if not data:
        raise ImageDecodeError(f"{name}: empty (0 bytes)")
    return _decode(io.BytesIO(data), name, max_pixels)


def _decode(source, name: str, max_pixels: int) -> np.ndarray:
    try:
        with Image.open(source) as im:
            w, h = im.size
            if w * h > max_pixels:
                raise ImageDecodeError(f"{name}: {w}x{h} pixels exceeds the limit of {max_pixels} "
                                       "(possible decompression bomb); refusing to decode")
            if w == 0 or h == 0:
                raise ImageDecodeError(f"{name}: image has no pixels ({w}x{h})")
            with warnings.catch_warnings():
                warnings.simplefilter("error", Image.DecompressionBombWarning)
                im.load()
                im = ImageOps.exif_transpose(im)
                return _pixels_to_rgb(im)
    except ImageDecodeError:
        raise
    except UnidentifiedImageError:
        raise ImageDecodeError(f"{name}: not an image file, or a format Pillow cannot read") from None
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as exc:
        raise ImageDecodeError(f"{name}: refused as a possible decompression bomb ({exc})") from None
    except (OSError, SyntaxError, ValueError, EOFError) as exc:
        raise ImageDecodeError(f"{name}: truncated or corrupt image ({exc})") from None


def read_mask(path: str | os.PathLike) -> np.ndarray:
    """A ground-truth mask as bool (H, W): any non-zero pixel is a defect (MVTec masks are {0, 255})."""
    return read_image(path).max(axis=2) >= 128


def list_images(folder: str | os.PathLike, recursive: bool = True) -> list[Path]:
    """Image files under `folder`, sorted; folders starting with '.' or '_' are skipped. Symlinked
    folders are not followed, so a symlink loop cannot hang the walk."""
    folder = Path(folder)
    if not folder.exists():
        raise DataError(f"{folder}: folder not found")
    if not folder.is_dir():
        raise DataError(f"{folder}: not a folder")
    found = []
    for root, dirs, files in os.walk(folder, followlinks=False):
        dirs[:] = sorted(d for d in dirs if not d.startswith((".", "_"))) if recursive else []
        found += [Path(root) / f for f in files if f.lower().endswith(IMAGE_EXTENSIONS) and not f.startswith(".")]
    if not found:
        raise DataError(f"{folder}: no images found (looked for {', '.join(IMAGE_EXTENSIONS)})")
    return sorted(found)


# ---- in-memory conversion ---------------------------------------------------------------------------------

def _array_to_chw(arr: np.ndarray, where: str, keep_u8: bool = False) -> torch.Tensor:
    """(3, H, W): float in [0, 1], or for uint8 arrays with keep_u8 the uint8 values (an HWC view's strides)."""
    if arr.ndim == 2:
        arr = arr[..., None]
    if arr.ndim != 3 or arr.shape[2] not in (1, 3, 4):
        raise ValueError(f"{where}: expected an (H, W), (H, W, 1), (H, W, 3) or (H, W, 4) array, got {arr.shape}")
    if arr.dtype == np.uint8 and keep_u8:
        t = torch.from_numpy(np.array(arr, copy=True)).permute(2, 0, 1)
    elif arr.dtype == np.uint8:
        t = torch.from_numpy(np.array(arr, copy=True)).permute(2, 0, 1).float() / 255.0
    elif np.issubdtype(arr.dtype, np.floating):
        t = torch.from_numpy(np.ascontiguousarray(arr, dtype=np.float32)).permute(2, 0, 1)
    else:
        raise ValueError(f"{where}: arrays must be uint8 (0..255) or float (0..1), got {arr.dtype}")
    return _fix_channels(t, where)


def _fix_channels(t: torch.Tensor, where: str) -> torch.Tensor:
    if t.shape[0] == 1:
        t = t.expand(3, -1, -1)
    elif t.shape[0] == 4:
        t = t[:3]
    elif t.shape[0] != 3:
        raise ValueError(f"{where}: expected 1, 3 or 4 channels, got {t.shape[0]}")
    return t


def _tensor_to_chw_list(t: torch.Tensor, where: str, keep_u8: bool = False) -> list[torch.Tensor]:
    if t.dim() == 3:
        t = t[None]
    if t.dim() != 4:
        raise ValueError(f"{where}: expected a (B, C, H, W) or (C, H, W) tensor, got shape {tuple(t.shape)}")
    if t.shape[0] == 0:
        raise ValueError(f"{where}: empty batch")
    if t.dtype == torch.uint8:
        t = t if keep_u8 else t.float() / 255.0
    elif t.is_floating_point():
        t = t.float()
    else:
        raise ValueError(f"{where}: tensors must be uint8 (0..255) or float (0..1), got {t.dtype}")
    return [_fix_channels(x, where) for x in t.cpu()]


def _check_range(t: torch.Tensor, where: str) -> torch.Tensor:
    if t.dtype == torch.uint8:
        return t
    if not torch.isfinite(t).all():
        raise ValueError(f"{where}: image contains NaN or inf")
    lo, hi = float(t.min()), float(t.max())
    if lo < -0.01 or hi > 1.01:
        raise ValueError(f"{where}: float images must be in [0, 1], got values in [{lo:.3g}, {hi:.3g}] "
                         "(pass uint8 for 0..255 data)")
    return t.clamp(0, 1)


def to_image_list(images, what: str = "images", first: int = 0, keep_u8: bool = False
                  ) -> tuple[list[torch.Tensor], list[str | None]]:
    """Any supported input -> (list of float (3, H, W) tensors in [0, 1], list of source names or None).
    first: the index of images[0] in the caller's whole input, so errors name the caller's index.
    keep_u8: images that are uint8 at the source (files, PIL images, uint8 arrays and tensors) stay uint8."""
    if isinstance(images, (str, os.PathLike, Image.Image, np.ndarray)):
        images = [images]
    elif isinstance(images, torch.Tensor):
        tensors = _tensor_to_chw_list(images, what, keep_u8)
        return [_check_range(t, f"{what}[{i}]") for i, t in enumerate(tensors, start=first)], [None] * len(tensors)
    items = list(images)
    if not items:
        raise ValueError(f"{what}: empty input (no images)")
    out, names = [], []
    for i, item in enumerate(items, start=first):
        where = f"{what}[{i}]"
        if isinstance(item, (str, os.PathLike)):
            out.append(_array_to_chw(read_image(item), str(item), keep_u8))
            names.append(str(item))
            continue
        if isinstance(item, Image.Image):
            t = _array_to_chw(_pixels_to_rgb(ImageOps.exif_transpose(item)), where, keep_u8)
        elif isinstance(item, np.ndarray):
            t = _array_to_chw(item, where, keep_u8)
        elif isinstance(item, torch.Tensor):
            if item.dim() != 3:
                raise ValueError(f"{where}: expected a (C, H, W) tensor, got shape {tuple(item.shape)}")
            t = _tensor_to_chw_list(item, where, keep_u8)[0]
        else:
            raise ValueError(f"{where}: unsupported input type {type(item).__name__} "
                             "(use paths, PIL images, numpy arrays or tensors)")
        out.append(_check_range(t, where))
        names.append(None)
    return out, names


def as_hw(size: int | Sequence[int]) -> tuple[int, int]:
    """An image size as (height, width): an int is a square."""
    return (int(size), int(size)) if isinstance(size, int) else (int(size[0]), int(size[1]))


def resize_u8(t: torch.Tensor, size: int | tuple[int, int], resize: str = "squash") -> torch.Tensor:
    """One (3, H, W) image -> uint8 (3, S, S) with antialiased bilinear interpolation, by the resize policy
    (geometry.py: "squash" or "keep_aspect"). uint8 images are resized in uint8 (torch's vectorised uint8
    kernel: about 3x faster than the float round trip, within one grey level of it); float images in float,
    then rounded."""
    size = as_hw(size)
    if resize != "squash":
        box = content_box(tuple(t.shape[-2:]), size, resize)
        return pad_edges(resize_u8(t, box[2:]), box, size).contiguous()
    if t.dtype != torch.uint8:
        return (resize_batch([t], size)[0] * 255).round().to(torch.uint8)
    if tuple(t.shape[-2:]) == size:
        return t.contiguous()
    x = t[None].contiguous(memory_format=torch.channels_last)  # the layout the uint8 kernel is written for
    return F.interpolate(x, size=size, mode="bilinear", antialias=True, align_corners=False)[0].contiguous()


def to_u8_batch(images, size: int, what: str = "images", first: int = 0, resize: str = "squash"
                ) -> tuple[torch.Tensor, list[tuple[int, int]], list[str | None]]:
    """Any supported input -> (uint8 (B, 3, S, S) at the network's size, original (H, W) sizes, source names)."""
    ims, names = to_image_list(images, what, first, keep_u8=True)
    return torch.stack([resize_u8(t, size, resize) for t in ims]), [tuple(t.shape[-2:]) for t in ims], names


def resize_batch(images: Sequence[torch.Tensor], size: int | tuple[int, int]) -> torch.Tensor:
    """Stack (3, H, W) float images into (B, 3, S, S), resized with antialiased bilinear interpolation."""
    size = (size, size) if isinstance(size, int) else tuple(size)
    out = []
    for t in images:
        if tuple(t.shape[-2:]) != size:
            t = F.interpolate(t[None], size=size, mode="bilinear", antialias=True, align_corners=False)[0]
        out.append(t)
    return torch.stack(out).clamp_(0, 1)


def decode_resized(path: str | os.PathLike, size: int | tuple[int, int], resize: str = "squash"
                   ) -> tuple[torch.Tensor, tuple[int, int]]:
    """One image file -> (uint8 (3, H, W) at size, resized with antialiased bilinear by the resize policy, its
    original (H, W))."""
    return _resized(read_image(path), str(path), size, resize)


def decode_bytes_resized(data: bytes, name: str, size: int | tuple[int, int], max_pixels: int = MAX_PIXELS,
                         resize: str = "squash") -> tuple[torch.Tensor, tuple[int, int]]:
    """decode_resized for encoded bytes (an upload, an object read by Ray); errors name `name`."""
    return _resized(decode_bytes(data, name, max_pixels), name, size, resize)


def _resized(rgb: np.ndarray, name: str, size, resize: str) -> tuple[torch.Tensor, tuple[int, int]]:
    t = _array_to_chw(rgb, name, keep_u8=True)
    return resize_u8(t, size, resize), (int(t.shape[1]), int(t.shape[2]))


def load_resized(paths: Iterable[Path], size: int | tuple[int, int], progress: bool = False,
                 resize: str = "squash") -> torch.Tensor:
    """Decode and resize image files to a uint8 (N, 3, H, W) tensor (compact enough to keep in memory)."""
    from tqdm.auto import tqdm

    paths = list(paths)
    out = torch.empty((len(paths), 3, *as_hw(size)), dtype=torch.uint8)
    for i, p in enumerate(tqdm(paths, desc="loading images", disable=not progress or len(paths) < 50, leave=False)):
        out[i] = decode_resized(p, size, resize)[0]
    return out


def image_size_of(path: str | os.PathLike) -> tuple[int, int]:
    """(H, W) of an image file from its header (EXIF orientation applied), without decoding its pixels."""
    try:
        with Image.open(path) as im:
            w, h = im.size
            orientation = im.getexif().get(0x0112, 1)
    except (OSError, UnidentifiedImageError, SyntaxError, ValueError) as exc:
        raise ImageDecodeError(f"{path}: not an image file, or a format Pillow cannot read ({exc})") from None
    return (w, h) if orientation in (5, 6, 7, 8) else (h, w)


def iter_batches(images, size: int, batch_size: int, resize: str = "squash"):
    """predict()'s input as (uint8 batch at size, original sizes, names), one batch at a time: paths, a folder,
    PIL images, arrays or tensors. Decoding, checks and resizing run in worker threads, the next batch while this
    one infers (PIL, torch's resize and the runtimes release the GIL); at most two batches are in memory."""
    if isinstance(images, (str, os.PathLike)) and Path(images).is_dir():
        images = list_images(images)
    if isinstance(images, torch.Tensor):
        if images.dim() == 3:
            images = images[None]
        chunks = [images[i:i + batch_size] for i in range(0, len(images), batch_size)] or [images]
    elif isinstance(images, (list, tuple)):
        chunks = [images[i:i + batch_size] for i in range(0, len(images), batch_size)] or [images]
    else:
        chunks = [images]

    def is_paths(chunk) -> bool:
        return isinstance(chunk, (list, tuple)) and len(chunk) > 0 and \
            all(isinstance(x, (str, os.PathLike)) for x in chunk)

    S = size
    with ThreadPoolExecutor(max_workers=max(2, torch.get_num_threads()),
                            thread_name_prefix="fastmsfd-decode") as pool:
        if all(is_paths(c) for c in chunks):
            def submit(k):  # files: one task per file
                return [pool.submit(decode_resized, p, S, resize) for p in chunks[k]]

            def collect(k, futures):  # the first unreadable file raises, naming itself
                done = [f.result() for f in futures]
                return torch.stack([u for u, _ in done]), [hw for _, hw in done], [str(p) for p in chunks[k]]
        else:
            def submit(k):  # in-memory images: one task per batch (uint8 sources stay uint8)
                return pool.submit(to_u8_batch, chunks[k], S, "images", k * batch_size, resize)

            def collect(k, future):
                return future.result()
        pending = submit(0)
        for k in range(len(chunks)):
            ready = collect(k, pending)
            pending = submit(k + 1) if k + 1 < len(chunks) else None
            yield ready

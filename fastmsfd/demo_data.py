"""The embedded demo: an MVTec-layout dataset built at run time from real texture photographs that
scikit-image ships (brick, gravel, grass), with synthetic defects and exact masks. Deterministic per seed.

Training crops come from the left three quarters of each photograph, test crops from the right quarter,
so no test pixel is ever seen in training.
"""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw, ImageFilter

from .checkpoint import atomic_path

TEXTURES = ("brick", "gravel", "grass")
DEFECTS = ("scratch", "crack", "stain", "hole", "missing")
SUPERSAMPLE = 4  # defects are drawn at 4x and box-filtered down: soft, anti-aliased edges


def load_texture(name: str) -> np.ndarray:
    import skimage.data

    return np.asarray(getattr(skimage.data, name)(), dtype=np.float32) / 255.0


def random_crop(src: np.ndarray, rng: np.random.Generator, x0: int, x1: int, size: int) -> np.ndarray:
    y = int(rng.integers(0, src.shape[0] - size + 1))
    x = int(rng.integers(x0, x1 - size + 1))
    out = src[y:y + size, x:x + size]
    return out[:, ::-1].copy() if rng.random() < 0.5 else out.copy()


def _canvas(size: int) -> tuple[Image.Image, ImageDraw.ImageDraw]:
    im = Image.new("L", (size * SUPERSAMPLE, size * SUPERSAMPLE), 0)
    return im, ImageDraw.Draw(im)


def _alpha(im: Image.Image, size: int, blur: float = 0.0) -> np.ndarray:
    if blur:
        im = im.filter(ImageFilter.GaussianBlur(blur * SUPERSAMPLE))
    return np.asarray(im.resize((size, size), Image.BOX), dtype=np.float32) / 255.0


def _curve(rng: np.random.Generator, size: int, jitter: float, steps: int) -> list[tuple[float, float]]:
    """A random path across part of the image (smooth for jitter=0, jagged like a crack otherwise)."""
    s = SUPERSAMPLE
    start = rng.uniform(0.15, 0.85, 2) * size
    angle = rng.uniform(0, 2 * np.pi)
    length = rng.uniform(0.3, 0.6) * size
    bend = rng.uniform(-0.6, 0.6)
    pts = []
    for i in range(steps + 1):
        f = i / steps
        a = angle + bend * f
        p = start + f * length * np.array([np.cos(a), np.sin(a)])
        p = p + rng.normal(0, jitter, 2) if jitter else p
        pts.append((float(p[0] * s), float(p[1] * s)))
    return pts


def _defect_alpha(kind: str, rng: np.random.Generator, size: int) -> tuple[np.ndarray, float]:
    """(alpha in [0, 1], target intensity) of one defect."""
    s = SUPERSAMPLE
    im, draw = _canvas(size)
    if kind == "scratch":
        draw.line(_curve(rng, size, 0.0, 24), fill=255, width=int(rng.integers(2, 4)) * s, joint="curve")
        return _alpha(im, size), float(rng.choice([0.05, 0.95]))
    if kind == "crack":
        pts = _curve(rng, size, 1.2, 14)
        draw.line(pts, fill=255, width=int(rng.integers(2, 4)) * s)
        j = int(rng.integers(3, len(pts) - 3))  # one branch
        branch = [pts[j]]
        for _ in range(5):
            last = np.array(branch[-1])
            branch.append(tuple(last + rng.normal(0, 1.0, 2) * s + rng.uniform(1, 3, 2) * s))
        draw.line(branch, fill=255, width=s)
        return _alpha(im, size), 0.03
    if kind == "stain":
        c = rng.uniform(0.25, 0.75, 2) * size * s
        r = rng.uniform(0.08, 0.16) * size * s
        angles = np.linspace(0, 2 * np.pi, 24, endpoint=False)
        radii = r * (1 + 0.25 * rng.standard_normal(24)).clip(0.6, 1.4)
        draw.polygon([(float(c[0] + q * np.cos(a)), float(c[1] + q * np.sin(a))) for a, q in zip(angles, radii)],
                     fill=255)
        return 0.85 * _alpha(im, size, blur=1.0), -2.0  # -2: an oil-like stain that darkens the texture
    if kind == "hole":
        c = rng.uniform(0.2, 0.8, 2) * size * s
        r = rng.uniform(4, 9) * s
        draw.ellipse([float(c[0] - r), float(c[1] - r), float(c[0] + r), float(c[1] + r)], fill=255)
        return _alpha(im, size), 0.0
    if kind == "missing":
        c = rng.uniform(0.25, 0.75, 2) * size * s
        r = rng.uniform(0.1, 0.18) * size * s
        angles = np.sort(rng.uniform(0, 2 * np.pi, 7))
        draw.polygon([(float(c[0] + r * np.cos(a)), float(c[1] + r * np.sin(a))) for a in angles], fill=255)
        return _alpha(im, size), -1.0  # -1: a chipped-off area: the darker, featureless material underneath
    raise ValueError(f"unknown defect kind {kind!r}")


def add_defect(img: np.ndarray, kind: str, rng: np.random.Generator, strength: float = 1.0
               ) -> tuple[np.ndarray, np.ndarray]:
    """Return (defective image, bool mask of the pixels the defect changes); img: float (H, W) or (H, W, C) in
    [0, 1] (every channel gets the same defect). strength < 1 blends the defect in fainter (same shape)."""
    h, w = img.shape[:2]
    alpha, target = _defect_alpha(kind, rng, max(h, w))
    alpha = alpha[:h, :w]  # drawn on a square canvas; a rectangular image keeps its part of it
    mask = alpha >= 0.25
    alpha = alpha * strength
    if img.ndim == 3:
        alpha = alpha[..., None]
    if target == -2.0:
        target = img * 0.35
    elif target < 0:
        target = 0.5 * float(img.mean()) + rng.normal(0, 0.02, img.shape).astype(np.float32)
    out = img * (1 - alpha) + alpha * target
    return np.clip(out, 0, 1), mask


def _save_png(path: Path, arr: np.ndarray) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    with atomic_path(path, suffix=".png") as tmp:
        Image.fromarray(arr).save(tmp, format="PNG")


def make_demo_dataset(root: str | Path, seed: int = 0, n_train: int = 80, n_test_good: int = 20,
                      n_per_defect: int = 8, crop: int = 128, textures=TEXTURES) -> list[Path]:
    """Write <root>/<texture>/{train/good, test/<type>, ground_truth/<type>} and return the category folders.
    Re-uses a complete earlier build with the same parameters."""
    root = Path(root)
    params = dict(seed=seed, n_train=n_train, n_test_good=n_test_good, n_per_defect=n_per_defect, crop=crop,
                  textures=list(textures), version=3)
    manifest = root / "demo_manifest.json"
    if manifest.is_file() and json.loads(manifest.read_text()) == params:
        return [root / t for t in textures]
    for ti, texture in enumerate(textures):
        src = load_texture(texture)
        rng = np.random.default_rng([seed, ti])
        cat = root / texture
        split = src.shape[1] * 3 // 4
        to_u8 = lambda a: (np.clip(a, 0, 1) * 255).round().astype(np.uint8)  # noqa: E731
        for i in range(n_train):
            _save_png(cat / "train" / "good" / f"{i:03d}.png", to_u8(random_crop(src, rng, 0, split, crop)))
        for i in range(n_test_good):
            _save_png(cat / "test" / "good" / f"{i:03d}.png", to_u8(random_crop(src, rng, split, src.shape[1], crop)))
        for kind in DEFECTS:
            for i in range(n_per_defect):
                img, mask = add_defect(random_crop(src, rng, split, src.shape[1], crop), kind, rng)
                _save_png(cat / "test" / kind / f"{i:03d}.png", to_u8(img))
                _save_png(cat / "ground_truth" / kind / f"{i:03d}_mask.png", mask.astype(np.uint8) * 255)
    manifest.write_text(json.dumps(params))
    return [root / t for t in textures]

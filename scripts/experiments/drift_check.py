"""The drift alarm on the demo textures: false alarms over a long stream of new normal parts, and how many images
a brightness shift, a darker scene or a blur take to raise it (issue: a server a line can run unattended).

For each demo detector (a `fastmsfd demo` output folder), the reference is rebuilt as fit builds it: the same
held-out training images, calibrated at the same quantile. Normal streams: new crops of the photograph's training
region (exchangeable with the held-out images: the false-alarm check) and of its test region (another part of
the scene). Then new training-region crops, changed: brighter, darker, blurred.

    python scripts/experiments/drift_check.py DEMO_OUT [--normal 2000] [--shifted 200] [--window 200]
"""
from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np
from PIL import Image, ImageFilter

from fastmsfd import Detector
from fastmsfd.demo_data import load_texture, random_crop
from fastmsfd.fit import held_out_order
from fastmsfd.monitor import DriftSettings

CHANGES = {
    "brighter x1.2": lambda im: np.clip(im.astype(np.float32) * 1.2, 0, 255).astype(np.uint8),
    "darker x0.8": lambda im: (im.astype(np.float32) * 0.8).round().astype(np.uint8),
    "blur 1.5 px": lambda im: np.asarray(Image.fromarray(im).filter(ImageFilter.GaussianBlur(1.5))),
}


def normal_crops(texture: str, n: int, size: int, seed: int, region: str) -> list[np.ndarray]:
    """New crops from the photograph's training region (what the fit's held-out images are: exchangeable with
    them) or from its test region (the right quarter: another part of the scene, its own lighting)."""
    src, rng = load_texture(texture), np.random.default_rng(seed)
    split = src.shape[1] * 3 // 4
    x0, x1 = (0, split) if region == "train" else (split, src.shape[1])
    return [np.repeat((random_crop(src, rng, x0, x1, size) * 255).round().astype(np.uint8)[..., None], 3, 2)
            for _ in range(n)]


def first_alarm(mon, scores, batch=8):
    for i in range(0, len(scores), batch):
        if mon.update(scores[i:i + batch]).drift:
            return i + min(batch, len(scores) - i)
    return None


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("demo_out")
    ap.add_argument("--normal", type=int, default=2000)
    ap.add_argument("--shifted", type=int, default=200)
    ap.add_argument("--window", type=int, default=200)
    ap.add_argument("--textures", default="brick,gravel,grass")
    args = ap.parse_args()
    settings = DriftSettings(window=args.window)
    rows = {}
    for texture in args.textures.split(","):
        det = Detector.load(f"{args.demo_out}/{texture}/model.fastmsfd")
        train = sorted((Path(args.demo_out) / "data" / texture / "train" / "good").glob("*.png"))
        order, n_val = held_out_order(len(train), 0.1, 0)
        det.calibrate([train[i] for i in order[:n_val].tolist()], quantile=det.info["calibration"]["quantile"])
        size = det.input_hw[0]
        row = {"n_reference": det.info["calibration"]["n_images"]}
        for region in ("train", "test"):
            scores = det.predict(normal_crops(texture, args.normal, size, 1000, region)).scores.numpy()
            mon = det.monitor(settings)
            row[f"{region} region"] = {
                "updates_in_alarm": sum(1 for i in range(0, len(scores), 8) if mon.update(scores[i:i + 8]).drift),
                "updates": -(-len(scores) // 8), "rate": float((scores > float(det.threshold)).mean())}
            if region == "train":
                normal = scores
        base = normal_crops(texture, args.shifted, size, 2000, "train")
        for name, change in CHANGES.items():
            scores = det.predict([change(im) for im in base]).scores.numpy()
            mon = det.monitor(settings)
            mon.update(normal[:settings.window])
            row[name] = {"images_to_alarm": first_alarm(mon, scores), "rate": float((scores > float(det.threshold))
                                                                                      .mean()),
                         "score_shift_sd": float((scores.mean() - normal.mean()) / normal.std())}
        rows[texture] = row
        print(texture, json.dumps(row))
    print(json.dumps(rows, indent=1))


if __name__ == "__main__":
    main()

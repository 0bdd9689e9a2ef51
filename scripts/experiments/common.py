"""What the experiment scripts share: the cached detectors of fusion_sweep.py's --out folder, the default detectors
of `fastmsfd fit`, scoring a part into standardised map and global scores, localisation metrics. A script runs as
`.venv/bin/python scripts/experiments/NAME.py`, so its folder is on the import path: `from common import ...`;
no experiment imports another.
"""
from __future__ import annotations

import argparse
import time
from pathlib import Path

import numpy as np
import torch

# the default detectors' file names in an --out folder of the --global-image-size 192 sweep (docs/quality.md)
CACHED_PATTERN = "{name}-stage4-stage5-stage6-lite0-gauto-auto-squash-gsize192.fastmsfd"


def add_cached_model_args(ap: argparse.ArgumentParser) -> None:
    """--models and --pattern: for the scripts that rescore this sweep's cached detectors."""
    ap.add_argument("--models", required=True, help="a fusion_sweep.py --out folder")
    ap.add_argument("--pattern", default=CACHED_PATTERN,
                    help="the cached detector's file name in --models ({name}: the dataset's folder name, "
                         "{category}: the category's; fastmsfd fit's defaults: '{name}-{category}.fastmsfd')")


def cached_category(args, folder, with_images: bool = True, seed: int = 0, val_fraction: float = 0.1):
    """A category with its cached detector: name, det, dev (development samples) and labels; with_images also
    train_u8 and held_out_u8 (fit's seeded split of train/good, rebuilt) and dev_u8, at the detector's input."""
    from types import SimpleNamespace

    from fastmsfd import Detector
    from fastmsfd.data import load_resized
    from fastmsfd.datasets import dev_final_split, mvtec_category
    from fastmsfd.fit import split_held_out

    cat = mvtec_category(folder)
    name = cat.root.parent.name
    det = Detector.load(Path(args.models) / args.pattern.format(name=name, category=cat.root.name),
                        runtime="torch").eval()
    dev = dev_final_split(cat)[0].test
    out = SimpleNamespace(name=name, det=det, dev=dev, labels=np.array([s.label for s in dev]))
    if with_images:
        size, resize = det.input_hw, det.settings.geometry.resize
        out.train_u8, out.held_out_u8, _ = split_held_out(load_resized(cat.train, size, resize=resize),
                                                          val_fraction, seed)
        out.dev_u8 = load_resized([s.path for s in dev], size, resize=resize)
    return out


def score_category(det, samples, batch: int = 16):
    from fastmsfd.data import load_resized
    from fastmsfd.global_score import standardized

    S, resize = det.input_hw, det.settings.geometry.resize
    u8 = load_resized([s.path for s in samples], S, resize=resize)
    z_map, z_glob, heats = [], [], []
    stats = det.model.score_stats
    t0 = time.perf_counter()
    with torch.no_grad():
        for i in range(0, len(u8), batch):
            heat, map_score, glob = det.model.map_and_global(det.model.normalize(u8[i:i + batch]))  # tiles too
            z = standardized(map_score, glob, stats)
            z_map.append(z[0])
            z_glob.append(z[1])
            heats.append(heat.float())
    seconds = time.perf_counter() - t0
    labels = np.array([s.label for s in samples])
    heat = torch.cat(heats).numpy()
    out = {"labels": labels, "defects": [s.defect for s in samples], "z_map": torch.cat(z_map).numpy(),
           "z_glob": torch.cat(z_glob).numpy(), "images_per_s": len(samples) / seconds}
    if any(s.mask_path for s in samples):
        out.update(localisation(samples, heat, S, resize))
    return out


def localisation(samples, heat, size, resize: str) -> dict:
    """Pixel AUROC and AUPRO of heatmaps (N, H, W) at the network's input size against the samples' masks."""
    from fastmsfd import metrics
    from fastmsfd.data import image_size_of
    from fastmsfd.evaluate import mask_at, read_sample_mask
    from fastmsfd.geometry import content_box

    boxes = [content_box(image_size_of(s.path), size, resize) for s in samples]
    heat = [h[t:t + bh, lf:lf + bw] for h, (t, lf, bh, bw) in zip(heat, boxes)]  # keep_aspect: the image only
    masks = [mask_at(read_sample_mask(s), b[2:]) for s, b in zip(samples, boxes)]
    return {"pixel_auroc": metrics.pixel_auroc(masks, heat), "aupro": metrics.aupro(masks, heat)}


def auroc_at(part, w):
    """Image AUROC of a scored part's fused score at global weight w (global_score.fuse_z)."""
    from fastmsfd import metrics
    from fastmsfd.global_score import fuse_z

    return metrics.auroc(part["labels"], fuse_z(part["z_map"], part["z_glob"], w))


def default_detector(models: str, cat):
    """The detector `fastmsfd fit <category> -o MODELS/<parent>-<category>.fastmsfd` wrote (torch runtime)."""
    from fastmsfd import Detector

    return Detector.load(Path(models) / f"{cat.root.parent.name}-{cat.root.name}.fastmsfd", runtime="torch")


def nearest_cell_distance(cells: torch.Tensor, bank: torch.Tensor, chunk: int = 2048) -> torch.Tensor:
    """Euclidean distance of each row of cells (N, C) to its nearest row of bank (M, C), in chunks."""
    b2 = (bank * bank).sum(1)
    out = [((q * q).sum(1, keepdim=True) + b2 - 2 * q @ bank.T).min(1).values.clamp_min(0).sqrt()
           for q in cells.split(chunk)]
    return torch.cat(out)


def parse_setting(setting: str) -> tuple[str, list[str], list[str] | None]:
    """NAME=HEATMAP_LAYERS[/SCORE_LAYERS] -> (name, heatmap layers, score layers or None)."""
    label, layers = setting.split("=")
    heat, _, score = layers.partition("/")
    return label, heat.split(","), score.split(",") if score else None

"""Gaussian widths of the map's up-sampling, and pooled context, on the development parts without refitting: a
fitted detector's heatmaps with sigma_factor (each layer's Gaussian width in cells) set to each value, or
(--pools) with the teacher's and the student's features average-pooled k x k (stride 1) before the distance, so
each cell compares its neighbourhood's mean; the border statistics measured again on its training images as fit
does; pixel AUROC, AUPRO and the map's image AUROC of the development part. No final-part label is read.

    .venv/bin/python scripts/experiments/map_widths.py \\
        /tmp/lite2g/mtd-stage4-stage5-stage6-lite0-gauto-auto-squash.fastmsfd ../shared/data/mtd/magnetic_tile \\
        --factors 0.5,1,2,3
    .venv/bin/python scripts/experiments/map_widths.py MODEL CATEGORY --factors 1 --pools 1,3,5
"""
from __future__ import annotations

import argparse
import warnings
from functools import partial


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("model")
    ap.add_argument("category")
    ap.add_argument("--factors", default="0.5,1,2,3")
    ap.add_argument("--pools", default="1", help="pooled context: k x k average pooling of the features (1: none)")
    args = ap.parse_args()
    warnings.filterwarnings("ignore")
    from common import score_category

    from fastmsfd import Detector, metrics
    from fastmsfd.data import load_resized
    from fastmsfd.datasets import dev_final_split, mvtec_category
    from fastmsfd.fit import set_border_statistics, split_held_out

    det = Detector.load(args.model, runtime="torch").eval()
    cat = mvtec_category(args.category)
    dev, _ = dev_final_split(cat)
    train, _, _ = split_held_out(load_resized(cat.train, det.input_hw), det.config.get("val_fraction", 0.1),
                                 det.config.get("seed", 0))
    print(f"{cat.root.parent.name}, {det.input_hw[0]}x{det.input_hw[1]}, layers {list(det.layers)}, "
          f"development part ({len(dev.test)} images)\n")
    print("| sigma_factor | pooled context | pixel AUROC | AUPRO | image AUROC (map) |\n|---|---|---|---|---|")
    features = det.model.all_features
    for factor in map(float, args.factors.split(",")):
        for k in map(int, args.pools.split(",")):
            det.model.config = det.settings.replace(sigma_factor=factor)
            det.model.all_features = features if k == 1 else partial(pooled_features, features, k)
            set_border_statistics(det.model, train)
            d = score_category(det, dev.test)
            pixel = " | ".join(f"{d[key]:.4f}" if key in d else "n/a" for key in ("pixel_auroc", "aupro"))
            print(f"| {factor:g} | {k}x{k} | {pixel} | {metrics.auroc(d['labels'], d['z_map']):.4f} |", flush=True)


def pooled_features(features, k: int, x):
    """The map features average-pooled k x k (stride 1; at the border, the mean of the cells inside)."""
    import torch.nn.functional as F

    t, s, g = features(x)
    pool = partial(F.avg_pool2d, kernel_size=k, stride=1, padding=k // 2, count_include_pad=False)
    return [pool(f) for f in t], [pool(f) for f in s], g


if __name__ == "__main__":
    main()

"""Border calibration on an already fitted detector: the raw heatmap against the heatmap standardised by the
normal heatmaps' statistics at each distance from the image border (Detector(map_norm="border"), the default
since 2026-11-29). Evidence for that default on models fitted before it existed (docs/defaults.md).

    .venv/bin/python scripts/experiments/border_calibration.py MODEL.fastmsfd CATEGORY_FOLDER

The statistics come from the category's train/good images (at most 256, evenly spaced), as fit() measures them
(fit uses its training split only; this script cannot know which images a loaded model held out). Test labels
only *report* the two rows.
"""
from __future__ import annotations

import argparse
import warnings

import torch


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("model")
    ap.add_argument("category")
    args = ap.parse_args()
    warnings.filterwarnings("ignore")
    from fastmsfd import Detector, calibration
    from fastmsfd.data import load_resized
    from fastmsfd.datasets import training_paths
    from fastmsfd.evaluate import evaluate_category
    from fastmsfd.fit import set_border_statistics

    det = Detector.load(args.model, runtime="torch")
    det.model.config = det.settings.replace(map_norm=None)
    raw = evaluate_category(det, args.category).metrics
    det.model.config = det.settings.replace(map_norm="border")
    set_border_statistics(det.model, load_resized(training_paths(args.category), det.input_hw, False))
    std = evaluate_category(det, args.category).metrics
    ring = calibration.border_distance(*det.input_hw)
    edge, centre = float(det.model.map_std[ring == 0].mean()), float(det.model.map_std[ring == int(ring.max())].mean())
    print(f"{args.category} ({args.model}): normal heatmap std {edge:.3f} on the edge, {centre:.3f} in the centre")
    print("| heatmap | image AUROC | pixel AUROC | AUPRO |\n|---|---|---|---|")
    for name, m in (("raw", raw), ("border-standardised", std)):
        print(f"| {name} | {m['image_auroc']:.4f} | {m['pixel_auroc']:.4f} | {m['aupro']:.4f} |")


if __name__ == "__main__":
    torch.set_grad_enabled(False)
    main()

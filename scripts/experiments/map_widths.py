"""Gaussian widths of the map's up-sampling on the development parts, without refitting: a fitted detector's
heatmaps with sigma_factor (each layer's Gaussian width in cells) set to each value, the border statistics
measured again on its training images as fit does; pixel AUROC, AUPRO and the map's image AUROC of the
development part. No final-part label is read.

    .venv/bin/python scripts/experiments/map_widths.py \\
        /tmp/lite2g/mtd-stage4-stage5-stage6-lite0-gauto-auto-squash.fastmsfd ../shared/data/mtd/magnetic_tile \\
        --factors 0.5,1,2,3
"""
from __future__ import annotations

import argparse
import sys
import warnings
from pathlib import Path


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("model")
    ap.add_argument("category")
    ap.add_argument("--factors", default="0.5,1,2,3")
    args = ap.parse_args()
    warnings.filterwarnings("ignore")
    sys.path.insert(0, str(Path(__file__).parent))
    from fusion_sweep import score_category

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
    print("| sigma_factor | pixel AUROC | AUPRO | image AUROC (map) |\n|---|---|---|---|")
    for factor in map(float, args.factors.split(",")):
        det.settings = det.settings.replace(sigma_factor=factor)
        set_border_statistics(det, train)
        d = score_category(det, dev.test)
        print(f"| {factor:g} | {d['pixel_auroc']:.4f} | {d['aupro']:.4f} | "
              f"{metrics.auroc(d['labels'], d['z_map']):.4f} |", flush=True)


if __name__ == "__main__":
    main()

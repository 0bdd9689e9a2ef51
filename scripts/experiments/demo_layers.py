"""The demo's textures (development data with exact masks) with the library's defaults and chosen heatmap /
score layers: for each setting, the demo's data (fastmsfd.demo_data, seed 0), a detector with every library
default but the layers, fitted at the demo's image size and training length, evaluated as `fastmsfd demo`
does: image AUROC, pixel AUROC, AUPRO per texture and their mean. Settings as multiscale_layers.py.

    .venv/bin/python scripts/experiments/demo_layers.py --out /tmp/demo_layers
"""
from __future__ import annotations

import argparse
import warnings
from pathlib import Path

from common import parse_setting

from fastmsfd.config import ScoreSettings


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", required=True)
    ap.add_argument("--settings", nargs="+", default=["today=stage4,stage5,stage6",
                                                      "fine=stage2,stage3,stage4,stage5,stage6/stage4,stage5,stage6"])
    ap.add_argument("--image-size", type=int, default=128)
    ap.add_argument("--epochs", type=int, default=40)
    args = ap.parse_args()
    warnings.filterwarnings("ignore")
    from fastmsfd import Detector
    from fastmsfd.demo_data import make_demo_dataset
    from fastmsfd.evaluate import evaluate_category

    cats = make_demo_dataset(Path(args.out) / "data", seed=0)
    print("| setting | texture | image AUROC | pixel AUROC | AUPRO |\n|---|---|---|---|---|", flush=True)
    for setting in args.settings:
        label, heat, score = parse_setting(setting)
        rows = []
        for cat in cats:
            det = Detector(layers=heat, image_size=args.image_size, runtime="torch",
                           score=ScoreSettings(score_layers=score))
            det.fit(cat, epochs=args.epochs, progress=False)
            m = evaluate_category(det, cat).metrics
            rows.append(m)
            print(f"| {label} | {cat.name} | {m['image_auroc']:.4f} | {m['pixel_auroc']:.4f} | {m['aupro']:.4f} |",
                  flush=True)
        mean = {k: sum(r[k] for r in rows) / len(rows) for k in ("image_auroc", "pixel_auroc", "aupro")}
        print(f"| {label} | mean | {mean['image_auroc']:.4f} | {mean['pixel_auroc']:.4f} | {mean['aupro']:.4f} |",
              flush=True)


if __name__ == "__main__":
    main()

"""Heatmap layers and score layers chosen apart, on the development parts (datasets.dev_final_split; the final
parts are not read): for each setting, fit the library's default detector with those layers on train/good, then
score the development part: image AUROC of the fused score, pixel AUROC and AUPRO of the heatmap, fit seconds
(alone on the machine only when nothing else runs). Settings: NAME=HEATMAP_LAYERS[/SCORE_LAYERS], e.g.
"today=stage4,stage5,stage6" "fine=stage2,stage3,stage4,stage5,stage6/stage4,stage5,stage6".

    .venv/bin/python scripts/experiments/multiscale_layers.py --out /tmp/multiscale \\
        ../shared/data/mtd/magnetic_tile ../shared/data/kolektorsdd/commutator ../shared/data/elpv/solar_cell_mono
"""
from __future__ import annotations

import argparse
import time
import warnings
from pathlib import Path

from common import auroc_at, parse_setting, score_category

from fastmsfd.config import ScoreSettings

DEFAULT_SETTINGS = ("today=stage4,stage5,stage6", "fine=stage2,stage3,stage4,stage5,stage6/stage4,stage5,stage6")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("categories", nargs="+")
    ap.add_argument("--out", required=True, help="a folder for the fitted detectors")
    ap.add_argument("--settings", nargs="+", default=list(DEFAULT_SETTINGS))
    ap.add_argument("--epochs", type=int, default=None, help="fit's maximum (default: the library's)")
    args = ap.parse_args()
    warnings.filterwarnings("ignore")
    from fastmsfd import Detector
    from fastmsfd.datasets import dev_final_split, mvtec_category

    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    print("| part | setting | image AUROC | pixel AUROC | AUPRO | fit s | epochs |\n|---|---|---|---|---|---|---|",
          flush=True)
    for folder in args.categories:
        cat = mvtec_category(folder)
        name = cat.root.parent.name
        dev = dev_final_split(cat)[0].test
        for setting in args.settings:
            label, heat, score = parse_setting(setting)
            path = out / f"{name}-{label}.fastmsfd"
            if path.is_file():
                det = Detector.load(path, runtime="torch")
                fit_s = det.config.get("fit_seconds", float("nan"))
            else:
                t0 = time.perf_counter()
                det = Detector(layers=heat, runtime="torch", score=ScoreSettings(score_layers=score))
                det.fit(cat.train, epochs=args.epochs, progress=False)
                fit_s = time.perf_counter() - t0
                det.save(path)
            part = score_category(det.eval(), dev)
            pix = " | ".join(f"{part[k]:.4f}" if k in part else "n/a" for k in ("pixel_auroc", "aupro"))
            print(f"| {name} | {label} | {auroc_at(part, det.settings.score.global_weight):.4f} | {pix} | "
                  f"{fit_s:.0f} | {det.config.get('epochs_run')} |", flush=True)


if __name__ == "__main__":
    main()

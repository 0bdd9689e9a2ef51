"""Pooled context trained in: the teacher's and the student's map features are average-pooled k x k (stride 1)
before the distance during training as well as at test time, so the student learns to reproduce each cell's
neighbourhood mean. map_widths.py --pools pooled a student trained without it; this fits one with it (the
library defaults otherwise) and scores the development part only.

    .venv/bin/python scripts/experiments/pooled_student.py ../shared/data/mtd/magnetic_tile --pools 3 \\
        --out /tmp/pooled_student
"""
from __future__ import annotations

import argparse
import json
import time
import warnings
from pathlib import Path

import torch.nn.functional as F
from common import auroc_at, score_category

from fastmsfd.config import ScoreSettings


def pool_map_features(k: int) -> None:
    """Make every model compare k x k average-pooled map features (training, calibration, scoring)."""
    from fastmsfd.model import MSFDModel

    plain = getattr(MSFDModel, "_plain_features", MSFDModel._features)
    MSFDModel._plain_features = plain

    def pooled(self, x, student=None, pooled_global=True):
        t, s, g = plain(self, x, student, pooled_global)
        pool = (lambda f: F.avg_pool2d(f, k, stride=1, padding=k // 2, count_include_pad=False)) if k > 1 else None
        return ([pool(a) for a in t], [pool(b) for b in s], g) if pool else (t, s, g)

    MSFDModel._features = pooled


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("category")
    ap.add_argument("--pools", default="3", help="k per fit; 1 is the library's detector")
    ap.add_argument("--out", required=True, help="a folder for the fitted detectors and their scores")
    args = ap.parse_args()
    warnings.filterwarnings("ignore")
    from fastmsfd import Detector
    from fastmsfd.datasets import dev_final_split, mvtec_category

    cat = mvtec_category(args.category)
    name = cat.root.parent.name
    dev = dev_final_split(cat)[0].test
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    print("| pooled k | pixel AUROC | AUPRO | image AUROC map / fused w 0.6 | fit s |\n|---|---|---|---|---|")
    for k in (int(v) for v in args.pools.split(",")):
        pool_map_features(k)
        t0 = time.perf_counter()
        # the run in the docs
        det = Detector(score=ScoreSettings(global_density="gaussian")).fit(cat.train, progress=False).eval()
        fit_s = time.perf_counter() - t0
        det.save(out / f"{name}-pool{k}.fastmsfd")
        part = score_category(det, dev)
        row = {"k": k, "pixel_auroc": part.get("pixel_auroc"), "aupro": part.get("aupro"),
               "map": auroc_at(part, 0.0), "fused": auroc_at(part, 0.6), "fit_s": round(fit_s)}
        (out / f"{name}-pool{k}.json").write_text(json.dumps(row))
        pix = "n/a" if row["pixel_auroc"] is None else f"{row['pixel_auroc']:.4f}"
        pro = "n/a" if row["aupro"] is None else f"{row['aupro']:.4f}"
        print(f"| {k} | {pix} | {pro} | {row['map']:.4f} / {row['fused']:.4f} | {row['fit_s']} |", flush=True)


if __name__ == "__main__":
    main()

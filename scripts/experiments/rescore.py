"""Re-score a fitted detector's heatmaps with other image-score rules and a final blur, without refitting:
evidence for the score defaults (docs/defaults.md). One evaluation, then every rule on the same heatmaps.

    .venv/bin/python scripts/experiments/rescore.py MODEL.fastmsfd CATEGORY_FOLDER [--topk 0,0.01,0.05,0.1] \
        [--blur 0,2,4]

topk 0 means the maximum. Uses test labels to *report* each rule, never to pick one for a model: a default is
changed only when it holds across the demo and the real datasets.
"""
from __future__ import annotations

import argparse
import warnings

import numpy as np
import torch


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("model")
    ap.add_argument("category")
    ap.add_argument("--topk", default="0,0.01,0.05,0.1,0.2")
    ap.add_argument("--blur", default="0,2,4,8")
    args = ap.parse_args()
    warnings.filterwarnings("ignore")
    from fastmsfd import Detector, metrics
    from fastmsfd.evaluate import evaluate_category
    from fastmsfd.ops import reference

    res = evaluate_category(Detector.load(args.model), args.category)
    heat, masks = torch.as_tensor(np.stack(res.heatmaps)), np.stack(res.masks)
    labels = np.array([s.defect != "good" for s in res.samples])
    S = heat.shape[-1]
    print(f"{args.category} ({args.model}); reported image AUROC {res.metrics['image_auroc']:.4f}")
    print("| final blur sigma | score rule | image AUROC | pixel AUROC | AUPRO |\n|---|---|---|---|---|")
    for sb in (float(v) for v in args.blur.split(",")):
        blur = reference.gaussian_matrix(S, S, sb) if sb else None
        h = heat if sb == 0 else reference.upsample(heat, blur, blur)
        pix, pro = metrics.pixel_auroc(masks, h.numpy()), metrics.aupro(masks, h.numpy())
        for k in (float(v) for v in args.topk.split(",")):
            img = metrics.image_auroc(labels, reference.image_score(h, k or None).numpy())
            rule = "max" if not k else f"top {k:g}"
            print(f"| {sb:g} | {rule} | {img:.4f} | {pix:.4f} | {pro:.4f} |", flush=True)


if __name__ == "__main__":
    main()

"""Each layer of a fitted detector on its own: the layer's distance map, up-sampled like the detector does, scored
alone (image AUROC with the detector's score rule, pixel AUROC), then the detector's own weighted sum. Shows
which scales find a dataset's defects.

    .venv/bin/python scripts/per_layer.py MODEL.fastmsfd CATEGORY_FOLDER
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
    args = ap.parse_args()
    warnings.filterwarnings("ignore")
    from fastmsfd import Detector, metrics
    from fastmsfd import anomaly_map as ref
    from fastmsfd.data import load_resized
    from fastmsfd.datasets import mvtec_category
    from fastmsfd.evaluate import mask_at, read_sample_mask

    det = Detector.load(args.model, runtime="torch").eval()
    S, cfg = det.image_size, det.config
    samples = mvtec_category(args.category).test
    labels = np.array([s.label for s in samples])
    masks = np.stack([mask_at(read_sample_mask(s), (S, S)) for s in samples])
    u8 = load_resized([s.path for s in samples], S, False)
    maps = [[] for _ in det.layers]
    with torch.no_grad():
        for i in range(0, len(u8), 16):
            t, s = det.features(det._prepare(u8[i:i + 16]))
            sigmas = det._sigmas(t)
            for layer, (tl, sl) in enumerate(zip(t, s)):
                d = ref.combined_distance(tl.float(), sl.float(), cfg["alpha"], cfg["beta"])
                rows = ref.gaussian_matrix(S, d.shape[-2], sigmas[layer])
                cols = ref.gaussian_matrix(S, d.shape[-1], sigmas[layer])
                maps[layer].append(ref.upsample(d, rows, cols))
    print(f"{args.model} on {args.category}\n| layer | image AUROC | pixel AUROC |\n|---|---|---|")
    total = 0
    for name, w, m in zip(det.layers, det.layer_weights.tolist(), maps):
        h = torch.cat(m)
        total = total + w * h
        score = ref.image_score(h, cfg["score_topk"]).numpy()
        print(f"| {name} alone | {metrics.image_auroc(labels, score):.4f} | {metrics.pixel_auroc(masks, h.numpy()):.4f} |")
    score = ref.image_score(total, cfg["score_topk"]).numpy()
    print(f"| weighted sum (the detector) | {metrics.image_auroc(labels, score):.4f} | "
          f"{metrics.pixel_auroc(masks, total.numpy()):.4f} |")


if __name__ == "__main__":
    main()

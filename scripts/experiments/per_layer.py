"""Each layer of a fitted detector on its own: the layer's distance map, up-sampled like the detector does, scored
alone (image AUROC with the detector's score rule, pixel AUROC; raw heatmaps), then the detector's own weighted
sum (border-standardised when the detector is). Shows which scales find a dataset's defects.

    .venv/bin/python scripts/experiments/per_layer.py MODEL.fastmsfd CATEGORY_FOLDER
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
    from fastmsfd.data import load_resized
    from fastmsfd.datasets import mvtec_category
    from fastmsfd.evaluate import mask_at, read_sample_mask

    det = Detector.load(args.model, runtime="torch").eval()
    S = det.input_hw
    samples = mvtec_category(args.category).test
    labels = np.array([s.label for s in samples])
    masks = np.stack([mask_at(read_sample_mask(s), (S, S)) for s in samples])
    u8 = load_resized([s.path for s in samples], S, False)
    maps = [[] for _ in det.layers]
    scores = [[] for _ in det.layers]
    total_maps, total_scores = [], []
    with torch.no_grad():
        for i in range(0, len(u8), 16):
            t, s = det.model.features(det.model.normalize(u8[i:i + 16]))
            for layer in range(len(det.layers)):
                # raw: the border statistics belong to the detector's full heatmap, not to one layer
                heat, score = det.model.raw_heatmaps(t[layer:layer + 1], s[layer:layer + 1], [1.0])
                maps[layer].append(heat)
                scores[layer].append(score)
            heat, score = det.model.heatmaps(t, s)
            total_maps.append(heat)
            total_scores.append(score)
    print(f"{args.model} on {args.category}\n| layer | image AUROC | pixel AUROC |\n|---|---|---|")
    rows = [(f"{name} alone", m, sc) for name, m, sc in zip(det.layers, maps, scores)]
    rows.append(("weighted sum (the detector)", total_maps, total_scores))
    for name, m, sc in rows:
        heat, score = torch.cat(m).float().numpy(), torch.cat(sc).float().numpy()
        print(f"| {name} | {metrics.image_auroc(labels, score):.4f} | {metrics.pixel_auroc(masks, heat):.4f} |")


if __name__ == "__main__":
    main()

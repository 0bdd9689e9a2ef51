"""The global branch alone, per teacher layer, on the development part of each dataset: a Ledoit-Wolf Gaussian of
globally pooled teacher features fitted on train/good, Mahalanobis distance as the image score, image AUROC on
the development split (datasets.dev_final_split). Picks the default global layer without touching the final
parts.

    .venv/bin/python scripts/experiments/global_layer.py ../shared/data/mtd/magnetic_tile \\
        ../shared/data/kolektorsdd/commutator ../shared/data/elpv/solar_cell_mono
"""
from __future__ import annotations

import argparse
import warnings

import numpy as np
import torch


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("categories", nargs="+")
    ap.add_argument("--backbone", default="efficientnet_lite0")
    ap.add_argument("--layers", default="stage4,stage5,stage6,stage7")
    ap.add_argument("--image-size", type=int, default=256)
    args = ap.parse_args()
    warnings.filterwarnings("ignore")
    from fastmsfd import metrics
    from fastmsfd.backbones import build_teacher, normalization
    from fastmsfd.data import load_resized
    from fastmsfd.datasets import dev_final_split, mvtec_category
    from fastmsfd.global_score import fit_density, mahalanobis, pooled

    layers = args.layers.split(",")
    teacher = build_teacher(args.backbone, layers)
    mean, std = (torch.tensor(v).view(1, 3, 1, 1) for v in normalization(args.backbone))

    def feats(u8):
        out = [[] for _ in layers]
        with torch.no_grad():
            for i in range(0, len(u8), 32):
                x = (u8[i:i + 32].float() / 255 - mean) / std
                for k, f in enumerate(teacher.backbone(x)):
                    out[k].append(pooled(f))
        return [torch.cat(o) for o in out]

    print("| dataset | " + " | ".join(layers) + " |\n|---|" + "---|" * len(layers))
    for folder in args.categories:
        cat = mvtec_category(folder)
        dev, _ = dev_final_split(cat)
        train = feats(load_resized(cat.train, args.image_size))
        test = feats(load_resized([s.path for s in dev.test], args.image_size))
        labels = np.array([s.label for s in dev.test])
        aurocs = []
        for tr, te in zip(train, test):
            m, s = tr.mean(0), tr.std(0).clamp_min(1e-3)  # per-channel standardisation, as the teacher does
            mu, prec = fit_density((tr - m) / s)
            aurocs.append(metrics.auroc(labels, mahalanobis((te - m) / s, mu, prec).numpy()))
        print(f"| {cat.root.parent.name}/{cat.name} (dev, {len(labels)} images) | " +
              " | ".join(f"{a:.4f}" for a in aurocs) + " |", flush=True)


if __name__ == "__main__":
    main()

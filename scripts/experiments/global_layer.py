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
    ap.add_argument("--image-size", default="256", help="N, HEIGHTxWIDTH, or auto (the detector's rule)")
    ap.add_argument("--auto-side", type=int, default=256, help="image-size auto: a square's side (its area)")
    args = ap.parse_args()
    warnings.filterwarnings("ignore")
    from fastmsfd import metrics
    from fastmsfd.backbones import build_teacher, normalization
    from fastmsfd.data import load_resized
    from fastmsfd.datasets import dev_final_split, mvtec_category
    from fastmsfd.geometry import auto_image_size
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
        size = image_size(args, cat.train, auto_image_size)
        train = feats(load_resized(cat.train, size))
        test = feats(load_resized([s.path for s in dev.test], size))
        labels = np.array([s.label for s in dev.test])
        aurocs = []
        for tr, te in zip(train, test):
            m, s = tr.mean(0), tr.std(0).clamp_min(1e-3)  # per-channel standardisation, as the teacher does
            mu, prec = fit_density((tr - m) / s)
            aurocs.append(metrics.auroc(labels, mahalanobis((te - m) / s, mu, prec).numpy()))
        print(f"| {cat.root.parent.name}/{cat.name} (dev, {len(labels)} images, {size[0]}x{size[1]}) | " +
              " | ".join(f"{a:.4f}" for a in aurocs) + " |", flush=True)


def image_size(args, train_paths, auto_image_size) -> tuple[int, int]:
    from fastmsfd.data import image_size_of

    if args.image_size == "auto":
        return auto_image_size([image_size_of(p) for p in train_paths], 32, args.auto_side ** 2)
    h, _, w = args.image_size.partition("x")
    return int(h), int(w or h)


if __name__ == "__main__":
    main()

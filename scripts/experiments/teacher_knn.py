"""How separable a dataset is in a teacher's features, layer by layer, with no student: each test cell's distance
to its nearest training cell (PatchCore-style kNN, one neighbour) as the anomaly map, top-1% mean as the image
score. A reference for what the distillation can reach with that teacher at that resolution.

    .venv/bin/python scripts/experiments/teacher_knn.py CATEGORY_FOLDER [--backbone efficientnet_lite0]
        [--image-size 256] [--layers stage2,stage3,stage4] [--train 200] [--bank 50000]

Uses at most --train training images (evenly spaced) and a random --bank cells of them per layer (seeded).
Test labels only report the result.
"""
from __future__ import annotations

import argparse
import warnings
from pathlib import Path

import numpy as np
import torch


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("category")
    ap.add_argument("--backbone", default="efficientnet_lite0")
    ap.add_argument("--image-size", type=int, default=256)
    ap.add_argument("--layers", default=None)
    ap.add_argument("--train", type=int, default=200)
    ap.add_argument("--bank", type=int, default=50_000)
    args = ap.parse_args()
    warnings.filterwarnings("ignore")
    from common import nearest_cell_distance

    from fastmsfd import Detector, metrics
    from fastmsfd.data import load_resized
    from fastmsfd.datasets import mvtec_category
    from fastmsfd.ops import reference

    kw = {"layers": tuple(args.layers.split(","))} if args.layers else {}
    det = Detector(backbone=args.backbone, image_size=args.image_size, **kw).eval()
    cat = mvtec_category(args.category)
    step = max(1, len(cat.train) // args.train)
    train = cat.train[::step][:args.train]
    labels = np.array([s.label for s in cat.test])
    kinds = np.array([s.defect for s in cat.test])

    @torch.no_grad()
    def features(paths: list[Path]) -> list[torch.Tensor]:
        u8, out = load_resized(paths, args.image_size, False), None
        for i in range(0, len(u8), 16):
            t = det.model.teacher(det.model.normalize(u8[i:i + 16]))
            out = out or [[] for _ in t]
            for layer, f in enumerate(t):
                out[layer].append(f.float())
        return [torch.cat(o) for o in out]

    test_f, train_f = features([s.path for s in cat.test]), features(train)
    print(f"{cat.name}: {args.backbone} at {args.image_size}px, {len(train)} training images")
    print("| layer | grid | image AUROC | " + " | ".join(k for k in sorted(set(kinds)) if k != "good") + " |")
    for name, t, r in zip(det.layers, test_f, train_f):
        C = t.shape[1]
        bank = r.permute(0, 2, 3, 1).reshape(-1, C)
        if len(bank) > args.bank:
            bank = bank[torch.randperm(len(bank), generator=torch.Generator().manual_seed(0))[:args.bank]]
        q = t.permute(0, 2, 3, 1).reshape(-1, C)
        d = nearest_cell_distance(q, bank, chunk=1024)
        score = reference.image_score(d.reshape(t.shape[0], *t.shape[2:]), 0.01).numpy()
        per = [metrics.image_auroc(labels[(kinds == k) | (kinds == "good")], score[(kinds == k) | (kinds == "good")])
               for k in sorted(set(kinds)) if k != "good"]
        print(f"| {name} | {t.shape[2]}x{t.shape[3]} | {metrics.image_auroc(labels, score):.3f} | "
              + " | ".join(f"{v:.3f}" for v in per) + " |", flush=True)


if __name__ == "__main__":
    main()

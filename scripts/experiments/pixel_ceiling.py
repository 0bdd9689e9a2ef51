"""What the teachers' features allow a heatmap to reach, with no student: each cell's distance to its nearest
training cell (PatchCore-style, optionally after k x k average pooling of the features, as PatchCore's local
neighbourhood), up-sampled with the detector's own Gaussians, per layer and summed over the layers (each layer
standardised on the held-out normal images' cells). Pixel AUROC, AUPRO and the top-1% image AUROC of the
development part, at a fitted detector's geometry (or --scale times its size) and with its held-out split. No
final-part label is read.

    .venv/bin/python scripts/experiments/pixel_ceiling.py \\
        /tmp/nearest/mtd-stage4-stage5-stage6-lite0-gauto-auto-squash-gsize192-nearest.fastmsfd \\
        ../shared/data/mtd/magnetic_tile --backbones efficientnet_lite0,efficientnet_lite2 --pools 1,3

Uses at most --train training images (evenly spaced over the detector's training split) and a random --bank
cells of them per layer (seeded).
"""
from __future__ import annotations

import argparse
import warnings

import numpy as np
import torch
import torch.nn.functional as F
from common import nearest_cell_distance

from fastmsfd.config import ScoreSettings


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("model", help="a fitted detector: its geometry and its held-out split")
    ap.add_argument("category")
    ap.add_argument("--backbones", default="efficientnet_lite0,efficientnet_lite2")
    ap.add_argument("--layers", default="stage3,stage4,stage5,stage6")
    ap.add_argument("--pools", default="1,3", help="k x k average pooling of the features before the distance")
    ap.add_argument("--train", type=int, default=200)
    ap.add_argument("--bank", type=int, default=50_000)
    ap.add_argument("--scale", type=int, default=1, help="the detector's input size times this (more cells)")
    args = ap.parse_args()
    warnings.filterwarnings("ignore")
    from common import localisation

    from fastmsfd import Detector, metrics
    from fastmsfd.data import load_resized
    from fastmsfd.datasets import dev_final_split, mvtec_category
    from fastmsfd.fit import split_held_out
    from fastmsfd.ops import reference

    fitted = Detector.load(args.model, runtime="torch")
    S, resize = tuple(args.scale * n for n in fitted.input_hw), fitted.settings.geometry.resize
    cat = mvtec_category(args.category)
    dev, _ = dev_final_split(cat)
    train, held, _ = split_held_out(load_resized(cat.train, S, resize=resize), fitted.config.get("val_fraction", 0.1),
                                    fitted.config.get("seed", 0))
    train = train[::max(1, len(train) // args.train)][:args.train]
    test = load_resized([s.path for s in dev.test], S, resize=resize)
    labels = np.array([s.label for s in dev.test])
    layers = tuple(args.layers.split(","))
    print(f"{cat.root.parent.name}, {S[0]}x{S[1]} ({resize}), development part ({len(dev.test)} images), "
          f"{len(train)} training images, {len(held)} held-out normal images\n")
    print("| teacher | pooling | layers | pixel AUROC | AUPRO | image AUROC (top 1%) |\n|---|---|---|---|---|---|")
    for backbone in args.backbones.split(","):
        det = Detector(backbone=backbone, image_size=S, layers=layers, resize=resize,
                       score=ScoreSettings(global_layer=None)).eval()

        @torch.no_grad()
        def features(u8: torch.Tensor, k: int) -> list[torch.Tensor]:
            out = [[] for _ in layers]
            for i in range(0, len(u8), 16):
                for j, f in enumerate(det.model.teacher(det.model.normalize(u8[i:i + 16]))):
                    f = f.float()
                    out[j].append(f if k == 1 else F.avg_pool2d(f, k, 1, k // 2, count_include_pad=False))
            return [torch.cat(o) for o in out]

        for k in map(int, args.pools.split(",")):
            per_layer = {}
            for name, r, h, t in zip(layers, features(train, k), features(held, k), features(test, k)):
                cells = r.permute(0, 2, 3, 1).reshape(-1, r.shape[1])
                pick = torch.randperm(len(cells), generator=torch.Generator().manual_seed(0))[:args.bank]
                bank = cells[pick]
                grid = t.shape[2:]
                g = reference.upsampling_matrices([grid], S, reference.default_sigmas([grid], S), [None], None,
                                                  False, "cpu")[0]

                def heat_of(x: torch.Tensor) -> torch.Tensor:
                    d = nearest_cell_distance(x.permute(0, 2, 3, 1).reshape(-1, x.shape[1]), bank)
                    return reference.upsample(d.reshape(len(x), *grid), *g)

                normal = heat_of(h)
                per_layer[name] = (heat_of(t) - normal.mean()) / normal.std()  # held-out normal cells' scale
            for subset in [(n,) for n in layers] + [layers]:
                heat = sum(per_layer[n] for n in subset)
                loc = localisation(dev.test, heat.numpy(), S, resize)
                image = metrics.auroc(labels, reference.image_score(heat, 0.01).numpy())
                print(f"| {backbone} | {k}x{k} | {'+'.join(subset)} | {loc['pixel_auroc']:.4f} | {loc['aupro']:.4f} "
                      f"| {image:.4f} |", flush=True)


if __name__ == "__main__":
    main()

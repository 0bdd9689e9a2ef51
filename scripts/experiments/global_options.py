"""Other global branches on the development parts, without refitting: the map score of fitted default detectors
(fusion_sweep.py's cached models) fused with the global score of other teachers, layers and input sizes. Each
global score is a Ledoit-Wolf Gaussian of pooled, per-channel standardised teacher features on the detector's
training images, standardised by its held-out normal images (fit's seeded split); image AUROC for every weight
w of (1 - w) z_map + w z_global, per dataset and as the mean over them. No final-part label is read.

    .venv/bin/python scripts/experiments/global_options.py /tmp/lite2g ../shared/data/mtd/magnetic_tile \\
        ../shared/data/kolektorsdd/commutator ../shared/data/elpv/solar_cell_mono [--teachers L2 --sides 160,192,224]

"@N" rows: the branch sees the map's input resized to about N x N pixels (Detector(global_image_size=N)).
"""
from __future__ import annotations

import argparse
import warnings
from pathlib import Path

import numpy as np
import torch

from fastmsfd.global_score import fuse_z

WEIGHTS = np.linspace(0, 1, 11)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("models", help="fusion_sweep.py --out folder with one stage4-6 detector per dataset")
    ap.add_argument("categories", nargs="+")
    ap.add_argument("--sides", default="288", help="other inputs for the branch, comma-separated: about each side "
                    "squared at the map input's aspect, resized from the map's input as the detector's "
                    "global_image_size does (antialiased bilinear)")
    ap.add_argument("--teachers", default="L0,L2", help="which teachers to try: L0, L2 or both")
    args = ap.parse_args()
    warnings.filterwarnings("ignore")
    from common import score_category

    from fastmsfd import Detector, metrics
    from fastmsfd.backbones import build_teacher, normalization
    from fastmsfd.data import load_resized
    from fastmsfd.datasets import dev_final_split, mvtec_category
    from fastmsfd.fit import split_held_out
    from fastmsfd.geometry import auto_image_size
    from fastmsfd.global_score import fit_density, mahalanobis, pooled
    from fastmsfd.tiling import view_matrices, whole_view

    teachers = {"L0": lambda: (build_teacher("efficientnet_lite0", ["stage6", "stage7"]), ["s6", "s7"]),
                "L2": lambda: (build_teacher("efficientnet_lite2", ["stage5", "stage6", "stage7"]), ["s5", "s6", "s7"])}
    teachers = {k: teachers[k]() for k in args.teachers.split(",")}
    mean, std = (torch.tensor(v).view(1, 3, 1, 1) for v in normalization("efficientnet_lite0"))  # Lite0 = Lite2

    def feats(net, u8, size):
        rows, cols = view_matrices(tuple(u8.shape[-2:]), size)
        out = []
        with torch.no_grad():
            for i in range(0, len(u8), 32):
                x = (u8[i:i + 32].float() / 255 - mean) / std
                x = x if size == tuple(u8.shape[-2:]) else whole_view(x, rows, cols)
                out.append([pooled(f) for f in net.backbone(x)])
        return [torch.cat(layer) for layer in zip(*out)]

    def z(train, held_out, test):
        m, s = train.mean(0), train.std(0).clamp_min(1e-3)
        mu, prec = fit_density((train - m) / s)
        held = mahalanobis((held_out - m) / s, mu, prec)
        return ((mahalanobis((test - m) / s, mu, prec) - held.mean()) / held.std()).numpy()

    table = {}
    for folder in args.categories:
        cat = mvtec_category(folder)
        name = cat.root.parent.name
        model = next(Path(args.models).glob(f"{name}-stage4-stage5-stage6-*.fastmsfd"))
        det = Detector.load(model, runtime="torch").eval()
        dev, _ = dev_final_split(cat)
        d = score_category(det, dev.test)
        zs = {}
        # the detector's rule for global_image_size=side (about side x side pixels at its input's aspect) without
        # its cap: a side above the input's is up-sampled here, where the detector keeps the input
        sizes = [("", det.input_hw)] + [(f"@{side}", auto_image_size([det.input_hw], 32, side ** 2))
                                        for side in map(int, args.sides.split(","))]
        train, held_out, _ = split_held_out(load_resized(cat.train, det.input_hw),
                                            det.config.get("val_fraction", 0.1), det.config.get("seed", 0))
        test = load_resized([s.path for s in dev.test], det.input_hw)
        for tag, size in sizes:
            for short, (net, layers) in teachers.items():
                ftr, fho, fte = (feats(net, u8, tuple(size)) for u8 in (train, held_out, test))
                for k, layer in enumerate(layers):
                    zs[f"{short} {layer}{tag}"] = z(ftr[k], fho[k], fte[k])
                if short == "L2":
                    zs[f"L2 s5+s6{tag}"] = z(*(torch.cat(f[:2], 1) for f in (ftr, fho, fte)))
        table[name] = {k: [metrics.auroc(d["labels"], fuse_z(d["z_map"], v, w)) for w in WEIGHTS]
                       for k, v in zs.items()}
        print(f"{name} (map only {metrics.auroc(d['labels'], d['z_map']):.4f})", flush=True)
        for k, row in table[name].items():
            print(f"  {k:14s} " + " ".join(f"{a:.4f}" for a in row), flush=True)
    print("\n| global score | " + " | ".join(f"w={w:.1f}" for w in WEIGHTS) + " | best |\n|---|" +
          "---|" * (len(WEIGHTS) + 1))
    for k in next(iter(table.values())):
        m = np.mean([table[n][k] for n in table], axis=0)
        print(f"| {k} | " + " | ".join(f"{a:.4f}" for a in m) + f" | {m.max():.4f} (w {WEIGHTS[m.argmax()]:.1f}) |")


if __name__ == "__main__":
    main()

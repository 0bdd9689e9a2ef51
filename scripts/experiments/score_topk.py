"""The map's image score (the mean of the top k of the heatmap) at other fractions k, on the development parts
only, fused with the global score as the library does: each map score is standardised on the detector's own
held-out normal images (fit's seeded split of train/good, rebuilt here), so the fusion weight means the same
thing at every k. Reads fusion_sweep.py's cached detectors (its --out folder); it fits nothing.

    .venv/bin/python scripts/experiments/score_topk.py --models /tmp/lite2g56_192 \\
        ../shared/data/mtd/magnetic_tile ../shared/data/kolektorsdd/commutator ../shared/data/elpv/solar_cell_mono
"""
from __future__ import annotations

import argparse
import warnings

import numpy as np
import torch
from common import add_cached_model_args, cached_category

from fastmsfd.global_score import fuse_z

WEIGHTS = (0.0, 0.4, 0.5, 0.6, 0.7, 1.0)


@torch.no_grad()
def heat_and_global(det, images_u8: torch.Tensor, batch: int = 16) -> tuple[torch.Tensor, np.ndarray]:
    """(heatmaps, global scores) of uint8 images at the detector's input size."""
    heats, globs = [], []
    for i in range(0, len(images_u8), batch):
        heat, _, glob = det.model.map_and_global(det.model.normalize(images_u8[i:i + batch]))
        heats.append(heat.float())
        globs.append(glob.float())
    return torch.cat(heats), torch.cat(globs).numpy()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("categories", nargs="+")
    add_cached_model_args(ap)
    ap.add_argument("--topk", default="0,0.001,0.003,0.01,0.03,0.1,0.3",
                    help="fractions of the heatmap; 0 is its maximum (the default is 0.01)")
    ap.add_argument("--seed", type=int, default=0, help="fit's seed (the held-out split)")
    ap.add_argument("--val-fraction", type=float, default=0.1, help="fit's held-out share")
    args = ap.parse_args()
    warnings.filterwarnings("ignore")
    from fastmsfd import metrics
    from fastmsfd.ops import reference

    fractions = [float(v) for v in args.topk.split(",")]
    rows: dict[tuple[float, float], list[float]] = {}
    names = []
    for folder in args.categories:
        c = cached_category(args, folder, seed=args.seed, val_fraction=args.val_fraction)
        name, det, dev, labels, held_out_u8 = c.name, c.det, c.dev, c.labels, c.held_out_u8
        names.append(name)
        heat_n, glob_n = heat_and_global(det, held_out_u8)
        heat_d, glob_d = heat_and_global(det, c.dev_u8)
        z_glob = (glob_d - glob_n.mean()) / glob_n.std(ddof=1)
        m_default = reference.image_score(heat_n, det.settings.score.score_topk).double()
        rebuilt = [float(m_default.mean()), float(m_default.std()), float(glob_n.mean()), float(glob_n.std(ddof=1))]
        print(f"{name}: {len(held_out_u8)} held-out normal images, {len(dev)} development images; score statistics "
              f"rebuilt {np.round(rebuilt, 4).tolist()}, saved {np.round(det.model.score_stats.tolist(), 4).tolist()}",
              flush=True)
        for k in fractions:
            top = None if k == 0 else k
            m_n = reference.image_score(heat_n, top).numpy()
            z_map = (reference.image_score(heat_d, top).numpy() - m_n.mean()) / m_n.std(ddof=1)
            for w in WEIGHTS:
                rows.setdefault((k, w), []).append(metrics.auroc(labels, fuse_z(z_map, z_glob, w)))
    print("| top fraction k | w | " + " | ".join(names) + " | mean |\n|---|---|" + "---|" * (len(names) + 1))
    for (k, w), aurocs in rows.items():
        label = "maximum" if k == 0 else f"{k:g}"
        print(f"| {label} | {w:g} | " + " | ".join(f"{a:.4f}" for a in aurocs) + f" | {np.mean(aurocs):.4f} |")


if __name__ == "__main__":
    main()

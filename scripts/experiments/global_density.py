"""Other global scores on the same pooled features, on the development parts only, without refitting: the
library's Gaussian (Mahalanobis distance), the distance to the k nearest training images' pooled features (plain,
or after whitening by the Gaussian's precision), and the teacher-student distance of the map layers' pooled
features (the issue's other suggestion; the combined distance of the pooled vectors, one z-score per layer,
summed). Each score is standardised on the detector's held-out normal images (fit's seeded split, rebuilt) and
fused with the map score as the library does. Reads fusion_sweep.py's cached detectors (its --out folder).

    .venv/bin/python scripts/experiments/global_density.py --models /tmp/lite2g56_192 \\
        ../shared/data/mtd/magnetic_tile ../shared/data/kolektorsdd/commutator ../shared/data/elpv/solar_cell_mono
"""
from __future__ import annotations

import argparse
import warnings

import numpy as np
import torch
from common import add_cached_model_args, cached_category

from fastmsfd.global_score import fuse_z

WEIGHTS = (0.0, 0.4, 0.5, 0.6, 0.7, 0.8, 1.0)


@torch.no_grad()
def features(det, images_u8: torch.Tensor, batch: int = 16) -> dict[str, np.ndarray | torch.Tensor]:
    """The map score, the branch's pooled features and the per-layer pooled teacher-student distance."""
    from fastmsfd.ops import reference

    maps, pooled, student = [], [], []
    for i in range(0, len(images_u8), batch):
        t, s, g = det.model.all_features(det.model.normalize(images_u8[i:i + batch]))
        maps.append(det.model.heatmaps(t, s)[1].float())
        pooled.append(g.float())
        student.append(torch.stack([reference.combined_distance(a.float().mean((2, 3))[..., None, None],
                                                                b.float().mean((2, 3))[..., None, None],
                                                                det.settings.map.alpha, det.settings.map.beta)
                                    .flatten() for a, b in zip(t, s)], dim=1))
    return {"map": torch.cat(maps).numpy(), "pooled": torch.cat(pooled), "student": torch.cat(student).numpy()}


def global_scores(det, memory: torch.Tensor, part: dict) -> dict[str, np.ndarray]:
    from fastmsfd import global_score

    x = part["pooled"]
    white = torch.linalg.cholesky(det.model.global_precision.double()).float()  # L L^T = precision
    out = {"gaussian (Mahalanobis)": det.model.global_distance(x).numpy()}
    for k in (1, 3):
        for name, (a, b) in {"": (x, memory), ", whitened": (x @ white, memory @ white)}.items():
            d = torch.cdist(a, b).topk(k, largest=False).values.mean(1) if k > 1 else \
                global_score.nearest_distance(a, b)
            out[f"nearest {k}{name}"] = d.numpy()
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("categories", nargs="+")
    add_cached_model_args(ap)  # detectors with the Gaussian branch
    args = ap.parse_args()
    warnings.filterwarnings("ignore")
    from fastmsfd import metrics

    rows: dict[tuple[str, float], list[float]] = {}
    names = []
    for folder in args.categories:
        c = cached_category(args, folder)
        name, det, dev, labels, train_u8, held_out_u8 = c.name, c.det, c.dev, c.labels, c.train_u8, c.held_out_u8
        names.append(name)
        train, normal = features(det, train_u8), features(det, held_out_u8)
        part = features(det, c.dev_u8)
        z = lambda d, n: (d - n.mean(0)) / n.std(0, ddof=1)  # noqa: E731
        z_map = z(part["map"], normal["map"])
        scores = {k: z(v, n) for (k, v), n in zip(global_scores(det, train["pooled"], part).items(),
                                                  global_scores(det, train["pooled"], normal).values())}
        scores["teacher-student distance, pooled"] = z(part["student"], normal["student"]).sum(1)
        print(f"{name}: {len(train_u8)} training images in the memory, {len(held_out_u8)} held out, "
              f"{len(dev)} development images", flush=True)
        for rule, z_glob in scores.items():
            for w in WEIGHTS:
                rows.setdefault((rule, w), []).append(metrics.auroc(labels, fuse_z(z_map, z_glob, w)))
    print("| global score | w | " + " | ".join(names) + " | mean |\n|---|---|" + "---|" * (len(names) + 1))
    for (rule, w), aurocs in rows.items():
        print(f"| {rule} | {w:g} | " + " | ".join(f"{a:.4f}" for a in aurocs) + f" | {np.mean(aurocs):.4f} |")


if __name__ == "__main__":
    main()

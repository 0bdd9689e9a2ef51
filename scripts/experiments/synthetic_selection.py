"""Can synthetic defects choose a part's settings without labels? For fitted detectors (fusion_sweep.py's models:
one per dataset and map-layer set), score the fit's own held-out normal images (the same seeded split fit made)
and copies of them with the demo's synthetic defects blended in at several strengths; every (map layers, fusion
weight) setting gets a synthetic AUROC. Then compare with the real development part: the rank correlation of
the two over all settings, and the development AUROC of the setting the synthetic defects would pick against
that of the fixed default (stage4-6, w 0.4). No final-part labels are read.

Besides the demo's defects (--strengths), --coherent adds two texture-coherent kinds made from the part's own
normal images: "cutpaste" (a patch of another held-out image, flipped or rotated, pasted in through a soft blob)
and "blob" (a broad, smooth region 10-30% brighter or darker, like MTD's "uneven").

--unlabeled adds a criterion that needs no synthetic defect at all: how well a setting separates the held-out
normal images from the development images with their labels unread (a stream of production images). If the
stream's normal images score like the held-out ones, that AUROC is (1 - p) / 2 + p * (the setting's real AUROC),
p the stream's defective share, so it ranks settings as their real AUROC does; what breaks it is a shift between
train/good and the stream's good images, printed as the held-out vs stream-normal AUROC range (a diagnosis that
reads the labels; the pick does not). --stream-share p simulates a stream with fewer defects: every good
development image and a seeded random subset of the defective ones, p of the stream (the subset is drawn by label;
the criterion still reads none).

    .venv/bin/python scripts/experiments/synthetic_selection.py /tmp/fusion \\
        ../shared/data/mtd/magnetic_tile ../shared/data/kolektorsdd/commutator ../shared/data/elpv/solar_cell_mono
"""
from __future__ import annotations

import argparse
import warnings
from pathlib import Path

import numpy as np
import torch

from fastmsfd.global_score import fuse_z

WEIGHTS = [round(0.1 * i, 1) for i in range(11)]
LAYER_SETS = ("stage2-stage3-stage4", "stage4-stage5-stage6")
DEFAULT = ("stage4-stage5-stage6", 0.4)


def z_scores(det, u8: torch.Tensor) -> tuple[np.ndarray, np.ndarray]:
    """(z map score, z global score) per image, standardised as fuse() does (fit's own helper)."""
    from fastmsfd.fit import _standardized_scores

    return tuple(z.numpy() for z in _standardized_scores(det.model, u8))


def table(labels, zm, zg) -> dict[float, float]:
    from fastmsfd import metrics

    return {w: metrics.auroc(labels, fuse_z(zm, zg, w)) for w in WEIGHTS}


def separation(normal, other) -> dict[float, float]:
    """table() of held-out normal images (label 0) against other images (label 1), both (z map, z global)."""
    labels = np.r_[np.zeros(len(normal[0])), np.ones(len(other[0]))]
    return table(labels, np.r_[normal[0], other[0]], np.r_[normal[1], other[1]])


def _soft_blob(rng: np.random.Generator, h: int, w: int, side: float) -> np.ndarray:
    """A smooth random blob of about side x side pixels at a random place, values in [0, 1]: a thresholded,
    blurred noise field, blurred again so the edge is soft."""
    from scipy.ndimage import gaussian_filter

    noise = gaussian_filter(rng.standard_normal((h, w)), side / 4)
    cy, cx = rng.integers(0, h), rng.integers(0, w)
    yy, xx = np.mgrid[:h, :w]
    window = np.exp(-((yy - cy) ** 2 + (xx - cx) ** 2) / (2 * (side / 2) ** 2))
    field = window * (1 + noise / (noise.std() + 1e-8))
    blob = (field > 0.5).astype(np.float32)
    return np.clip(gaussian_filter(blob, max(1.0, side / 16)), 0, 1)


def coherent_anomalies(images_u8: torch.Tensor, kind: str, seed: int, per_image: int = 2) -> torch.Tensor:
    """Copies of each image with a texture-coherent defect: "cutpaste" or "blob" (module docstring)."""
    rng = np.random.default_rng(seed)
    imgs = images_u8.float().numpy() / 255.0  # (N, C, H, W)
    n, _, h, w = imgs.shape
    out = []
    for i in range(n):
        for _ in range(per_image):
            side = float(rng.uniform(0.12, 0.3) * min(h, w))
            alpha = _soft_blob(rng, h, w, side)
            while alpha.max() < 0.5:  # a blob that fell off the image: draw again
                alpha = _soft_blob(rng, h, w, side)
            if kind == "cutpaste":
                j = int(rng.integers(0, n - 1)) if n > 1 else 0
                j += j >= i and n > 1
                src = np.rot90(imgs[j], k=int(rng.integers(1, 4)), axes=(1, 2)) if h == w else imgs[j][:, ::-1, ::-1]
                shift = (int(rng.integers(0, h)), int(rng.integers(0, w)))
                target = np.roll(src, shift, axis=(1, 2))
            elif kind == "blob":
                target = imgs[i] * (1 + rng.choice([-1, 1]) * rng.uniform(0.1, 0.3))
            else:
                raise ValueError(kind)
            bad = imgs[i] * (1 - alpha) + alpha * target
            out.append(torch.from_numpy((np.clip(bad, 0, 1) * 255).round().astype(np.uint8)))
    return torch.stack(out)


def _stream(labels: np.ndarray, share: float | None, seed: int) -> np.ndarray:
    """Indices of the simulated stream: every image, or every good one and enough defective ones for share."""
    if share is None:
        return np.arange(len(labels))
    good, bad = np.flatnonzero(labels == 0), np.flatnonzero(labels == 1)
    n_bad = max(1, round(share * len(good) / (1 - share)))
    if n_bad > len(bad):
        raise SystemExit(f"--stream-share {share}: needs {n_bad} defective images, the part has {len(bad)}")
    keep = np.random.default_rng(seed).choice(bad, n_bad, replace=False)
    return np.sort(np.r_[good, keep])


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("models", help="folder of fusion_sweep.py models: <dataset>-<layers>[-<geometry>].fastmsfd")
    ap.add_argument("categories", nargs="+")
    ap.add_argument("--strengths", default="1.0,0.3,0.15")
    ap.add_argument("--geometry", default="", help="the models' geometry suffix, e.g. -256-squash")
    ap.add_argument("--coherent", action="store_true", help="also the cutpaste and blob kinds (docstring)")
    ap.add_argument("--unlabeled", action="store_true",
                    help="also held-out normals vs the unlabeled development images (docstring)")
    ap.add_argument("--stream-share", type=float, default=None,
                    help="with --unlabeled: the defective share of the simulated stream (default: the dev part's)")
    args = ap.parse_args()
    warnings.filterwarnings("ignore")
    from scipy.stats import spearmanr

    from fastmsfd import Detector
    from fastmsfd.data import load_resized
    from fastmsfd.datasets import dev_final_split, mvtec_category, training_paths
    from fastmsfd.fit import split_held_out, synthetic_anomalies

    kinds = {f"strength {float(s)}": float(s) for s in args.strengths.split(",") if s}
    if args.coherent:
        kinds.update({"cutpaste": "cutpaste", "blob": "blob"})
    if args.unlabeled:
        kinds["unlabeled dev images"] = "unlabeled"
    lines = ["| dataset | defects | Spearman (synthetic vs dev, 22 settings) | synthetic pick | its dev AUROC | "
             "weight only (stage4-6): pick, dev AUROC | default's dev AUROC | best dev AUROC |",
             "|---|---|---|---|---|---|---|---|"]
    shifts = []
    for folder in args.categories:
        cat = mvtec_category(folder)
        name = cat.root.parent.name
        dev, _ = dev_final_split(cat)
        dev_auc, syn_auc, shift_auc = {}, {k: {} for k in kinds}, {}
        for ls in LAYER_SETS:
            det = Detector.load(Path(args.models) / f"{name}-{ls}{args.geometry}.fastmsfd", runtime="torch").eval()
            S = det.input_hw
            dev_u8 = load_resized([s.path for s in dev.test], S, resize=det.settings.geometry.resize)
            labels = np.array([s.label for s in dev.test])
            dev_z = z_scores(det, dev_u8)
            for w, a in table(labels, *dev_z).items():
                dev_auc[(ls, w)] = a
            train = load_resized(training_paths(cat.root), S, resize=det.settings.geometry.resize)
            _, held_out, _ = split_held_out(train, 0.1, 0)          # fit's own split (seed 0, 10%)
            normal = z_scores(det, held_out)
            if args.unlabeled:  # diagnosis only: does the stream's good part score like the held-out normals?
                good = labels == 0
                for w, a in separation(normal, (dev_z[0][good], dev_z[1][good])).items():
                    shift_auc[(ls, w)] = a
            stream = _stream(labels, args.stream_share, seed=1)
            for s, how in kinds.items():
                if how == "unlabeled":
                    bad = (dev_z[0][stream], dev_z[1][stream])  # development images, their labels unread
                else:
                    bad = z_scores(det, synthetic_anomalies(held_out, seed=1, strength=how) if isinstance(how, float)
                                   else coherent_anomalies(held_out, how, seed=1))
                for w, a in separation(normal, bad).items():
                    syn_auc[s][(ls, w)] = a
        keys = sorted(dev_auc)
        best_dev = max(dev_auc.values())
        for s in kinds:
            rho = spearmanr([syn_auc[s][k] for k in keys], [dev_auc[k] for k in keys]).correlation
            # ties go to the default, then to the weight nearest the default's (as fit.choose_global_weight)
            def rule(k):
                return round(syn_auc[s][k], 4), k == DEFAULT, -abs(k[1] - DEFAULT[1])

            pick = max(keys, key=rule)
            w_pick = max([k for k in keys if k[0] == DEFAULT[0]], key=rule)  # what global_weight="auto" does
            lines.append(f"| {name} | {s} (AUROC {min(syn_auc[s].values()):.3f}-"
                         f"{max(syn_auc[s].values()):.3f}) | {rho:.2f} | {pick[0]}, w {pick[1]} | "
                         f"{dev_auc[pick]:.4f} | w {w_pick[1]}, {dev_auc[w_pick]:.4f} | {dev_auc[DEFAULT]:.4f} | "
                         f"{best_dev:.4f} |")
        print("\n".join(lines[-len(kinds):]), flush=True)
        if not args.unlabeled:
            continue
        shifts.append(f"{name}: held-out normals vs the development part's good images, AUROC "
                      f"{min(shift_auc.values()):.3f}-{max(shift_auc.values()):.3f} over the settings "
                      f"(0.5: no shift); the stream's defective share {labels[stream].mean():.2f} of "
                      f"{len(stream)} images")
        print(shifts[-1], flush=True)
    print("\n".join(lines + shifts))


if __name__ == "__main__":
    main()

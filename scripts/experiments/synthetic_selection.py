"""Can synthetic defects choose a part's settings without labels? For fitted detectors (fusion_sweep.py's models:
one per dataset and map-layer set), score the fit's own held-out normal images (the same seeded split fit made)
and copies of them with the demo's synthetic defects blended in at several strengths; every (map layers, fusion
weight) setting gets a synthetic AUROC. Then compare with the real development part: the rank correlation of
the two over all settings, and the development AUROC of the setting the synthetic defects would pick against
that of the fixed default (stage4-6, w 0.4). No final-part labels are read.

    .venv/bin/python scripts/experiments/synthetic_selection.py /tmp/fusion \\
        ../shared/data/mtd/magnetic_tile ../shared/data/kolektorsdd/commutator ../shared/data/elpv/solar_cell_mono
"""
from __future__ import annotations

import argparse
import warnings
from pathlib import Path

import numpy as np
import torch

WEIGHTS = [round(0.1 * i, 1) for i in range(11)]
LAYER_SETS = ("stage2-stage3-stage4", "stage4-stage5-stage6")
DEFAULT = ("stage4-stage5-stage6", 0.4)


def z_scores(det, u8: torch.Tensor) -> tuple[np.ndarray, np.ndarray]:
    """(z map score, z global score) per image, standardised as fuse() does (fit's own helper)."""
    from fastmsfd.fit import _standardized_scores

    return tuple(z.numpy() for z in _standardized_scores(det, u8))


def table(labels, zm, zg) -> dict[float, float]:
    from fastmsfd import metrics

    return {w: metrics.auroc(labels, (1 - w) * zm + w * zg) for w in WEIGHTS}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("models", help="folder of fusion_sweep.py models: <dataset>-<layers>[-<geometry>].fastmsfd")
    ap.add_argument("categories", nargs="+")
    ap.add_argument("--strengths", default="1.0,0.3,0.15")
    ap.add_argument("--geometry", default="", help="the models' geometry suffix, e.g. -256-squash")
    args = ap.parse_args()
    warnings.filterwarnings("ignore")
    from scipy.stats import spearmanr

    from fastmsfd import Detector
    from fastmsfd.data import load_resized
    from fastmsfd.datasets import dev_final_split, mvtec_category, training_paths
    from fastmsfd.fit import split_held_out, synthetic_anomalies

    strengths = [float(s) for s in args.strengths.split(",")]
    lines = ["| dataset | defects | Spearman (synthetic vs dev, 22 settings) | synthetic pick | its dev AUROC | "
             "weight only (stage4-6): pick, dev AUROC | default's dev AUROC | best dev AUROC |",
             "|---|---|---|---|---|---|---|---|"]
    for folder in args.categories:
        cat = mvtec_category(folder)
        name = cat.root.parent.name
        dev, _ = dev_final_split(cat)
        dev_auc, syn_auc = {}, {s: {} for s in strengths}
        for ls in LAYER_SETS:
            det = Detector.load(Path(args.models) / f"{name}-{ls}{args.geometry}.fastmsfd", runtime="torch").eval()
            S = det.input_hw
            dev_u8 = load_resized([s.path for s in dev.test], S, resize=det.settings.network.resize)
            labels = np.array([s.label for s in dev.test])
            for w, a in table(labels, *z_scores(det, dev_u8)).items():
                dev_auc[(ls, w)] = a
            train = load_resized(training_paths(cat.root), S, resize=det.settings.network.resize)
            _, held_out, _ = split_held_out(train, 0.1, 0)          # fit's own split (seed 0, 10%)
            normal = z_scores(det, held_out)
            for s in strengths:
                bad = z_scores(det, synthetic_anomalies(held_out, seed=1, strength=s))
                lab = np.r_[np.zeros(len(normal[0])), np.ones(len(bad[0]))]
                for w, a in table(lab, np.r_[normal[0], bad[0]], np.r_[normal[1], bad[1]]).items():
                    syn_auc[s][(ls, w)] = a
        keys = sorted(dev_auc)
        best_dev = max(dev_auc.values())
        for s in strengths:
            rho = spearmanr([syn_auc[s][k] for k in keys], [dev_auc[k] for k in keys]).correlation
            # ties go to the default, then to the weight nearest the default's (as fit.choose_global_weight)
            def rule(k):
                return round(syn_auc[s][k], 4), k == DEFAULT, -abs(k[1] - DEFAULT[1])

            pick = max(keys, key=rule)
            w_pick = max([k for k in keys if k[0] == DEFAULT[0]], key=rule)  # what global_weight="auto" does
            lines.append(f"| {name} | strength {s} (AUROC {min(syn_auc[s].values()):.3f}-"
                         f"{max(syn_auc[s].values()):.3f}) | {rho:.2f} | {pick[0]}, w {pick[1]} | "
                         f"{dev_auc[pick]:.4f} | w {w_pick[1]}, {dev_auc[w_pick]:.4f} | {dev_auc[DEFAULT]:.4f} | "
                         f"{best_dev:.4f} |")
        print("\n".join(lines[-len(strengths):]), flush=True)
    print("\n".join(lines))


if __name__ == "__main__":
    main()

"""Other ways to fuse the map and global scores, on the development parts only: the weighted sum (the library's
rule) against the maximum, a soft maximum (t log(exp(a/t) + exp(b/t))) and the length of the positive parts.
Both scores are z-scores on the detector's held-out normal statistics, as in fusion_sweep.py, whose cached
detectors (its --out folder) this reads; it fits nothing.

    .venv/bin/python scripts/experiments/fusion_rules.py --models /tmp/lite2g56_192 \\
        ../shared/data/mtd/magnetic_tile ../shared/data/kolektorsdd/commutator ../shared/data/elpv/solar_cell_mono

With --demo DIR the demo's textures (their whole test sets; built in DIR if missing) are scored too, each by the
detector the pattern names for it, e.g. fitted defaults: --pattern '{name}-{category}.fastmsfd' (the demo's
folder name is `data`).
"""
from __future__ import annotations

import argparse
import warnings
from pathlib import Path

import numpy as np
from common import add_cached_model_args, cached_category, score_category

from fastmsfd.global_score import fuse_z

RULES = {
    **{f"weighted sum, w {w}": (lambda a, b, w=w: fuse_z(a, b, w)) for w in (0.4, 0.5, 0.6, 0.7)},
    "maximum": np.maximum,
    **{f"soft maximum, t {t}": (lambda a, b, t=t: t * np.logaddexp(a / t, b / t)) for t in (0.5, 1.0, 2.0)},
    "length of the positive parts": lambda a, b: np.hypot(np.maximum(a, 0), np.maximum(b, 0)),
    "map score only": lambda a, b: a,
    "global score only": lambda a, b: b,
}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("categories", nargs="+")
    add_cached_model_args(ap)
    ap.add_argument("--demo", default=None, help="also the demo's textures (its data folder; built if missing)")
    args = ap.parse_args()
    warnings.filterwarnings("ignore")
    from fastmsfd import metrics

    parts = {}
    for folder in args.categories:
        c = cached_category(args, folder, with_images=False)
        parts[c.name] = score_category(c.det, c.dev)
    names = sorted(parts)
    demo = {}
    if args.demo:
        from fastmsfd import Detector
        from fastmsfd.datasets import mvtec_category
        from fastmsfd.demo_data import make_demo_dataset

        for folder in make_demo_dataset(args.demo):
            cat = mvtec_category(folder)
            det = Detector.load(Path(args.models) / args.pattern.format(name=cat.root.parent.name,
                                                                        category=cat.root.name), runtime="torch")
            demo[f"demo {cat.root.name}"] = score_category(det.eval(), cat.test)
    columns = names + list(demo) + (["demo mean"] if demo else [])
    print("| rule | " + " | ".join(columns) + " | mean |\n|---|" + "---|" * (len(columns) + 1))
    for rule, fuse in RULES.items():
        aurocs = {n: metrics.auroc(p["labels"], fuse(p["z_map"], p["z_glob"])) for n, p in {**parts, **demo}.items()}
        cells = [aurocs[n] for n in names + list(demo)] + ([np.mean([aurocs[n] for n in demo])] if demo else [])
        dev_mean = np.mean([aurocs[n] for n in names])  # the development parts' mean, as before --demo
        print(f"| {rule} | " + " | ".join(f"{a:.4f}" for a in cells) + f" | {dev_mean:.4f} |")


if __name__ == "__main__":
    main()

"""Other ways to fuse the map and global scores, on the development parts only: the weighted sum (the library's
rule) against the maximum, a soft maximum (t log(exp(a/t) + exp(b/t))) and the length of the positive parts.
Both scores are z-scores on the detector's held-out normal statistics, as in fusion_sweep.py, whose cached
detectors (its --out folder) this reads; it fits nothing.

    .venv/bin/python scripts/experiments/fusion_rules.py --models /tmp/lite2g56_192 \\
        ../shared/data/mtd/magnetic_tile ../shared/data/kolektorsdd/commutator ../shared/data/elpv/solar_cell_mono
"""
from __future__ import annotations

import argparse
import warnings

import numpy as np
from fusion_sweep import add_cached_model_args, cached_category, score_category

RULES = {
    **{f"weighted sum, w {w}": (lambda a, b, w=w: (1 - w) * a + w * b) for w in (0.4, 0.5, 0.6, 0.7)},
    "maximum": np.maximum,
    **{f"soft maximum, t {t}": (lambda a, b, t=t: t * np.logaddexp(a / t, b / t)) for t in (0.5, 1.0, 2.0)},
    "length of the positive parts": lambda a, b: np.hypot(np.maximum(a, 0), np.maximum(b, 0)),
}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("categories", nargs="+")
    add_cached_model_args(ap)
    args = ap.parse_args()
    warnings.filterwarnings("ignore")
    from fastmsfd import metrics

    parts = {}
    for folder in args.categories:
        c = cached_category(args, folder, with_images=False)
        parts[c.name] = score_category(c.det, c.dev)
    names = sorted(parts)
    print("| rule | " + " | ".join(names) + " | mean |\n|---|" + "---|" * (len(names) + 1))
    for rule, fuse in RULES.items():
        aurocs = [metrics.auroc(parts[n]["labels"], fuse(parts[n]["z_map"], parts[n]["z_glob"])) for n in names]
        print(f"| {rule} | " + " | ".join(f"{a:.4f}" for a in aurocs) + f" | {np.mean(aurocs):.4f} |")


if __name__ == "__main__":
    main()

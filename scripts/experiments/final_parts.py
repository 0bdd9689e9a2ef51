"""Score fitted detectors on the final parts (datasets.dev_final_split), as the Targets table reports them:
image AUROC, pixel AUROC, AUPRO and F1 for each category. For reproducing the table on another machine; it
chooses nothing. Detectors are `fastmsfd fit <category> -o MODELS/<parent>-<category>.fastmsfd`.

    .venv/bin/python scripts/experiments/final_parts.py /tmp/defaults ../shared/data/mtd/magnetic_tile \\
        ../shared/data/kolektorsdd/commutator ../shared/data/elpv/solar_cell_mono
"""
from __future__ import annotations

import argparse
import warnings

from common import default_detector


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("models", help="folder of <parent>-<category>.fastmsfd files")
    ap.add_argument("categories", nargs="+")
    args = ap.parse_args()
    warnings.filterwarnings("ignore")
    from fastmsfd.datasets import dev_final_split, mvtec_category
    from fastmsfd.evaluate import evaluate

    keys = ("image_auroc", "pixel_auroc", "aupro", "f1_max", "f1_at_threshold")
    print("| category | final images (defective) | " + " | ".join(keys) + " |")
    print("|---|---|" + "---|" * len(keys))
    for folder in args.categories:
        cat = mvtec_category(folder)
        det = default_detector(args.models, cat)
        m = evaluate(det, dev_final_split(cat)[1]).metrics
        cells = ["n/a" if m[k] is None else f"{m[k]:.4f}" for k in keys]
        print(f"| {cat.root.parent.name}/{cat.root.name} | {m['n_test']} ({m['n_defective']}) | "
              + " | ".join(cells) + " |", flush=True)


if __name__ == "__main__":
    main()

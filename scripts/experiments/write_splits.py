"""Record the development / final split of each dataset's test images (datasets.dev_final_split: seed and
fraction) as file lists in docs/splits/<dataset>.json, paths relative to the category folder.

    .venv/bin/python scripts/experiments/write_splits.py ../shared/data/mtd/magnetic_tile \\
        ../shared/data/kolektorsdd/commutator ../shared/data/elpv/solar_cell_mono
"""
from __future__ import annotations

import argparse
import json
from pathlib import Path


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("categories", nargs="+")
    ap.add_argument("--out", default=str(Path(__file__).resolve().parents[2] / "docs" / "splits"))
    args = ap.parse_args()
    from fastmsfd.datasets import DEV_FRACTION, DEV_SEED, dev_final_split, mvtec_category

    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    for folder in args.categories:
        cat = mvtec_category(folder)
        dev, final = dev_final_split(cat)
        record = {"category": f"{cat.root.parent.name}/{cat.name}", "fraction": DEV_FRACTION, "seed": DEV_SEED,
                  "rule": "per test folder (good and each defect type): sorted paths, numpy default_rng(seed)."
                          "permutation, the first round(fraction * n) are development",
                  "development": [str(s.path.relative_to(cat.root)) for s in dev.test],
                  "final": [str(s.path.relative_to(cat.root)) for s in final.test]}
        path = out / f"{cat.root.parent.name}.json"
        path.write_text(json.dumps(record, indent=1) + "\n")
        print(f"{path}: {len(dev.test)} development, {len(final.test)} final")


if __name__ == "__main__":
    main()

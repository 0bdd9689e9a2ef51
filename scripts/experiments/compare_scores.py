"""Two `fastmsfd demo` output folders (or any two folders of per-category scores.csv files) compared score by
score: for a change that must not move the demo's scores. Prints the largest absolute difference per category
and overall; the CSV keeps 6 decimals, so 5e-7 is its rounding.

    git worktree add /tmp/before <REV> && cp fastmsfd/_C*.so /tmp/before/fastmsfd/
    (cd /tmp && PYTHONPATH=/tmp/before /path/to/.venv/bin/python -m fastmsfd demo --out /tmp/demo_before)
    .venv/bin/python -m fastmsfd demo --out /tmp/demo_after
    .venv/bin/python scripts/experiments/compare_scores.py /tmp/demo_before /tmp/demo_after
"""
from __future__ import annotations

import argparse
import csv
from pathlib import Path


def scores(path: Path) -> dict[str, float]:
    """{image path below the category folder: score} of one scores.csv."""
    with open(path) as fh:
        return {"/".join(Path(r["path"]).parts[-3:]): float(r["score"]) for r in csv.DictReader(fh)}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("before")
    ap.add_argument("after")
    args = ap.parse_args()
    worst = 0.0
    for csv_a in sorted(Path(args.before).glob("*/scores.csv")):
        a, b = scores(csv_a), scores(Path(args.after) / csv_a.parent.name / "scores.csv")
        if a.keys() != b.keys():
            raise SystemExit(f"{csv_a.parent.name}: the two folders scored different images")
        diff = max(abs(a[k] - b[k]) for k in a)
        worst = max(worst, diff)
        print(f"{csv_a.parent.name}: {len(a)} images, largest |score difference| {diff:.3g}")
    print(f"all: largest |score difference| {worst:.3g}")


if __name__ == "__main__":
    main()

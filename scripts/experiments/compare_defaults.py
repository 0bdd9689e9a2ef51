"""Compare detector settings side by side on MVTec-layout data (the demo by default); prints a Markdown table.

    .venv/bin/python scripts/experiments/compare_defaults.py                      # the demo textures, all variants
    .venv/bin/python scripts/experiments/compare_defaults.py --data ../shared/data/mtd --max-train 200 \
        --variants default,max
    .venv/bin/python scripts/experiments/compare_defaults.py --epochs 40 --seeds 0,1,2 --variants "default,lr 3e-3"
    .venv/bin/python scripts/experiments/compare_defaults.py --image-size auto --epochs 0 --variants default

Each row: one variant fitted and evaluated per category with the same seed; with --seeds, one row per seed and
then the mean (and range) over the seeds, since one seed can move a texture's image AUROC by 0.2
(docs/training.md). The numbers in docs/defaults.md and docs/training.md come from this script.
"""
from __future__ import annotations

import argparse
import json
import sys
import time
import warnings
from pathlib import Path

import torch

VARIANTS = {
    "default": {},
    "max score": {"score_topk": None},
    "layers stage3-5": {"layers": ("stage3", "stage4", "stage5")},
    "layers stage2-4 + stage6": {"layers": ("stage2", "stage3", "stage4", "stage6")},
    "sigma x2": {"sigma_factor": 2.0},
    "sigma x0.5": {"sigma_factor": 0.5},
    "cosine only (alpha=0)": {"alpha": 0.0},
    "L2 only (beta=0)": {"beta": 0.0},
    "aggregate max": {"aggregate": "max"},
    # the MSFD ablations (training-quality issue): one part of the method changed at a time
    "single layer stage3": {"layers": ("stage3",)},
    "bilinear up-sampling": {"upsampling": "bilinear"},
    "product aggregation": {"aggregate": "product"},
    # the naive STPM-style recipe: same teacher, cosine-only loss and map, bilinear up-sampling, product of the
    # layers, maximum as the image score
    "STPM-style baseline": {"alpha": 0.0, "upsampling": "bilinear", "aggregate": "product", "score_topk": None},
    # the global branch of the defaults (docs/quality.md, "The demo")
    "map score only": {"global_layer": None},
    "global weight auto": {"global_weight": "auto"},
    # training recipe (keyword arguments of fit under "fit")
    "SGD lr 0.4 (STPM recipe)": {"fit": {"optimizer": "sgd", "lr": 0.4, "weight_decay": 1e-4}},
    "AdamW wd 1e-2": {"fit": {"optimizer": "adamw", "weight_decay": 1e-2}},
    "constant lr": {"fit": {"schedule": "constant"}},
    "lr 1e-3": {"fit": {"lr": 1e-3}},
    "lr 3e-3": {"fit": {"lr": 3e-3}},  # the default before 2026-11-29 (docs/training.md); fastmsfd demo's lr
    "lr 5e-3": {"fit": {"lr": 5e-3}},
    "lr 3e-3 60 epochs": {"fit": {"lr": 3e-3, "epochs": 60}},
    "flip augmentation": {"fit": {"augment": "flip"}},
    "dihedral augmentation": {"fit": {"augment": "dihedral"}},
    "bf16 autocast": {"precision": "bfloat16"},  # training and inference under torch.autocast(bfloat16)
    # the raw heatmap, as before border calibration (2026-11-29): same training, scored without map_norm
    "raw heatmap": {"map_norm": None},
    "lr 3e-3 raw heatmap": {"map_norm": None, "fit": {"lr": 3e-3}},
    "lr 3e-3 flip augmentation": {"fit": {"lr": 3e-3, "augment": "flip"}},
}


def categories(data: Path) -> list[Path]:
    from fastmsfd.datasets import is_mvtec_category

    if is_mvtec_category(data):
        return [data]
    cats = sorted(p for p in data.iterdir() if p.is_dir() and is_mvtec_category(p))
    if not cats:
        sys.exit(f"{data}: no MVTec-layout category (a folder with train/good) found")
    return cats


def _mean(values: list) -> float | None:
    return None if None in values else sum(values) / len(values)


def print_seed_summary(rows: list[dict], n_seeds: int) -> None:
    """Mean and range over the seeds of each (variant, category), and of the per-seed category means."""
    keys = ("image_auroc", "pixel_auroc", "aupro")
    groups: dict[tuple[str, str], list[dict]] = {}
    for r in rows:
        groups.setdefault((r["variant"], r["category"]), []).append(r)
    for variant in dict.fromkeys(r["variant"] for r in rows):
        cats = [c for v, c in groups if v == variant]
        per_seed = [{k: _mean([groups[variant, c][i][k] for c in cats]) for k in keys} for i in range(n_seeds)]
        if len(cats) > 1:
            groups[variant, "mean of categories"] = per_seed
    print(f"\nOver {n_seeds} seeds: mean (min-max)\n| variant | category | image AUROC | pixel AUROC | AUPRO |\n"
          "|---|---|---|---|---|")
    for (variant, cat), rs in groups.items():
        cells = []
        for k in keys:
            v = [r[k] for r in rs]
            cells.append("n/a" if None in v else f"{_mean(v):.3f} ({min(v):.3f}-{max(v):.3f})")
        print(f"| {variant} | {cat} | " + " | ".join(cells) + " |")


def main() -> None:
    from fastmsfd.cli import _image_size

    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--data", help="MVTec-layout category or root (default: build the demo textures)")
    ap.add_argument("--variants", default=",".join(VARIANTS), help="comma-separated names from: " +
                    ", ".join(VARIANTS))
    ap.add_argument("--image-size", type=_image_size, default=128, help="a side in pixels, HEIGHTxWIDTH, or auto (the "
                    "library's default: the training images' aspect at about 256x256)")
    ap.add_argument("--epochs", type=int, default=20, help="at most this many epochs; 0: the library's default "
                    "length (about 3,000 training images seen)")
    ap.add_argument("--max-train", type=int, default=0, help="use at most this many training images (0: all)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--seeds", help="comma-separated seeds (overrides --seed); adds mean and range per variant")
    ap.add_argument("--json", help="also write the rows here")
    args = ap.parse_args()
    warnings.filterwarnings("ignore")

    from fastmsfd import Detector
    from fastmsfd.datasets import training_paths
    from fastmsfd.demo_data import make_demo_dataset
    from fastmsfd.evaluate import evaluate_category

    cats = categories(Path(args.data)) if args.data else make_demo_dataset(Path("demo_output") / "data")
    rows = []
    print(f"data: {', '.join(c.name for c in cats)}; image size {args.image_size}; epochs <= {args.epochs}; "
          f"torch threads {torch.get_num_threads()}")
    print("| variant | category | image AUROC | pixel AUROC | AUPRO | fit s |\n|---|---|---|---|---|---|")
    seeds = [int(s) for s in args.seeds.split(",")] if args.seeds else [args.seed]
    for name in args.variants.split(","):
        kw = dict(VARIANTS[name])
        fit_kw = {"epochs": args.epochs or None, **kw.pop("fit", {})}  # "epochs": None = the library's auto length
        for cat, seed in ((c, s) for c in cats for s in seeds):
            train = training_paths(cat)
            if args.max_train:
                step = max(1, len(train) // args.max_train)
                train = train[::step][: args.max_train]
            t0 = time.perf_counter()
            det = Detector(image_size=args.image_size, **kw).fit(train, seed=seed, progress=False, **fit_kw)
            fit_s = time.perf_counter() - t0
            m = evaluate_category(det, cat).metrics
            rows.append(dict(variant=name, category=cat.name, seed=seed, fit_seconds=round(fit_s, 1), **m))
            label = f"{name} (seed {seed})" if len(seeds) > 1 else name
            print(f"| {label} | {cat.name} | {m['image_auroc']:.3f} | {m['pixel_auroc']:.3f} | {m['aupro']:.3f} | "
                  f"{fit_s:.0f} |", flush=True)
            choice = det.info.get("global_weight_choice")
            if choice:  # global_weight="auto": what it kept and the synthetic AUROC it saw per weight
                print(f"<!-- {cat.name}: global_weight auto kept {choice['weight']} ({choice['n_normal']} normal, "
                      f"{choice['n_synthetic']} synthetic): {choice['synthetic_auroc']} -->", flush=True)
    if len(seeds) > 1:
        print_seed_summary(rows, len(seeds))
    if args.json:
        Path(args.json).write_text(json.dumps(rows, indent=2))


if __name__ == "__main__":
    main()

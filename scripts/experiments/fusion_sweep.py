"""Map layers and the global branch's fusion weight, chosen on the development parts and reported once on the
final parts (datasets.dev_final_split: 30% of each test folder, seed 0). For each dataset and map-layer set it
fits a detector with the global branch (default settings otherwise), then scores the test images: the map score
(border-standardised, as shipped) and the global score, each standardised by the detector's held-out normal
statistics, fused as (1 - w) z_map + w z_global. Writes the sweep and the ablation (map only, global only,
fused) as Markdown. --image-size, --resize, --tile and --overlap set the geometry (the map and global scores
come from Detector.map_and_global, so tiles are stitched as in predict); images/s is the torch path's scoring
of the final part, on whatever else shared the machine.

    .venv/bin/python scripts/experiments/fusion_sweep.py --out /tmp/fusion \\
        ../shared/data/mtd/magnetic_tile ../shared/data/kolektorsdd/commutator ../shared/data/elpv/solar_cell_mono
"""
from __future__ import annotations

import argparse
import json
import time
import warnings
from pathlib import Path

import numpy as np
from common import auroc_at, score_category

from fastmsfd.global_score import fuse_z

WEIGHTS = [round(0.1 * i, 1) for i in range(11)]
DEFAULT_WEIGHT = 0.6  # fastmsfd.global_score.DEFAULT_WEIGHT when this sweep chose it


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("categories", nargs="+")
    ap.add_argument("--layer-sets", default="stage2,stage3,stage4;stage4,stage5,stage6")
    ap.add_argument("--global-layer", default="stage6")
    ap.add_argument("--backbone", default="efficientnet_lite0")
    ap.add_argument("--global-backbone", default="auto", help="the global branch's teacher; none: the map's")
    ap.add_argument("--image-size", default="256", help="one number, or HEIGHTxWIDTH")
    ap.add_argument("--global-image-size", default="none",
                    help="what the branch sees: none (the map's input), one number (a side) or HEIGHTxWIDTH")
    ap.add_argument("--global-density", default="gaussian", choices=["gaussian", "nearest"],
                    help="the branch's density (default: gaussian, which every run before the setting used)")
    ap.add_argument("--tile", default=None, help="tile size: one number, or HEIGHTxWIDTH (default: no tiles)")
    ap.add_argument("--overlap", type=float, default=0.25)
    ap.add_argument("--resize", default="squash", choices=["squash", "keep_aspect"])
    ap.add_argument("--fit-kwargs", default="{}", help='fit\'s training settings as JSON, e.g. \'{"crop_scale": 0.8}\'')
    ap.add_argument("--out", default="fusion_sweep")
    args = ap.parse_args()
    warnings.filterwarnings("ignore")
    from fastmsfd import Detector
    from fastmsfd.datasets import dev_final_split, mvtec_category

    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    from fastmsfd.cli import _global_image_size, _image_size

    image_size, tile = _image_size(args.image_size), args.tile and _image_size(args.tile)
    global_backbone = None if args.global_backbone == "none" else args.global_backbone
    short = {name: name.replace("efficientnet_", "") for name in (args.backbone, args.global_backbone)}
    geometry = f"{short[args.backbone]}-g{short[args.global_backbone]}-{args.image_size}-{args.resize}" + \
        (f"-tile{args.tile}-{args.overlap}" if tile else "") + \
        ("" if args.global_image_size == "none" else f"-gsize{args.global_image_size}")
    geometry += "" if args.global_density == "gaussian" else f"-{args.global_density}"
    fit_kwargs = json.loads(args.fit_kwargs)
    geometry += "".join(f"-{k}{v}" for k, v in sorted(fit_kwargs.items()))
    results = {}
    for folder in args.categories:
        cat = mvtec_category(folder)
        name = cat.root.parent.name
        dev, final = dev_final_split(cat)
        for layer_set in args.layer_sets.split(";"):
            layers = layer_set.split(",")
            model = out / f"{name}-{'-'.join(layers)}-{geometry}.fastmsfd"
            info_path = model.with_suffix(".json")
            if not model.is_file():
                t0 = time.perf_counter()
                det = Detector(backbone=args.backbone, layers=layers, image_size=image_size,
                               global_layer=args.global_layer, global_backbone=global_backbone,
                               global_weight="auto", tile=tile, overlap=args.overlap, resize=args.resize,
                               global_image_size=_global_image_size(args.global_image_size),
                               global_density=args.global_density)
                det.fit(cat.root, progress=False, **fit_kwargs)
                fit_s = time.perf_counter() - t0
                det.save(model)
                info_path.write_text(json.dumps({"fit_seconds": fit_s, "epochs": det.config["epochs_run"],
                                                 "auto_weight": det.settings.score.global_weight,
                                                 "image_size": det.input_hw}))
            det = Detector.load(model, runtime="torch").eval()
            key = f"{name}|{layer_set}"
            results[key] = dict(json.loads(info_path.read_text()), dev=score_category(det, dev.test),
                                final=score_category(det, final.test))
            d = results[key]["dev"]
            print(f"{key}: dev image AUROC map {auroc_at(d, 0):.4f} global {auroc_at(d, 1):.4f} "
                  f"best w {max(WEIGHTS, key=lambda w: auroc_at(d, w))}, pixel AUROC {d.get('pixel_auroc', 'n/a')}",
                  flush=True)
    # one default for every part: the (layer set, w) with the best mean development image AUROC
    names = sorted({k.split("|")[0] for k in results})
    layer_sets = args.layer_sets.split(";")
    dev_mean = {(ls, w): float(np.mean([auroc_at(results[f"{n}|{ls}"]["dev"], w) for n in names]))
                for ls in layer_sets for w in WEIGHTS}
    best_ls, best_w = max(dev_mean, key=dev_mean.get)
    lines = ["## Development parts: mean image AUROC over " + ", ".join(names), "",
             "| map layers | " + " | ".join(f"w={w}" for w in WEIGHTS) + " |", "|---|" + "---|" * len(WEIGHTS)]
    for ls in layer_sets:
        lines.append(f"| {ls} | " + " | ".join(f"{dev_mean[(ls, w)]:.4f}" for w in WEIGHTS) + " |")
    lines += ["", f"Chosen on the development parts: map layers {best_ls}, global weight {best_w}.", "",
              "## Final parts (reported once)", "",
              "| dataset | map layers | image AUROC map only | global only | fused (w) | fused (default w "
              f"{DEFAULT_WEIGHT}) | pixel AUROC | AUPRO | fit s | images/s |",
              "|---|---|---|---|---|---|---|---|---|---|"]
    for n in names:
        for ls in layer_sets:
            r = results[f"{n}|{ls}"]
            f = r["final"]
            pix = f"{f['pixel_auroc']:.4f}" if "pixel_auroc" in f else "n/a"
            pro = f"{f['aupro']:.4f}" if "aupro" in f else "n/a"
            lines.append(f"| {n} | {ls} | {auroc_at(f, 0):.4f} | {auroc_at(f, 1):.4f} | "
                         f"{auroc_at(f, best_w):.4f} ({best_w}) | {auroc_at(f, DEFAULT_WEIGHT):.4f} | {pix} | {pro} | "
                         f"{r['fit_seconds']:.0f} | "
                         f"{f['images_per_s']:.1f} |")
    lines += ["", "## Final parts with the weight each detector chose itself (global_weight=\"auto\": synthetic "
              "defects on its held-out normal images, no labels)", "",
              "| dataset | map layers | auto weight | image AUROC |", "|---|---|---|---|"]
    for n in names:
        for ls in layer_sets:
            r = results[f"{n}|{ls}"]
            lines.append(f"| {n} | {ls} | {r['auto_weight']} | {auroc_at(r['final'], r['auto_weight']):.4f} |")
    from fastmsfd import metrics

    for title, w in (("chosen settings", best_w), (f"map layers {best_ls}, default w {DEFAULT_WEIGHT}",
                                                   DEFAULT_WEIGHT)):
        lines += ["", f"## Final parts, image AUROC per defect type ({title}; each type against all good)", ""]
        for n in names:
            f = results[f"{n}|{best_ls}"]["final"]
            fused = fuse_z(f["z_map"], f["z_glob"], w)
            good = [i for i, d in enumerate(f["defects"]) if d == "good"]
            parts = []
            for d in sorted(set(f["defects"]) - {"good"}):
                idx = good + [i for i, x in enumerate(f["defects"]) if x == d]
                parts.append(f"{d} {metrics.auroc(f['labels'][idx], fused[idx]):.3f}")
            lines.append(f"- {n}: " + ", ".join(parts))
    text = "\n".join(lines) + "\n"
    (out / "sweep.md").write_text(text)
    print(text)


if __name__ == "__main__":
    main()

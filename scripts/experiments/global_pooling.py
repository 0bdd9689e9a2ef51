"""Does another pooling of the global branch's features keep its strength on the real parts and stop it
failing on the demo's grass? For fitted default detectors (`fastmsfd fit <part> -o DIR/<parent>-<part>.fastmsfd`),
each global layer's features (the branch's teacher, per-channel standardised as fitted, at the branch's view)
are pooled over positions several ways; each pooling's global score (the distance to the nearest training
image's pooled features, the default density, over fit's seeded training split) is standardised on fit's
held-out normal images as fit does and fused with the detector's own map score, (1 - w) z_map + w z_global.
Image AUROC per weight (w=1.0: the global score alone). Real parts: the development part only (no final label
read); demo textures: their test set (built like `fastmsfd demo`). The "mean" rows rebuild the detector's own
global score (the largest difference is printed). Nothing is refitted.

    .venv/bin/python scripts/experiments/global_pooling.py --models /tmp/defaults ../shared/data/mtd/magnetic_tile \\
        ../shared/data/kolektorsdd/commutator ../shared/data/elpv/solar_cell_mono --demo demo_output/data

Poolings: "mean" (the library's), "max", "top 10%" (per channel, the mean of its top tenth of positions),
"mean+std" (the mean and the spread over positions, side by side).
"""
from __future__ import annotations

import argparse
import warnings

import numpy as np
import torch
from common import default_detector

from fastmsfd import global_score
from fastmsfd.global_score import fuse_z


def _top_share(f: torch.Tensor, share: float) -> torch.Tensor:
    flat = f.flatten(2)
    k = max(1, round(share * flat.shape[-1]))
    return flat.topk(k, dim=-1).values.mean(-1)


POOLINGS = {
    "mean": global_score.pooled,  # the library's own
    "max": lambda f: f.amax((2, 3)),
    "top 10%": lambda f: _top_share(f, 0.1),
    "mean+std": lambda f: torch.cat([f.mean((2, 3)), f.std((2, 3))], 1),
}
WEIGHTS = (0.0, 0.4, 0.5, 0.6, 0.7, 1.0)


@torch.no_grad()
def pooled(det, images_u8: torch.Tensor, batch: int = 16) -> dict[str, torch.Tensor]:
    """Each pooling of the global layers' features of the images (what the branch sees), (N, C) per pooling."""
    out = {name: [] for name in POOLINGS}
    for i in range(0, len(images_u8), batch):
        view = det.model.whole_image(det.model.normalize(images_u8[i:i + batch]))
        feats = det.model.global_teacher(det.model.global_teacher_input(view))
        layers = [feats[j].float() for j in det.model.global_index]
        for name, pool in POOLINGS.items():
            out[name].append(torch.cat([pool(f) for f in layers], 1))
    return {name: torch.cat(v) for name, v in out.items()}


def fused_table(det, tests, labels, train, held_out, n_held_out, size, resize) -> tuple[dict, float]:
    """{pooling: {w: AUROC}} of the detector's map score fused with each pooling's global score, and the
    largest difference between the rebuilt mean-pooled z score and the detector's own."""
    from fastmsfd import metrics
    from fastmsfd.data import load_resized
    from fastmsfd.fit import _scale_images, _standardized_scores

    test_u8 = load_resized([s.path for s in tests], size, resize=resize)
    z_map, z_own = (z.numpy() for z in _standardized_scores(det.model, test_u8))
    scale_u8, with_train = _scale_images(train, held_out, n_held_out)
    memory, test, scale = pooled(det, train), pooled(det, test_u8), pooled(det, scale_u8)
    table, worst = {}, 0.0
    for name in POOLINGS:
        bank = global_score.memory_bank(memory[name])
        normal = global_score.nearest_distance(scale[name], bank)
        if with_train:  # fit's small-set rule: training images score against the others
            normal[-len(train):] = global_score.leave_one_out_distance(memory[name])
        mean, std = global_score.standardize_stats(normal)
        z = ((global_score.nearest_distance(test[name], bank) - mean) / std).numpy()
        if name == "mean":
            worst = float(np.abs(z - z_own).max())
        table[name] = {w: metrics.auroc(labels, fuse_z(z_map, z, w)) for w in WEIGHTS}
    return table, worst


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("categories", nargs="*", help="real MVTec-layout categories with a development split")
    ap.add_argument("--demo", default=None, help="the demo's data folder (built here if missing)")
    ap.add_argument("--models", required=True, help="folder of fitted default detectors (docstring)")
    args = ap.parse_args()
    warnings.filterwarnings("ignore")
    from fastmsfd.data import load_resized
    from fastmsfd.datasets import dev_final_split, mvtec_category, training_paths
    from fastmsfd.demo_data import make_demo_dataset
    from fastmsfd.fit import split_held_out

    parts = [(folder, True) for folder in args.categories]
    if args.demo:
        parts += [(folder, False) for folder in make_demo_dataset(args.demo)]
    rows = []
    for folder, real in parts:
        cat = mvtec_category(folder)
        name = f"{cat.root.parent.name}/{cat.root.name}" + (" (dev)" if real else "")
        det = default_detector(args.models, cat).eval()
        size, resize = det.input_hw, det.settings.geometry.resize
        tests = dev_final_split(cat)[0].test if real else cat.test
        train, held_out, n_held_out = split_held_out(load_resized(training_paths(cat.root), size, resize=resize),
                                                     0.1, 0)
        labels = np.array([s.label for s in tests])
        table, worst = fused_table(det, tests, labels, train, held_out, n_held_out, size, resize)
        for pool, by_w in table.items():
            rows.append(f"| {name} | {pool} | " + " | ".join(f"{by_w[w]:.4f}" for w in WEIGHTS) + " |")
            print(rows[-1], flush=True)
        print(f"{name}: rebuilt mean-pooled z vs the detector's own, largest difference {worst:.2g}", flush=True)
    print("| part | pooling | " + " | ".join(f"w={w}" for w in WEIGHTS) + " |")
    print("|---|---|" + "---|" * len(WEIGHTS))
    print("\n".join(rows))


if __name__ == "__main__":
    main()

"""The default threshold with and without leaving far-out held-out normal images out: fitted detectors' own
held-out images (fit's seeded split, rebuilt) scored again, the 0.99 quantile taken over all of them, or over
those within Q3 + k IQR, and applied to the development part (or, with --final, the final part): F1, good images
flagged, defective images flagged; then each part's highest held-out scores, and the threshold the library's
calibrate sets on them, with the files it leaves out. Detectors are
`fastmsfd fit <category> -o MODELS/<parent>-<category>.fastmsfd`.

    .venv/bin/python scripts/experiments/threshold_fence.py /tmp/defaults ../shared/data/mtd/magnetic_tile \\
        ../shared/data/kolektorsdd/commutator ../shared/data/elpv/solar_cell_mono
"""
from __future__ import annotations

import argparse
import warnings

import numpy as np
import torch
from common import default_detector


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("models", help="folder of <parent>-<category>.fastmsfd files")
    ap.add_argument("categories", nargs="+")
    ap.add_argument("--fences", default="none,3,1.5", help="k of Q3 + k IQR; none: every held-out image")
    ap.add_argument("--quantile", type=float, default=0.99)
    ap.add_argument("--final", action="store_true", help="score the final part (report once), not the development")
    args = ap.parse_args()
    warnings.filterwarnings("ignore")
    from fastmsfd import calibration, metrics
    from fastmsfd.data import load_resized
    from fastmsfd.datasets import dev_final_split, mvtec_category, training_paths
    from fastmsfd.fit import held_out_names, split_held_out

    part = "final" if args.final else "development"
    print(f"| category ({part} part) | held-out images | fence | left out | threshold | F1 | good flagged "
          "| defective flagged |\n|---|---|---|---|---|---|---|---|")
    notes = []
    for folder in args.categories:
        cat = mvtec_category(folder)
        name = f"{cat.root.parent.name}-{cat.root.name}"
        det = default_detector(args.models, cat)
        resize = det.settings.geometry.resize
        _, held, _ = split_held_out(load_resized(training_paths(cat.root), det.input_hw, resize=resize),
                                    det.config.get("val_fraction", 0.1), det.config.get("seed", 0))
        held_scores = det.predict(held).scores.double()
        paths = training_paths(cat.root)
        names = held_out_names(paths, len(paths), det.config.get("val_fraction", 0.1), det.config.get("seed", 0))
        library = det.calibrate(held, names=names)  # what fit sets now, and whom it leaves out
        top = ", ".join(f"{v:.2f}" for v in held_scores.sort().values[-3:].tolist())
        notes.append(f"{name}: highest held-out scores {top}; "
                     f"calibrate: threshold {library:.4f}, left out "
                     f"{[names[i] for i in det.info['calibration']['left_out']] or 'none'}")
        test = dev_final_split(cat)[1 if args.final else 0].test
        scores = det.predict([s.path for s in test]).scores.numpy()
        labels = np.array([s.label for s in test])
        for fence in args.fences.split(","):
            keep = torch.ones(len(held_scores), dtype=torch.bool) if fence == "none" else \
                ~calibration.far_out(held_scores, iqrs=float(fence))  # the library's fence at k IQR
            thr = calibration.threshold(held_scores[keep], args.quantile)
            flagged = scores > thr
            print(f"| {name} | {len(held_scores)} | {fence} | {int((~keep).sum())} | {thr:.3f} "
                  f"| {metrics.f1_at(labels, scores, thr):.3f} | {int(flagged[labels == 0].sum())} of "
                  f"{int((labels == 0).sum())} | {int(flagged[labels == 1].sum())} of {int((labels == 1).sum())} |",
                  flush=True)
    print("\n" + "\n".join(notes))


if __name__ == "__main__":
    main()

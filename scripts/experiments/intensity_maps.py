"""Are MTD's broad "uneven" defects plain brightness changes? Heatmaps made of the grey level alone, no network:
the image blurred by a Gaussian (sigma in pixels at the detector's input size; the library's row-normalised one)
minus its median, or a band-pass (two blurs), in units of the image's median absolute deviation, beside the fitted
detector's own heatmap. Pixel AUROC (also on one defect type's images and the good ones), AUPRO and the top-1%
image AUROC of the development part, at the detector's geometry. No final-part label is read.

    .venv/bin/python scripts/experiments/intensity_maps.py /tmp/defaults/mtd-magnetic_tile.fastmsfd \\
        ../shared/data/mtd/magnetic_tile
"""
from __future__ import annotations

import argparse
import warnings

import numpy as np
import torch


def blur(gray: torch.Tensor, sigma: float) -> torch.Tensor:
    """(N, H, W) through the library's Gaussian (reference.gaussian_matrix, its final blur), rows and columns."""
    from fastmsfd.ops import reference

    h, w = gray.shape[-2:]
    return reference.gaussian_matrix(h, h, sigma) @ gray @ reference.gaussian_matrix(w, w, sigma).T


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("model", help="a fitted detector: its geometry, and its heatmap for comparison")
    ap.add_argument("category")
    ap.add_argument("--sigmas", default="2,4,8")
    ap.add_argument("--wide", default="16,32", help="the second blur of the band-pass maps")
    ap.add_argument("--kind", default="uneven", help="a defect type whose pixel AUROC is shown on its own")
    args = ap.parse_args()
    warnings.filterwarnings("ignore")
    from common import localisation

    from fastmsfd import Detector, metrics
    from fastmsfd.data import load_resized
    from fastmsfd.datasets import dev_final_split, mvtec_category
    from fastmsfd.ops import reference

    det = Detector.load(args.model, runtime="torch")
    size, resize = det.input_hw, det.settings.geometry.resize
    dev = dev_final_split(mvtec_category(args.category))[0].test
    images = load_resized([s.path for s in dev], size, resize=resize)
    labels = np.array([s.label for s in dev])
    gray = images.float().mean(1)
    median = gray.flatten(1).median(1).values[:, None, None]
    spread = (gray - median).abs().flatten(1).median(1).values[:, None, None] + 1  # +1 grey level: flat images

    kind = [i for i, s in enumerate(dev) if s.defect in (args.kind, "good")]

    def row(name: str, heat: torch.Tensor) -> None:
        loc = localisation(dev, heat.numpy(), size, resize)
        of_kind = localisation([dev[i] for i in kind], heat[kind].numpy(), size, resize)["pixel_auroc"]
        image = metrics.auroc(labels, reference.image_score(heat, 0.01).numpy())
        print(f"| {name} | {loc['pixel_auroc']:.4f} | {of_kind:.4f} | {loc['aupro']:.4f} | {image:.4f} |", flush=True)

    print(f"{len(dev)} development images at {size[0]}x{size[1]} ({resize})\n")
    print(f"| heatmap | pixel AUROC | pixel AUROC, {args.kind} and good images | AUPRO | image AUROC (top 1%) |\n"
          "|---|---|---|---|---|")
    with torch.no_grad():
        row("the detector's", torch.stack(det.predict(images).heatmaps_at_input_size()).float())
    for s in map(float, args.sigmas.split(",")):
        b = blur(gray, s)
        row(f"abs(blur {s:g} - median)", (b - median).abs() / spread)
        row(f"median - blur {s:g} (darker only)", ((median - b) / spread).clamp_min(0))
        for wide in map(float, args.wide.split(",")):
            if wide > s:
                row(f"abs(blur {s:g} - blur {wide:g})", (b - blur(gray, wide)).abs() / spread)


if __name__ == "__main__":
    main()

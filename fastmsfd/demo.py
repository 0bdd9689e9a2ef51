"""The main job on the built-in demo (`fastmsfd demo`, scripts/demo.sh): build the texture dataset, fit one
detector per texture, evaluate it, write scores, overlays, models and a summary."""
from __future__ import annotations

import json
import time
from pathlib import Path

import numpy as np

from .data import read_image
from .report import fmt, markdown_table, write_csv, write_text
from .viz import overlay_vmax, save_overlay

SUMMARY_KEYS = ("image_auroc", "pixel_auroc", "aupro", "f1_max", "f1_at_threshold")
# The demo's small textures at 128 px keep the previous detector: fine map layers and the map score alone. The
# library's defaults (stage4-6 and the global branch, chosen on real parts) draw their thin defects too coarsely
# and the global score hurts grass (docs/quality.md, "The demo").
DEMO_LAYERS = ("stage2", "stage3", "stage4")


def write_overlays(result, out_dir: Path, threshold: float, limit: int = 8) -> int:
    """Overlays for the most anomalous images of each defect type and for the highest-scoring good ones."""
    vmax = overlay_vmax(threshold, result.heatmaps)
    written = 0
    by_type: dict[str, list[int]] = {}
    for i, s in enumerate(result.samples):
        by_type.setdefault(s.defect, []).append(i)
    for defect, idx in sorted(by_type.items()):
        for i in sorted(idx, key=lambda j: -result.scores[j])[:limit]:
            s = result.samples[i]
            pred_mask = result.heatmaps[i] > threshold if np.isfinite(threshold) else None
            save_overlay(out_dir / f"{defect}_{s.path.stem}.png", read_image(s.path), result.heatmaps[i], vmax,
                         pred_mask)
            written += 1
    return written


def run_demo(out: str | Path, image_size: int = 128, epochs: int = 40, lr: float = 3e-3, seed: int = 0,
             score_topk: float | None = 0.01, map_norm: str | None = "border", augment: str | None = "flip",
             progress: bool = True, layers=DEMO_LAYERS, global_layer: str | None = None) -> dict:
    """Fit, evaluate and report every demo texture under `out`; returns the summary (also summary.json)."""
    from .config import MapSettings, ScoreSettings
    from .demo_data import make_demo_dataset
    from .detector import Detector
    from .evaluate import evaluate_category

    out = Path(out)
    cats = make_demo_dataset(out / "data", seed=seed)
    print(f"demo data: {', '.join(c.name for c in cats)} in {out / 'data'} (MVTec AD layout)")
    rows = []
    for cat in cats:
        t0 = time.perf_counter()
        det = Detector(layers=layers, image_size=image_size, heatmap=MapSettings(map_norm=map_norm),
                       score=ScoreSettings(score_topk=score_topk, global_layer=global_layer))
        det.fit(cat, epochs=epochs, lr=lr, seed=seed, progress=progress, augment=augment)
        fit_s = time.perf_counter() - t0
        det.save(out / cat.name / "model.fastmsfd")
        res = evaluate_category(det, cat)
        thr = float(det.threshold)
        n = write_overlays(res, out / cat.name / "overlays", thr, limit=3)
        write_csv(out / cat.name / "scores.csv", ["path", "defect", "score", "predicted_anomalous"],
                  [[s.path, s.defect, f"{score:.6f}", bool(score > thr)] for s, score in zip(res.samples, res.scores)])
        rows.append(dict(category=cat.name, fit_seconds=round(fit_s, 1), epochs=len(det.history.val_loss),
                         threshold=thr, resolution=res.resolution, **res.metrics))
        m = res.metrics
        print(f"  {cat.name}: image AUROC {fmt(m['image_auroc'])}, pixel AUROC {fmt(m['pixel_auroc'])}, "
              f"AUPRO {fmt(m['aupro'])}, fit {fit_s:.0f}s, {n} overlays")
    mean = {k: sum(r[k] for r in rows) / len(rows) for k in SUMMARY_KEYS if all(r[k] is not None for r in rows)}
    summary = {"categories": rows, "mean": mean, "image_size": image_size, "epochs_max": epochs, "seed": seed,
               "lr": lr, "augment": augment or "none", "map_norm": map_norm or "none", "layers": list(layers),
               "global_layer": global_layer}
    write_text(out / "summary.json", json.dumps(summary, indent=2))
    shown = ("image_auroc", "pixel_auroc", "aupro", "f1_max")
    table = markdown_table(["category", "image AUROC", "pixel AUROC", "AUPRO", "F1-max", "fit s"],
                           [[r["category"], *(r[k] for k in shown), f"{r['fit_seconds']:.1f}"] for r in rows] +
                           [["mean", *(mean.get(k) for k in shown),
                             f"{sum(r['fit_seconds'] for r in rows):.1f}"]])
    write_text(out / "summary.md", f"Evaluated at {image_size}x{image_size}.\n\n{table}\n")
    print(table)
    print(f"wrote {out / 'summary.json'}, {out / 'summary.md'}, overlays and models under {out}/")
    return summary

"""Evaluation reports: metrics.json, results.md, ROC and PRO curve plots, and a grid of heatmap overlays.

Every file is written atomically (temp file + rename). Plots use matplotlib's Agg backend (no display needed).
"""
from __future__ import annotations

import csv
import io
import json
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw

from . import metrics
from .checkpoint import atomic_path, atomic_write_bytes
from .data import read_image
from .evaluate import EvalResult, read_sample_mask
from .viz import overlay, overlay_vmax

METRIC_KEYS = ("image_auroc", "pixel_auroc", "aupro", "f1_max", "f1_at_threshold")
TILE = 192


def fmt(v) -> str:
    """A metric for a table: 4 decimals, "n/a" when undefined."""
    return "n/a" if v is None else f"{v:.4f}" if isinstance(v, float) else str(v)


def write_text(path: Path, text: str) -> None:
    """Write a text file atomically (never half written)."""
    atomic_write_bytes(path, text.encode())


def write_csv(path: Path, header: list[str], rows) -> None:
    """A CSV file with this header and rows, written atomically."""
    buf = io.StringIO()
    writer = csv.writer(buf)
    writer.writerow(header)
    writer.writerows(rows)
    write_text(path, buf.getvalue())


def markdown_table(header: list[str], rows: list[list]) -> str:
    """A Markdown table; cells are formatted with fmt() unless they are strings already."""
    cells = [[c if isinstance(c, str) else fmt(c) for c in row] for row in rows]
    return "\n".join(["| " + " | ".join(header) + " |", "|" + "---|" * len(header)] +
                      ["| " + " | ".join(row) + " |" for row in cells])


def _secs(v) -> str:
    return "-" if v is None else f"{v:.1f}"


def _save_png(path: Path, data: bytes) -> None:
    atomic_write_bytes(path, data)


def plot_curves(result: EvalResult, out_dir: Path) -> list[Path]:
    """<category>_roc.png (image ROC) and <category>_pro.png (PRO vs FPR, the AUPRO integration limit marked)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    written = []
    labels = np.array([s.label for s in result.samples])
    if 0 < labels.sum() < len(labels):
        fpr, tpr = metrics.roc_curve(labels, result.scores)
        fig, ax = plt.subplots(figsize=(4, 4), dpi=100)
        ax.plot(fpr, tpr, lw=2, label=f"image AUROC {fmt(result.metrics['image_auroc'])}")
        ax.plot([0, 1], [0, 1], "k:", lw=1)
        ax.set(xlabel="false positive rate", ylabel="true positive rate", title=f"{result.category}: image ROC",
               xlim=(0, 1), ylim=(0, 1.01))
        ax.legend(loc="lower right")
        written.append(_save_fig(fig, out_dir / f"{result.category}_roc.png"))
    if result.metrics.get("aupro") is not None:
        fpr, pro = metrics.pro_curve(result.masks, result.heatmaps)
        fig, ax = plt.subplots(figsize=(4, 4), dpi=100)
        ax.plot(fpr, pro, lw=2, label=f"AUPRO(0.3) {fmt(result.metrics['aupro'])}")
        ax.axvline(0.3, color="k", ls=":", lw=1)
        ax.set(xlabel="false positive rate (pixels)", ylabel="per-region overlap", xlim=(0, 1), ylim=(0, 1.01),
               title=f"{result.category}: PRO ({result.resolution})")
        ax.legend(loc="lower right")
        written.append(_save_fig(fig, out_dir / f"{result.category}_pro.png"))
    return written


def _save_fig(fig, path: Path) -> Path:
    import matplotlib.pyplot as plt

    buf = io.BytesIO()
    fig.tight_layout()
    fig.savefig(buf, format="png")
    plt.close(fig)
    _save_png(path, buf.getvalue())
    return path


def _tile(result: EvalResult, i: int, vmax: float) -> np.ndarray:
    s = result.samples[i]
    heat = np.asarray(result.heatmaps[i], dtype=np.float32)
    h, w = heat.shape
    image = np.asarray(Image.fromarray(read_image(s.path)).resize((w, h), Image.BILINEAR))
    pred = heat > result.threshold if np.isfinite(result.threshold) else None
    tile = overlay(image, heat, vmax, pred)
    gt = read_sample_mask(s)
    if gt is not None and gt.any():
        gt = np.asarray(Image.fromarray(gt).resize((w, h), Image.NEAREST))
        edge = gt & ~(np.roll(gt, 1, 0) & np.roll(gt, -1, 0) & np.roll(gt, 1, 1) & np.roll(gt, -1, 1))
        tile[edge] = (0, 255, 0)
    tile = np.asarray(Image.fromarray(tile).resize((TILE, TILE), Image.BILINEAR))
    img = Image.fromarray(tile)
    ImageDraw.Draw(img).text((4, 4), f"{s.defect} {result.scores[i]:.3g}", fill=(255, 255, 255))
    return np.asarray(img)


def overlay_grid(result: EvalResult, path: Path) -> Path:
    """One row per type (good first): its highest- and lowest-scoring images. Green: ground truth outline;
    white: predicted region at the calibrated threshold; colours: heatmap up to twice the threshold."""
    by_type: dict[str, list[int]] = {}
    for i, s in enumerate(result.samples):
        by_type.setdefault(s.defect, []).append(i)
    thr = result.threshold
    vmax = overlay_vmax(thr, result.heatmaps)
    rows = []
    for defect in sorted(by_type, key=lambda d: (d != "good", d)):
        idx = sorted(by_type[defect], key=lambda j: -result.scores[j])
        picks = [idx[0], idx[-1]] if len(idx) > 1 else [idx[0]] * 2
        rows.append(np.concatenate([_tile(result, j, vmax) for j in picks], axis=1))
    grid = np.concatenate(rows, axis=0)
    with atomic_path(path, suffix=".png") as tmp:
        Image.fromarray(grid).save(tmp, format="PNG")
    return path


def category_entry(result: EvalResult, fit_seconds: float | None, extra: dict | None = None) -> dict:
    return dict(category=result.category, resolution=result.resolution, **result.metrics,
                per_defect_image_auroc=result.per_defect, threshold=result.threshold,
                fit_seconds=None if fit_seconds is None else round(fit_seconds, 1),
                eval_seconds=round(result.seconds, 1), notes=result.notes, **(extra or {}))


def mean_row(entries: list[dict]) -> dict:
    """The mean of each metric over the categories where it is defined (and how many those are)."""
    out = {}
    for k in METRIC_KEYS:
        vals = [e[k] for e in entries if e.get(k) is not None]
        out[k] = float(np.mean(vals)) if vals else None
        out[f"{k}_n"] = len(vals)
    return out


def write_summary(out_dir: Path, entries: list[dict], meta: dict) -> str:
    """metrics.json and results.md; returns the Markdown table (also printed by the CLI)."""
    mean = mean_row(entries)
    atomic_write_bytes(out_dir / "metrics.json",
                       json.dumps(dict(meta, categories=entries, mean=mean), indent=2).encode())
    lines = ["| category | image AUROC | pixel AUROC | AUPRO | F1-max | F1 @ threshold | fit s | eval s | "
             "resolution |", "|---|---|---|---|---|---|---|---|---|"]
    for e in entries:
        lines.append(f"| {e['category']} | {fmt(e['image_auroc'])} | {fmt(e['pixel_auroc'])} | "
                     f"{fmt(e['aupro'])} | {fmt(e['f1_max'])} | {fmt(e['f1_at_threshold'])} | "
                     f"{_secs(e['fit_seconds'])} | {_secs(e['eval_seconds'])} | {e['resolution']} |")
    if len(entries) > 1:
        lines.append(f"| **mean** | {fmt(mean['image_auroc'])} | {fmt(mean['pixel_auroc'])} | "
                     f"{fmt(mean['aupro'])} | {fmt(mean['f1_max'])} | {fmt(mean['f1_at_threshold'])} | | | |")
    table = "\n".join(lines)
    md = ["# fastmsfd evaluation\n", f"Command: `{meta.get('command', '')}`\n",
          f"Evaluation resolution: {entries[0]['resolution'] if entries else 'n/a'} "
          "(masks resized with nearest neighbour; `--full-res` evaluates at each image's original size).\n",
          table, ""]
    for e in entries:
        if e["per_defect_image_auroc"]:
            md.append(f"\n**{e['category']}** image AUROC per defect type (vs all good test images): " +
                      ", ".join(f"{k} {fmt(v)}" for k, v in e["per_defect_image_auroc"].items()))
        for note in e["notes"]:
            md.append(f"\n- {e['category']}: {note}")
    md.append(f"\n\nDetector: `{json.dumps(meta.get('detector', {}))}`\n")
    atomic_write_bytes(out_dir / "results.md", "\n".join(md).encode())
    return table

"""Scoring image files in bulk (`fastmsfd predict`, and the Ray path): unreadable files are reported with the
reason, never fatal; the output rows have the same columns everywhere."""
from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Iterable, Sequence

from .data import list_images, read_image
from .errors import FastMSFDError
from .report import write_csv

# map_z, global_z, peak_x, peak_y: the score's parts (prediction.explanation): the heatmap's and the global
# branch's standardised scores, and where the heatmap peaks in the image's own pixels
SCORE_COLUMNS = ["path", "score", "anomalous", "map_z", "global_z", "peak_x", "peak_y", "error"]


@dataclass
class FileScore:
    path: str
    score: float | None       # None where the file could not be read
    anomalous: bool | None    # None where not calibrated or unreadable
    error: str = ""
    explanation: dict | None = None  # prediction.explanation(); None where unreadable

    def row(self) -> list:
        x = self.explanation

        def num(v):
            return "" if v is None else f"{v:.6f}"

        parts = ["", "", "", ""] if x is None else [num(x["map_z"]), num(x["global_z"]), x["peak"]["x"],
                                                     x["peak"]["y"]]
        return [self.path, num(self.score), "" if self.anomalous is None else self.anomalous, *parts, self.error]


def expand_paths(items: Iterable[str | os.PathLike]) -> list[Path]:
    """Files as given and the images inside folders (recursively, sorted)."""
    paths: list[Path] = []
    for item in items:
        p = Path(item)
        paths += list_images(p) if p.is_dir() else [p]
    return paths


def score_files(det, paths: Sequence[Path], batch_size: int = 16, overlay_dir: Path | None = None,
                progress: bool = False) -> list[FileScore]:
    """One FileScore per path, in order; decoding errors become the row's error."""
    from tqdm.auto import tqdm

    from .viz import overlay_vmax, save_overlay

    thr = float(det.threshold)
    results: list[FileScore] = []
    bar = tqdm(total=len(paths), desc="predicting", unit="img", disable=not progress or len(paths) < 8)
    for i in range(0, len(paths), batch_size):
        chunk, good = paths[i:i + batch_size], []
        by_path: dict[int, FileScore] = {}
        for k, p in enumerate(chunk):  # decode once here to sort bad files out; predict gets the arrays
            try:
                good.append((k, p, read_image(p)))
            except FastMSFDError as exc:
                by_path[k] = FileScore(str(p), None, None, str(exc))
        if good:
            pred = det.predict([a for _, _, a in good], batch_size=batch_size)
            for j, (k, p, arr) in enumerate(good):
                label = None if pred.labels is None else bool(pred.labels[j])
                by_path[k] = FileScore(str(p), float(pred.scores[j]), label, explanation=pred.explanation(j))
                if overlay_dir is not None:  # the image's part of the heatmap (resize="keep_aspect" pads)
                    top, left, h, w = pred.boxes[j]
                    heat = pred.heatmap_of_image(j).numpy()
                    mask = None if pred.masks is None else pred.masks[j, top:top + h, left:left + w].numpy()
                    save_overlay(overlay_dir / f"{p.stem}.png", arr, heat, overlay_vmax(thr, heat), mask)
        results += [by_path[k] for k in range(len(chunk))]
        bar.update(len(chunk))
    bar.close()
    return results


def write_scores(path: Path, results: Sequence[FileScore]) -> None:
    """scores.csv: the readable files first (in input order), then the unreadable ones."""
    ordered = [r for r in results if not r.error] + [r for r in results if r.error]
    write_csv(path, SCORE_COLUMNS, [r.row() for r in ordered])

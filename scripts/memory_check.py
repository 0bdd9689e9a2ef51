"""Peak memory of predicting a folder of N images: `fastmsfd predict` streams batches, so peak RSS should not
grow with N. Writes N small PNGs (varied content), fits a tiny detector once, then runs
`fastmsfd predict MODEL FOLDER --no-overlays` in a fresh process per N and reads its peak RSS (GNU time).

    .venv/bin/python scripts/memory_check.py 1000 10000
"""
from __future__ import annotations

import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
from PIL import Image


def write_images(folder: Path, n: int, size: int = 96) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(0)
    base = (rng.random((12, 12, 3)) * 255).astype(np.uint8)
    for i in range(n):
        img = np.roll(base, i % 12, axis=i % 2)
        Image.fromarray(img).resize((size, size), Image.BILINEAR).save(folder / f"{i:05d}.png")


def peak_rss_mb(cmd: list[str]) -> tuple[float, float]:
    """Peak RSS of this one command (GNU time's "Maximum resident set size") and its wall time."""
    t0 = time.perf_counter()
    proc = subprocess.run(["/usr/bin/time", "-f", "MAXRSS_KB=%M", *cmd], capture_output=True, text=True)
    if proc.returncode != 0:
        raise SystemExit(proc.stderr)
    kb = int(proc.stderr.rsplit("MAXRSS_KB=", 1)[1].split()[0])
    return kb / 1024, time.perf_counter() - t0


def main(counts: list[int]) -> None:
    py = sys.executable
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        write_images(tmp / "train", 16)
        subprocess.run([py, "-m", "fastmsfd", "-q", "fit", str(tmp / "train"), "-o", str(tmp / "m.fastmsfd"),
                        "--image-size", "128", "--epochs", "1"], check=True, capture_output=True)
        for n in sorted(counts):
            write_images(tmp / f"set{n}", n)
            rss, secs = peak_rss_mb([py, "-m", "fastmsfd", "-q", "predict", str(tmp / "m.fastmsfd"),
                                     str(tmp / f"set{n}"), "-o", str(tmp / f"out{n}"), "--no-overlays"])
            rows = sum(1 for _ in open(tmp / f"out{n}" / "scores.csv")) - 1
            print(f"{n:6d} images: peak RSS {rss:7.1f} MB, {secs:6.1f} s, {rows} rows in scores.csv", flush=True)


if __name__ == "__main__":
    main([int(a) for a in sys.argv[1:]] or [1000, 10000])

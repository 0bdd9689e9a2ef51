"""Accuracy per runtime and precision against torch float32, on fitted models (issue: a precision becomes a
default only where image and pixel AUROC move by less than 0.005).

    .venv/bin/python scripts/experiments/precision_table.py DATA MODELS_DIR [DATA MODELS_DIR ...]
e.g. ../shared/data/mtd eval_mtd/models ../shared/data/kolektorsdd eval_kolektor/models
Runs `fastmsfd eval DATA -c MODELS_DIR --no-plots --runtime R --precision P` for each combination and prints a
Markdown table of the metrics, the change against torch float32, and the evaluation time.
"""
from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

COMBOS = [("torch", "float32"), ("torch", "bfloat16"), ("onnxruntime", "float32"), ("openvino", "float32"),
          ("openvino", "bfloat16")]
if os.environ.get("COMBOS"):  # e.g. COMBOS=torch:float32,torch:bfloat16 (the first is the baseline)
    COMBOS = [tuple(c.split(":")) for c in os.environ["COMBOS"].split(",")]


def run(data: str, models: str, runtime: str, precision: str, out: Path) -> dict:
    cmd = [sys.executable, "-m", "fastmsfd", "-q", "eval", data, "-c", models, "--no-plots", "--runtime", runtime,
           "--precision", precision, "-o", str(out)]
    proc = subprocess.run(cmd, capture_output=True, text=True)
    if proc.returncode != 0:
        return {"error": proc.stderr.strip().splitlines()[-1] if proc.stderr.strip() else "failed"}
    return json.loads((out / "metrics.json").read_text())


def main(args: list[str]) -> None:
    pairs = list(zip(args[::2], args[1::2]))
    print("| category | runtime | precision | image AUROC | d image | pixel AUROC | d pixel | AUPRO | eval s |")
    print("|---|---|---|---|---|---|---|---|---|")
    with tempfile.TemporaryDirectory() as tmp:
        for data, models in pairs:
            base = {}
            for i, (runtime, precision) in enumerate(COMBOS):
                rep = run(data, models, runtime, precision, Path(tmp) / f"{Path(data).name}_{i}")
                if "error" in rep:
                    print(f"| {Path(data).name} | {runtime} | {precision} | {rep['error']} | | | | | |")
                    continue
                for c in rep["categories"]:
                    b = base.setdefault(c["category"], c)
                    d_img = c["image_auroc"] - b["image_auroc"]
                    d_pix = c["pixel_auroc"] - b["pixel_auroc"]
                    print(f"| {c['category']} | {c.get('runtime', runtime)} | {c.get('precision', precision)} | "
                          f"{c['image_auroc']:.4f} | {d_img:+.4f} | {c['pixel_auroc']:.4f} | {d_pix:+.4f} | "
                          f"{c['aupro']:.4f} | {c['eval_seconds']:.0f} |", flush=True)


if __name__ == "__main__":
    main(sys.argv[1:])

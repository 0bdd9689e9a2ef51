"""Inference cost of the deeper defaults: the previous detector (map layers stage2-4, no global branch) beside
stage2-4 + the global branch on the map's teacher, stage4-6 likewise, and the current defaults (stage4-6 + the
global branch on its own Lite2 teacher's stage6, or stage5+6, at the map's input or at a smaller
global_image_size, scored by a Gaussian or by the nearest of MAX_MEMORY training images), for each runtime, paired
and interleaved in one run (uint8 batch of 8 at 256 px, random weights and a random memory: speed does not depend
on them).

    .venv/bin/python scripts/experiments/global_cost.py [--reps 9]
"""
from __future__ import annotations

import argparse
import statistics
import time
import warnings

import torch

CONFIGS = {"stage2-4, no global (previous)": dict(layers=("stage2", "stage3", "stage4"), global_layer=None),
           "stage2-4 + global stage7": dict(layers=("stage2", "stage3", "stage4"), global_layer="stage7",
                                            global_backbone=None),
           "stage4-6 + global stage7": dict(layers=("stage4", "stage5", "stage6"), global_layer="stage7",
                                            global_backbone=None),
           "stage4-6 + Lite2 global stage6": dict(layers=("stage4", "stage5", "stage6"), global_layer="stage6",
                                                  global_image_size=None, global_density="gaussian"),
           "stage4-6 + Lite2 global stage5+6": dict(layers=("stage4", "stage5", "stage6"), global_density="gaussian",
                                                    global_layer="stage5,stage6", global_image_size=None),
           **{f"stage4-6 + Lite2 global stage5+6 at {side}": dict(layers=("stage4", "stage5", "stage6"),
                                                                 global_layer="stage5,stage6", global_image_size=side,
                                                                 global_density="gaussian")
              for side in (160, 192, 224)},
           "stage4-6 + Lite2 global stage5+6 at 192, nearest": dict(layers=("stage4", "stage5", "stage6"),
                                                                   global_layer="stage5,stage6", global_image_size=192,
                                                                   global_density="nearest")}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--reps", type=int, default=9)
    ap.add_argument("--runtimes", default="onnxruntime,openvino,torch")
    args = ap.parse_args()
    warnings.filterwarnings("ignore")
    from fastmsfd import Detector
    from fastmsfd.global_score import MAX_MEMORY
    from fastmsfd.runtimes import runtime_status

    g = torch.Generator().manual_seed(0)
    x = torch.randint(0, 256, (8, 3, 256, 256), dtype=torch.uint8, generator=g)
    print("| runtime | detector | images/s | ratio to previous |\n|---|---|---|---|")
    for rt in args.runtimes.split(","):
        if rt != "torch" and runtime_status()[rt]:
            continue
        dets = {k: Detector(image_size=256, runtime=rt, weights="random", precision="float32", **v).eval()
                for k, v in CONFIGS.items()}
        for d in dets.values():
            if getattr(d, "global_memory", None) is not None:  # the largest memory fit keeps, before the export
                d.model.global_memory = torch.randn(MAX_MEMORY, d.model.global_memory.shape[1], generator=g)
        times: dict[str, list[float]] = {k: [] for k in dets}
        with torch.no_grad():
            for d in dets.values():
                d.infer(x)
            for _ in range(args.reps):
                for k, d in dets.items():
                    t0 = time.perf_counter()
                    d.infer(x)
                    times[k].append(time.perf_counter() - t0)
        base = statistics.median(times[next(iter(CONFIGS))])
        for k, t in times.items():
            m = statistics.median(t)
            print(f"| {rt} | {k} | {8 / m:.1f} | {base / m:.2f} |", flush=True)


if __name__ == "__main__":
    main()

"""Inference speed of two source trees of fastmsfd, measured alternately in one run: for a refactor that must not
slow the detector down. Each tree needs its compiled extension (copy fastmsfd/_C*.so into an older checkout). The
default detector at 256x256 (real weights, untrained: speed does not depend on training), uint8 batches of
--batch. Per runtime, each round in a fresh process (A B A B ...), the median of --reps calls after a warm-up;
then both trees' exported ONNX graphs in ONE process, calls alternating, which removes the process-to-process
spread (about 10% on 2 cores).

    git worktree add /tmp/before HEAD~5 && cp fastmsfd/_C*.so /tmp/before/fastmsfd/
    .venv/bin/python scripts/experiments/revision_speed.py /tmp/before . --rounds 3
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time

EXPORT = r"""
import sys, warnings
import torch
warnings.simplefilter("ignore")
from fastmsfd import Detector
from fastmsfd.export import onnx_bytes
torch.manual_seed(0)
open(sys.argv[1], "wb").write(onnx_bytes(Detector(image_size=256, runtime="torch").eval()))
"""

CHILD = r"""
import json, sys, time, warnings
import torch
warnings.simplefilter("ignore")
from fastmsfd import Detector
runtime, batch, reps = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
torch.manual_seed(0)
det = Detector(image_size=256, runtime=runtime).eval()
infer = getattr(det, "infer", None) or getattr(det, "_infer")
u8 = (torch.rand(batch, 3, 256, 256) * 255).to(torch.uint8)
with torch.no_grad():
    for _ in range(3):
        infer(u8)
    times = []
    for _ in range(reps):
        t0 = time.perf_counter()
        infer(u8)
        times.append(time.perf_counter() - t0)
times.sort()
print(json.dumps({"images_per_s": batch / times[len(times) // 2]}))
"""


def measure(tree: str, runtime: str, batch: int, reps: int) -> float:
    env = dict(os.environ, PYTHONPATH=os.path.abspath(tree))
    out = subprocess.run([sys.executable, "-c", CHILD, runtime, str(batch), str(reps)], env=env, check=True,
                         capture_output=True, text=True, cwd="/")
    return json.loads(out.stdout.strip().splitlines()[-1])["images_per_s"]


def graphs_alternating(before: str, after: str, batch: int, calls: int) -> tuple[float, float]:
    """(images/s before, after): both trees' ONNX graphs in ONNX Runtime in this process, calls alternating."""
    import tempfile

    import numpy as np

    from fastmsfd.runtimes import OnnxRuntimeRunner

    runners = []
    with tempfile.TemporaryDirectory() as tmp:
        for i, tree in enumerate((before, after)):
            path = os.path.join(tmp, f"{i}.onnx")
            subprocess.run([sys.executable, "-c", EXPORT, path], env=dict(os.environ, PYTHONPATH=os.path.abspath(tree)),
                           check=True, capture_output=True, cwd="/")
            runners.append(OnnxRuntimeRunner(open(path, "rb").read()))
    import torch

    u8 = torch.from_numpy((np.random.default_rng(0).random((batch, 3, 256, 256)) * 255).astype(np.uint8))
    times: list[list[float]] = [[], []]
    for k in range(2 * calls + 6):
        i = (k + k // 2) % 2  # A B B A A B ...: neither always runs first
        t0 = time.perf_counter()
        runners[i](u8)
        if k >= 6:  # warm-up
            times[i].append(time.perf_counter() - t0)
    return tuple(batch / statistics.median(t) for t in times)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("before")
    ap.add_argument("after")
    ap.add_argument("--runtimes", default="onnxruntime,torch")
    ap.add_argument("--batch", type=int, default=8)
    ap.add_argument("--reps", type=int, default=15)
    ap.add_argument("--rounds", type=int, default=3)
    args = ap.parse_args()
    print("| runtime | before images/s (each round) | after images/s (each round) | after / before (medians) |\n"
          "|---|---|---|---|")
    for runtime in args.runtimes.split(","):
        runs = {"before": [], "after": []}
        for _ in range(args.rounds):
            for key in ("before", "after"):
                runs[key].append(measure(getattr(args, key), runtime, args.batch, args.reps))
        b, a = statistics.median(runs["before"]), statistics.median(runs["after"])
        print(f"| {runtime} | {' / '.join(f'{v:.1f}' for v in runs['before'])} | "
              f"{' / '.join(f'{v:.1f}' for v in runs['after'])} | {a / b:.3f} |", flush=True)
    b, a = graphs_alternating(args.before, args.after, args.batch, 2 * args.reps)
    print(f"| ONNX graphs in one process, alternating | {b:.1f} | {a:.1f} | {a / b:.3f} |")


if __name__ == "__main__":
    main()

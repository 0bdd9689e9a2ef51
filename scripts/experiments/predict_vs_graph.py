"""predict() on in-memory uint8 arrays against the exported graph fed ready uint8 batches: the share of the graph's
throughput that users get (fastmsfd bench has the same row). Runs on any checkout, so an older commit can be
measured the same way:

    .venv/bin/python scripts/experiments/predict_vs_graph.py --runtime onnxruntime --size 300
    git worktree add /tmp/old COMMIT && cp fastmsfd/_C*.so /tmp/old/fastmsfd/ && \\
        PYTHONPATH=/tmp/old .venv/bin/python scripts/experiments/predict_vs_graph.py --runtime onnxruntime --size 300
"""
import argparse
import statistics
import time
import warnings

import numpy as np
import torch
from PIL import Image


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--runtime", default="onnxruntime")
    ap.add_argument("--size", type=int, default=300, help="side of the input arrays (the network runs at 256)")
    ap.add_argument("--n", type=int, default=64, help="arrays per predict() call")
    ap.add_argument("--batch", type=int, default=8)
    ap.add_argument("--reps", type=int, default=7)
    args = ap.parse_args()
    warnings.filterwarnings("ignore")
    import fastmsfd
    from fastmsfd import Detector

    det = Detector(image_size=256, runtime=args.runtime).eval()
    rng = np.random.default_rng(0)
    arrays = [np.asarray(Image.fromarray((rng.random((8, 8, 3)) * 255).astype(np.uint8))
                         .resize((args.size, args.size), Image.BICUBIC)) for _ in range(args.n)]
    u8 = torch.randint(0, 256, (args.batch, 3, 256, 256), dtype=torch.uint8)
    batches = -(-args.n // args.batch)
    fns = [lambda: [det.infer(u8) for _ in range(batches)], lambda: det.predict(arrays, batch_size=args.batch)]
    times = [[], []]
    with torch.no_grad():
        for fn in fns:
            fn()
        for _ in range(args.reps):  # in alternation: a slow spell of the machine falls on both sides
            for fn, out in zip(fns, times):
                t0 = time.perf_counter()
                fn()
                out.append(time.perf_counter() - t0)
    graph, full = (statistics.median(t) for t in times)
    print(f"{fastmsfd.__file__}: {args.runtime}, {args.n} arrays of {args.size}x{args.size}, batch {args.batch}: "
          f"graph {batches * args.batch / graph:.1f} images/s, predict {args.n / full:.1f}, "
          f"share {graph / full * args.n / (batches * args.batch):.3f}")


if __name__ == "__main__":
    main()

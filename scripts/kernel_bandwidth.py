"""Achieved feature bandwidth of each fused-op backend vs the device's copy bandwidth, and time vs the reference.

    .venv/bin/python scripts/kernel_bandwidth.py [--device cuda] [--json out.json]
Bytes counted: teacher + student features read once (anomaly map); read twice + gradient written (loss fwd+bwd).
Copy bandwidth: (read + write) bytes of a large tensor copy on the same device. Medians of repeated runs.
"""
from __future__ import annotations

import argparse
import json
import time

import torch

from fastmsfd import ops

CASES = {
    "resnet18_b1": (1, [(64, 64, 64), (128, 32, 32), (256, 16, 16)]),
    "resnet18_b16": (16, [(64, 64, 64), (128, 32, 32), (256, 16, 16)]),
    "resnet18_b64": (64, [(64, 64, 64), (128, 32, 32), (256, 16, 16)]),
    "lite0_b8": (8, [(24, 64, 64), (40, 32, 32), (80, 16, 16)]),
}


def median_ms(fn, device, reps):
    fn()
    times = []
    for _ in range(reps):
        if device == "cuda":
            torch.cuda.synchronize()
        t0 = time.perf_counter()
        fn()
        if device == "cuda":
            torch.cuda.synchronize()
        times.append(time.perf_counter() - t0)
    return sorted(times)[len(times) // 2] * 1e3


def copy_bandwidth(device):
    x = torch.empty(64 * 2**20 // 4, device=device).normal_()
    y = torch.empty_like(x)
    ms = median_ms(lambda: y.copy_(x), device, 20)
    return 2 * x.numel() * 4 / ms / 1e6  # GB/s


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--cases", nargs="*", default=None)
    p.add_argument("--reps", type=int, default=20)
    p.add_argument("--json")
    a = p.parse_args(argv)
    status = ops.backend_status(a.device)
    backends = [b for b, why in status.items() if why is None]
    cases = a.cases or [c for c in CASES if a.device == "cuda" or not c.endswith("b64")]
    copy_gbs = copy_bandwidth(a.device)
    print(f"device {a.device}, threads {torch.get_num_threads()}, copy bandwidth {copy_gbs:.1f} GB/s")
    print(f"skipped backends: { {b: why for b, why in status.items() if why} }")
    rows = []
    g = torch.Generator().manual_seed(0)
    for case in cases:
        B, layers = CASES[case]
        T = [torch.randn(B, c, h, w, generator=g).to(a.device) for c, h, w in layers]
        S = [t + 0.1 * torch.randn(t.shape, generator=g).to(a.device) for t in T]
        feat_bytes = sum(t.numel() * t.element_size() for t in T) * 2
        Sg = [s.clone().requires_grad_() for s in S]
        ref_ms = {}
        for backend in ["reference"] + [b for b in backends if b != "reference"]:
            reps = max(3, a.reps // 4) if backend == "reference" else a.reps
            map_ms = median_ms(lambda: ops.anomaly_map(T, S, (256, 256), backend=backend), a.device, reps)

            def step():
                ops.distill_loss(T, Sg, backend=backend).backward()
            loss_ms = median_ms(step, a.device, reps)
            ref_ms.setdefault("map", map_ms)
            ref_ms.setdefault("loss", loss_ms)
            row = dict(case=case, backend=backend, map_ms=round(map_ms, 3), loss_ms=round(loss_ms, 3),
                       map_gbs=round(feat_bytes / map_ms / 1e6, 2), loss_gbs=round(feat_bytes * 2.5 / loss_ms / 1e6, 2),
                       map_speedup=round(ref_ms["map"] / map_ms, 2), loss_speedup=round(ref_ms["loss"] / loss_ms, 2))
            row["map_frac_copy"] = round(row["map_gbs"] / copy_gbs, 3)
            rows.append(row)
            print(f"{case:13s} {backend:9s} map {map_ms:8.3f} ms {row['map_gbs']:7.1f} GB/s "
                  f"({row['map_frac_copy']:.2f} of copy) x{row['map_speedup']:5.2f} | "
                  f"loss fwd+bwd {loss_ms:8.3f} ms {row['loss_gbs']:7.1f} GB/s x{row['loss_speedup']:5.2f}")
    if a.json:
        with open(a.json, "w") as f:
            json.dump(dict(device=a.device, copy_gbs=copy_gbs, rows=rows), f, indent=1)


if __name__ == "__main__":
    main()

"""`fastmsfd bench`: end-to-end speed of every available runtime beside the naive eager pipeline, same run.

Naive pipeline (the baseline every ratio is against): float32, NCHW, the whole backbone (all stages, as a
forward-hook implementation would run it), the reference ops (fastmsfd/ops/reference.py), torch preprocessing.
Each fastmsfd row is a Detector with that runtime (truncated backbones, channels_last, compiled ops or the
exported graph). Two measurements each: from uint8 images already at image_size ("decode excluded") and from four
batches of 512x512 JPEG files on disk through Detector.predict / PIL ("decode included"). Medians of repeated
runs; weights are random when a backbone's file is absent (speed does not depend on them; a warning says so).
"""
from __future__ import annotations

import statistics
import tempfile
import time
import warnings
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from .backbones import BACKBONES, build_backbone, default_layers, find_weights_file, normalization
from .ops import reference
from .runtimes import RUNTIME_PRECISIONS, cpu_info


class NaivePipeline:
    """fp32 NCHW, full backbones, reference ops: what a straightforward implementation runs."""

    def __init__(self, backbone: str, image_size: int, layers=None):
        valid = BACKBONES[backbone][1]
        self.layers = tuple(layers or default_layers(backbone))
        deepest = valid[-1]
        full = self.layers + ((deepest,) if deepest not in self.layers else ())
        self.teacher = build_backbone(backbone, full).eval()
        self.student = build_backbone(backbone, full).eval()
        mean, std = normalization(backbone)
        self.mean = torch.tensor(mean).view(1, 3, 1, 1)
        self.std = torch.tensor(std).view(1, 3, 1, 1)
        self.size = image_size

    def to(self, device) -> "NaivePipeline":
        self.teacher, self.student = self.teacher.to(device), self.student.to(device)
        self.mean, self.std = self.mean.to(device), self.std.to(device)
        return self

    @torch.no_grad()
    def __call__(self, images_u8: torch.Tensor):
        x = (images_u8.float() / 255.0 - self.mean) / self.std
        n = len(self.layers)
        t, s = self.teacher(x)[:n], self.student(x)[:n]
        S = self.size
        shapes = [tuple(f.shape[-2:]) for f in t]
        return reference.anomaly_map(t, s, (S, S), [1.0] * n, 1.0, 1.0,
                                     reference.default_sigmas(shapes, (S, S)), [None] * n, "sum", 0.01)

    def from_files(self, paths):
        ims = [torch.from_numpy(np.array(Image.open(p).convert("RGB"))).permute(2, 0, 1) for p in paths]
        x = torch.stack([torch.nn.functional.interpolate(i[None].float(), size=(self.size, self.size),
                                                         mode="bilinear", antialias=True)[0] for i in ims])
        return self(x.round().clamp(0, 255).to(torch.uint8).to(self.mean.device))


def _median_seconds(fn, reps: int, warmup: int = 2) -> float:
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(reps):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


def _paired_median_seconds(fns, reps: int, warmup: int = 1) -> list[float]:
    """Median seconds of each of fns, run in alternation (a, b, a, b, ...) so that a slow spell of a shared
    machine falls on both sides of a ratio rather than on one."""
    for fn in fns:
        for _ in range(warmup):
            fn()
    times = [[] for _ in fns]
    for _ in range(reps):
        for fn, out in zip(fns, times):
            t0 = time.perf_counter()
            fn()
            out.append(time.perf_counter() - t0)
    return [statistics.median(t) for t in times]


def _arrays(n: int, size: int, seed: int = 0) -> list[Image.Image]:
    """n smooth random RGB images of size x size."""
    rng = np.random.default_rng(seed)
    return [Image.fromarray((rng.random((8, 8, 3)) * 255).astype(np.uint8)).resize((size, size), Image.BICUBIC)
            for _ in range(n)]


def _jpegs(folder: Path, n: int, size: int, seed: int = 0) -> list[Path]:
    paths = []
    for i, img in enumerate(_arrays(n, size, seed)):
        paths.append(folder / f"{i:04d}.jpg")
        img.save(paths[-1], quality=90)
    return paths


def run_bench(backbone: str = "efficientnet_lite0", image_size: int = 256, batch: int = 8,
              runtimes=("torch", "onnxruntime", "openvino"), precisions=("float32",), reps: int = 10,
              file_size: int = 512, progress=print, device: str = "cpu", compile: bool | str = False) -> dict:
    """Rows of {pipeline, runtime, precision, latency_ms (batch 1), throughput (images/s at `batch`), ...}."""
    from . import Detector
    from .runtimes import runtime_status

    status = runtime_status()
    weights = None
    if find_weights_file(backbone) is None:
        warnings.warn(f"no weights file for {backbone}: benchmarking random weights (speed is the same)")
        weights = "random"
    g = torch.Generator().manual_seed(0)
    u8 = torch.randint(0, 256, (batch, 3, image_size, image_size), dtype=torch.uint8, generator=g).to(device)
    sync = torch.cuda.synchronize if torch.device(device).type == "cuda" else (lambda: None)
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        files = _jpegs(Path(tmp), batch * 4, file_size)  # four batches: decoding can overlap compute

        def measure(name, runtime, precision, one, many, from_files):
            lat = _median_seconds(lambda: (one(), sync()), reps)
            thr = _median_seconds(lambda: (many(), sync()), max(3, reps // 2))
            dec = _median_seconds(lambda: (from_files(), sync()), max(3, reps // 2))
            row = dict(pipeline=name, runtime=runtime, precision=precision, latency_ms=round(lat * 1e3, 2),
                       throughput=round(batch / thr, 1), throughput_with_decode=round(len(files) / dec, 1))
            rows.append(row)
            progress(f"  {name:8s} {runtime:12s} {precision:9s} batch-1 {row['latency_ms']:8.2f} ms   "
                     f"batch-{batch} {row['throughput']:7.1f} img/s   with decode {row['throughput_with_decode']:7.1f}")

        arrays = [np.asarray(im) for im in _arrays(batch * 4, image_size + 44)]  # need a resize, like a camera's

        def measure_predict(det, runtime, precision):
            """predict() on in-memory uint8 arrays (decoded, checked, resized, inferred) against the graph alone
            fed ready uint8 batches: the share of the graph's speed that users get."""
            graph, full = _paired_median_seconds([lambda: ([det.infer(u8) for _ in range(4)], sync()),
                                                  lambda: (det.predict(arrays, batch_size=batch), sync())],
                                                 max(5, reps))
            row = dict(pipeline="predict(arrays)", runtime=runtime, precision=precision, latency_ms=None,
                       throughput=round(len(arrays) / full, 1), throughput_with_decode=None,
                       graph_throughput=round(len(arrays) / graph, 1), of_graph=round(graph / full, 3))
            rows.append(row)
            progress(f"  {'predict':8s} {runtime:12s} {precision:9s} {image_size + 44}px uint8 arrays "
                     f"{row['throughput']:7.1f} img/s   graph alone {row['graph_throughput']:7.1f}   "
                     f"ratio {row['of_graph']:.3f}")

        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            naive = NaivePipeline(backbone, image_size).to(device)
        measure("naive", "torch-eager", "float32", lambda: naive(u8[:1]), lambda: naive(u8),
                lambda: [naive.from_files(files[i:i + batch]) for i in range(0, len(files), batch)])
        for runtime in runtimes:
            if runtime != "torch" and torch.device(device).type != "cpu":
                continue  # the exported runtimes run on the CPU
            if status.get(runtime):
                progress(f"  skipped {runtime}: {status[runtime]}")
                continue
            for precision in precisions:
                if precision not in RUNTIME_PRECISIONS[runtime]:
                    continue
                with warnings.catch_warnings():
                    warnings.simplefilter("ignore")
                    det = Detector(backbone, image_size=image_size, weights=weights, runtime=runtime,
                                   precision=precision, device=device,
                                   compile=compile if runtime == "torch" else False)
                det.eval()
                with torch.no_grad():
                    label = runtime + ("+compile" if compile and runtime == "torch" else "")
                    measure("fastmsfd", label, precision, lambda: det.infer(u8[:1]), lambda: det.infer(u8),
                            lambda: det.predict(files, batch_size=batch))
                    measure_predict(det, label, precision)
    base = rows[0]
    for r in rows:
        if r["pipeline"].startswith("predict"):
            continue
        r["speedup_throughput"] = round(r["throughput"] / base["throughput"], 2)
        r["speedup_latency"] = round(base["latency_ms"] / r["latency_ms"], 2)
        r["speedup_with_decode"] = round(r["throughput_with_decode"] / base["throughput_with_decode"], 2)
    cpu = cpu_info()
    return dict(backbone=backbone, image_size=image_size, batch=batch, threads=torch.get_num_threads(), device=device,
                torch=torch.__version__, weights="random" if weights else "pretrained", cpu=cpu.model,
                isa=sorted(cpu.flags), native_bf16=cpu.native_bf16, rows=rows)


def markdown(result: dict) -> str:
    lines = [f"{result['backbone']} at {result['image_size']}x{result['image_size']}, batch {result['batch']}, "
             f"{result['threads']} threads, torch {result['torch']}, {result['weights']} weights",
             f"CPU: {result.get('cpu', '?')}; ISA: {', '.join(result.get('isa', [])) or 'baseline x86-64'}; "
             f"native bf16: {'yes' if result.get('native_bf16') else 'no'}",
             "", "| pipeline | runtime | precision | batch-1 latency ms | images/s | x naive | images/s with decode "
             "| x naive |", "|---|---|---|---|---|---|---|---|"]
    for r in result["rows"]:
        if r["pipeline"].startswith("predict"):  # predict() on arrays: its share of the graph's throughput
            lines.append(f"| {r['pipeline']} | {r['runtime']} | {r['precision']} | - | {r['throughput']} "
                         f"| {r['of_graph']} of the graph ({r['graph_throughput']}) | - | - |")
            continue
        lines.append(f"| {r['pipeline']} | {r['runtime']} | {r['precision']} | {r['latency_ms']} | {r['throughput']} "
                     f"| {r['speedup_throughput']} | {r['throughput_with_decode']} | {r['speedup_with_decode']} |")
    return "\n".join(lines)

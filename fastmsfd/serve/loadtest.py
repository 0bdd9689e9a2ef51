"""Load test for `fastmsfd serve`, loopback only and bounded: N concurrent clients post images for T seconds;
throughput, p50/p99 latency, errors and the server's RSS before and after, beside the in-process batched
throughput of the same model on the same images, measured in the same run, as a ratio.

    python -m fastmsfd.serve.loadtest MODEL [--clients 8] [--seconds 20] [--max-batch 8] [--runtime auto]
benchmarks/test_bench_serve.py runs it under pytest-benchmark; docs/serving.md has the numbers.
"""
from __future__ import annotations

import argparse
import json
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return float("nan")


def sample_images(n: int = 16, size: int = 256, seed: int = 0) -> list[bytes]:
    """JPEG crops of scikit-image's brick texture (what a line camera sends, small)."""
    import io

    from PIL import Image

    from ..demo_data import load_texture, random_crop

    src, rng = load_texture("brick"), np.random.default_rng(seed)
    out = []
    for _ in range(n):
        gray = (random_crop(src, rng, 0, src.shape[1], size) * 255).astype(np.uint8)
        buf = io.BytesIO()
        Image.fromarray(np.repeat(gray[..., None], 3, 2)).save(buf, format="JPEG", quality=92)
        out.append(buf.getvalue())
    return out


def in_process_throughput(model: str, bodies: list[bytes], batch: int, seconds: float, runtime: str) -> float:
    """Images/s of Detector.predict on the decoded images in batches (decode included), the served path's peer."""
    from .. import Detector
    from ..data import decode_bytes

    det = Detector.load(model, runtime=runtime)
    chunk = [bodies[i % len(bodies)] for i in range(batch)]
    det.predict([decode_bytes(b) for b in chunk], batch_size=batch)  # warm-up
    n, t0 = 0, time.perf_counter()
    while time.perf_counter() - t0 < seconds:
        det.predict([decode_bytes(b) for b in chunk], batch_size=batch)
        n += batch
    return n / (time.perf_counter() - t0)


def drive(url: str, bodies: list[bytes], clients: int, seconds: float) -> dict:
    """clients threads, each posting one image at a time for `seconds`; latencies of successful requests."""
    import httpx

    latencies: list[float] = []
    errors: list[str] = []
    lock = threading.Lock()
    stop_at = time.perf_counter() + seconds

    def client(k: int) -> None:
        with httpx.Client(timeout=60) as c:
            i = k
            while time.perf_counter() < stop_at:
                t0 = time.perf_counter()
                try:
                    r = c.post(url + "/predict", content=bodies[i % len(bodies)],
                               headers={"content-type": "image/jpeg"})
                    ok = r.status_code == 200
                    why = f"HTTP {r.status_code}"
                except httpx.HTTPError as exc:
                    ok, why = False, str(exc)
                with lock:
                    (latencies.append(time.perf_counter() - t0) if ok else errors.append(why))
                i += clients

    t0 = time.perf_counter()
    threads = [threading.Thread(target=client, args=(k,)) for k in range(clients)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    wall = time.perf_counter() - t0
    lat = np.array(latencies) * 1000
    return {"requests": len(latencies), "errors": len(errors), "error_examples": errors[:3],
            "images_per_s": len(latencies) / wall, "p50_ms": float(np.percentile(lat, 50)) if len(lat) else None,
            "p99_ms": float(np.percentile(lat, 99)) if len(lat) else None, "seconds": wall}


def run(model: str, clients: int = 8, seconds: float = 20.0, max_batch: int = 8, max_wait_ms: float = 5.0,
        runtime: str = "auto") -> dict:
    """Start a server on loopback, load it, stop it; the in-process figure is measured first, same machine."""
    import httpx

    bodies = sample_images()
    local = in_process_throughput(model, bodies, max_batch, min(seconds, 10.0), runtime)
    port = _free_port()
    proc = subprocess.Popen([sys.executable, "-m", "fastmsfd", "-q", "serve", model, "--port", str(port),
                             "--runtime", runtime, "--max-batch", str(max_batch), "--max-wait-ms", str(max_wait_ms)],
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.time() + 180
        while True:
            try:
                if httpx.get(url + "/health", timeout=2).status_code == 200:
                    break
            except httpx.TransportError:
                pass
            if proc.poll() is not None or time.time() > deadline:
                raise RuntimeError(f"the server did not start: {proc.stderr.read().decode(errors='replace')}")
            time.sleep(0.2)
        meta = httpx.get(url + "/metadata").json()
        rss_before = rss_mb(proc.pid)
        served = drive(url, bodies, clients, seconds)
        rss_after = rss_mb(proc.pid)
    finally:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout=60)
        except subprocess.TimeoutExpired:
            proc.kill()
    return dict(served, clients=clients, max_batch=max_batch, max_wait_ms=max_wait_ms, runtime=meta["runtime"],
                precision=meta["precision"], image_size=meta["input"]["height"], in_process_images_per_s=local,
                ratio=served["images_per_s"] / local, server_rss_mb_before=rss_before, server_rss_mb_after=rss_after,
                cpus=os.cpu_count())


def markdown(r: dict) -> str:
    return ("| clients | served img/s | in-process img/s | ratio | p50 ms | p99 ms | errors | RSS MB before/after |\n"
            "|---|---|---|---|---|---|---|---|\n"
            f"| {r['clients']} | {r['images_per_s']:.1f} | {r['in_process_images_per_s']:.1f} | {r['ratio']:.2f} | "
            f"{r['p50_ms']:.1f} | {r['p99_ms']:.1f} | {r['errors']} | "
            f"{r['server_rss_mb_before']:.0f} / {r['server_rss_mb_after']:.0f} |")


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("model")
    ap.add_argument("--clients", type=int, nargs="+", default=[8])
    ap.add_argument("--seconds", type=float, default=20.0)
    ap.add_argument("--max-batch", type=int, default=8)
    ap.add_argument("--max-wait-ms", type=float, default=5.0)
    ap.add_argument("--runtime", default="auto")
    ap.add_argument("--json", help="also write the results here")
    args = ap.parse_args(argv)
    results = []
    for n in args.clients:
        r = run(args.model, n, args.seconds, args.max_batch, args.max_wait_ms, args.runtime)
        results.append(r)
        print(f"{r['runtime']} {r['precision']}, {r['image_size']} px, max batch {r['max_batch']}, "
              f"{r['cpus']} CPUs:\n{markdown(r)}\n", flush=True)
    if args.json:
        Path(args.json).write_text(json.dumps(results, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""Ray Data batch inference (fastmsfd/ray.py) on a local cluster beside the local `predict` path on the same
files, same run: JPEG 256x256 crops, Lite0 at 256 px, images/s for each and the ratio, for two archive sizes
(the difference between them is Ray's steady-state rate, without the actors' start-up).

    .venv/bin/python -m pytest benchmarks/test_bench_ray.py -s
"""
import time
import warnings

import pytest

ray = pytest.importorskip("ray", reason="the ray extra is not installed (pip install fastmsfd[ray])")

from fastmsfd import Detector  # noqa: E402
from fastmsfd import ray as fray  # noqa: E402
from fastmsfd.batch import expand_paths, score_files  # noqa: E402
from fastmsfd.data import decode_bytes  # noqa: E402
from fastmsfd.serve.loadtest import sample_images  # noqa: E402

SIZES = (400, 1200)


@pytest.fixture(scope="module")
def archive(tmp_path_factory):
    root = tmp_path_factory.mktemp("ray_bench")
    bodies = sample_images(max(SIZES), seed=2)
    (root / "images").mkdir()
    for i, b in enumerate(bodies):
        (root / "images" / f"{i:04d}.jpg").write_bytes(b)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        det = Detector(image_size=256)  # speed does not depend on training
    det.calibrate([decode_bytes(b) for b in bodies[:8]])
    det.save(root / "model.fastmsfd")
    return root / "model.fastmsfd", expand_paths([root / "images"])


def _timed(fn):
    t0 = time.perf_counter()
    out = fn()
    return out, time.perf_counter() - t0


def test_ray_vs_local_predict(benchmark, archive):
    model, paths = archive
    det = Detector.load(model)
    score_files(det, paths[:16])  # warm-up
    fray.init("local")
    ray.data.DataContext.get_current().enable_progress_bars = False
    rows = {}
    lines = ["| images | local predict img/s | Ray Data img/s | ratio |", "|---|---|---|---|"]
    times = {}
    for n in SIZES:
        local, local_s = _timed(lambda: score_files(det, paths[:n], batch_size=16))
        if n == max(SIZES):
            got, ray_s = _timed(lambda: benchmark.pedantic(
                lambda: fray.predict([str(p) for p in paths[:n]], model, batch_size=16).take_all(),
                rounds=1, iterations=1))
        else:
            got, ray_s = _timed(lambda: fray.predict([str(p) for p in paths[:n]], model, batch_size=16).take_all())
        assert len(got) == len(local) == n and not any(r["error"] for r in got)
        times[n] = (local_s, ray_s)
        rows[n] = dict(local_images_per_s=n / local_s, ray_images_per_s=n / ray_s, ratio=local_s / ray_s)
        lines.append(f"| {n} | {n / local_s:.1f} | {n / ray_s:.1f} | {local_s / ray_s:.2f} |")
    ray.shutdown()
    a, b = SIZES
    extra_local = (b - a) / (times[b][0] - times[a][0])
    extra_ray = (b - a) / (times[b][1] - times[a][1])
    lines.append(f"| {b - a} more (steady state) | {extra_local:.1f} | {extra_ray:.1f} | "
                 f"{extra_ray / extra_local:.2f} |")
    benchmark.extra_info.update({str(k): v for k, v in rows.items()}, steady_ratio=extra_ray / extra_local)
    print("\n" + "\n".join(lines))

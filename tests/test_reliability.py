"""Reliability: a Detector shared by threads, writes killed mid-way (SIGKILL) never leave a partial file, and
hypothesis fuzzing of the image decoder and of the op shapes."""
import os
import signal
import subprocess
import sys
import textwrap
import threading
import time

import numpy as np
import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from fastmsfd import Detector, ops
from fastmsfd.data import read_image
from fastmsfd.errors import ImageDecodeError
from fastmsfd.runtimes import runtime_status

SIZE = 48
# A longer campaign: FASTMSFD_FUZZ_EXAMPLES=5000 .venv/bin/python -m pytest tests/test_reliability.py -k fuzz
FUZZ = int(os.environ.get("FASTMSFD_FUZZ_EXAMPLES", "150"))


def _images(n, seed=0):
    rng = np.random.default_rng(seed)
    return [(rng.random((40, 44, 3)) * 255).astype(np.uint8) for _ in range(n)]


@pytest.fixture(scope="module")
def det():
    torch.manual_seed(0)
    return Detector(image_size=SIZE, runtime="torch").fit(_images(10), epochs=1, batch_size=4, progress=False)


@pytest.mark.parametrize("runtime", ["torch"] + [r for r in ("onnxruntime", "openvino") if not runtime_status()[r]])
def test_concurrent_predict_equals_sequential(det, runtime):
    det.reset_runtime(runtime)
    try:
        inputs = [_images(3, seed=s) for s in range(8)]
        sequential = [det.predict(x, batch_size=3) for x in inputs]
        results = [None] * len(inputs)
        errors = []

        def work(i):
            try:
                for _ in range(3):
                    results[i] = det.predict(inputs[i], batch_size=3)
            except Exception as exc:  # surfaced below
                errors.append(exc)

        threads = [threading.Thread(target=work, args=(i,)) for i in range(len(inputs))]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        assert not errors, errors
        for got, want in zip(results, sequential):
            torch.testing.assert_close(got.heatmaps, want.heatmaps, rtol=1e-5, atol=1e-5)
            torch.testing.assert_close(got.scores, want.scores, rtol=1e-5, atol=1e-5)
    finally:
        det.reset_runtime("torch")


WRITER = textwrap.dedent("""
    import sys, torch
    from fastmsfd import Detector
    from fastmsfd.report import write_summary
    kind, path = sys.argv[1], sys.argv[2]
    torch.manual_seed(0)
    det = Detector(image_size=48, runtime="torch")
    i = 0
    while True:
        det.model.layer_weights.fill_(float(i % 7 + 1))
        det.threshold.fill_(float(i))
        if kind == "checkpoint":
            det.save(path)
        elif kind == "onnx":
            det.export_onnx(path)
        else:
            from pathlib import Path
            write_summary(Path(path), [], {"command": "x" * (1000 + i), "i": i})
        i += 1
        print("wrote", i, flush=True)
""")


def _check(kind, path):
    if kind == "checkpoint":
        Detector.load(path)
    elif kind == "onnx":
        import onnx

        onnx.checker.check_model(onnx.load(str(path)))
    else:
        import json

        assert json.loads((path / "metrics.json").read_text())["command"].startswith("x")


@pytest.mark.parametrize("kind", ["checkpoint", "onnx", "report"])
def test_sigkill_during_writes_never_leaves_a_partial_file(tmp_path, kind):
    if kind == "onnx":
        pytest.importorskip("onnx")
    target = tmp_path / {"checkpoint": "m.fastmsfd", "onnx": "m.onnx", "report": "rep"}[kind]
    rng = np.random.default_rng(0)
    kills = 0
    for _ in range(4):
        proc = subprocess.Popen([sys.executable, "-c", WRITER, kind, str(target)], stdout=subprocess.PIPE, text=True)
        assert proc.stdout.readline().startswith("wrote")  # at least one complete write
        time.sleep(float(rng.uniform(0.0, 0.6)))  # then kill it at a random point of a later write
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait()
        kills += 1
        _check(kind, target)  # the target is always a complete file, old or new
    assert kills == 4
    leftovers = [p.name for p in (target if kind == "report" else tmp_path).iterdir() if p.name.startswith(".")]
    # a SIGKILL can leave the writer's hidden temp file behind (never the target itself partial)
    assert all(".tmp" in n or n.endswith((".png", ".onnx")) for n in leftovers), leftovers


# ---- fuzzing ---------------------------------------------------------------------------------------------------

PNG = b"\x89PNG\r\n\x1a\n"
JPEG = b"\xff\xd8\xff"


@settings(max_examples=FUZZ, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(st.one_of(st.binary(max_size=512), st.binary(max_size=512).map(lambda b: PNG + b),
                 st.binary(max_size=512).map(lambda b: JPEG + b)))
def test_decoder_fuzz_raises_only_image_decode_error(tmp_path, data):
    path = tmp_path / "fuzz.png"
    path.write_bytes(data)
    try:
        arr = read_image(path)
    except ImageDecodeError as exc:
        assert "fuzz.png" in str(exc)
    else:
        assert arr.dtype == np.uint8 and arr.ndim == 3 and arr.shape[2] == 3


def _valid_png(rng):
    import io

    from PIL import Image

    buf = io.BytesIO()
    Image.fromarray((rng.random((9, 7, 3)) * 255).astype(np.uint8)).save(buf, format="PNG")
    return bytearray(buf.getvalue())


@settings(max_examples=FUZZ, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(st.lists(st.tuples(st.integers(0, 200), st.integers(0, 255)), min_size=1, max_size=6), st.integers(0, 60))
def test_decoder_fuzz_mutated_and_truncated_png(tmp_path, flips, cut):
    data = _valid_png(np.random.default_rng(0))
    for pos, val in flips:
        data[pos % len(data)] = val
    path = tmp_path / "mut.png"
    path.write_bytes(bytes(data[:len(data) - cut]))
    try:
        arr = read_image(path)
    except ImageDecodeError as exc:
        assert "mut.png" in str(exc)
    else:
        assert arr.shape[2] == 3


BACKENDS = [b for b, why in ops.backend_status("cpu").items() if why is None and b in ("cpp",)]


@pytest.mark.skipif(not BACKENDS, reason="no compiled CPU backend")
@settings(max_examples=max(FUZZ // 3, 20), deadline=None)
@given(st.integers(1, 3), st.lists(st.tuples(st.integers(1, 70), st.integers(1, 12), st.integers(1, 12)),
                                   min_size=1, max_size=4),
       st.integers(1, 40), st.integers(1, 40), st.sampled_from(["sum", "mean", "max", "product"]),
       st.sampled_from([None, 0.05, 1.0]))
def test_op_shape_fuzz_matches_reference(B, layers, H, W, mode, topk):
    g = torch.Generator().manual_seed(B * 1000 + H * 10 + W)
    T = [torch.randn(B, c, h, w, generator=g) for c, h, w in layers]
    S = [t + torch.randn(t.shape, generator=g) for t in T]
    want = ops.anomaly_map(T, S, (H, W), aggregate=mode, topk=topk, backend="reference")
    got = ops.anomaly_map(T, S, (H, W), aggregate=mode, topk=topk, backend=BACKENDS[0])
    scale = max(want[0].abs().max().item(), 1e-30)
    torch.testing.assert_close(got[0], want[0], rtol=1e-5, atol=1e-5 * scale)
    torch.testing.assert_close(got[1], want[1], rtol=1e-5, atol=1e-5 * scale)

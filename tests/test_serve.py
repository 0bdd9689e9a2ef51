"""fastmsfd serve: the API through the ASGI test client, micro-batching, limits, bad input, graceful shutdown."""
from __future__ import annotations

import asyncio
import base64
import io
import os
import signal
import subprocess
import sys
import time

import numpy as np
import pytest
import torch
from PIL import Image

from .serve_fixtures import SIZE, brick_crops, defective_crop, encode, free_port, make_model, png_header_only

pytest.importorskip("fastapi", reason="the serve extra is not installed (pip install fastmsfd[serve])")
from fastapi.testclient import TestClient  # noqa: E402

from fastmsfd import Detector  # noqa: E402
from fastmsfd.serve import ServeConfig, create_app  # noqa: E402
from fastmsfd.serve.batcher import MicroBatcher, Overloaded  # noqa: E402


@pytest.fixture(scope="module")
def model_path(tmp_path_factory):
    path = tmp_path_factory.mktemp("serve") / "model.fastmsfd"
    make_model(path)
    return path


@pytest.fixture(scope="module")
def det(model_path):
    return Detector.load(model_path, runtime="torch")


@pytest.fixture(scope="module")
def client(model_path):
    app = create_app(model_path, ServeConfig(max_batch=4, max_wait_ms=2, max_body_mb=1, max_pixels=2_000_000),
                     runtime="torch")
    with TestClient(app) as c:
        yield c


def _png_post(client, data: bytes, ctype: str = "image/png", **params):
    return client.post("/predict", content=data, headers={"content-type": ctype}, params=params)


def test_health_and_metadata(client, det):
    assert client.get("/health").json()["status"] == "ready"
    meta = client.get("/metadata").json()
    assert meta["backbone"] == "efficientnet_lite0" and meta["input"]["height"] == SIZE
    assert meta["threshold"] == pytest.approx(float(det.threshold))
    assert meta["runtime"] == "torch" and meta["precision"] == "float32"
    assert meta["versions"]["fastmsfd"] and meta["batching"]["max_batch"] == 4
    assert client.get("/openapi.json").json()["paths"]["/predict"]["post"]


def test_predict_raw_bytes_matches_the_detector(client, det):
    img = defective_crop()
    r = _png_post(client, encode(img))
    assert r.status_code == 200, r.text
    (item,) = r.json()["results"]
    pred = det.predict([img])
    expected = float(pred.scores[0])
    assert item["score"] == pytest.approx(expected, rel=1e-5, abs=1e-6)
    # the score's parts, from the same forward: they rebuild the score, and the peak is the detector's
    want = pred.explanation(0)
    parts = item["explanation"]
    assert parts["peak"] == want["peak"] and 0 <= parts["peak"]["x"] < 96 and 0 <= parts["peak"]["y"] < 96
    assert parts["map_z"] == pytest.approx(want["map_z"], rel=1e-5, abs=1e-6)
    w = det.settings.score.global_weight
    assert (1 - w) * parts["map_z"] + w * parts["global_z"] == pytest.approx(item["score"], rel=1e-5, abs=1e-5)
    assert item["label"] == (expected > float(det.threshold)) and item["threshold"] == pytest.approx(
        float(det.threshold))
    assert item["width"] == 96 and item["height"] == 96 and item["inference_ms"] > 0


def test_multipart_several_files_keep_their_order(client, det):
    imgs = brick_crops(3, seed=7)
    files = [("file", (f"part{i}.png", encode(a), "image/png")) for i, a in enumerate(imgs)]
    r = client.post("/predict", files=files)
    assert r.status_code == 200, r.text
    res = r.json()["results"]
    assert [x["name"] for x in res] == ["part0.png", "part1.png", "part2.png"]
    expected = det.predict(imgs).scores
    np.testing.assert_allclose([x["score"] for x in res], expected.numpy(), rtol=1e-5, atol=1e-6)


def test_heatmap_png_and_threshold_override(client):
    data = encode(defective_crop())
    r = _png_post(client, data, heatmap="png", threshold=-1.0)
    item = r.json()["results"][0]
    assert item["label"] is True and item["threshold"] == -1.0
    png = Image.open(io.BytesIO(base64.b64decode(item["heatmap_png"])))
    assert png.size == (SIZE, SIZE) and png.mode == "RGB"
    high = _png_post(client, data, threshold=1e9).json()["results"][0]
    assert high["label"] is False and "heatmap_png" not in high
    assert _png_post(client, data, heatmap="jpeg").status_code == 422


def _bomb_png() -> bytes:
    """2000x2000 black pixels: 4 MP from a few KB, above this server's 2 MP limit."""
    return encode(np.zeros((2000, 2000, 3), np.uint8))


BAD = {
    "undecodable": (b"this is not an image at all", "image/png", 400, "not an image"),
    "zero bytes": (b"", "image/png", 400, "empty"),
    "truncated": (None, "image/png", 400, "truncated or corrupt"),
    "wrong content type": (b"hello", "text/plain", 415, "Content-Type"),
    "no content type": (b"hello", "", 415, "Content-Type"),
    "huge dimensions": (png_header_only(100_000, 100_000), "image/png", 400, "decompression bomb"),
    "decompression bomb": ("bomb", "image/png", 400, "decompression bomb"),
}


@pytest.mark.parametrize("case", list(BAD))
def test_bad_input_is_a_clear_4xx_and_the_server_keeps_serving(client, case):
    data, ctype, status, words = BAD[case]
    if data is None:
        data = encode(defective_crop())[:300]
    elif data == "bomb":
        data = _bomb_png()
        assert len(data) < 100_000
    r = _png_post(client, data, ctype)
    assert r.status_code == status, r.text
    body = r.json()
    assert words in body["error"] and body["status"] == status
    assert _png_post(client, encode(brick_crops(1)[0])).status_code == 200


@pytest.mark.parametrize("mode", ["I;16", "CMYK", "P", "LA"])
def test_unusual_pixel_formats_are_converted_not_refused(client, mode):
    img = brick_crops(1, seed=3)[0]
    if mode == "I;16":
        data = encode((img[..., 0].astype(np.uint16) * 257))
    else:
        data = encode(img, "TIFF" if mode == "CMYK" else "PNG", mode)
    r = _png_post(client, data, "image/tiff" if mode == "CMYK" else "image/png")
    assert r.status_code == 200, r.text
    ref = _png_post(client, encode(img)).json()["results"][0]["score"]
    assert r.json()["results"][0]["score"] == pytest.approx(ref, rel=0.05)  # grey levels round differently


def test_multipart_errors(client):
    r = client.post("/predict", data={"other": "x"}, files=[("other", ("a.png", b"x", "image/png"))])
    assert r.status_code == 400 and "'file'" in r.json()["error"]
    r = client.post("/predict", files=[("file", ("bad.png", b"garbage", "image/png"))])
    assert r.status_code == 400 and "bad.png" in r.json()["error"]


def test_body_limit_by_header_and_by_stream(client):
    big = b"\0" * (1024 * 1024 + 10)  # the client's limit is 1 MB
    r = _png_post(client, big)
    assert r.status_code == 413 and "exceeds the limit" in r.json()["error"]

    def chunks():  # no Content-Length: counted as it arrives
        for _ in range(20):
            yield b"\0" * 100_000
    r = client.post("/predict", content=chunks(), headers={"content-type": "image/png"})
    assert r.status_code == 413 and "exceeds the limit" in r.json()["error"]
    assert _png_post(client, encode(brick_crops(1)[0])).status_code == 200


def _post_concurrently(app, bodies: list[bytes], stagger_s: float = 0.0):
    """POST each body as a PNG, concurrently, through the app (lifespan included); the responses in order."""
    import httpx

    async def run():
        async with app.router.lifespan_context(app):
            transport = httpx.ASGITransport(app=app)
            async with httpx.AsyncClient(transport=transport, base_url="http://test", timeout=60) as c:
                async def one(i, body):
                    await asyncio.sleep(i * stagger_s)
                    return await c.post("/predict", content=body, headers={"content-type": "image/png"})
                return await asyncio.gather(*[one(i, b) for i, b in enumerate(bodies)])
    return asyncio.run(run())


def test_full_queue_is_503_with_retry_after_and_timeout_is_504(model_path):
    imgs = brick_crops(3)
    # a long batching wait holds the first two images pending; the third request finds the queue full
    app = create_app(model_path, ServeConfig(max_batch=8, max_wait_ms=1500, max_queue=2), runtime="torch")
    r = _post_concurrently(app, [encode(a) for a in imgs], stagger_s=0.2)
    assert [x.status_code for x in r] == [200, 200, 503]
    assert r[2].headers["retry-after"] == "1" and "busy" in r[2].json()["error"]
    files = [("file", (f"{i}.png", encode(a), "image/png")) for i, a in enumerate(imgs)]
    with TestClient(app) as c:  # more images in one request than the queue holds: never servable
        r = c.post("/predict", files=files)
        assert r.status_code == 413 and "at most 2" in r.json()["error"]
        assert c.post("/predict", files=files[:2]).status_code == 200
    app = create_app(model_path, ServeConfig(timeout_s=1e-4), runtime="torch")
    with TestClient(app) as c:
        r = c.post("/predict", files=files)
        assert r.status_code == 504 and "no result within" in r.json()["error"]


def test_concurrent_requests_are_micro_batched(model_path, det):
    imgs = brick_crops(6, seed=11)
    app = create_app(model_path, ServeConfig(max_batch=8, max_wait_ms=200), runtime="torch")
    items = [r.json()["results"][0] for r in _post_concurrently(app, [encode(a) for a in imgs])]
    assert max(x["batch"] for x in items) > 1  # gathered, not one call per request
    np.testing.assert_allclose([x["score"] for x in items], det.predict(imgs).scores.numpy(), rtol=1e-4,
                               atol=1e-5)  # batching does not change a result


def test_batcher_batches_bounds_and_drains_on_stop():
    calls = []

    def run_batch(items):
        calls.append(list(items))
        time.sleep(0.05)
        return [x * 2 for x in items]

    async def scenario():
        b = MicroBatcher(run_batch, max_batch=4, max_wait_ms=50, max_queue=6)
        b.start()
        first = asyncio.gather(*[b.submit([i]) for i in range(6)])
        await asyncio.sleep(0)
        with pytest.raises(Overloaded):
            await b.submit([99])  # 6 pending, the limit
        out = await first
        late = asyncio.ensure_future(b.submit([7, 8]))
        await asyncio.sleep(0)
        await b.stop()  # finishes what was queued
        with pytest.raises(Overloaded):
            await b.submit([1])
        return out, await late

    out, late = asyncio.run(scenario())
    assert [o[0] for o in out] == [0, 2, 4, 6, 8, 10] and late == [14, 16]
    assert [len(c) for c in calls] == [4, 2, 2]


def test_sigterm_lets_in_flight_requests_finish(model_path, tmp_path):
    import httpx

    port = free_port()
    env = dict(os.environ, PYTHONUNBUFFERED="1")
    # a long batching wait keeps the request in flight when SIGTERM arrives
    proc = subprocess.Popen([sys.executable, "-m", "fastmsfd", "-q", "serve", str(model_path), "--port", str(port),
                             "--runtime", "torch", "--max-wait-ms", "3000"], env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    try:
        url = f"http://127.0.0.1:{port}"
        deadline = time.time() + 120
        while time.time() < deadline:
            try:
                if httpx.get(url + "/health", timeout=1).status_code == 200:
                    break
            except httpx.TransportError:
                time.sleep(0.2)
        else:
            raise AssertionError("server did not become ready: " + proc.stdout.read1().decode(errors="replace"))
        import concurrent.futures

        with concurrent.futures.ThreadPoolExecutor(1) as pool:
            fut = pool.submit(httpx.post, url + "/predict", content=encode(brick_crops(1)[0]),
                              headers={"content-type": "image/png"}, timeout=60)
            time.sleep(0.8)
            proc.send_signal(signal.SIGTERM)
            r = fut.result()
        assert r.status_code == 200 and r.json()["results"][0]["score"] is not None
        # uvicorn re-raises SIGTERM once it has shut down gracefully, so the exit is by that signal (or 0)
        assert proc.wait(timeout=60) in (0, -signal.SIGTERM)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()


def test_serve_refuses_a_bad_model_file_before_starting(tmp_path):
    from fastmsfd.cli import main

    bad = tmp_path / "broken.fastmsfd"
    bad.write_bytes(b"not a checkpoint")
    assert main(["serve", str(bad), "--port", str(free_port())]) == 2


def test_page_assets_ship_in_the_package(client):
    page = client.get("/")
    assert page.status_code == 200 and "/static/app.js" in page.text
    assert "http" not in page.text.replace("http-equiv", "")  # no CDN: everything is served from here
    js = client.get("/static/app.js")
    assert js.status_code == 200 and "/predict?heatmap=png" in js.text and "https://" not in js.text
    assert client.get("/static/app.css").status_code == 200
    assert client.get("/static/secret.py").status_code == 404
    _ = torch  # the detector fixture's tensors are torch's

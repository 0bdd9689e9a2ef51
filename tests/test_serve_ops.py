"""fastmsfd serve run unattended: Prometheus metrics, the drift alarm, access tokens, model reload, offline docs."""
from __future__ import annotations

import logging
import shutil
import signal
import subprocess
import sys
import threading
import time

import numpy as np
import pytest

from .serve_fixtures import brick_crops, encode, free_port, make_model

pytest.importorskip("fastapi", reason="the serve extra is not installed (pip install fastmsfd[serve])")
pytest.importorskip("prometheus_client", reason="the serve extra is not installed (pip install fastmsfd[serve])")
from fastapi.testclient import TestClient  # noqa: E402
from prometheus_client.parser import text_string_to_metric_families  # noqa: E402

from fastmsfd import Detector  # noqa: E402
from fastmsfd.monitor import DriftSettings  # noqa: E402
from fastmsfd.serve import ServeConfig, create_app  # noqa: E402
from fastmsfd.serve.auth import check_bind  # noqa: E402
from fastmsfd.serve.models import file_sha256  # noqa: E402

TOKEN = "line-7-token"
AUTH = {"authorization": f"Bearer {TOKEN}"}


@pytest.fixture(scope="module")
def model_path(tmp_path_factory):
    path = tmp_path_factory.mktemp("serve_ops") / "model.fastmsfd"
    make_model(path)
    return path


@pytest.fixture(scope="module")
def other_model_path(tmp_path_factory):
    """A second model: the same networks, another threshold (so a swap is visible in /metadata)."""
    path = tmp_path_factory.mktemp("serve_ops_other") / "other.fastmsfd"
    det = Detector(image_size=64, runtime="torch")
    det.calibrate(brick_crops(8, seed=3), quantile=0.5)
    det.save(path)
    return path


def _post(client, arr, headers=None):
    return client.post("/predict", content=encode(arr), headers={"content-type": "image/png", **(headers or {})})


def _samples(client, headers=None) -> dict:
    text = client.get("/metrics", headers=headers or {}).text
    return {(s.name, tuple(sorted(s.labels.items()))): s.value
            for family in text_string_to_metric_families(text) for s in family.samples}


def _value(samples, name, **labels):
    return samples.get((name, tuple(sorted(labels.items()))), 0.0)


def test_metrics_move_with_requests(model_path):
    with TestClient(create_app(model_path, ServeConfig(max_batch=4), runtime="torch")) as client:
        before = _samples(client)
        images = brick_crops(3, seed=9)
        r = client.post("/predict", files=[("file", (f"{i}.png", encode(a), "image/png"))
                                           for i, a in enumerate(images)])
        assert r.status_code == 200
        labels = [item["label"] for item in r.json()["results"]]
        bad = client.post("/predict", content=b"not an image", headers={"content-type": "image/png"})
        assert bad.status_code == 400  # rejected
        after = _samples(client)
    d = {k: after.get(k, 0.0) - before.get(k, 0.0) for k in after}
    assert _value(d, "fastmsfd_requests_total", endpoint="/predict", code="200") == 1
    assert _value(d, "fastmsfd_requests_total", endpoint="/predict", code="400") == 1
    assert _value(d, "fastmsfd_images_total", outcome="anomalous") == sum(labels)
    assert _value(d, "fastmsfd_images_total", outcome="normal") == len(labels) - sum(labels)
    assert _value(d, "fastmsfd_images_total", outcome="rejected") == 1
    assert _value(d, "fastmsfd_score_minus_threshold_count") == 3
    assert _value(d, "fastmsfd_batch_size_sum") == 3 and _value(d, "fastmsfd_queue_wait_seconds_count") == 3
    assert _value(d, "fastmsfd_inference_seconds_count") >= 1 and _value(d, "fastmsfd_request_seconds_count") == 1
    assert _value(after, "fastmsfd_anomaly_rate") == pytest.approx(sum(labels) / 3)
    info = [k for k in after if k[0] == "fastmsfd_model_info"]
    assert info and dict(info[0][1])["runtime"] == "torch" and dict(info[0][1])["sha256"] == file_sha256(model_path)
    assert _value(after, "fastmsfd_model_load_seconds") > 0 and _value(after, "fastmsfd_queue_depth") == 0


def _fenced(tmp_path, n=40):
    """An unfitted detector calibrated on brick crops: brick scores as normal, a flat grey field far from them."""
    det = Detector(image_size=64, runtime="torch")
    det.calibrate(brick_crops(n, seed=1), quantile=0.99)
    path = tmp_path / "ref.fastmsfd"
    det.save(path)
    return path


def test_drift_alarm_rises_on_changed_images_and_clears(tmp_path, caplog):
    """Normal parts, then a scene that changed (a flat grey field), then normal parts again: /health, /metrics
    and the log say so, within one window each way."""
    path = _fenced(tmp_path)
    cfg = ServeConfig(max_batch=4, drift=DriftSettings(window=24, min_images=12, alpha=1e-3))
    normal = [encode(a) for a in brick_crops(48, seed=5)]
    grey = encode(np.full((96, 96, 3), 128, np.uint8))
    caplog.set_level(logging.WARNING, logger="fastmsfd.serve")
    with TestClient(create_app(path, cfg, runtime="torch")) as client:
        def send(body):
            assert client.post("/predict", content=body, headers={"content-type": "image/png"}).status_code == 200
            return client.get("/health").json()["drift"]

        states = [send(b) for b in normal[:24]]
        assert states[-1]["available"] and states[-1]["images"] == 24 and not any(s["drift"] for s in states)
        states = [send(grey) for _ in range(24)]
        assert any(s["drift"] for s in states) and states[-1]["drift"]
        assert _value(_samples(client), "fastmsfd_drift") == 1
        assert any("drift alarm raised" in r.getMessage() for r in caplog.records)
        states = [send(b) for b in normal[24:]]
        assert not states[-1]["drift"]
        assert _value(_samples(client), "fastmsfd_drift") == 0
        assert any("drift alarm cleared" in r.getMessage() for r in caplog.records)


def test_a_checkpoint_without_reference_serves_with_the_alarm_off(tmp_path):
    from fastmsfd.checkpoint import load_checkpoint, save_detector

    det = Detector.load(_fenced(tmp_path), runtime="torch")
    del det.info["calibration"]["reference"]  # as files written before the drift alarm
    save_detector(det, tmp_path / "old.fastmsfd")
    assert load_checkpoint(tmp_path / "old.fastmsfd")
    with pytest.raises(ValueError, match="no drift reference"):
        Detector.load(tmp_path / "old.fastmsfd").monitor()
    with TestClient(create_app(tmp_path / "old.fastmsfd", ServeConfig(max_batch=2), runtime="torch")) as client:
        drift = client.get("/health").json()["drift"]
        assert drift["available"] is False and "calibrate" in drift["reason"]
        assert _post(client, brick_crops(1)[0]).status_code == 200


@pytest.fixture(scope="module")
def secured(model_path):
    with TestClient(create_app(model_path, ServeConfig(max_batch=2, token=TOKEN), runtime="torch")) as client:
        yield client


@pytest.mark.parametrize("path", ["/metadata", "/metrics", "/openapi.json", "/docs", "/", "/static/app.js"])
def test_token_guards_every_endpoint_but_health(secured, path):
    assert secured.get("/health").status_code == 200
    missing = secured.get(path)
    assert missing.status_code == 401 and missing.headers.get("www-authenticate", "").startswith("Bearer")
    assert "Bearer" in missing.json()["error"]
    assert secured.get(path, headers={"authorization": "Bearer wrong-token!"}).status_code == 401
    assert secured.get(path, headers={"authorization": TOKEN}).status_code == 401  # not a Bearer header
    assert secured.get(path, headers=AUTH).status_code == 200


def test_token_guards_predict_and_reload(secured, model_path):
    img = brick_crops(1)[0]
    assert secured.post("/predict", content=encode(img), headers={"content-type": "image/png"}).status_code == 401
    assert secured.post("/admin/reload").status_code == 401
    r = secured.post("/predict", content=encode(img), headers={"content-type": "image/png", **AUTH})
    assert r.status_code == 200
    expected = float(Detector.load(model_path, runtime="torch").predict([img]).scores[0])
    assert r.json()["results"][0]["score"] == pytest.approx(expected, rel=1e-5, abs=1e-6)


def test_browser_signs_in_with_a_cookie(secured):
    page = secured.get("/", headers={"accept": "text/html"})
    assert page.status_code == 401 and 'action="/login"' in page.text
    assert secured.post("/login", data={"token": "nope-nope"}).status_code == 401
    r = secured.post("/login", data={"token": TOKEN}, follow_redirects=False)
    assert r.status_code == 303 and r.headers["location"] == "/"
    cookie = r.headers["set-cookie"]
    assert "HttpOnly" in cookie and "SameSite=Strict" in cookie
    value = cookie.split(";")[0].split("=", 1)[1]
    secured.cookies.clear()  # the client kept it: send each cookie on its own
    assert secured.get("/metadata", cookies={"fastmsfd_token": value}).status_code == 200
    secured.cookies.clear()
    assert secured.get("/metadata", cookies={"fastmsfd_token": "forged-cookie"}).status_code == 401
    secured.cookies.clear()


@pytest.mark.parametrize("host, token, insecure, ok", [
    ("127.0.0.1", None, False, True), ("localhost", None, False, True), ("::1", None, False, True),
    ("0.0.0.0", None, False, False), ("192.168.1.20", None, False, False), ("line-pc.local", None, False, False),
    ("0.0.0.0", TOKEN, False, True), ("0.0.0.0", None, True, True), ("0.0.0.0", "short", False, False),
    ("0.0.0.0", "has space x", False, False)])
def test_non_loopback_needs_a_token(host, token, insecure, ok):
    if ok:
        check_bind(host, token, insecure)
    else:
        with pytest.raises(ValueError, match="token"):
            check_bind(host, token, insecure)


def test_cli_refuses_an_open_public_bind_before_loading(tmp_path, capsys, monkeypatch):
    from fastmsfd.cli import main

    monkeypatch.delenv("FASTMSFD_TOKEN", raising=False)
    assert main(["serve", str(tmp_path / "absent.fastmsfd"), "--host", "0.0.0.0"]) == 2
    assert "without an access token" in capsys.readouterr().err


def test_serve_passes_tls_and_token_to_uvicorn(model_path, monkeypatch, tmp_path):
    import uvicorn

    from fastmsfd.serve import serve

    seen = {}
    monkeypatch.setattr(uvicorn, "run", lambda app, **kw: seen.update(kw, app=app))
    monkeypatch.setenv("FASTMSFD_TOKEN", TOKEN)
    cert, key = tmp_path / "cert.pem", tmp_path / "key.pem"
    with pytest.raises(FileNotFoundError, match="cert.pem"):
        serve(str(model_path), "0.0.0.0", 8443, ssl_certfile=str(cert), ssl_keyfile=str(key))
    with pytest.raises(ValueError, match="both"):
        serve(str(model_path), "0.0.0.0", 8443, ssl_certfile=str(cert))
    cert.write_text("x")
    key.write_text("x")
    serve(str(model_path), "0.0.0.0", 8443, ssl_certfile=str(cert), ssl_keyfile=str(key))
    assert seen["ssl_certfile"] == str(cert) and seen["ssl_keyfile"] == str(key) and seen["host"] == "0.0.0.0"
    with TestClient(seen["app"]) as client:  # the token came from the environment
        assert client.get("/metadata").status_code == 401
        assert client.get("/metadata", headers=AUTH).status_code == 200


def test_reload_swaps_the_model_and_a_broken_file_keeps_the_old_one(model_path, other_model_path, tmp_path):
    live = tmp_path / "live.fastmsfd"
    shutil.copy(model_path, live)
    with TestClient(create_app(live, ServeConfig(max_batch=2, token=TOKEN), runtime="torch")) as client:
        first = client.get("/metadata", headers=AUTH).json()
        assert first["model"]["sha256"] == file_sha256(live) and first["model"]["path"] == str(live)
        assert first["model"]["load_seconds"] > 0 and first["model"]["loaded_at"].endswith("Z")

        broken = tmp_path / "broken.fastmsfd"
        broken.write_bytes(b"not a checkpoint")
        r = client.post("/admin/reload", json={"path": str(broken)}, headers=AUTH)
        assert r.status_code == 400 and "still serving" in r.json()["error"] and str(broken) in r.json()["error"]
        assert client.get("/metadata", headers=AUTH).json()["model"] == first["model"]
        assert _post(client, brick_crops(1)[0], AUTH).status_code == 200

        shutil.copy(other_model_path, live)  # the usual deployment: replace the file, reload the same path
        r = client.post("/admin/reload", headers=AUTH)
        assert r.status_code == 200 and r.json()["model"]["path"] == str(live)
        assert r.json()["model"]["sha256"] == file_sha256(other_model_path) != first["model"]["sha256"]
        meta = client.get("/metadata", headers=AUTH).json()
        assert meta["threshold"] == pytest.approx(float(Detector.load(other_model_path).threshold))

        r = client.post("/admin/reload", json={"path": str(model_path)}, headers=AUTH)  # another file
        assert r.status_code == 200 and r.json()["model"] == client.get("/metadata", headers=AUTH).json()["model"]
        assert r.json()["model"]["path"] == str(model_path)
        samples = _samples(client, AUTH)
        assert _value(samples, "fastmsfd_reloads_total", outcome="ok") == 2
        assert _value(samples, "fastmsfd_reloads_total", outcome="failed") == 1
        assert client.post("/admin/reload", content=b"[1, 2", headers=AUTH).status_code == 400


def test_reload_without_a_token_is_for_loopback_only(model_path):
    with TestClient(create_app(model_path, ServeConfig(max_batch=2), runtime="torch")) as client:
        r = client.post("/admin/reload")  # the test client is not a loopback address
        assert r.status_code == 403 and "loopback" in r.json()["error"]


def test_docs_page_is_served_without_internet(model_path):
    with TestClient(create_app(model_path, ServeConfig(max_batch=1), runtime="torch")) as client:
        page = client.get("/docs")
        assert page.status_code == 200 and "cdn" not in page.text.lower()
        assets = [a for a in ("/docs-assets/swagger-ui-bundle.js", "/docs-assets/swagger-ui.css") if a in page.text]
        assert len(assets) == 2
        for asset in assets:
            r = client.get(asset)
            assert r.status_code == 200 and len(r.content) > 10_000
        assert client.get("/docs-assets/../../etc/passwd").status_code == 404
        redoc = client.get("/redoc")
        assert redoc.status_code == 200 and "/docs-assets/redoc.standalone.js" in redoc.text
        assert "http" not in redoc.text.replace("http-equiv", "")  # no CDN, no Google fonts


def _self_signed(tmp_path):
    if not shutil.which("openssl"):
        pytest.skip("openssl is not installed: cannot make a test certificate")
    cert, key = tmp_path / "cert.pem", tmp_path / "key.pem"
    subprocess.run(["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-keyout", str(key), "-out",
                    str(cert), "-days", "1", "-subj", "/CN=127.0.0.1"], check=True, capture_output=True)
    return cert, key


def test_cli_serves_https_with_a_token_and_swaps_models_under_load(model_path, other_model_path, tmp_path):
    """The real command: HTTPS, a token, 8 clients posting while SIGHUP reloads the replaced file and
    /admin/reload loads another: every request is answered, by the old model or the new one."""
    import httpx

    cert, key = _self_signed(tmp_path)
    live = tmp_path / "live.fastmsfd"
    shutil.copy(model_path, live)
    port = free_port()
    proc = subprocess.Popen([sys.executable, "-m", "fastmsfd", "-q", "serve", str(live), "--port", str(port),
                             "--runtime", "torch", "--max-batch", "4", "--token", TOKEN, "--ssl-certfile", str(cert),
                             "--ssl-keyfile", str(key)], stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    url = f"https://127.0.0.1:{port}"
    body = encode(brick_crops(1, seed=4)[0])
    answers, failures, stop = [], [], threading.Event()

    def client():
        with httpx.Client(verify=False, headers=AUTH, timeout=60) as c:
            while not stop.is_set():
                try:
                    r = c.post(url + "/predict", content=body, headers={"content-type": "image/png"})
                    (answers if r.status_code == 200 else failures).append(
                        r.json()["results"][0]["threshold"] if r.status_code == 200 else r.text)
                except httpx.HTTPError as exc:
                    failures.append(repr(exc))

    def sha(c):
        return c.get(url + "/metadata").json()["model"]["sha256"]

    try:
        with httpx.Client(verify=False, headers=AUTH, timeout=10) as c:
            deadline = time.time() + 120
            while time.time() < deadline:
                try:
                    if httpx.get(url + "/health", verify=False, timeout=1).status_code == 200:
                        break
                except httpx.TransportError:
                    time.sleep(0.2)
            else:
                raise AssertionError("server did not become ready: " + proc.stdout.read1().decode(errors="replace"))
            assert httpx.get(url + "/metadata", verify=False).status_code == 401
            threads = [threading.Thread(target=client) for _ in range(8)]
            for t in threads:
                t.start()
            time.sleep(1.0)
            shutil.copy(other_model_path, live)
            proc.send_signal(signal.SIGHUP)
            deadline = time.time() + 60
            while sha(c) != file_sha256(other_model_path) and time.time() < deadline:
                time.sleep(0.1)
            assert sha(c) == file_sha256(other_model_path), "SIGHUP did not reload the file"
            time.sleep(0.5)
            r = c.post(url + "/admin/reload", json={"path": str(model_path)})
            assert r.status_code == 200, r.text
            time.sleep(0.5)
            stop.set()
            for t in threads:
                t.join(timeout=60)
    finally:
        stop.set()
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout=60)
        except subprocess.TimeoutExpired:
            proc.kill()
    assert not failures, failures[:3]
    thresholds = {round(t, 4) for t in answers}
    old, new = (round(float(Detector.load(p).threshold), 4) for p in (model_path, other_model_path))
    assert len(answers) > 16 and {old, new} <= thresholds, (len(answers), thresholds)

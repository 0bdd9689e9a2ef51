"""The page at / in a real headless browser (Debian's chromium + chromium-driver, driven by Selenium): upload a
defective image, see its verdict and heatmap, move the threshold slider. Skipped without the browser, except in
CI, where scripts/test.sh installs it and a skip would hide a broken page."""
from __future__ import annotations

import os
import re
import shutil
import threading
import time

import pytest

from .serve_fixtures import defective_crop, encode, free_port, make_model

pytest.importorskip("fastapi", reason="the serve extra is not installed (pip install fastmsfd[serve])")
webdriver = pytest.importorskip("selenium.webdriver", reason="selenium is not installed")

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
DRIVER = shutil.which("chromedriver")


def _browser_or_skip():
    if CHROMIUM and DRIVER:
        return
    why = "headless browser missing: apt-get install chromium chromium-driver (scripts/install_browser.sh)"
    if os.environ.get("CI"):
        pytest.fail(why)
    pytest.skip(why)


def _run_server(model, cfg):
    import uvicorn

    from fastmsfd.serve import create_app

    port = free_port()
    srv = uvicorn.Server(uvicorn.Config(create_app(model, cfg, runtime="torch"), host="127.0.0.1",
                                       port=port, log_level="warning"))
    thread = threading.Thread(target=srv.run, daemon=True)
    thread.start()
    deadline = time.time() + 60
    while not srv.started and time.time() < deadline:
        time.sleep(0.05)
    assert srv.started, "the server did not start"
    return srv, thread, f"http://127.0.0.1:{port}"


@pytest.fixture
def server(tmp_path):
    from fastmsfd.serve import ServeConfig

    model = tmp_path / "model.fastmsfd"
    make_model(model)
    srv, thread, url = _run_server(model, ServeConfig())
    yield url
    srv.should_exit = True
    thread.join(timeout=30)


def _chrome():
    from selenium.webdriver.chrome.options import Options
    from selenium.webdriver.chrome.service import Service

    opts = Options()
    opts.binary_location = CHROMIUM
    for arg in ("--headless=new", "--no-sandbox", "--disable-dev-shm-usage", "--disable-gpu",
                "--window-size=1200,900"):
        opts.add_argument(arg)
    os.environ.setdefault("SE_OFFLINE", "true")  # Selenium Manager must never try to download a driver
    driver = webdriver.Chrome(service=Service(DRIVER), options=opts)
    driver.set_page_load_timeout(60)
    return driver


def test_page_uploads_an_image_and_shows_verdict_and_heatmap(server, tmp_path):
    _browser_or_skip()
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import WebDriverWait

    image = tmp_path / "defective.png"
    image.write_bytes(encode(defective_crop()))
    driver = _chrome()
    try:
        driver.get(server + "/")
        wait = WebDriverWait(driver, 60)
        wait.until(lambda d: "threshold" in d.find_element(By.ID, "model").text)
        driver.find_element(By.ID, "files").send_keys(str(image))
        verdict = wait.until(lambda d: d.find_elements(By.ID, "verdict-0"))[0]
        assert verdict.text in ("ANOMALOUS", "normal"), verdict.text
        img = driver.find_element(By.CSS_SELECTOR, "#result-0 img.heatmap")
        wait.until(lambda d: d.execute_script("return arguments[0].complete && arguments[0].naturalWidth", img))
        assert driver.execute_script("return arguments[0].naturalWidth", img) == 64
        assert "defective.png" in driver.find_element(By.ID, "result-0").text
        assert re.fullmatch(r"map z \S+, global z \S+, peak at \(\d+, \d+\)",
                            driver.find_element(By.ID, "explanation-0").text)
        # the slider re-labels without another request: at its minimum every image is anomalous
        slider = driver.find_element(By.ID, "threshold")
        driver.execute_script("arguments[0].value = arguments[0].min;"
                              "arguments[0].dispatchEvent(new Event('input'));", slider)
        assert driver.find_element(By.ID, "verdict-0").text == "ANOMALOUS"
        driver.execute_script("arguments[0].value = arguments[0].max;"
                              "arguments[0].dispatchEvent(new Event('input'));", slider)
        assert driver.find_element(By.ID, "verdict-0").text == "normal"
        shot = tmp_path / "page.png"
        driver.save_screenshot(str(shot))
        assert shot.stat().st_size > 1000
    finally:
        driver.quit()


def test_sign_in_drift_banner_and_offline_api_docs(tmp_path):
    """With a token: the page asks for it, then works on the cookie it sets. A changed scene raises the drift
    banner. /docs renders Swagger UI from the package's own files (this browser has no internet)."""
    _browser_or_skip()
    import httpx
    import numpy as np
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import WebDriverWait

    from fastmsfd import Detector
    from fastmsfd.monitor import DriftSettings
    from fastmsfd.serve import ServeConfig

    from .serve_fixtures import brick_crops

    model = tmp_path / "model.fastmsfd"
    det = Detector(image_size=64, runtime="torch")
    det.calibrate(brick_crops(40, seed=1), quantile=0.99)
    det.save(model)
    token = "page-test-token"
    srv, thread, url = _run_server(model, ServeConfig(token=token, drift=DriftSettings(window=20, min_images=10)))
    driver = _chrome()
    try:
        wait = WebDriverWait(driver, 60)
        driver.get(url + "/")
        driver.find_element(By.ID, "token").send_keys(token)
        driver.find_element(By.CSS_SELECTOR, "form button").click()
        wait.until(lambda d: "threshold" in d.find_element(By.ID, "model").text)
        assert not driver.find_element(By.ID, "drift").is_displayed()
        grey = encode(np.full((96, 96, 3), 128, np.uint8))
        with httpx.Client(headers={"authorization": f"Bearer {token}"}) as client:
            for _ in range(20):
                assert client.post(url + "/predict", content=grey, headers={"content-type": "image/png"}).is_success
        banner = wait.until(lambda d: d.find_element(By.ID, "drift") if d.find_element(By.ID, "drift")
                            .is_displayed() else None)
        assert banner.text.startswith("drift alarm:")
        driver.get(url + "/docs")
        wait.until(lambda d: d.find_elements(By.CSS_SELECTOR, ".swagger-ui .opblock"))
        assert "/predict" in driver.find_element(By.CSS_SELECTOR, ".swagger-ui").text
    finally:
        driver.quit()
        srv.should_exit = True
        thread.join(timeout=30)

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


@pytest.fixture
def server(tmp_path):
    import uvicorn

    from fastmsfd.serve import ServeConfig, create_app

    model = tmp_path / "model.fastmsfd"
    make_model(model)
    port = free_port()
    srv = uvicorn.Server(uvicorn.Config(create_app(model, ServeConfig(), runtime="torch"), host="127.0.0.1",
                                       port=port, log_level="warning"))
    thread = threading.Thread(target=srv.run, daemon=True)
    thread.start()
    deadline = time.time() + 60
    while not srv.started and time.time() < deadline:
        time.sleep(0.05)
    assert srv.started, "the server did not start"
    yield f"http://127.0.0.1:{port}"
    srv.should_exit = True
    thread.join(timeout=30)


def test_page_uploads_an_image_and_shows_verdict_and_heatmap(server, tmp_path):
    _browser_or_skip()
    from selenium.webdriver.chrome.options import Options
    from selenium.webdriver.chrome.service import Service
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import WebDriverWait

    image = tmp_path / "defective.png"
    image.write_bytes(encode(defective_crop()))
    opts = Options()
    opts.binary_location = CHROMIUM
    for arg in ("--headless=new", "--no-sandbox", "--disable-dev-shm-usage", "--disable-gpu",
                "--window-size=1200,900"):
        opts.add_argument(arg)
    os.environ.setdefault("SE_OFFLINE", "true")  # Selenium Manager must never try to download a driver
    driver = webdriver.Chrome(service=Service(DRIVER), options=opts)
    try:
        driver.set_page_load_timeout(60)
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

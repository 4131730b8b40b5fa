"""The /demo page in a real headless Chromium whose fake camera shows the
astronaut photo: frames go over the WebSocket, boxes come back and are drawn."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from selenium.webdriver.common.by import By
from selenium.webdriver.support.ui import WebDriverWait
from skimage import data as skdata

from tests.e2e.browser import chromium, requested_urls
from tests.e2e.server import GunicornServer

pytestmark = [pytest.mark.e2e, pytest.mark.browser]

KEY = "demo-page-key"
# Where the faces model finds the face in the 640x480 astronaut (see test_stream.py),
# with room for the label drawn above the box.
FACE_AREA = (190, 0, 380, 200)


def write_y4m(path: Path, rgb: np.ndarray, frames: int = 30, fps: int = 15) -> None:
    """A still video in YUV4MPEG2 (4:2:0, full-range BT.601), Chromium's fake-camera format."""
    height, width = rgb.shape[:2]
    r, g, b = (rgb[..., i].astype(np.float32) for i in range(3))
    y = 0.299 * r + 0.587 * g + 0.114 * b
    u = -0.168736 * r - 0.331264 * g + 0.5 * b + 128
    v = 0.5 * r - 0.418688 * g - 0.081312 * b + 128

    def half(plane: np.ndarray) -> np.ndarray:
        return plane.reshape(height // 2, 2, width // 2, 2).mean(axis=(1, 3))

    planes = b"".join(np.clip(p, 0, 255).round().astype(np.uint8).tobytes() for p in (y, half(u), half(v)))
    with open(path, "wb") as out:
        out.write(f"YUV4MPEG2 W{width} H{height} F{fps}:1 Ip A1:1 C420jpeg\n".encode())
        for _ in range(frames):
            out.write(b"FRAME\n" + planes)


@pytest.fixture(scope="module")
def server(model_repo, tmp_path_factory):
    tmp = tmp_path_factory.mktemp("gunicorn-demo")
    env = {
        "SERVE_MODEL_REPOSITORY": str(model_repo),
        "SERVE_MODELS": "faces,sentiment",
        "WORKERS": "1",
        "SERVE_API_KEYS": KEY,
    }
    with GunicornServer(tmp, env=env) as server:
        yield server


@pytest.fixture(scope="module")
def browser(tmp_path_factory):
    video = tmp_path_factory.mktemp("camera") / "astronaut.y4m"
    write_y4m(video, np.asarray(Image.fromarray(skdata.astronaut()).resize((640, 480))))
    flags = (
        "--use-fake-ui-for-media-stream",
        "--use-fake-device-for-media-stream",
        f"--use-file-for-fake-video-capture={video}",
    )
    with chromium(*flags) as chrome:
        yield chrome


GREEN_PIXELS = """
const canvas = document.getElementById('overlay');
const {data, width, height} = canvas.getContext('2d').getImageData(0, 0, canvas.width, canvas.height);
let count = 0, x1 = width, y1 = height, x2 = -1, y2 = -1;
for (let i = 0; i < data.length; i += 4) {
  if (data[i + 3] > 200 && data[i + 1] > 180 && data[i] < 120) {
    const x = (i / 4) % width, y = Math.floor(i / 4 / width);
    count++; x1 = Math.min(x1, x); y1 = Math.min(y1, y); x2 = Math.max(x2, x); y2 = Math.max(y2, y);
  }
}
return {count, box: [x1, y1, x2, y2], size: [width, height]};
"""


def test_demo_streams_the_fake_camera_and_draws_the_face(server, browser):
    browser.get(server.url + "/demo")
    browser.find_element(By.ID, "key").send_keys(KEY)
    browser.find_element(By.ID, "start").click()
    wait = WebDriverWait(browser, 90)
    wait.until(lambda b: b.execute_script("return window.demoStats.answers") >= 3)

    stats = browser.execute_script("return window.demoStats")
    assert stats["sent"] >= stats["answers"] >= 3 and stats["failed"] == 0
    assert stats["boxesDrawn"] >= 3 and stats["lastLatencyMs"] > 0
    assert "face" in browser.find_element(By.ID, "objects").text
    wait.until(lambda b: int(b.find_element(By.ID, "processed").text) >= 3)
    assert float(browser.find_element(By.ID, "processed-fps").text) > 0

    # The box and its label are on the overlay, around the astronaut's face.
    drawn = browser.execute_script(GREEN_PIXELS)
    assert drawn["size"] == [640, 480] and drawn["count"] > 200, drawn
    x1, y1, x2, y2 = drawn["box"]
    left, top, right, bottom = FACE_AREA
    assert left <= x1 < x2 <= right and top <= y1 < y2 <= bottom, drawn

    browser.find_element(By.ID, "stop").click()
    assert browser.find_element(By.ID, "status").text == "Stopped."
    assert browser.execute_script(GREEN_PIXELS)["count"] == 0

    # Everything the page loaded came from our server.
    urls = [u for u in requested_urls(browser) if u.startswith("http")]
    assert urls and all(u.startswith(server.url) for u in urls), urls
    severe = [e for e in browser.get_log("browser") if e["level"] == "SEVERE"]
    assert not severe, severe


def test_demo_says_when_the_key_is_refused(server, browser):
    browser.get(server.url + "/demo")
    browser.find_element(By.ID, "key").send_keys("not-the-key")
    browser.find_element(By.ID, "start").click()
    WebDriverWait(browser, 30).until(lambda b: "refused the API key" in b.find_element(By.ID, "status").text)
    assert browser.find_element(By.ID, "start").is_enabled()

"""The web page at `/` in a real headless Chromium (selenium): the API key field, an image, an
edit of an uploaded image and a video generated on tiny models (native FLUX.2 and Wan2.1) and
shown at their size, the live progress bar and cancel of both kinds, the recent results and the
LoRA adapters; and the routes the page adds for images (their live progress by X-Progress-Id,
the list of stored ones)."""

from __future__ import annotations

import re
import shutil
import threading
import time

import pytest
import requests
from PIL import Image

from tests.server.conftest import API_KEY, start_server, write_tiny_lora

webdriver = pytest.importorskip("selenium.webdriver", reason="selenium is not installed (pip install -e .[test])")
from selenium.common.exceptions import TimeoutException  # noqa: E402
from selenium.webdriver.common.by import By  # noqa: E402
from selenium.webdriver.support.ui import WebDriverWait  # noqa: E402

pytestmark = pytest.mark.slow

CHROMIUM = next(filter(None, map(shutil.which, ("chromium", "chromium-browser", "google-chrome"))), None)
CHROMEDRIVER = shutil.which("chromedriver")
SLOW_STEPS = 400  # a generation that is surely still running when the test looks at it
AUTH = {"Authorization": f"Bearer {API_KEY}"}


@pytest.fixture(scope="module")
def browser():
    if CHROMIUM is None or CHROMEDRIVER is None:
        pytest.skip("no Chromium and chromedriver installed (Debian: apt-get install chromium chromium-driver)")
    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    for flag in ("--headless=new", "--no-sandbox", "--disable-dev-shm-usage", "--disable-gpu",
                 "--window-size=1100,800"):
        options.add_argument(flag)
    driver = webdriver.Chrome(options=options, service=webdriver.ChromeService(CHROMEDRIVER))
    yield driver
    driver.quit()


@pytest.fixture(scope="module")
def image_server(tiny_model, tmp_path_factory):
    """Tiny FLUX.2 on the native pipeline (text to image, edits of reference images, runtime
    LoRA), behind an API key."""
    root = tmp_path_factory.mktemp("web-image")
    (root / "loras").mkdir()
    server = start_server(tiny_model("flux.2"), root / "out", "--api-key", API_KEY, "--num-inference-steps", 2,
                          "--width", 32, "--height", 32, "--lora-dirs", root / "loras")
    server.loras = root / "loras"
    server.model = tiny_model("flux.2")
    yield server
    server.stop()


@pytest.fixture(scope="module")
def video_server(tiny_model, tmp_path_factory):
    """Tiny Wan2.1 T2V on the native pipeline, no API key."""
    server = start_server(tiny_model("wan2.1-t2v"), tmp_path_factory.mktemp("web-video") / "out",
                          "--num-inference-steps", 2, "--width", 32, "--height", 32, "--num-frames", 5)
    yield server
    server.stop()


def until(browser, condition, timeout=60):
    try:
        return WebDriverWait(browser, timeout, poll_frequency=0.05).until(lambda b: condition())
    except TimeoutException:
        raise AssertionError(f"not within {timeout} s; the page says {status(browser)!r}") from None


def open_page(browser, server, key: str | None = None):
    browser.get(server.url + "/")
    browser.execute_script("sessionStorage.clear()")
    browser.refresh()
    until(browser, lambda: browser.find_element(By.TAG_NAME, "body").get_attribute("data-ready"))
    if key is not None:
        field = browser.find_element(By.ID, "api-key")
        field.send_keys(key)
        browser.find_element(By.ID, "prompt").click()  # leaving the field sends its change event
        until(browser, lambda: status(browser) == "ready")


def status(browser) -> str:
    return browser.find_element(By.ID, "status").text


def fill(browser, **values):
    for name, value in values.items():
        field = browser.find_element(By.ID, name)
        field.clear()
        field.send_keys(str(value))


def progress(browser) -> float:
    return float(browser.find_element(By.ID, "progress").get_attribute("value"))


def result(browser, tag: str):
    """The shown result element once its media has loaded."""
    ready = {"img": "arguments[0].complete && arguments[0].naturalWidth > 0",
             "video": "arguments[0].readyState >= 2"}[tag]

    def loaded():
        found = browser.find_elements(By.CSS_SELECTOR, f"#result {tag}")
        return found[0] if found and browser.execute_script(f"return {ready}", found[0]) else None

    return until(browser, loaded)


def test_page_asks_for_the_key_then_shows_an_image_of_the_requested_size(browser, image_server):
    open_page(browser, image_server)
    assert browser.find_element(By.ID, "api-key").is_displayed()
    assert status(browser) == "this server needs its API key"
    assert browser.find_element(By.ID, "kind").text == "image"
    assert not browser.find_element(By.ID, "num-frames").is_displayed()  # frames are for video models
    assert browser.find_element(By.ID, "image").is_displayed()  # FLUX.2 takes reference images
    open_page(browser, image_server, key=API_KEY)
    fill(browser, prompt="a red fox", width=64, height=48, steps=2, seed=7)
    browser.find_element(By.ID, "generate").click()
    image = result(browser, "img")
    assert browser.execute_script("return [arguments[0].naturalWidth, arguments[0].naturalHeight]", image) == [64, 48]
    assert status(browser).startswith("done in") and progress(browser) == 100
    link = browser.find_element(By.ID, "download")
    assert link.get_attribute("href").startswith("blob:") and link.get_attribute("download").endswith(".png")
    until(browser, lambda: browser.find_elements(By.CSS_SELECTOR, "#recent img"))  # this server's stored images


def test_page_edits_an_uploaded_image_on_a_model_that_takes_one(browser, image_server, tmp_path):
    picture = tmp_path / "input.png"
    Image.new("RGB", (80, 64), (200, 40, 10)).save(picture)
    open_page(browser, image_server, key=API_KEY)
    browser.find_element(By.ID, "image").send_keys(str(picture))
    fill(browser, prompt="make it blue", width=64, height=48, steps=2)
    browser.find_element(By.ID, "generate").click()
    image = result(browser, "img")
    assert browser.execute_script("return [arguments[0].naturalWidth, arguments[0].naturalHeight]", image) == [64, 48]
    assert '"POST /v1/images/edits HTTP/1.1" 200' in image_server.log()


def test_image_progress_bar_moves_and_cancel_stops_the_request(browser, image_server):
    open_page(browser, image_server, key=API_KEY)
    fill(browser, prompt="slow", width=32, height=32, steps=SLOW_STEPS)
    browser.find_element(By.ID, "generate").click()
    until(browser, lambda: re.fullmatch(rf"step \d+ of {SLOW_STEPS}", status(browser)) and progress(browser) > 0)
    browser.find_element(By.ID, "cancel").click()
    until(browser, lambda: status(browser) == "cancelled")
    until(browser, lambda: "running image request is stopped" in image_server.log(), timeout=30)
    assert browser.find_element(By.ID, "generate").is_enabled()


def test_page_lists_merged_lora_adapters_and_unmerges_them(browser, image_server):
    lora = write_tiny_lora(image_server.model, image_server.loras / "style.safetensors", seed=1)
    answer = requests.post(image_server.v1 + "/set_lora", headers=AUTH, timeout=60,
                           json={"lora_nickname": "style", "lora_path": str(lora), "strength": 0.5})
    assert answer.status_code == 200, answer.text
    open_page(browser, image_server, key=API_KEY)
    until(browser, lambda: browser.find_element(By.ID, "loras").is_displayed())
    (row,) = browser.find_elements(By.CSS_SELECTOR, "#lora-list .row")
    assert row.text.startswith("style") and row.find_element(By.CLASS_NAME, "lora-on").is_selected()
    assert row.find_element(By.CLASS_NAME, "lora-strength").get_attribute("value") == "0.5"
    row.find_element(By.CLASS_NAME, "lora-on").click()
    browser.find_element(By.ID, "lora-apply").click()
    until(browser, lambda: status(browser) == "adapters unmerged")
    assert requests.get(image_server.v1 + "/list_loras", headers=AUTH, timeout=30).json()["active"] == {}


def test_page_plays_a_video_of_the_requested_size(browser, video_server):
    open_page(browser, video_server)
    assert not browser.find_element(By.ID, "api-key").is_displayed()  # no key on this server
    assert not browser.find_element(By.ID, "image").is_displayed()  # a text-to-video model
    assert browser.find_element(By.ID, "kind").text == "video"
    fill(browser, prompt="a red fox", width=48, height=32, **{"num-frames": 5}, steps=2)
    browser.find_element(By.ID, "generate").click()
    video = result(browser, "video")
    assert browser.execute_script("return [arguments[0].videoWidth, arguments[0].videoHeight]", video) == [48, 32]
    until(browser, lambda: browser.execute_script("return !arguments[0].paused", video), timeout=10)  # playing
    assert browser.find_element(By.ID, "download").get_attribute("download").endswith(".mp4")
    until(browser, lambda: "a red fox" in browser.find_element(By.ID, "recent").text)


def test_video_progress_bar_moves_and_cancel_stops_the_job(browser, video_server):
    open_page(browser, video_server)
    fill(browser, prompt="slow", steps=SLOW_STEPS)
    browser.find_element(By.ID, "generate").click()
    until(browser, lambda: progress(browser) > 0 and status(browser).startswith("denoising"))
    browser.find_element(By.ID, "cancel").click()
    until(browser, lambda: status(browser) == "cancelled")
    newest = requests.get(video_server.v1 + "/videos?limit=1", timeout=30).json()["data"][0]
    assert newest["prompt"] == "slow" and newest["status"] == "failed" and newest["error"]["code"] == "cancelled"


def test_image_progress_route_follows_the_request_named_by_its_header(image_server):
    progress_id = "progress-test-1"
    answer = {}

    def generate():
        answer["response"] = requests.post(
            image_server.v1 + "/images/generations", timeout=120, headers={**AUTH, "X-Progress-Id": progress_id},
            json={"prompt": "slow", "size": "32x32", "num_inference_steps": 60})

    thread = threading.Thread(target=generate)
    thread.start()
    deadline, seen = time.monotonic() + 60, None
    while time.monotonic() < deadline and not (seen and seen["step"] > 0):
        reply = requests.get(f"{image_server.v1}/images/progress/{progress_id}", headers=AUTH, timeout=30)
        seen = reply.json() if reply.status_code == 200 else None
    assert seen["status"] == "in_progress" and seen["num_steps"] == 60 and 0 < seen["progress"] < 100
    again = requests.post(image_server.v1 + "/images/generations", headers={**AUTH, "X-Progress-Id": progress_id},
                          json={"prompt": "x"}, timeout=30)
    assert again.status_code == 409 and again.json()["error"]["code"] == "progress_id_in_use"
    thread.join(120)
    assert answer["response"].status_code == 200
    gone = requests.get(f"{image_server.v1}/images/progress/{progress_id}", headers=AUTH, timeout=30)
    assert gone.status_code == 404  # the entry lives exactly as long as the request
    bad = requests.post(image_server.v1 + "/images/generations", headers={**AUTH, "X-Progress-Id": "no spaces"},
                        json={"prompt": "x"}, timeout=30)
    assert bad.status_code == 400 and bad.json()["error"]["param"] == "X-Progress-Id"


def test_image_list_gives_the_stored_images_newest_first(image_server):
    urls = [requests.post(image_server.v1 + "/images/generations", headers=AUTH, timeout=60,
                          json={"prompt": f"image {i}", "response_format": "url"}).json()["data"][0]["url"]
            for i in range(2)]
    listed = requests.get(image_server.v1 + "/images?limit=2", headers=AUTH, timeout=30).json()["data"]
    assert [item["url"] for item in listed] == urls[::-1]
    assert requests.get(image_server.v1 + "/images", timeout=30).status_code == 401  # behind the key like all /v1


def test_recent_results_are_shown_again_when_clicked(browser, image_server):
    open_page(browser, image_server, key=API_KEY)
    thumbs = until(browser, lambda: len(found := browser.find_elements(By.CSS_SELECTOR, "#recent img")) >= 2 and found)
    for thumb in (thumbs[-1], thumbs[0], thumbs[-1]):  # each stays showable after another was shown
        thumb.click()
        until(browser, lambda: browser.execute_script(
            "const shown = document.querySelector('#result img');"
            "return shown && shown.src === arguments[0].src && shown.complete && shown.naturalWidth > 0", thumb))

"""The web page of `cxrvlp serve` in a real browser: a `cxrvlp serve` process on the tiny
bundle, headless Chromium driven by selenium through upload, report, findings, heat map,
region boxes, a question and a rejected upload; a 1366x768 screenshot is left in tmp_path.

Needs Debian's ``chromium`` and ``chromium-driver`` (`.ci/run` installs them); skipped
without them."""

import shutil
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path

import pytest

from cxrvlp.constants import CHEST_IMAGENOME_REGIONS

INSTALL = "apt-get update && apt-get install -y chromium chromium-driver"
READY_SECONDS = 120
WAIT_SECONDS = 60


def _browser() -> tuple[str, str]:
    chromium = shutil.which("chromium") or shutil.which("chromium-browser")
    driver = shutil.which("chromedriver")
    if chromium is None or driver is None:
        pytest.skip(f"chromium and chromedriver are not installed; run: {INSTALL}")
    return chromium, driver


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _wait_ready(base: str, server: subprocess.Popen, log: Path) -> None:
    deadline = time.monotonic() + READY_SECONDS
    while time.monotonic() < deadline:
        if server.poll() is not None:
            pytest.fail(f"cxrvlp serve exited with {server.returncode}:\n{log.read_text()}")
        try:
            with urllib.request.urlopen(f"{base}/readyz", timeout=2) as response:
                if response.status == 200:
                    return
        except (urllib.error.URLError, ConnectionError, TimeoutError):
            pass
        time.sleep(0.3)
    pytest.fail(f"cxrvlp serve was not ready within {READY_SECONDS} s:\n{log.read_text()}")


@pytest.fixture
def served(pretrained_bundle, tmp_path):
    """The base URL of a `cxrvlp serve` process on the tiny bundle; its output goes to
    ``serve.log`` in the test's (kept when failing) temporary folder."""
    port = _free_port()
    log = tmp_path / "serve.log"
    command = [sys.executable, "-m", "cxrvlp.cli", "serve", "--model", str(pretrained_bundle)]
    command += ["--port", str(port), "--threads", "1"]
    with log.open("w") as out:
        server = subprocess.Popen(command, stdout=out, stderr=subprocess.STDOUT)
    try:
        base = f"http://127.0.0.1:{port}"
        _wait_ready(base, server, log)
        yield base
    finally:
        server.terminate()
        try:
            server.wait(timeout=10)
        except subprocess.TimeoutExpired:
            server.kill()
            server.wait()


@pytest.fixture
def browser(tmp_path):
    chromium, driver_path = _browser()
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    options = webdriver.ChromeOptions()
    options.binary_location = chromium
    for argument in ("--headless=new", "--no-sandbox", "--disable-dev-shm-usage",
                     "--disable-gpu", "--window-size=1366,768", "--force-device-scale-factor=1",
                     f"--user-data-dir={tmp_path / 'chromium'}"):  # fmt: skip
        options.add_argument(argument)
    driver = webdriver.Chrome(options=options, service=Service(executable_path=driver_path))
    try:
        driver.set_window_size(1366, 768)
        yield driver
    finally:
        driver.quit()


def test_page_analyses_an_upload_end_to_end(served, browser, downstream_world, tmp_path):
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support import expected_conditions as ec
    from selenium.webdriver.support.ui import WebDriverWait

    scan = tmp_path / "frontal.png"
    shutil.copy(sorted((downstream_world / "nih").rglob("*.png"))[0], scan)
    wait = WebDriverWait(browser, WAIT_SECONDS)
    find = browser.find_element

    browser.get(served + "/")
    assert "cxrvlp" in browser.title
    described = ec.text_to_be_present_in_element((By.ID, "model-line"), "gkmvlp-tiny")
    wait.until(described, "the page did not show the model's description")
    assert "Research use only" in find(By.ID, "notice").text

    # Upload and analyse: the report, the findings and the model's details appear.
    find(By.ID, "frontal").send_keys(str(scan))
    find(By.ID, "analyse").click()
    rows = wait.until(
        lambda d: d.find_elements(By.CSS_SELECTOR, "#findings tbody tr") or False,
        "no findings table after Analyse",
    )
    report = find(By.ID, "report")
    assert report.text and "appears here" not in report.text
    assert "muted" not in report.get_attribute("class")  # a real report, not the placeholder
    scores = find(By.ID, "findings").find_elements(By.CSS_SELECTOR, "tbody td.score")
    assert len(scores) == len(rows) > 1 and all(cell.text.endswith("%") for cell in scores)
    assert "total" in find(By.ID, "model-details").text
    assert find(By.ID, "picture").is_displayed()
    assert find(By.ID, "busy").get_attribute("hidden") is not None
    assert find(By.ID, "alert").text == ""

    # A finding's row shows its heat map, a loaded picture over the radiograph.
    rows[1].find_element(By.CSS_SELECTOR, "button.finding").click()
    heatmap = find(By.ID, "heatmap")
    loaded = "return arguments[0].complete && arguments[0].naturalWidth > 0"
    wait.until(
        lambda d: heatmap.is_displayed() and d.execute_script(loaded, heatmap),
        "the heat map did not load",
    )
    assert heatmap.get_attribute("src").startswith("blob:")
    assert heatmap.size == find(By.ID, "picture").size  # stretched over the displayed image
    assert "selected" in rows[1].get_attribute("class")
    assert rows[1].find_element(By.CSS_SELECTOR, "button").get_attribute("aria-pressed") == "true"
    assert rows[0].find_element(By.CSS_SELECTOR, "button").get_attribute("aria-pressed") == "false"

    # The 29 region boxes, dashed fallbacks without a detector, hidden by the toggle.
    boxes = find(By.ID, "regions").find_elements(By.CSS_SELECTOR, "rect.region")
    assert [b.get_attribute("data-region") for b in boxes] == list(CHEST_IMAGENOME_REGIONS)
    assert all("fallback" in b.get_attribute("class") for b in boxes)
    assert all(b.is_displayed() for b in boxes)
    find(By.ID, "show-regions").click()
    assert not any(b.is_displayed() for b in boxes)
    find(By.ID, "show-regions").click()
    assert all(b.is_displayed() for b in boxes)

    # A yes/no question about the same image.
    question = find(By.ID, "question")
    question.clear()
    question.send_keys("Is there a pleural effusion?")
    find(By.ID, "ask").click()
    wait.until(lambda d: find(By.CSS_SELECTOR, "#answer .reply").text, "no answer shown")
    answer = find(By.CSS_SELECTOR, "#answer .reply").text
    assert answer.split()[0] in ("Yes", "No") and "%" in answer
    browser.execute_script("window.scrollTo(0, 0)")
    assert browser.get_window_size()["width"] == 1366
    browser.save_screenshot(str(tmp_path / "page.png"))

    # A text file named .png: the service's message in the alert region.
    fake = tmp_path / "notes.png"
    fake.write_text("not a radiograph\n")
    find(By.ID, "frontal").send_keys(str(fake))
    find(By.ID, "analyse").click()
    alert = find(By.ID, "alert")
    wait.until(lambda d: alert.text, "no error shown for a text file")
    assert alert.get_attribute("role") == "alert" and alert.is_displayed()
    assert "notes.png" in alert.text and "is not a DICOM, PNG or JPEG file" in alert.text

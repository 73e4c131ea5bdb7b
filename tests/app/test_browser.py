"""The viewer in a real browser: ``medai app --data DIR`` on a free loopback port, driven by headless Chromium.

Debian's ``chromium`` and ``chromium-driver`` (``make test`` installs them); selenium uses the system driver,
nothing is downloaded. The test waits for the first study's result, checks the label, the banner and that the
axial image carries the overlay of the evidence that decided (saliency, or the opacities for a findings model),
and saves a screenshot.
"""

from __future__ import annotations

import io
import os
import signal
import subprocess
import sys
import time
import urllib.request
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from PIL import Image

from medai.inference.classifier import Classifier
from medai.phantoms import files as phantom_files
from medai.phantoms import synthetic
from medai.report.case_report import RESEARCH_BANNER
from tests.conftest import free_port

CHROMIUM, CHROMEDRIVER = "/usr/bin/chromium", "/usr/bin/chromedriver"


def chromium(profile: Path) -> object:
    """A headless Chromium driven through the Debian chromedriver (flags known to work as root in a sandbox)."""
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    if not (Path(CHROMIUM).is_file() and Path(CHROMEDRIVER).is_file()):
        pytest.fail("chromium and chromium-driver must be installed: `make test` installs the Debian packages")
    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    for flag in (
        "--headless",
        "--no-sandbox",
        "--disable-gpu",
        "--disable-quic",
        "--no-first-run",
        "--disable-background-networking",
        "--disable-component-update",
        "--disable-sync",
        f"--user-data-dir={profile}",
        "--window-size=1600,1000",
    ):
        options.add_argument(flag)
    return webdriver.Chrome(service=Service(CHROMEDRIVER), options=options)


@pytest.fixture
def viewer_server(
    small_phantom: Callable[..., synthetic.Phantom], tmp_path: Path
) -> Iterator[tuple[str, Path, synthetic.Phantom]]:
    """``medai app --data DIR`` with a COVID-19 and a normal phantom, on a free port of 127.0.0.1."""
    covid = small_phantom("covid19", 0.35, 51)
    phantom_files.write_dicom(covid, tmp_path / "data" / "study_b")
    phantom_files.write_dicom(small_phantom("normal", 0.0, 52), tmp_path / "data" / "study_a")
    port = free_port()
    log = (tmp_path / "app.log").open("wb")
    command = [sys.executable, "-m", "medai.cli", "app", "--data", str(tmp_path / "data"), "--port", str(port)]
    process = subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 90
        while True:
            try:
                with urllib.request.urlopen(url + "/_stcore/health", timeout=2) as response:
                    if response.status == 200:
                        break
            except OSError:
                pass
            if process.poll() is not None or time.monotonic() > deadline:
                pytest.fail(f"medai app did not start: {(tmp_path / 'app.log').read_text(errors='replace')[-2000:]}")
            time.sleep(0.3)
        yield url, tmp_path, covid
    finally:
        os.killpg(process.pid, signal.SIGTERM)  # the server and anything it started
        try:
            process.wait(timeout=20)
        except subprocess.TimeoutExpired:
            os.killpg(process.pid, signal.SIGKILL)
            process.wait()
        log.close()


def saliency_pixels(png: bytes) -> int:
    """Pixels in the saliency's red to orange: grey CT has R = G = B; the crosshair (R - G <= 30) and letters are
    yellow."""
    rgb = np.asarray(Image.open(io.BytesIO(png)).convert("RGB")).astype(int)
    return int(np.count_nonzero((rgb[..., 0] - rgb[..., 1] > 36) & (rgb[..., 0] - rgb[..., 2] > 60)))


def opacity_pixels(png: bytes) -> int:
    """Pixels in the opacity overlay's cyan (ground glass) or magenta (consolidation) over grey CT."""
    rgb = np.asarray(Image.open(io.BytesIO(png)).convert("RGB")).astype(int)
    r, g, b = rgb[..., 0], rgb[..., 1], rgb[..., 2]
    return int(np.count_nonzero(((g - r > 40) & (b - r > 40)) | ((r - g > 40) & (b - g > 40))))


def _snapshot(driver: Any) -> tuple[list[str], list[str], bool] | None:
    """The page's result headings, the sources of its full-size axial images and whether it is still scoring;
    ``None`` when an element went stale while it was read (Streamlit replaces elements as it redraws)."""
    from selenium.common.exceptions import StaleElementReferenceException
    from selenium.webdriver.common.by import By

    try:
        headings = [h.text for h in driver.find_elements(By.CSS_SELECTOR, "h2")]
        axial = [
            src
            for img in driver.find_elements(By.CSS_SELECTOR, "img")
            if "/media/" in (src := img.get_attribute("src") or "")
            and driver.execute_script("return arguments[0].naturalWidth", img) == 512
        ]
        waiting = "waiting to be scored" in driver.page_source or "scoring ..." in driver.page_source
    except StaleElementReferenceException:
        return None
    return headings, axial, waiting


def _stable(read: Callable[[], Any], tries: int = 20) -> Any:
    """``read()``, again while an element it reads goes stale under a redraw."""
    from selenium.common.exceptions import StaleElementReferenceException

    for _ in range(tries - 1):
        try:
            return read()
        except StaleElementReferenceException:
            time.sleep(0.25)
    return read()


def test_medai_app_in_headless_chromium_shows_the_result_banner_and_the_deciding_overlay(
    viewer_server: tuple[str, Path, synthetic.Phantom], shipped_classifier: Classifier
) -> None:
    from selenium.webdriver.common.by import By

    url, folder, covid = viewer_server
    expected = shipped_classifier.predict(covid.volume).label
    driver = chromium(folder / "chromium-profile")
    try:
        driver.get(url)  # type: ignore[attr-defined]
        deadline = time.monotonic() + 120
        while True:
            seen = _snapshot(driver)  # None: Streamlit redrew the page while it was read
            if seen is not None:
                headings, axial, waiting = seen
                if expected in headings and axial and not waiting:
                    break
            assert time.monotonic() < deadline, f"no result in the browser: {seen}"
            time.sleep(0.5)

        def read_banner() -> tuple[str, bool]:
            banner = driver.find_element(By.ID, "medai-banner")  # type: ignore[attr-defined]
            return banner.text, banner.is_displayed()

        assert _stable(read_banner) == (RESEARCH_BANNER, True)
        assert "Calibrated probabilities" in driver.page_source  # type: ignore[attr-defined]
        with urllib.request.urlopen(axial[0], timeout=10) as response:
            png = response.read()
        assert png[:4] == b"\x89PNG"
        if shipped_classifier.evidence == "findings":  # the overlay that decided is drawn on the opened study
            assert opacity_pixels(png) > 100 and saliency_pixels(png) < 0.02 * opacity_pixels(png)  # edges blend
            assert "measured opacities" in driver.page_source  # type: ignore[attr-defined]
        else:
            assert saliency_pixels(png) > 200
        time.sleep(1.0)  # let the chart finish drawing
        shot = folder / "viewer.png"
        assert driver.save_screenshot(str(shot))  # type: ignore[attr-defined]
        assert shot.stat().st_size > 50_000
    finally:
        driver.quit()  # type: ignore[attr-defined]

"""Screenshots of the viewer's main screens for docs/ and the README, taken in headless Chromium.

Starts ``medai app --data DATA`` on a free loopback port, waits until the worklist is scored and the most
urgent study is open, and saves (downscaled PNGs):

* ``viewer_main.png``: the worklist, the study with the saliency overlay, the results panel;
* ``viewer_overlays.png``: the same study with the lung contours and the opacities on, in the mediastinal window.

Usage: ``python scripts/viewer_screenshots.py [--data demo/studies] [--out docs]`` (after ``make demo``).
Needs Debian's chromium and chromium-driver (``make test`` installs them); downloads nothing.
"""

from __future__ import annotations

import argparse
import os
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from PIL import Image

ROOT = Path(__file__).resolve().parent.parent


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _browser(profile: str, width: int, height: int) -> Any:
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    options = webdriver.ChromeOptions()
    options.binary_location = "/usr/bin/chromium"
    for flag in ("--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run"):
        options.add_argument(flag)
    for flag in ("--disable-background-networking", "--disable-component-update", "--disable-sync"):
        options.add_argument(flag)
    options.add_argument(f"--user-data-dir={profile}")
    options.add_argument(f"--window-size={width},{height}")
    return webdriver.Chrome(service=Service("/usr/bin/chromedriver"), options=options)


def _wait(driver: Any, ready: str, timeout_s: float = 180.0) -> None:
    """Until ``ready`` is on the page, no study waits for the model and three views are drawn."""
    from selenium.webdriver.common.by import By

    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        source = driver.page_source
        views = [i for i in driver.find_elements(By.CSS_SELECTOR, "img") if "/media/" in (i.get_attribute("src") or "")]
        if ready in source and "waiting to be scored" not in source and "scoring ..." not in source and len(views) >= 3:
            time.sleep(2.0)  # charts and images finish drawing
            return
        time.sleep(0.5)
    raise TimeoutError(f"the viewer did not show {ready!r} in {timeout_s:.0f} s")


def _click_text(driver: Any, text: str) -> None:
    from selenium.webdriver.common.by import By

    driver.find_element(By.XPATH, f"//label[.//p[normalize-space()='{text}']]").click()


def _save(driver: Any, path: Path, width: int) -> None:
    raw = path.with_suffix(".raw.png")
    driver.save_screenshot(str(raw))
    image = Image.open(raw).convert("RGB")
    image = image.resize((width, round(image.height * width / image.width)), Image.Resampling.LANCZOS)
    image.save(path, optimize=True)
    raw.unlink()
    print(f"{path} ({path.stat().st_size // 1024} KB)")


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument(
        "--data", default=str(ROOT / "demo" / "studies"), help="studies to open (default: demo/studies)"
    )
    parser.add_argument("--out", default=str(ROOT / "docs"), help="folder for the PNGs (default: docs)")
    parser.add_argument("--width", type=int, default=1100, help="width of the saved PNGs (default: 1100)")
    args = parser.parse_args(argv)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    port = _free_port()
    command = [sys.executable, "-m", "medai.cli", "app", "--data", args.data, "--port", str(port)]
    server = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.STDOUT, start_new_session=True)
    url = f"http://127.0.0.1:{port}"
    try:
        for _ in range(300):
            try:
                urllib.request.urlopen(url + "/_stcore/health", timeout=2).close()
                break
            except OSError:
                time.sleep(0.3)
        with tempfile.TemporaryDirectory() as profile:
            driver = _browser(profile, 1600, 1150)
            try:
                driver.get(url)
                _wait(driver, "Calibrated probabilities")
                _save(driver, out / "viewer_main.png", args.width)
                for toggle in ("Lung contour", "Opacities"):
                    _click_text(driver, toggle)
                    time.sleep(3.0)
                _wait(driver, "ground glass")
                _save(driver, out / "viewer_overlays.png", args.width)
            finally:
                driver.quit()
    finally:
        os.killpg(server.pid, signal.SIGTERM)
        server.wait(timeout=30)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

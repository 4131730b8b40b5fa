"""Headless Debian Chromium driven by Selenium, shared by the browser tests."""

from __future__ import annotations

import json
import shutil
import tempfile
from contextlib import contextmanager
from typing import Iterator

from selenium import webdriver
from selenium.webdriver.chrome.service import Service

BASE_FLAGS = (
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
    "--disable-dev-shm-usage",
    "--window-size=1280,2000",
)


@contextmanager
def chromium(*extra_flags: str) -> Iterator[webdriver.Chrome]:
    """A fresh headless Chromium with its own profile; browser and network logs on."""
    binary, driver = shutil.which("chromium"), shutil.which("chromedriver")
    assert binary and driver, "run `make browser` (Debian chromium and chromium-driver)"
    profile = tempfile.mkdtemp(prefix="chromium-")
    options = webdriver.ChromeOptions()
    options.binary_location = binary
    for flag in (*BASE_FLAGS, f"--user-data-dir={profile}", *extra_flags):
        options.add_argument(flag)
    options.set_capability("goog:loggingPrefs", {"browser": "ALL", "performance": "ALL"})
    chrome = webdriver.Chrome(service=Service(driver), options=options)
    try:
        yield chrome
    finally:
        chrome.quit()
        shutil.rmtree(profile, ignore_errors=True)


def requested_urls(browser: webdriver.Chrome) -> list[str]:
    """Every URL the page requested since the last call (from the performance log)."""
    urls = []
    for entry in browser.get_log("performance"):
        message = json.loads(entry["message"])["message"]
        if message["method"] == "Network.requestWillBeSent":
            urls.append(message["params"]["request"]["url"])
    return urls

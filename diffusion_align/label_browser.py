"""Headless Chromium driven by Selenium, for scripted checks of the labelling page (its browser tests and
its load benchmark). Uses the system's Chromium and ChromeDriver (Debian: ``apt-get install chromium
chromium-driver``); Selenium's own browser download is not used."""

from __future__ import annotations

import shutil
from pathlib import Path

CHROMIUM = ("chromium", "chromium-browser", "google-chrome")
DRIVER = ("chromedriver",)


def find_browser() -> tuple[str, str] | None:
    """``(browser, driver)`` executables, or None when either is missing."""
    browser = next((p for p in map(shutil.which, CHROMIUM) if p), None)
    driver = next((p for p in map(shutil.which, DRIVER) if p), None)
    return (browser, driver) if browser and driver else None


def headless_chromium(user_data_dir: str | Path, width: int = 1400, height: int = 900):
    """A Selenium Chrome driver on the system Chromium: headless, with its own empty profile and no
    background network traffic (this machine's network is closed)."""
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    found = find_browser()
    if found is None:
        raise RuntimeError("no Chromium and ChromeDriver on PATH (Debian: apt-get install chromium chromium-driver)")
    opts = webdriver.ChromeOptions()
    opts.binary_location = found[0]
    for flag in ("--headless=new", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                 "--disable-background-networking", "--disable-component-update", "--disable-sync",
                 "--disable-dev-shm-usage", f"--window-size={width},{height}", f"--user-data-dir={user_data_dir}"):
        opts.add_argument(flag)
    return webdriver.Chrome(options=opts, service=Service(found[1]))

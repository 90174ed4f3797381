"""Screenshots of the default run's report as a reader sees it: `analyze` on the published tables (docs/data/default),
report.html opened in headless Chromium (Debian's chromium and chromedriver: scripts/install_test_tools.sh), the
first screen at a laptop's width saved to docs/img/report_headline.png.

    python scripts/report_screenshots.py        # refreshes docs/img/report_headline.png

`open_report` is also what tests/integration/test_report_browser.py drives the browser with.
"""
from __future__ import annotations

import shutil
import sys
import tempfile
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
DEFAULT = REPO / "docs" / "data" / "default"
TABLES = ("trials", "heads", "curves", "metrics")
# what keeps a headless Chromium off the network and out of the user's profile (it has nothing to fetch here)
FLAGS = ("--headless=new", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
         "--disable-component-update", "--disable-sync", "--no-first-run")


def open_report(report: Path, profile: Path, width: int = 1280, height: int = 900):
    """A Selenium driver of headless Chromium showing `report` (a local report.html); the caller quits it."""
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    chromium, chromedriver = shutil.which("chromium"), shutil.which("chromedriver")
    if not (chromium and chromedriver):
        raise RuntimeError("chromium and chromedriver are not installed: run scripts/install_test_tools.sh")
    options = webdriver.ChromeOptions()
    options.binary_location = chromium
    for flag in (*FLAGS, f"--window-size={width},{height}", f"--user-data-dir={profile}"):
        options.add_argument(flag)
    driver = webdriver.Chrome(service=Service(chromedriver), options=options)
    driver.get(report.resolve().as_uri())
    return driver


def main() -> int:
    sys.path.insert(0, str(REPO))
    from orchestrator.analyze import analyze

    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        for table in TABLES:
            shutil.copy(DEFAULT / f"{table}.parquet", folder)
        report = Path(analyze([str(folder)], str(folder / "analysis"))).with_suffix(".html")
        driver = open_report(report, folder / "profile")
        try:
            target = REPO / "docs" / "img" / "report_headline.png"
            driver.save_screenshot(str(target))
        finally:
            driver.quit()
    print(target)
    return 0


if __name__ == "__main__":
    sys.exit(main())

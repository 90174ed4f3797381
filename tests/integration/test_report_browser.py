"""report.html as a reader sees it: `analyze` on the published default run, opened in headless Chromium (Debian's
chromium and chromedriver, driven by Selenium; .ci/run installs them). The page must fetch nothing from the
network, keep the page itself from scrolling sideways (wide tables scroll inside their own box), lead with the
headline table and figure, keep table headers in view, right-align numbers and show every plot."""
from __future__ import annotations

import importlib.util
import shutil
from pathlib import Path

import pandas as pd
import pytest

from orchestrator.analyze import analyze

REPO = Path(__file__).resolve().parents[2]
CHROMIUM, CHROMEDRIVER = shutil.which("chromium"), shutil.which("chromedriver")

if not (CHROMIUM and CHROMEDRIVER):  # a failure, not a skip: the report's one real reader is a browser
    pytest.fail("chromium and chromedriver are not installed (apt-get install chromium chromium-driver; .ci/run does)",
                pytrace=False)


def load_script():
    spec = importlib.util.spec_from_file_location("report_screenshots", REPO / "scripts" / "report_screenshots.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="module")
def page(tmp_path_factory):
    screenshots = load_script()  # what refreshes docs/img: the same browser, the same published tables
    folder = tmp_path_factory.mktemp("report")
    trials = pd.read_parquet(screenshots.DEFAULT / "trials.parquet")
    trials["started_at"] = trials["started_at"].astype(str)  # a table written by anyone: hostile data stays text
    trials.loc[trials.index[0], "started_at"] = "<img src=https://example.com/x.png>"
    trials.to_parquet(folder / "trials.parquet")
    for table in [t for t in screenshots.TABLES if t != "trials"]:
        shutil.copy(screenshots.DEFAULT / f"{table}.parquet", folder)
    analyze([str(folder)], str(folder / "analysis"))
    driver = screenshots.open_report(folder / "analysis" / "report.html", tmp_path_factory.mktemp("chromium"))
    try:
        yield driver, folder / "analysis"
    finally:
        driver.quit()


def test_the_page_fetches_nothing_and_shows_every_plot(page):
    driver, _ = page
    resources = driver.execute_script("return performance.getEntriesByType('resource').map(e => e.name)")
    assert not [name for name in resources if not name.startswith("file:")], resources
    links = driver.execute_script(
        "return [...document.querySelectorAll('[src],[href]')].map(e => e.getAttribute('src') || e.getAttribute('href'))")
    assert links and not [link for link in links if ":" in link or link.startswith("//")], links  # relative only
    images = driver.execute_script("return [...document.images].map(i => [i.getAttribute('src'), i.naturalWidth])")
    assert images and all(width > 0 and not src.startswith(("http:", "https:", "//")) for src, width in images), images


def test_the_headline_table_and_figure_lead_the_page(page):
    driver, _ = page
    first = driver.execute_script("""
        const h = document.querySelector('h2');
        const table = document.querySelector('#headline ~ table');
        const figure = document.querySelector('#headline ~ p img');
        return [h.textContent, [...table.querySelectorAll('th')].map(t => t.textContent),
                table.querySelectorAll('tbody tr').length, figure && figure.getAttribute('src')];""")
    heading, columns, rows, figure = first
    assert heading == "Headline"
    assert columns[:4] == ["model", "level", "stage", "better than random"] and rows >= 2
    assert figure == "strategies.png"


def test_wide_tables_scroll_inside_their_box_with_headers_in_view_and_numbers_right_aligned(page):
    driver, _ = page
    layout = driver.execute_script("""
        const tables = [...document.querySelectorAll('table')];
        const wide = tables.filter(t => t.scrollWidth > t.clientWidth + 1);
        const numeric = [...document.querySelectorAll('td')].filter(td => /^[0-9]/.test(td.textContent.trim()));
        return {page: document.documentElement.scrollWidth, view: window.innerWidth, wide: wide.length,
                overflow: wide.map(t => getComputedStyle(t).overflowX),
                sticky: tables.every(t => getComputedStyle(t.querySelector('th')).position === 'sticky'),
                right: numeric.filter(td => getComputedStyle(td).textAlign === 'right').length, numeric: numeric.length,
                font: getComputedStyle(document.body).fontFamily};""")
    assert layout["page"] <= layout["view"], layout  # the page never scrolls sideways
    assert layout["wide"] >= 1 and set(layout["overflow"]) == {"auto"}  # the summary table scrolls in its box
    assert layout["sticky"] and layout["numeric"] > 50 and layout["right"] >= 0.9 * layout["numeric"], layout
    assert "system-ui" in layout["font"]


def test_a_hostile_date_is_text_and_a_screenshot_shows_the_page(page):
    driver, folder = page
    assert driver.execute_script("return document.querySelectorAll('img[src^=\"http\"]').length") == 0
    assert "example.com" not in driver.execute_script(
        "return [...document.querySelectorAll('[src],[href]')].map(e => e.getAttribute('src') || e.getAttribute('href')).join(' ')")
    shot = folder / "report.png"
    driver.save_screenshot(str(shot))
    assert shot.stat().st_size > 20_000  # a rendered page, not a blank one

"""The HTML report in a real browser: it loads with no JavaScript errors and no network, and plotly
draws every figure. Headless Chromium through selenium and the system chromedriver.

Install the browser with `apt-get install -y chromium chromium-driver` (Debian; `.ci/run` does it).
The tests skip, saying why, only where no Chromium and driver can be found."""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pytest

import actpatch as ap
from actpatch import report
from sample_results import pareto_curve, tiny_results

BROWSERS = ("chromium", "chromium-browser", "google-chrome", "google-chrome-stable")
DRIVERS = ("chromedriver",)


@pytest.fixture(scope="module")
def browser():
    webdriver = pytest.importorskip(
        "selenium.webdriver", reason="selenium is not installed: pip install -e '.[test]'"
    )
    binary = next((found for name in BROWSERS if (found := shutil.which(name))), None)
    driver_path = next((found for name in DRIVERS if (found := shutil.which(name))), None)
    if binary is None or driver_path is None:
        pytest.skip(
            "no Chromium and chromedriver on PATH: apt-get install -y chromium chromium-driver"
        )
    options = webdriver.ChromeOptions()
    options.binary_location = binary
    for argument in (
        "--headless=new",
        "--no-sandbox",
        "--disable-dev-shm-usage",
        "--window-size=1400,1000",
    ):
        options.add_argument(argument)  # no sandbox: CI runs as root in a container
    options.set_capability("goog:loggingPrefs", {"browser": "ALL"})
    driver = webdriver.Chrome(
        service=webdriver.ChromeService(executable_path=driver_path), options=options
    )
    driver.set_page_load_timeout(60)
    yield driver
    driver.quit()


def open_report(driver, path: Path, screenshot: Path) -> dict:
    """Load the page, wait until plotly has drawn every figure, screenshot it whole; what the page shows."""
    from selenium.webdriver.support.ui import WebDriverWait

    driver.get_log("browser")  # drop what earlier pages logged
    driver.get(path.resolve().as_uri())
    figures = driver.execute_script("return document.querySelectorAll('div.figure').length")
    WebDriverWait(driver, 30).until(
        lambda d: (
            d.execute_script("return document.querySelectorAll('.js-plotly-plot .main-svg').length")
            >= 2 * figures
        )
    )
    state = driver.execute_script("""
        const plots = [...document.querySelectorAll('div.figure .js-plotly-plot')];
        return {
          plotly: typeof window.Plotly,
          figures: document.querySelectorAll('div.figure').length,
          drawn: plots.filter(p => p.querySelector('.main-svg') && p._fullLayout).length,
          heatmaps: document.querySelectorAll('.js-plotly-plot g.hm image').length,
          lines: document.querySelectorAll('.js-plotly-plot .scatterlayer .trace path.js-line').length,
          ticks: [...document.querySelectorAll('.js-plotly-plot .xtick text')].map(t => t.textContent),
          titles: [...document.querySelectorAll('.js-plotly-plot .gtitle, .js-plotly-plot .annotation-text')].map(t => t.textContent),
          fetched: performance.getEntriesByType('resource').map(r => r.name),
          height: document.documentElement.scrollHeight,
        };""")
    state["errors"] = [entry for entry in driver.get_log("browser") if entry["level"] == "SEVERE"]
    driver.set_window_size(1400, min(state["height"] + 100, 12000))
    driver.save_screenshot(str(screenshot))
    driver.set_window_size(1400, 1000)
    return state


def test_tiny_report_draws_every_panel(browser, tmp_path):
    results = tiny_results()
    circuit = report.Section("Circuit", figures=[report.line_plot(pareto_curve())])
    page = report.render_report(
        {
            "residual stream": results["resid_pre"],
            "heads": results["head"],
            "corruptions": results["corruptions"],
            "circuit": circuit,
        },
        tmp_path / "tiny.html",
    )
    state = open_report(browser, page, tmp_path / "tiny.png")
    assert state["errors"] == []
    assert (
        state["plotly"] == "object" and state["fetched"] == []
    )  # plotly.js came inline; nothing was requested
    assert state["figures"] == state["drawn"] == 4
    assert (
        state["heatmaps"] == 2 + 1 + 4
    )  # denoise | noise; one head grid; 2 corruptions × 2 directions
    assert state["lines"] >= 1
    tokens = [str(t) for t in results["resid_pre"].clean_token.values]
    # Tick lines are joined in textContent: "<25>" then "(<28>)". Tokens read "<23>": shown as text, not eaten as tags.
    assert all(any(tick.startswith(token) for tick in state["ticks"]) for token in tokens)
    assert any("noise: corrupt values patched into the clean run" in t for t in state["titles"])
    assert (tmp_path / "tiny.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_metric_menu_redraws_in_the_browser(browser, tmp_path):
    from selenium.webdriver.common.by import By

    result = tiny_results()["head"]
    page = report.render_report(result, tmp_path / "menu.html")
    open_report(browser, page, tmp_path / "menu.png")
    browser.find_element(By.CSS_SELECTOR, ".updatemenu-header-group").click()
    buttons = browser.find_elements(By.CSS_SELECTOR, ".updatemenu-dropdown-button")
    next(b for b in buttons if b.get_attribute("textContent") == "logit_diff").click()
    shown = browser.execute_script("""
        const plot = document.querySelector('.js-plotly-plot');
        return {z: plot.data[0].z.map(row => Array.from(row)), bar: plot._fullLayout.coloraxis.colorbar.title.text,
                low: plot._fullLayout.coloraxis.cmin, high: plot._fullLayout.coloraxis.cmax};""")
    assert (
        shown["bar"].startswith("logit_diff<br>") and "denoise: " in shown["bar"]
    )  # the bar says where white is
    # Both ends are set, so plotly drops cmid: white sits halfway between them, at the corrupt run (no effect).
    assert (shown["low"] + shown["high"]) / 2 == pytest.approx(
        result.attrs["baseline_corrupt"]["logit_diff"]
    )
    np.testing.assert_allclose(shown["z"], result.sel(metric="logit_diff").values, rtol=1e-12)
    assert [e for e in browser.get_log("browser") if e["level"] == "SEVERE"] == []


@pytest.mark.smollm
def test_smollm_ioi_heatmap(browser, smollm, tmp_path):
    pairs = ap.ioi_pairs(smollm, n=2)  # the page, not the number of prompts, is under test
    result = ap.sweep(smollm, pairs, "resid_pre", direction="denoise")
    page = report.render_report(
        {"IOI (all three names replaced): resid_pre, denoise": result}, tmp_path / "ioi.html"
    )
    screenshot = tmp_path / "ioi.png"
    state = open_report(browser, page, screenshot)
    assert state["errors"] == [] and state["drawn"] == 1 and state["heatmaps"] == 1
    tokens = [str(t).strip() for t in result.clean_token.values]
    ticks = [t.strip() for t in state["ticks"]]
    assert all(
        any(tick.startswith(token) for tick in ticks) for token in tokens
    )  # the prompt's tokens label the columns
    assert screenshot.stat().st_size > 20_000
    print(f"screenshot: {screenshot}")

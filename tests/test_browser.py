"""The HTML report in a real browser: headless Chromium (the OS package) driven through its chromedriver.

The page must load with no console error and nothing from the network, hovering a chart point must show
that layer's figures, and a click on a table header must sort the rows by the column's raw values.
scripts/test.sh installs Chromium when it is missing; in CI a missing browser fails these tests instead of
skipping them, so they cannot go quietly unrun there.
"""
from __future__ import annotations

import dataclasses
import os
import re
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pandas as pd
import pytest

import roofline
from roofline.cli import main
from roofline.formatting import format_si, format_time
from roofline.hardware import load_profile
from roofline.predict import Prediction, predict
from roofline.report import write_report

# The flags this machine's Chromium needs to start without reaching for the network, plus a
# fresh --user-data-dir per session (added below).
CHROMIUM_FLAGS = ["--headless=new", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                  "--disable-background-networking", "--disable-component-update", "--disable-sync",
                  "--disable-dev-shm-usage", "--disable-extensions", "--window-size=1300,1000"]
BROWSERS = ("chromium", "chromium-browser", "google-chrome")


def _missing(what: str) -> None:
    if os.environ.get("CI"):
        pytest.fail(f"{what}: scripts/test.sh installs it (apt-get install chromium chromium-driver); CI must run "
                    "the browser tests")
    pytest.skip(f"{what} (Debian: apt-get install -y chromium chromium-driver); browser tests skipped")


@pytest.fixture(scope="module")
def browser() -> Iterator[Any]:
    """One headless Chromium for the module, with the browser console log kept."""
    try:
        from selenium import webdriver
        from selenium.webdriver.chrome.options import Options
        from selenium.webdriver.chrome.service import Service
    except ImportError:
        _missing("selenium is not installed (it is in roofline's test extras)")
    binary = next((path for path in map(shutil.which, BROWSERS) if path), None)
    driver_path = shutil.which("chromedriver")
    if binary is None or driver_path is None:
        _missing("Chromium or its chromedriver is not installed")
    with tempfile.TemporaryDirectory(prefix="roofline-chromium-") as profile:
        options = Options()
        options.binary_location = binary
        for flag in [*CHROMIUM_FLAGS, f"--user-data-dir={profile}"]:
            options.add_argument(flag)
        options.set_capability("goog:loggingPrefs", {"browser": "ALL"})
        # An explicit driver path: selenium then never runs its manager, which would download one.
        driver = webdriver.Chrome(options=options, service=Service(executable_path=driver_path))
        try:
            yield driver
        finally:
            driver.quit()


def _open(driver: Any, page: Path) -> list[str]:
    """Load `page`; returns the console errors (and failed loads) it logged."""
    driver.get_log("browser")  # drop what earlier pages logged
    driver.get(page.resolve().as_uri())
    driver.execute_script("return document.readyState")
    return [entry["message"] for entry in driver.get_log("browser") if entry["level"] == "SEVERE"]


@pytest.fixture(scope="module")
def prediction() -> Prediction:
    return predict(roofline.analyze("zoo:convnet"), load_profile("t4"))


@dataclasses.dataclass(frozen=True)
class _Measurement:
    """The three attributes a report reads of a measurement, with numbers chosen here (MeasurementLike)."""

    layers: pd.DataFrame
    end_to_end: pd.DataFrame
    metadata: dict[str, Any]


def _measured_report(prediction: Prediction, out: Path) -> tuple[Path, pd.DataFrame]:
    """A report with a synthetic measurement: layer i measured at (1 + i/4) x its prediction, the last one untimed."""
    layers = prediction.layers[["name", "type", "predicted_s"]].copy()
    layers["measured_s"] = layers["predicted_s"] * [1.0 + i / 4 for i in range(len(layers))]
    layers.loc[layers.index[-1], "measured_s"] = float("nan")
    timed = layers.dropna(subset=["measured_s"])
    measurement = _Measurement(
        timed.assign(iqr_s=timed["measured_s"] * 0.01, repeats=5, noisy=False)[
            ["name", "measured_s", "iqr_s", "repeats", "noisy"]],
        pd.DataFrame({"batch": [1], "latency_s": [float(timed["measured_s"].sum())], "iqr_s": [1e-6],
                      "throughput_samples_per_s": [1 / float(timed["measured_s"].sum())]}),
        {"device_name": "test gpu", "notes": []})
    return write_report(prediction, out, measurement=measurement) / "index.html", layers


def _hover_first_exposed(driver: Any, selector: str) -> tuple[str, str]:
    """Hover the first element matching `selector` that is on top at its own centre; returns (its href, tip text)."""
    from selenium.webdriver.common.action_chains import ActionChains
    from selenium.webdriver.common.by import By

    for link in driver.find_elements(By.CSS_SELECTOR, selector):
        driver.execute_script("arguments[0].scrollIntoView({block: 'center'})", link)
        exposed = driver.execute_script(
            "const r = arguments[0].getBoundingClientRect();"
            "const top = document.elementFromPoint(r.left + r.width / 2, r.top + r.height / 2);"
            "return r.width > 0 && top !== null && arguments[0].contains(top);", link)
        if exposed:
            ActionChains(driver).move_to_element(link).perform()
            tip = driver.find_element(By.ID, "tip")
            assert tip.is_displayed(), f"no tooltip shown over {link.get_dom_attribute('href')}"
            return str(link.get_dom_attribute("href")), str(tip.text)
    raise AssertionError(f"no element matching {selector} is exposed to the pointer")


def _names(driver: Any) -> list[str]:
    return [str(n) for n in driver.execute_script(
        "return Array.from(document.querySelectorAll('#layers tbody tr'), r => r.cells[1].textContent)")]


def _natural(name: str) -> list[Any]:
    """features.10 after features.9, as a person sorts (and as the page's localeCompare(numeric) does)."""
    return [int(part) if part.isdigit() else part for part in re.split(r"(\d+)", name)]


def test_the_predicted_report_loads_cleanly_and_a_hovered_roofline_point_names_its_layer(
        browser: Any, prediction: Prediction, tmp_path: Path) -> None:
    from selenium.webdriver.common.action_chains import ActionChains
    from selenium.webdriver.common.by import By

    out = tmp_path / "predicted"
    assert main(["report", "zoo:convnet", "--hw", "t4", "--no-measure", "--no-progress", "--out", str(out)]) == 0
    assert _open(browser, out / "index.html") == []
    # Nothing came from anywhere but the file itself (inline charts, style and script).
    fetched = browser.execute_script("return performance.getEntriesByType('resource').map(e => e.name)")
    assert [url for url in fetched if not url.startswith(("file:", "data:"))] == []
    assert browser.execute_script("return document.querySelectorAll('img, script[src], link[href]').length") == 0

    href, tip = _hover_first_exposed(browser, "#chart-roofline svg a[href^='#layer:']")
    name = href.split("#layer:", 1)[1]
    row = prediction.layers.set_index("name").loc[name]
    lines = tip.splitlines()
    assert lines[0] == f"{name} ({row['type']})"
    assert f"FLOPs: {format_si(row['flops'])}" in lines
    assert f"intensity: {row['arithmetic_intensity']:.3g} FLOP/B" in lines
    assert f"predicted: {format_time(row['predicted_s'])}, {row['bound']}-bound" in lines
    assert "measured: not measured" in lines
    ActionChains(browser).move_to_element(browser.find_element(By.TAG_NAME, "h1")).perform()
    assert not browser.find_element(By.ID, "tip").is_displayed()  # off the point, the tip goes


def test_the_measured_report_shows_both_times_on_hover_and_sorts_the_layer_table(
        browser: Any, prediction: Prediction, tmp_path: Path) -> None:
    from selenium.webdriver.common.by import By

    page, layers = _measured_report(prediction, tmp_path / "measured")
    assert _open(browser, page) == []
    href, tip = _hover_first_exposed(browser, "#chart-predicted_vs_measured svg a[href^='#layer:']")
    row = layers.set_index("name").loc[href.split("#layer:", 1)[1]]
    assert f"measured: {format_time(row['measured_s'])} ({row['measured_s'] / row['predicted_s']:.3g}x predicted)" \
        in tip.splitlines()
    assert f"predicted: {format_time(row['predicted_s'])}" in tip

    predicted = layers.set_index("name")["predicted_s"]
    measured = layers.set_index("name")["measured_s"]
    flops = prediction.layers.set_index("name")["flops"]
    original = _names(browser)
    assert original == layers["name"].tolist()  # execution order
    # Sorted as text, "10 us" would come before "9 us" and "1.2 M" before "300 k": the precondition for the
    # checks below to tell a sort by raw value from one by the shown text.
    for values, shown in ((measured.dropna(), format_time), (flops, format_si)):
        assert sorted(shown(v) for v in values) != [shown(v) for v in sorted(values)]

    def click(header: str) -> list[str]:
        browser.find_element(By.XPATH, f"//table[@id='layers']//th[normalize-space()='{header}']").click()
        return _names(browser)

    by_predicted = click("predicted")  # numbers: largest first
    assert sorted(by_predicted) == sorted(original)
    assert [predicted[n] for n in by_predicted] == sorted(predicted, reverse=True)
    assert [predicted[n] for n in click("predicted")] == sorted(predicted)  # again: reversed
    by_measured = click("measured")
    assert by_measured[-1] == layers["name"].iloc[-1]  # the untimed layer sorts last
    assert [measured[n] for n in by_measured[:-1]] == sorted(measured.dropna(), reverse=True)
    assert [flops[n] for n in click("FLOPs")] == sorted(flops, reverse=True)
    assert click("layer") == sorted(original, key=_natural)  # text: A to Z
    click("#")
    assert click("#") == original  # descending, then back to execution order
    aria = browser.execute_script("return document.querySelector('#layers th[aria-sort]').textContent")
    assert aria.startswith("#")


def test_the_console_check_catches_a_script_error(browser: Any, tmp_path: Path) -> None:
    """The no-console-error checks above can fail: a page that throws is caught."""
    page = tmp_path / "broken.html"
    page.write_text("<!DOCTYPE html><html><body><script>not_defined()</script></body></html>")
    errors = _open(browser, page)
    assert errors and "not_defined" in errors[0]

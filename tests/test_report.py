"""Reports: every file written, the HTML embeds each chart and every layer, writing is atomic."""
from __future__ import annotations

import dataclasses
import html
import importlib
import json
import subprocess
import sys
from dataclasses import dataclass, field
from html.parser import HTMLParser
from pathlib import Path
from typing import Any

import pandas as pd
import pytest
import torch

import roofline
from roofline.cli import main
from roofline.errors import RooflineError
from roofline.formatting import format_bytes, format_time
from roofline.hardware import load_profile
from roofline.hardware.profile import HardwareProfile, MemoryLevel
from roofline.outdir import MARKER
from roofline.predict import Prediction, predict

# `roofline.report` is the function; the module is reached through sys.modules.
report_module = importlib.import_module("roofline.report")
REPO = Path(__file__).resolve().parents[1]
FILES = {"index.html", "report.md", "layers.csv", "report.json", "roofline.png", "roofline.svg", "time.png",
         "time.svg"}


def _profile(kind: str = "cpu") -> HardwareProfile:
    return HardwareProfile(name=f"Test {kind.upper()}", kind=kind, vendor="test", source="datasheet",
                           reference="tests", peak_flops_per_s={"fp32": 2e11, "fp16": 8e11},
                           memory_levels=(MemoryLevel("L2", 1e6, 5e11), MemoryLevel("DRAM", 8e9, 2e10)),
                           overhead_s=3e-6)


@pytest.fixture(scope="module")
def prediction() -> Prediction:
    return predict(roofline.analyze("zoo:convnet"), _profile())


@dataclass(frozen=True)
class FakeMeasurement:
    """The three attributes a report reads from roofline.measure's result, with chosen numbers."""

    layers: pd.DataFrame
    end_to_end: pd.DataFrame
    metadata: dict[str, Any] = field(default_factory=lambda: {"device_name": "test cpu", "notes": []})


def _measurement(prediction: Prediction) -> FakeMeasurement:
    names = prediction.layers["name"]
    measured = prediction.layers["predicted_s"] * [1.0 + 0.5 * i for i in range(len(names))]
    layers = pd.DataFrame({"name": names, "type": prediction.layers["type"], "measured_s": measured,
                           "iqr_s": measured * 0.01, "repeats": 7, "noisy": False})
    return FakeMeasurement(layers, pd.DataFrame({"batch": [1, 2], "latency_s": [2e-3, 3e-3], "iqr_s": [1e-5, 1e-5],
                                                 "throughput_samples_per_s": [500.0, 666.7]}))


def test_report_writes_every_file_and_the_html_embeds_charts_and_all_layers(prediction: Prediction,
                                                                            tmp_path: Path) -> None:
    out = report_module.write_report(prediction, tmp_path / "report")
    assert {p.name for p in out.iterdir()} == FILES | {MARKER}  # and the marker listing them (test_report_safety)
    assert all((out / name).stat().st_size > 0 for name in FILES)
    page = (out / "index.html").read_text()
    for title in ("Roofline chart", "Where the time goes chart"):
        assert f'<svg class="chart" role="img" aria-label="{title}"' in page  # inline: the page needs no other file
    assert "<img" not in page and "Predicted against measured" not in page  # nothing measured: no such chart
    for name in prediction.layers["name"]:
        assert f'<td class="text">{html.escape(name)}</td>' in page
    data = json.loads((out / "report.json").read_text())
    assert data["format_version"] == report_module.REPORT_FORMAT_VERSION
    assert [row["name"] for row in data["layers"]] == prediction.layers["name"].tolist()
    assert data["totals"]["analysis"]["macs"] == prediction.analysis.totals["macs"]
    assert data["totals"]["measurement"] is None
    csv = pd.read_csv(out / "layers.csv")
    assert csv["name"].tolist() == prediction.layers["name"].tolist()
    assert csv["predicted_s"].sum() == pytest.approx(prediction.totals["predicted_latency_s"])
    markdown = (out / "report.md").read_text()
    assert "![Roofline](roofline.png)" in markdown and "| features.0.0 |" in markdown


def test_measured_report_joins_on_name_and_adds_the_comparison_chart(prediction: Prediction, tmp_path: Path) -> None:
    measurement = _measurement(prediction)
    out = report_module.write_report(prediction, tmp_path / "measured", measurement=measurement)
    assert {"predicted_vs_measured.png", "predicted_vs_measured.svg"} <= {p.name for p in out.iterdir()}
    assert 'aria-label="Predicted against measured chart"' in (out / "index.html").read_text()
    csv = pd.read_csv(out / "layers.csv").set_index("name")
    expected = measurement.layers.set_index("name")["measured_s"]
    pd.testing.assert_series_equal(csv["measured_s"], expected, check_names=False)
    pd.testing.assert_series_equal(csv["measured_over_predicted"], expected / csv["predicted_s"], check_names=False)
    totals = json.loads((out / "report.json").read_text())["totals"]["measurement"]
    assert totals["latency_s"] == 2e-3 and totals["batch"] == 1
    assert totals["sum_of_layers_s"] == pytest.approx(expected.sum())
    assert "measured in pass" not in (out / "report.md").read_text()  # not timed inside the pass: no column


class _Page(HTMLParser):
    """Every id in a page, every chart link with the text of its <title>, and every external reference."""

    def __init__(self) -> None:
        super().__init__()
        self.ids: list[str] = []
        self.links: dict[str, list[tuple[str, str]]] = {}  # chart id -> [(href, title text)]
        self.external: list[str] = []
        self._chart = ""
        self._open_link: list[str] | None = None

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        found = dict(attrs)
        if found.get("id"):
            self.ids.append(str(found["id"]))
        if tag == "figure":
            self._chart = str(found.get("id"))
        for name in ("src", "href", "xlink:href"):
            if str(found.get(name, "")).startswith(("http:", "https:", "//")):
                self.external.append(str(found[name]))
        if tag == "a" and str(found.get("href", "")).startswith("#"):
            self._open_link = [str(found["href"]), ""]
            self.links.setdefault(self._chart, []).append(("", ""))
        elif tag == "title" and self._open_link is not None:
            self._open_link.append("title")

    def handle_data(self, data: str) -> None:
        if self._open_link is not None and self._open_link[-1] == "title":
            self._open_link[1] += data

    def handle_endtag(self, tag: str) -> None:
        if tag == "a" and self._open_link is not None:
            self.links[self._chart][-1] = (self._open_link[0], self._open_link[1])
            self._open_link = None
        elif tag == "figure":
            self._chart = ""


def test_html_charts_carry_a_titled_link_per_point_and_ids_that_do_not_clash(prediction: Prediction,
                                                                            tmp_path: Path) -> None:
    out = report_module.write_report(prediction, tmp_path / "measured", measurement=_measurement(prediction))
    page = _Page()
    page.feed((out / "index.html").read_text())
    assert page.external == []  # the page reaches for nothing outside itself
    assert len(page.ids) == len(set(page.ids))  # three charts' SVG ids, prefixed apart, and the table rows
    layers = prediction.layers
    drawn = layers[(layers["flops"] > 0) & (layers["arithmetic_intensity"] > 0)]
    for chart, expected in (("chart-roofline", 2 * len(drawn)), ("chart-predicted_vs_measured", len(layers))):
        links = [link for link in page.links[chart] if link[0].startswith("#layer:")]
        assert len(links) == expected  # predicted and measured point per drawn layer; one per timed layer
        for href, title in links:
            name = href.removeprefix("#layer:")
            row = layers.set_index("name").loc[name]
            assert title.splitlines()[0] == f"{name} ({row['type']})"
            assert f"bytes: {format_bytes(row['bytes'])}" in title
            assert f"predicted: {format_time(row['predicted_s'])}" in title and "measured: " in title
            assert f"layer:{name}" in page.ids  # the table row the point links to
    bars = [href for href, _ in page.links["chart-time"]]
    assert {href.removeprefix("#type:") for href in bars if href.startswith("#type:")} == set(layers["type"])


def test_each_caption_is_printed_once_and_the_subtitle_names_the_source_once(tmp_path: Path) -> None:
    # A measured profile's name already says "(measured)"; the header said it twice (issue 14).
    profile = dataclasses.replace(_profile(), name="Test CPU (measured)", source="measured")
    out = report_module.write_report(predict(roofline.analyze("zoo:convnet"), profile), tmp_path / "r")
    page = (out / "index.html").read_text()
    data = json.loads((out / "report.json").read_text())
    subtitle = page.split('<p class="sub">', 1)[1].split("</p>", 1)[0]
    assert subtitle.startswith("Test CPU: cpu profile, measured. Precision fp32 (fp32 math), roofline prediction.")
    assert subtitle.count("measured") == 1
    for name in data["charts"]:
        svg = (out / f"{name}.svg").read_text()
        assert "Bars coloured by" not in svg and "marker area is proportional" not in svg  # not drawn in the chart
    assert page.count("marker area is proportional") == 1 and page.count("Bars coloured by the bound") == 1


def test_layers_timed_inside_the_pass_are_shown_and_the_most_slowed_named(prediction: Prediction, tmp_path: Path) -> None:
    measurement = _measurement(prediction)
    alone = measurement.layers["measured_s"]
    slowed = alone.idxmin()  # the fastest layer alone takes 100x longer inside the pass
    inside = alone.where(alone.index != slowed, 100 * alone)
    timed = dataclasses.replace(measurement, layers=measurement.layers.assign(in_pass_s=inside))
    out = report_module.write_report(prediction, tmp_path / "in-pass", measurement=timed)
    csv = pd.read_csv(out / "layers.csv").set_index("name")
    pd.testing.assert_series_equal(csv["measured_in_pass_s"], inside.set_axis(timed.layers["name"]), check_names=False)
    assert "measured in pass" in (out / "report.md").read_text()
    data = report_module.ReportData(prediction, report_module.joined_layers(prediction, timed.layers),
                                    pd.DataFrame(), timed)
    line = next(line for line in report_module.summary_lines(data) if line.startswith("Inside the full pass"))
    name = timed.layers.loc[slowed, "name"]
    assert f"slowed most in the pass: {name} ({format_time(inside[slowed])} against {format_time(alone[slowed])})" in line


def _written_notes(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """The notes of the last report written, kept up to date; charts replaced by stand-ins."""
    notes: list[str] = []

    def record(data: Any, directory: Path) -> dict[str, tuple[list[Path], str]]:
        notes[:] = data.notes
        return _quick_charts(data, directory)

    monkeypatch.setattr(report_module, "_write_all", record)
    return notes


def test_a_change_in_machine_speed_since_profiling_is_noted(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    profile = dataclasses.replace(_profile(), source="measured", metadata={"reference_flops_per_s": "8e10"})
    measured_profile = predict(roofline.analyze("zoo:convnet"), profile)
    measurement = _measurement(measured_profile)
    notes = _written_notes(monkeypatch)
    for name, reference in (("slower", 6e10), ("same", 8.4e10)):
        metadata = {**measurement.metadata, "reference_flops_per_s": reference}
        report_module.write_report(measured_profile, tmp_path / name, measurement=dataclasses.replace(measurement, metadata=metadata))
        speed = [note for note in notes if "of the speed" in note]
        if name == "slower":  # 75% of the profile's speed: predictions read 1/0.75 - 1 = 33% fast
            assert len(speed) == 1 and "ran at 75% of the speed" in speed[0] and "33% fast" in speed[0]
        else:  # 5% apart: within noise, not noted
            assert not speed


def test_a_pass_much_slower_than_its_layers_is_explained(prediction: Prediction, tmp_path: Path,
                                                         monkeypatch: pytest.MonkeyPatch) -> None:
    measurement = _measurement(prediction)
    layers_sum = float(measurement.layers["measured_s"].sum())
    notes = _written_notes(monkeypatch)
    for name, factor in (("slow pass", 2.0), ("like its layers", 1.05)):
        end_to_end = measurement.end_to_end.assign(latency_s=[factor * layers_sum, 3 * layers_sum])
        report_module.write_report(prediction, tmp_path / name.replace(" ", "-"),
                                   measurement=dataclasses.replace(measurement, end_to_end=end_to_end))
        gap = [note for note in notes if "sum of its layers timed alone" in note]
        assert (len(gap) == 1 and "took 2x the sum" in gap[0] and "reads low" in gap[0]
                and "--calibrated" in gap[0]) if factor == 2.0 else not gap
    slow = dataclasses.replace(measurement, end_to_end=measurement.end_to_end.assign(latency_s=[2 * layers_sum, 3 * layers_sum]))
    for profile, advice in ((_profile("gpu"), "on a GPU the pass is not modelled"),
                            (dataclasses.replace(_profile(), efficiency={"conv": 0.5}), "no pass model: measure it again")):
        other = predict(prediction.analysis, profile, calibrated=bool(profile.efficiency))
        report_module.write_report(other, tmp_path / f"advice-{profile.kind}-{other.calibrated}", measurement=slow)
        assert any(advice in note for note in notes), advice
    # Calibrated on a profile with a pass model, the prediction says what it expects for the pass.
    factors = {"conv": 0.5, "norm": 0.5, "activation": 0.5, "pool": 0.5, "gemm": 0.5, "memory": 0.5}
    profile = dataclasses.replace(_profile(), source="measured", efficiency=factors, pass_call_s=1e-3)
    in_pass = predict(prediction.analysis, profile, calibrated=True)
    end_to_end = measurement.end_to_end.assign(latency_s=[2 * layers_sum, 3 * layers_sum])
    report_module.write_report(in_pass, tmp_path / "in-pass", measurement=dataclasses.replace(measurement, end_to_end=end_to_end))
    gap = [note for note in notes if "sum of its layers timed alone" in note]
    t = in_pass.totals
    assert t["predicted_latency_s"] > 1.5 * t["sum_of_layers_s"]
    assert len(gap) == 1 and "the pass model" in gap[0] and format_time(t["predicted_latency_s"]) in gap[0]


def _snapshot(directory: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in directory.iterdir()}


def _quick_charts(data: object, directory: Path) -> dict[str, tuple[list[Path], str]]:
    """A stand-in for drawing (slow, and beside the point here): the swap does not depend on the pictures."""
    (directory / "roofline.png").write_bytes(b"\x89PNG stand-in")
    (directory / "roofline.svg").write_text("<svg/>")
    return {"roofline": ([directory / "roofline.png", directory / "roofline.svg"], "stand-in")}


def test_a_failed_write_leaves_no_report_or_the_previous_one(prediction: Prediction, tmp_path: Path,
                                                              monkeypatch: pytest.MonkeyPatch) -> None:
    out = tmp_path / "report"
    monkeypatch.setattr(report_module, "_write_charts", _quick_charts)

    def fail(*args: object) -> None:
        raise OSError("disk full (simulated)")

    with monkeypatch.context() as patch:
        patch.setattr(report_module, "_write_markdown", fail)  # charts, CSV and JSON already written by then
        with pytest.raises(OSError, match="simulated"):
            report_module.write_report(prediction, out)
    assert not out.exists()
    assert list(tmp_path.iterdir()) == []  # no staging directory left behind

    report_module.write_report(prediction, out)
    before = _snapshot(out)
    with monkeypatch.context() as patch:
        patch.setattr(report_module, "_write_html", fail)
        with pytest.raises(OSError, match="simulated"):
            report_module.write_report(prediction, out, measurement=_measurement(prediction))
    assert _snapshot(out) == before
    assert [p.name for p in tmp_path.iterdir()] == ["report"]

    report_module.write_report(prediction, out, measurement=_measurement(prediction))  # replaces the old one
    assert _snapshot(out) != before and json.loads((out / "report.json").read_text())["measurement"]


def test_refuses_to_replace_a_directory_that_is_not_a_report(prediction: Prediction, tmp_path: Path) -> None:
    (tmp_path / "notes.txt").write_text("mine")
    with pytest.raises(RooflineError, match="is not a directory roofline wrote"):
        report_module.write_report(prediction, tmp_path)
    assert (tmp_path / "notes.txt").read_text() == "mine"


@pytest.mark.skipif(torch.cuda.is_available(), reason="needs a machine without a CUDA GPU")
def test_gpu_profile_without_gpu_skips_measurement_and_says_so(tmp_path: Path) -> None:
    with pytest.warns(UserWarning, match="no CUDA GPU: measurement skipped"):
        out = roofline.report("zoo:mlp", _profile("gpu"), out=tmp_path / "gpu", progress=False)
    assert "no CUDA GPU: measurement skipped" in (out / "index.html").read_text()
    assert json.loads((out / "report.json").read_text())["measurement"] is None


@pytest.mark.filterwarnings("ignore:.*measured noisy")  # a 2 ms budget is noisy on a busy machine; not the point
def test_cpu_profile_measures_on_this_cpu(tmp_path: Path) -> None:
    out = roofline.report("zoo:mlp", _profile("cpu"), out=tmp_path / "cpu", progress=False, min_run_time_s=0.002)
    data = json.loads((out / "report.json").read_text())
    assert data["measurement"]["metadata"]["device_name"]
    assert all(row["measured_s"] > 0 for row in data["layers"])
    assert (out / "predicted_vs_measured.png").is_file()


def test_cli_report_prints_where_to_open_it(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "cli"
    code = main(["report", "zoo:mlp", "--hw", str(REPO / "roofline" / "hwprofiles" / "a100-80gb-sxm.yaml"), "--precision", "fp16",
                 "--no-measure", "--no-progress", "--out", str(out)])
    assert code == 0
    assert f"open {out / 'index.html'}" in capsys.readouterr().out
    data = json.loads((out / "report.json").read_text())
    assert data["precision"] == "fp16" and data["hardware"]["name"] == load_profile("a100-80gb-sxm").name
    assert any("Not measured" in note for note in data["notes"])


# ---- in a real browser ---------------------------------------------------------------------------------

RENDER_CHECK = REPO / "benchmarks" / "render_check.py"


def _chromium() -> None:
    sys.path.insert(0, str(RENDER_CHECK.parent))
    try:
        from render_check import find_browser
    finally:
        sys.path.pop(0)
    if find_browser() is None:
        pytest.skip("Chromium is not installed (Debian: apt-get install -y chromium)")


def test_report_renders_in_headless_chromium_without_errors(prediction: Prediction, tmp_path: Path) -> None:
    _chromium()
    out = report_module.write_report(prediction, tmp_path / "report", measurement=_measurement(prediction))
    screenshot = tmp_path / "shot.png"
    run = subprocess.run([sys.executable, str(RENDER_CHECK), str(out / "index.html"), "--screenshot", str(screenshot),
                          "--min-images", "3"], check=False, capture_output=True, text=True, timeout=240)
    assert run.returncode == 0, run.stdout + run.stderr
    assert "3 embedded images" in run.stdout
    assert screenshot.read_bytes()[:4] == b"\x89PNG"


def test_render_check_catches_a_script_error_and_a_broken_image(tmp_path: Path) -> None:
    _chromium()
    page = tmp_path / "index.html"
    page.write_text('<!DOCTYPE html><html><body><img alt="gone" src="gone.png">'
                    "<script>not_defined()</script></body></html>")
    run = subprocess.run([sys.executable, str(RENDER_CHECK), str(page), "--screenshot", str(tmp_path / "s.png"),
                          "--min-images", "0"], check=False, capture_output=True, text=True, timeout=240)
    assert run.returncode == 1
    assert "not_defined" in run.stderr and "BROKEN image linked gone" in run.stderr


@pytest.mark.filterwarnings("ignore:the machine is busy")  # a tiny measurement; its figures are not checked
def test_recalibrate_times_the_profile_again_before_predicting(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                              tiny_bench: Any) -> None:
    from roofline import calibrate

    measured = calibrate.measure_profile("cpu", progress=False, config=tiny_bench)
    notes = _written_notes(monkeypatch)
    report_module.report("zoo:mlp", measured, out=tmp_path / "r", measure=False, progress=False, recalibrate=True)
    assert any("efficiency ops timed again just before measuring" in note for note in notes)

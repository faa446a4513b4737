"""Charts draw what they are given: one point per layer with FLOPs, ceilings at the peaks, slopes at the bandwidths."""
from __future__ import annotations

import dataclasses
import itertools

import numpy as np
import pandas as pd
import pytest
from matplotlib.artist import Artist
from matplotlib.axes import Axes
from matplotlib.collections import PathCollection
from matplotlib.lines import Line2D
from matplotlib.patches import Rectangle
from matplotlib.text import Text

from roofline import plots
from roofline.hardware.profile import HardwareProfile, MemoryLevel

PEAKS = {"fp32": 4e12, "fp16": 16e12, "bf16": 16e12}
BANDWIDTHS = {"L2": 2e12, "DRAM": 100e9}
LEVELS = (MemoryLevel("L2", 4e6, BANDWIDTHS["L2"]), MemoryLevel("DRAM", 16e9, BANDWIDTHS["DRAM"]))


def _profile(kind: str = "cpu") -> HardwareProfile:
    return HardwareProfile(name="Test Device", kind=kind, vendor="test", source="datasheet", reference="tests",
                           peak_flops_per_s=PEAKS, memory_levels=LEVELS, overhead_s=2e-6)


def _layers(measured: bool) -> pd.DataFrame:
    """Ten layers; two have no FLOPs (a view and a copy), which a log axis cannot show."""
    rng = np.random.default_rng(3)
    n = 10
    flops = rng.integers(1_000, 10**9, n).astype(float)
    flops[[2, 7]] = 0
    nbytes = rng.integers(1_000, 10**7, n).astype(float)
    predicted = rng.uniform(1e-6, 1e-3, n)
    frame = pd.DataFrame({
        "name": [f"block.{i}" for i in range(n)],
        "type": ["Conv2d", "ReLU", "Flatten", "Linear", "Conv2d", "BatchNorm2d", "ReLU", "Dropout", "Linear", "GELU"],
        "flops": flops,
        "bytes": nbytes,
        "arithmetic_intensity": flops / nbytes,
        "predicted_s": predicted,
        "predicted_flops_per_s": flops / predicted,
        "share": predicted / predicted.sum(),
        "bound": ["compute", "memory:DRAM", "overhead", "compute", "memory:L2", "memory:DRAM", "memory:DRAM",
                  "overhead", "compute", "memory:DRAM"],
    })
    if measured:
        frame["measured_s"] = predicted * rng.uniform(0.3, 6.0, n)
        frame["measured_flops_per_s"] = frame["flops"] / frame["measured_s"]
    return frame


def _points(ax: Axes, prefix: str) -> int:
    return sum(len(np.asarray(c.get_offsets())) for c in plots.artists(ax, prefix, PathCollection))


def _xy(line: Line2D) -> tuple[np.ndarray, np.ndarray]:
    return np.asarray(line.get_xdata(), dtype=float), np.asarray(line.get_ydata(), dtype=float)


def test_roofline_chart_draws_one_point_per_layer_with_flops_and_the_profile_roofs() -> None:
    layers = _layers(measured=False)
    profile = _profile()
    chart = plots.roofline_chart(layers, profile, compute_type="fp32", model="toy", precision="fp32")
    ax = chart.figure.axes[0]

    assert _points(ax, "predicted:") == int((layers["flops"] > 0).sum()) == 8
    assert _points(ax, "measured:") == 0
    assert "2 layers with no FLOPs or no bytes" in chart.caption
    assert ax.get_xscale() == ax.get_yscale() == "log"
    # One ceiling per distinct peak (fp16 and bf16 share one line), each at the profile's value.
    ceilings = {a.get_gid(): a for a in plots.artists(ax, "ceiling:", Line2D)}
    assert set(ceilings) == {"ceiling:fp32", "ceiling:fp16/bf16"}
    assert set(_xy(ceilings["ceiling:fp32"])[1]) == {PEAKS["fp32"]}
    assert set(_xy(ceilings["ceiling:fp16/bf16"])[1]) == {PEAKS["fp16"]}
    # One slope per memory level: y = bandwidth * x, ending at the ridge point of the precision in force.
    for name, bandwidth in BANDWIDTHS.items():
        (slope,) = plots.artists(ax, f"slope:{name}", Line2D)
        x, y = _xy(slope)
        np.testing.assert_allclose(y / x, bandwidth)
        (ridge,) = plots.artists(ax, f"ridge:{name}", Line2D)
        np.testing.assert_allclose(_xy(ridge)[0], [PEAKS["fp32"] / bandwidth])
    labels = [t.get_text() for t in ax.texts]
    assert "fp32 peak 4 TFLOP/s" in labels and "DRAM 100 GB/s" in labels
    assert "toy" in ax.get_title(loc="left") and "Test Device" in ax.get_title(loc="left")


def test_roofline_chart_joins_predicted_and_measured_points_and_labels_without_overlap() -> None:
    layers = _layers(measured=True)
    chart = plots.roofline_chart(layers, _profile(), compute_type="fp16", model="toy", precision="fp16",
                                 top_labels=6)
    ax = chart.figure.axes[0]
    drawn = layers[layers["flops"] > 0]
    assert _points(ax, "measured:") == _points(ax, "predicted:") == len(drawn)
    joins = plots.artists(ax, "join:", Line2D)
    assert len(joins) == len(drawn)
    row = drawn.iloc[0]
    (join,) = plots.artists(ax, f"join:{row['name']}", Line2D)
    np.testing.assert_allclose(_xy(join)[1], [row["predicted_flops_per_s"], row["measured_flops_per_s"]])
    # The heaviest layers are labelled, and no two labels overlap.
    labels = plots.artists(ax, "label:", Text)
    assert labels and len(labels) <= 6
    chart.figure.canvas.draw()  # positions annotations
    renderer = chart.figure.canvas.get_renderer()  # type: ignore[attr-defined]
    boxes = [Text.get_window_extent(label, renderer) for label in labels]  # the text, not its leader line
    assert not any(a.overlaps(b) for i, a in enumerate(boxes) for b in boxes[i + 1:])
    assert f"label:{drawn.sort_values('share').iloc[-1]['name']}" in {label.get_gid() for label in labels}


def test_predicted_vs_measured_chart_has_identity_band_and_every_timed_layer() -> None:
    layers = _layers(measured=True)
    chart = plots.predicted_vs_measured_chart(layers, model="toy", device="test cpu")
    ax = chart.figure.axes[0]
    assert _points(ax, "layer:") == len(layers)
    (identity,) = plots.artists(ax, "identity", Line2D)
    np.testing.assert_allclose(*_xy(identity))
    assert plots.artists(ax, "band:2x", Artist)
    ratio = layers["measured_s"] / layers["predicted_s"]
    outside = int(((ratio > 2) | (ratio < 0.5)).sum())
    assert f"{len(layers) - outside} of {len(layers)} layers within 2x" in ax.get_title(loc="left")
    assert len(plots.artists(ax, "label:", Text)) <= outside


def test_time_chart_bars_are_the_top_layers_and_every_type_coloured_by_bound() -> None:
    layers = _layers(measured=True)
    types = layers.groupby("type", sort=False).agg(predicted_s=("predicted_s", "sum"),
                                                   measured_s=("measured_s", "sum"), bound=("bound", "first"))
    chart = plots.time_chart(layers, types.reset_index(), level_names=["L2", "DRAM"], title="toy", top=5)
    layer_ax, type_ax = chart.figure.axes
    predicted = plots.artists(layer_ax, "predicted-layer", Rectangle)
    assert len(predicted) == 5
    assert len(plots.artists(layer_ax, "measured-layer", Rectangle)) == 5
    assert len(plots.artists(type_ax, "predicted-type", Rectangle)) == len(types)
    # The top bar is the slowest layer by either figure, in its bound's colour.
    key = layers[["predicted_s", "measured_s"]].max(axis=1)
    slowest = layers.iloc[int(np.argmax(key.to_numpy()))]
    top_bar = max(predicted, key=lambda bar: bar.get_y())
    assert top_bar.get_width() == pytest.approx(slowest["predicted_s"])
    from matplotlib.colors import to_hex

    assert to_hex(top_bar.get_facecolor()) == plots.bound_colour(slowest["bound"], ["L2", "DRAM"]).lower()


def test_save_chart_writes_png_and_svg(tmp_path: object) -> None:
    chart = plots.roofline_chart(_layers(measured=False), _profile(), compute_type="fp32", model="toy",
                                 precision="fp32")
    png, svg = plots.save_chart(chart, tmp_path)  # type: ignore[arg-type]
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and png.stat().st_size > 10_000
    text = svg.read_text()
    assert "<svg" in text and "fp32 peak 4 TFLOP/s" in text  # text kept as text


def test_roofline_chart_from_a_real_prediction() -> None:
    import roofline
    from roofline.predict import predict

    prediction = predict(roofline.analyze("zoo:mlp"), _profile())
    layers = prediction.layers
    chart = plots.roofline_chart(layers, prediction.profile, compute_type="fp32", model="zoo:mlp",
                                 precision="fp32")
    assert _points(chart.figure.axes[0], "predicted:") == int((layers["flops"] > 0).sum())


def _lab(colour: str) -> np.ndarray:
    """CIE L*a*b* (D65) of an sRGB colour, to measure how far apart two colours look."""
    from matplotlib.colors import to_rgb

    rgb = np.array(to_rgb(colour))
    linear = np.where(rgb <= 0.04045, rgb / 12.92, ((rgb + 0.055) / 1.055) ** 2.4)
    xyz = np.array([[0.4124, 0.3576, 0.1805], [0.2126, 0.7152, 0.0722], [0.0193, 0.1192, 0.9505]]) @ linear
    f = np.cbrt(xyz / np.array([0.95047, 1.0, 1.08883]))
    return np.array([116 * f[1] - 16, 500 * (f[0] - f[1]), 200 * (f[1] - f[2])])


@pytest.mark.parametrize("levels", [["DRAM"], ["L2", "DRAM"], ["L1", "L2", "DRAM"], ["L1", "L2", "L3", "DRAM"],
                                    ["L1", "L2", "L3", "SLC", "DRAM"]])
def test_memory_levels_get_colours_a_reader_can_tell_apart(levels: list[str]) -> None:
    # Issue 14: on a four-level CPU, L2 and L3 were two blues 24 apart in lightness alone.
    colours = [plots.bound_colour(f"memory:{name}", levels) for name in levels]
    gaps = [float(np.linalg.norm(_lab(a) - _lab(b))) for a, b in itertools.pairwise(colours)]
    assert all(gap > 25 for gap in gaps), dict(zip(levels[1:], gaps))  # CIE76; ~2.3 is just noticeable
    lightness = [_lab(c)[0] for c in colours]
    # Fastest lightest, DRAM darkest, in clear steps: lightness is what a colour-blind reader still sees.
    assert all(a - b >= 12 for a, b in itertools.pairwise(lightness)), lightness
    assert colours[-1] == plots.bound_colour("memory:DRAM", ["DRAM"])  # DRAM looks the same on every profile
    others = {plots.bound_colour("compute", levels), plots.bound_colour("overhead", levels)}
    assert not others & set(colours)


def test_ridge_labels_of_close_levels_do_not_collide() -> None:
    # Three caches within 1.5x of each other put three ridges within a few points on one ceiling (issue 14).
    levels = (MemoryLevel("L1", 1e5, 3.0e12), MemoryLevel("L2", 1e6, 2.5e12), MemoryLevel("L3", 1e7, 2.0e12),
              MemoryLevel("DRAM", 1e10, 1e11))
    profile = dataclasses.replace(_profile(), memory_levels=levels)
    chart = plots.roofline_chart(_layers(measured=False), profile, compute_type="fp32", model="toy", precision="fp32")
    ax = chart.figure.axes[0]
    chart.figure.canvas.draw()
    renderer = chart.figure.canvas.get_renderer()  # type: ignore[attr-defined]
    labels = plots.artists(ax, "ridge-label:", Text)
    assert sorted(label.get_text() for label in labels) == sorted(f"{PEAKS['fp32'] / lv.bandwidth_bytes_per_s:.3g}"
                                                                  for lv in levels)
    boxes = [Text.get_window_extent(label, renderer) for label in labels]
    assert not any(a.overlaps(b) for i, a in enumerate(boxes) for b in boxes[i + 1:])
    for label in labels:  # each just below its own ridge, not wandered off
        (ridge,) = plots.artists(ax, f"ridge:{label.get_gid().partition(':')[2]}", Line2D)
        x, y = ax.transData.transform((_xy(ridge)[0][0], _xy(ridge)[1][0]))
        box = Text.get_window_extent(label, renderer)
        assert box.y1 < y and abs((box.x0 + box.x1) / 2 - x) < 40 * chart.figure.dpi / 72


def test_time_chart_title_and_legend_do_not_overlap() -> None:
    layers = _layers(measured=True)
    types = layers.groupby("type", sort=False).agg(predicted_s=("predicted_s", "sum"),
                                                   measured_s=("measured_s", "sum"), bound=("bound", "first"))
    chart = plots.time_chart(layers, types.reset_index(), level_names=["L2", "DRAM"], title="a long title " * 8)
    chart.figure.canvas.draw()
    renderer = chart.figure.canvas.get_renderer()  # type: ignore[attr-defined]
    title = chart.figure.get_suptitle()
    (legend,) = chart.figure.legends
    title_box = chart.figure._suptitle.get_window_extent(renderer)  # type: ignore[union-attr]
    legend_box = legend.get_window_extent(renderer)
    assert title and not title_box.overlaps(legend_box)
    for ax in chart.figure.axes:  # nor does either cover a plot
        assert not ax.get_window_extent(renderer).overlaps(legend_box)
    assert chart.caption not in [t.get_text() for t in chart.figure.texts]  # the report prints it, once

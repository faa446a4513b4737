"""Charts from the tables other stages computed: the roofline, predicted against measured, where the time goes.

Plots compute nothing about the model: they draw DataFrame columns (arithmetic_intensity,
predicted_flops_per_s, measured_s, ...) and the figures of a HardwareProfile. Each builder returns a
`Chart` (the matplotlib Figure plus a caption), so tests can read the drawn data back from the Axes
before `save_chart` writes PNG and SVG. Figures are made without pyplot, on the Agg canvas, so nothing
here touches a display or global figure state.

Artists carry gids that name what they show ("predicted:Conv2d", "ceiling:fp32", "slope:DRAM",
"ridge:DRAM", "band:2x", ...); `artists` finds them by prefix. Each layer's point or bar also carries a
url, `layer_link(name)` (`type_link` for a type's bar), which the SVG writer turns into an `<a>` around
that one element: the HTML report hangs its tooltip and its link to the table row on it.
Captions are returned, not drawn: the report prints each once, under its chart.
"""
from __future__ import annotations

import math
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar
from urllib.parse import quote

import matplotlib
import numpy as np
import pandas as pd
from matplotlib.artist import Artist
from matplotlib.axes import Axes
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from matplotlib.lines import Line2D
from matplotlib.patches import Patch, Rectangle
from matplotlib.ticker import FuncFormatter, MaxNLocator
from matplotlib.transforms import Bbox

from roofline.formatting import format_si, format_time
from roofline.hardware.profile import HardwareProfile, MemoryLevel

if TYPE_CHECKING:
    from matplotlib.typing import RcKeyType

__all__ = [
    "Chart",
    "artists",
    "bound_colour",
    "layer_link",
    "llm_devices_chart",
    "predicted_vs_measured_chart",
    "roofline_chart",
    "save_chart",
    "sweep_chart",
    "time_chart",
    "type_colours",
    "type_link",
]

# Colour-blind-safe qualitative palette (Okabe-Ito, then two greys' neighbours) for layer types.
_TYPE_PALETTE = ["#0072B2", "#E69F00", "#009E73", "#CC79A7", "#56B4E9", "#D55E00", "#F0E442", "#7F3C8D"]
_OTHER_COLOUR = "#9A9A9A"
_MAX_TYPES = 8
_COMPUTE_COLOUR = "#D55E00"
_OVERHEAD_COLOUR = "#8C8C8C"
_EFFICIENCY_COLOUR = "#009E73"  # bluish green (Okabe-Ito): below the roof for the kernel's own speed
# Memory levels, fastest lightest: sky, blue, violet, indigo, navy. Lightness alone left neighbouring
# levels too close to tell apart (issue 14: L2 and L3); these differ in hue as well (CIE76 > 25 between
# neighbours, lightness falling 13 or more), and a profile with fewer levels takes them spread out (first
# and last always), not the last few.
_MEMORY_SHADES = ["#6CC5EA", "#1E88D2", "#7B45B0", "#253C8C", "#101538"]
_LABEL_FONTSIZE = 7.2
ArtistT = TypeVar("ArtistT", bound=Artist)
_FONT: dict[RcKeyType, Any] = {"font.size": 9, "axes.titlesize": 11, "axes.labelsize": 10, "legend.fontsize": 8}


@dataclass(frozen=True)
class Chart:
    """One figure, the file stem it is saved under, and a caption saying what it leaves out."""

    name: str
    figure: Figure
    caption: str


def artists(ax: Axes, prefix: str, kind: type[ArtistT]) -> list[ArtistT]:
    """The artists of type `kind` in `ax` whose gid starts with `prefix` (how tests read what a chart drew)."""
    found: Iterable[Artist] = [*ax.collections, *ax.lines, *ax.patches, *ax.texts]
    return [a for a in found if isinstance(a, kind) and (a.get_gid() or "").startswith(prefix)]


def type_colours(types: Sequence[str], weights: Sequence[float]) -> dict[str, str]:
    """A colour per layer type: the `_MAX_TYPES` types with most weight (time) get their own, the rest grey."""
    totals = pd.Series(list(weights), index=list(types), dtype=float).groupby(level=0).sum()
    ranked = totals.sort_values(ascending=False, kind="stable").index.tolist()
    keep = ranked if len(ranked) <= _MAX_TYPES else ranked[: _MAX_TYPES - 1]
    colours = {t: _TYPE_PALETTE[i] for i, t in enumerate(keep)}
    return {t: colours.get(t, _OTHER_COLOUR) for t in ranked}


def bound_colour(bound: str, level_names: Sequence[str]) -> str:
    """Compute orange, efficiency green, overhead grey, memory bounds in blues that darken from the fastest
    level to DRAM."""
    if bound == "compute":
        return _COMPUTE_COLOUR
    if bound.startswith("efficiency"):
        return _EFFICIENCY_COLOUR
    if bound.startswith("memory"):
        level = bound.partition(":")[2]
        names = list(level_names)
        index = names.index(level) if level in names else len(names) - 1
        return _MEMORY_SHADES[_shade_index(index, len(names))]
    return _OVERHEAD_COLOUR


def _shade_index(index: int, levels: int) -> int:
    """Level `index` of `levels` spread over the shades: the slowest gets the darkest, one level alone too."""
    last = len(_MEMORY_SHADES) - 1
    if levels <= 1:
        return last
    return max(0, min(last, index * last // (levels - 1)))


def layer_link(name: str) -> str:
    """The url a layer's point or bar carries in the SVG: the id of its row in the HTML report's table."""
    return "#layer:" + quote(str(name), safe="")


def type_link(layer_type: str) -> str:
    """The url a layer type's bar carries: the id of its row in the report's by-type table."""
    return "#type:" + quote(str(layer_type), safe="")


def _type_handles(colours: dict[str, str]) -> list[Artist]:
    """Legend entries: one per coloured type, then one for all the grey ones."""
    handles: list[Artist] = [Patch(facecolor=c, edgecolor=c, label=t) for t, c in colours.items() if c != _OTHER_COLOUR]
    if _OTHER_COLOUR in colours.values():
        handles.append(Patch(facecolor=_OTHER_COLOUR, edgecolor=_OTHER_COLOUR, label="other types"))
    return handles


def _new_figure(width: float, height: float) -> Figure:
    with matplotlib.rc_context(_FONT):
        figure = Figure(figsize=(width, height))
    FigureCanvasAgg(figure)
    return figure


def _rate_unit(compute_type: str) -> str:
    return "OP/s" if compute_type.startswith("int") else "FLOP/s"


# ---- the roofline --------------------------------------------------------------------------------

def roofline_chart(layers: pd.DataFrame, profile: HardwareProfile, *, compute_type: str, model: str,
                   precision: str, top_labels: int = 10) -> Chart:
    """Layers on the device's roofline: x = FLOP/byte, y = FLOP/s, predicted (open) and measured (filled).

    `layers` needs name, type, flops, arithmetic_intensity, predicted_flops_per_s and share; with a
    measured_flops_per_s column each layer also gets its achieved point, joined to the predicted one.
    """
    with matplotlib.rc_context(_FONT):
        return _roofline_chart(layers, profile, compute_type, model, precision, top_labels)


def _roofline_chart(layers: pd.DataFrame, profile: HardwareProfile, compute_type: str, model: str,
                    precision: str, top_labels: int) -> Chart:
    figure = _new_figure(11.5, 6.6)
    figure.subplots_adjust(left=0.075, right=0.76, top=0.93, bottom=0.09)
    ax = figure.add_subplot()
    ax.set_xscale("log")
    ax.set_yscale("log")

    drawable = (layers["flops"] > 0) & (layers["arithmetic_intensity"] > 0) & (layers["predicted_flops_per_s"] > 0)
    shown = layers[drawable]
    left_out = int((~drawable).sum())
    has_measured = "measured_flops_per_s" in shown and bool((shown["measured_flops_per_s"] > 0).any())

    peak = profile.peak(compute_type)
    levels = [lv for lv in profile.memory_levels if lv.bandwidth_bytes_per_s]
    ridges = [peak / float(lv.bandwidth_bytes_per_s or 1.0) for lv in levels]
    x_values = [*shown["arithmetic_intensity"].tolist(), *ridges]
    y_values = [*shown["predicted_flops_per_s"].tolist()]
    if has_measured:
        y_values += shown.loc[shown["measured_flops_per_s"] > 0, "measured_flops_per_s"].tolist()
    x_lo, x_hi = (min(x_values) / 4, max(x_values) * 4) if x_values else (1e-2, 1e3)
    top_peak = max(profile.peak_flops_per_s.values())
    slowest = min(float(lv.bandwidth_bytes_per_s or 0.0) for lv in levels) if levels else peak
    y_lo = min([*y_values, slowest * x_lo]) / 3
    ax.set_xlim(x_lo, x_hi)
    ax.set_ylim(y_lo, top_peak * 4)

    taken: list[Bbox] = []  # label boxes placed so far, in display pixels
    _draw_ceilings(ax, profile, compute_type, x_lo, x_hi, min(ridges, default=x_lo), taken)
    _draw_slopes(ax, levels, peak, x_lo, taken)

    colours = type_colours(layers["type"].tolist(), layers["predicted_s"].tolist())
    sizes = 18 + 520 * shown["share"].to_numpy(dtype=float)
    for layer_type, colour in colours.items():
        mask = (shown["type"] == layer_type).to_numpy()
        if not mask.any():
            continue
        part = shown[mask]
        if "attainable_flops_per_s" in part:
            # Where each layer sits against its roof: from the roof at its intensity down to its predicted rate
            # (efficiency and overhead are what the drop is made of; predict's terms say how much of each).
            below = part[part["predicted_flops_per_s"] < 0.98 * part["attainable_flops_per_s"]]
            for _, row in below.iterrows():
                ax.plot([row["arithmetic_intensity"]] * 2, [row["attainable_flops_per_s"], row["predicted_flops_per_s"]],
                        color=colour, linewidth=0.6, linestyle=":", alpha=0.6, zorder=2, gid=f"below-roof:{row['name']}")
        points = ax.scatter(part["arithmetic_intensity"], part["predicted_flops_per_s"], s=sizes[mask],
                            facecolors="white", edgecolors=colour, linewidths=1.4, zorder=4,
                            gid=f"predicted:{layer_type}")
        points.set_urls([layer_link(name) for name in part["name"]])
        if has_measured:
            measured = part["measured_flops_per_s"] > 0
            for _, row in part[measured].iterrows():
                ax.plot([row["arithmetic_intensity"]] * 2, [row["predicted_flops_per_s"], row["measured_flops_per_s"]],
                        color=colour, linewidth=0.7, alpha=0.55, zorder=3, gid=f"join:{row['name']}")
            points = ax.scatter(part.loc[measured, "arithmetic_intensity"], part.loc[measured, "measured_flops_per_s"],
                                s=sizes[mask][measured.to_numpy()], color=colour, edgecolors="black", linewidths=0.4,
                                alpha=0.9, zorder=5, gid=f"measured:{layer_type}")
            points.set_urls([layer_link(name) for name in part.loc[measured, "name"]])

    heaviest = shown.sort_values("share", ascending=False, kind="stable")
    _place_labels(ax, figure, _distinct_spots(ax, heaviest, "arithmetic_intensity", "predicted_flops_per_s", top_labels))

    ax.set_xlabel("arithmetic intensity (FLOP/byte, eager, unfused)")
    ax.set_ylabel(f"attainable performance ({_rate_unit(compute_type)})")
    ax.grid(True, which="major", color="#E3E3E3", linewidth=0.6)
    ax.grid(True, which="minor", color="#F3F3F3", linewidth=0.4)
    ax.set_axisbelow(True)
    mode = "predicted and measured" if has_measured else "predicted"
    ax.set_title(f"{model} on {profile.name} @ {precision} ({compute_type} math): {mode} per layer",
                 loc="left", fontweight="bold")

    handles = _type_handles(colours)
    handles.append(Line2D([], [], marker="o", linestyle="", markerfacecolor="white", markeredgecolor="black",
                          label="predicted"))
    if has_measured:
        handles.append(Line2D([], [], marker="o", linestyle="", color="#555555", label="measured"))
    handles.append(Line2D([], [], marker="D", linestyle="", color="black", markersize=5, label="ridge point"))
    legend = ax.legend(handles=handles, loc="upper left", bbox_to_anchor=(1.01, 1.0), frameon=False,
                       title="layer type (size = share of time)", title_fontsize=8, alignment="left")
    legend.set_gid("legend")

    caption = f"{len(shown)} layers drawn; marker area is proportional to the layer's share of predicted time."
    if "attainable_flops_per_s" in shown and bool((shown["predicted_flops_per_s"] < 0.98 * shown["attainable_flops_per_s"]).any()):
        caption += (" A dotted line drops from a layer's roof at its intensity to its predicted rate: the gap is its "
                    "efficiency and overhead terms.")
    if left_out:
        caption += (f" {left_out} layer{'s' if left_out != 1 else ''} with no FLOPs or no bytes (views, copies, "
                    "lookups) cannot sit on a log axis and are left out.")
    return Chart("roofline", figure, caption)


def _draw_ceilings(ax: Axes, profile: HardwareProfile, compute_type: str, x_lo: float, x_hi: float,
                   first_ridge: float, taken: list[Bbox]) -> None:
    """One horizontal line per distinct peak; the precision in force solid from its first ridge, others dotted."""
    by_value: dict[float, list[str]] = {}
    for name, value in profile.peak_flops_per_s.items():
        by_value.setdefault(float(value), []).append(name)
    in_force = profile.peak(compute_type)
    # The ceiling in force is labelled first, so it gets the right-hand end; others slide left if they collide.
    for value, names in sorted(by_value.items(), key=lambda item: (item[0] != in_force, -item[0])):
        active = value == in_force
        key = "/".join(names)
        ax.plot([first_ridge if active else x_lo, x_hi], [value, value], color="black" if active else "#7A7A7A",
                linewidth=2.2 if active else 0.9, linestyle="-" if active else (0, (2, 2)), zorder=2,
                gid=f"ceiling:{key}")
        style = {"xytext": (-4, 2.5), "textcoords": "offset points", "ha": "right", "va": "bottom",
                 "fontsize": 8.5 if active else 7.5, "fontweight": "bold" if active else "normal",
                 "color": "black" if active else "#5A5A5A", "zorder": 6, "gid": f"ceiling-label:{key}",
                 "bbox": {"boxstyle": "round,pad=0.1", "fc": "white", "ec": "none", "alpha": 0.8}}
        text = f"{key} peak {format_si(value, _rate_unit(names[0]))}"
        _place_text(ax, taken, [{"text": text, "xy": (x_hi / 10 ** (0.45 * k), value), **style} for k in range(6)])


def _draw_slopes(ax: Axes, levels: Sequence[MemoryLevel], peak: float, x_lo: float, taken: list[Bbox]) -> None:
    """Bandwidth roofs y = bandwidth * x up to the peak in force; each ridge point marked and labelled."""
    names = [lv.name for lv in levels]
    for level in reversed(levels):  # DRAM's label first: it is the roof most layers meet
        bandwidth = float(level.bandwidth_bytes_per_s or 0.0)
        ridge = peak / bandwidth
        colour = bound_colour(f"memory:{level.name}", names)
        ax.plot([x_lo, ridge], [bandwidth * x_lo, peak], color=colour, linewidth=2.0, zorder=2,
                gid=f"slope:{level.name}")
        ax.plot([ridge], [peak], marker="D", markersize=5.5, color=colour, markeredgecolor="black",
                markeredgewidth=0.6, linestyle="", zorder=6, gid=f"ridge:{level.name}")
        ridge_style = {"text": f"{ridge:.3g}", "xy": (ridge, peak), "textcoords": "offset points", "ha": "center",
                       "va": "top", "fontsize": 7, "color": colour, "zorder": 6, "gid": f"ridge-label:{level.name}",
                       "bbox": {"boxstyle": "round,pad=0.1", "fc": "white", "ec": "none", "alpha": 0.85}}
        # Ridges of neighbouring levels sit close together on the same ceiling (issue 14: their labels
        # collided), so a label steps down, then sideways, until it is clear of every label placed so far.
        _place_text(ax, taken, [{**ridge_style, "xytext": offset} for offset in _RIDGE_OFFSETS])
        # The label runs along the slope, at the first point along it where it collides with nothing.
        (x0, y0), (x1, y1) = ax.transData.transform([(x_lo, bandwidth * x_lo), (ridge, peak)])
        angle = math.degrees(math.atan2(y1 - y0, x1 - x0))
        style = {"text": f"{level.name} {format_si(bandwidth, 'B/s')}", "xytext": (-3, 4),
                 "textcoords": "offset points", "rotation": angle, "rotation_mode": "anchor", "fontsize": 8,
                 "color": colour, "fontweight": "bold", "zorder": 6, "gid": f"slope-label:{level.name}",
                 "bbox": {"boxstyle": "round,pad=0.1", "fc": "white", "ec": "none", "alpha": 0.8}}
        anchors = [ax.transData.inverted().transform((x0 + f * (x1 - x0), y0 + f * (y1 - y0)))
                   for f in (0.12, 0.24, 0.36, 0.48, 0.6, 0.05)]
        _place_text(ax, taken, [{**style, "xy": tuple(anchor)} for anchor in anchors])


# Where a ridge label may go, in points from its ridge, nearest first: straight below, then down and sideways.
_RIDGE_OFFSETS = [(0, -6), (0, -15), (0, -24), (0, -33), (0, -42), (-14, -6), (14, -6), (-14, -15), (14, -15),
                  (-14, -24), (14, -24), (0, -51), (0, -60)]


def _place_text(ax: Axes, taken: list[Bbox], candidates: Sequence[dict[str, Any]]) -> None:
    """Annotate at the first candidate that stays inside the axes and clear of `taken`, else at the first."""
    renderer = ax.figure.canvas.get_renderer()  # type: ignore[attr-defined]
    inside = ax.get_window_extent(renderer)
    for options in candidates:
        label = ax.annotate(**options)
        box = label.get_window_extent(renderer)
        fits = box.x0 >= inside.x0 and box.x1 <= inside.x1 and box.y0 >= inside.y0 and box.y1 <= inside.y1
        if fits and not any(box.overlaps(other) for other in taken):
            taken.append(box)
            return
        label.remove()
    label = ax.annotate(**candidates[0])  # nowhere is free: an overlapping label beats a missing one
    taken.append(label.get_window_extent(renderer))


def _distinct_spots(ax: Axes, rows: pd.DataFrame, x: str, y: str, limit: int) -> list[tuple[float, float, str]]:
    """Label anchors for the first `limit` distinct spots among `rows` (in priority order).

    Identical layers (a transformer's twelve blocks) sit on one spot; it gets one label saying how many.
    """
    pixels = ax.transData.transform(rows[[x, y]].to_numpy(dtype=float))
    spots: list[list[Any]] = []  # [px, py, x, y, name, count]
    for (px, py), xv, yv, name in zip(pixels, rows[x], rows[y], rows["name"]):
        near = next((spot for spot in spots if abs(spot[0] - px) < 4 and abs(spot[1] - py) < 4), None)
        if near is not None:
            near[5] += 1
        else:
            spots.append([px, py, float(xv), float(yv), str(name), 1])
    return [(xv, yv, name if count == 1 else f"{name} (+{count - 1} more here)")
            for _, _, xv, yv, name, count in spots[:limit]]


# Candidate offsets (points) for a label around its anchor, nearest first.
_OFFSETS = [(7, 7), (7, -13), (-7, 7), (-7, -13), (12, 18), (12, -24), (-12, 18), (-12, -24), (0, 28), (0, -34),
            (22, 2), (-22, 2), (26, 32), (-26, 32), (26, -38), (-26, -38)]


def _place_labels(ax: Axes, figure: Figure, points: Sequence[tuple[float, float, str]]) -> None:
    """Greedy placement: each label takes the first offset whose box overlaps no placed box and stays inside.

    Boxes are computed from the text's measured size and the offset, so only placed labels are drawn.
    """
    renderer = figure.canvas.get_renderer()  # type: ignore[attr-defined]
    inside = ax.get_window_extent(renderer)
    taken: list[Bbox] = [text.get_window_extent(renderer) for text in ax.texts]  # ceiling and slope labels
    pixels_per_point = figure.dpi / 72
    pad = 2.0 * pixels_per_point
    for x, y, text in points:
        probe = ax.text(0, 0, text, fontsize=_LABEL_FONTSIZE)
        size = probe.get_window_extent(renderer)
        probe.remove()
        px, py = ax.transData.transform((x, y))
        for dx, dy in _OFFSETS:
            left = px + dx * pixels_per_point - (size.width if dx < 0 else 0.0)
            bottom = py + dy * pixels_per_point - (size.height if dy < 0 else 0.0)
            box = Bbox.from_bounds(left - pad, bottom - pad, size.width + 2 * pad, size.height + 2 * pad)
            fits = box.x0 >= inside.x0 and box.x1 <= inside.x1 and box.y0 >= inside.y0 and box.y1 <= inside.y1
            if fits and not any(box.overlaps(other) for other in taken):
                taken.append(box)
                ax.annotate(text, (x, y), xytext=(dx, dy), textcoords="offset points",
                            ha="left" if dx >= 0 else "right", va="bottom" if dy >= 0 else "top",
                            fontsize=_LABEL_FONTSIZE, color="#222222", zorder=7, gid=f"label:{text}",
                            bbox={"boxstyle": "round,pad=0.15", "fc": "white", "ec": "none", "alpha": 0.75},
                            arrowprops={"arrowstyle": "-", "color": "#777777", "linewidth": 0.5, "shrinkA": 0,
                                        "shrinkB": 3})
                break


# ---- predicted against measured --------------------------------------------------------------------

def predicted_vs_measured_chart(layers: pd.DataFrame, *, model: str, device: str, top_labels: int = 10) -> Chart:
    """Per-layer measured time against predicted time, log-log, with y = x and a 2x band either side.

    `layers` needs name, type, predicted_s and measured_s (NaN where a layer was not timed); a
    colour by type; the layers furthest outside the band are labelled.
    """
    with matplotlib.rc_context(_FONT):
        figure = _new_figure(9.0, 7.0)
        figure.subplots_adjust(left=0.1, right=0.75, top=0.91, bottom=0.09)
        ax = figure.add_subplot()
        ax.set_xscale("log")
        ax.set_yscale("log")
        timed = layers[(layers["predicted_s"] > 0) & (layers["measured_s"] > 0)]
        values = np.concatenate([timed["predicted_s"].to_numpy(float), timed["measured_s"].to_numpy(float)])
        lo, hi = (values.min() / 3, values.max() * 3) if len(values) else (1e-6, 1e-3)
        ax.set_xlim(lo, hi)
        ax.set_ylim(lo, hi)
        line = np.geomspace(lo, hi, 50)
        ax.fill_between(line, line / 2, line * 2, color="#E8EEF6", zorder=1, gid="band:2x", label="within 2x")
        ax.plot(line, line, color="black", linewidth=1.0, zorder=2, gid="identity", label="measured = predicted")
        colours = type_colours(layers["type"].tolist(), layers["predicted_s"].tolist())
        for layer_type, colour in colours.items():
            part = timed[timed["type"] == layer_type]
            if "predicted_low_s" in part and bool(part["predicted_low_s"].notna().any()):
                # A calibrated prediction's interval, as horizontal error bars on the predicted axis.
                bars = part[part["predicted_low_s"].notna()]
                ax.errorbar(bars["predicted_s"], bars["measured_s"], fmt="none", ecolor=colour, elinewidth=0.8,
                            alpha=0.6, zorder=3, gid=f"interval:{layer_type}",
                            xerr=[bars["predicted_s"] - bars["predicted_low_s"], bars["predicted_high_s"] - bars["predicted_s"]])
            points = ax.scatter(part["predicted_s"], part["measured_s"], s=26, color=colour, edgecolors="black",
                                linewidths=0.3, alpha=0.9, zorder=4, gid=f"layer:{layer_type}")
            points.set_urls([layer_link(name) for name in part["name"]])
        ratio = timed["measured_s"] / timed["predicted_s"]
        outside = timed[(ratio > 2) | (ratio < 0.5)]
        worst = outside.assign(_gap=np.abs(np.log(ratio[outside.index]))).sort_values("_gap", ascending=False, kind="stable")
        top = _distinct_spots(ax, worst, "predicted_s", "measured_s", top_labels)
        _place_labels(ax, figure, top)

        ax.set_xlabel("predicted time per layer (s)")
        ax.set_ylabel("measured time per layer (s)")
        ax.grid(True, which="major", color="#E3E3E3", linewidth=0.6)
        ax.set_axisbelow(True)
        within = len(timed) - len(outside)
        ax.set_title(f"{model} on {device}\nmeasured against predicted: {within} of {len(timed)} layers within 2x",
                     loc="left", fontweight="bold")
        handles = _type_handles(colours)
        handles += [Patch(facecolor="#E8EEF6", label="within 2x"), Line2D([], [], color="black", label="y = x")]
        ax.legend(handles=handles, loc="upper left", bbox_to_anchor=(1.01, 1.0), frameon=False)
        caption = (f"Above the line: slower than predicted. {len(outside)} layers outside the 2x band; "
                   "the furthest are labelled.")
        if len(timed) < len(layers):
            missing = len(layers) - len(timed)
            caption += f" {missing} layer{'s' if missing != 1 else ''} with no predicted or measured time left out."
        if "predicted_low_s" in timed and bool(timed["predicted_low_s"].notna().any()):
            caption += " Horizontal bars: each calibrated prediction's 80% interval."
    return Chart("predicted_vs_measured", figure, caption)


# ---- where the time goes ----------------------------------------------------------------------------

def time_chart(layers: pd.DataFrame, types: pd.DataFrame, *, level_names: Sequence[str], title: str,
               top: int = 20) -> Chart:
    """Bars of predicted (solid) and measured (hatched) time for the top layers and for each layer type.

    Both frames need predicted_s and bound (and measured_s when measured); `layers` is keyed by
    name, `types` by type. Bars are coloured by bound.
    """
    with matplotlib.rc_context(_FONT):
        has_measured = "measured_s" in layers and bool(layers["measured_s"].notna().any())
        rows = min(top, len(layers))
        figure = _new_figure(12.5, max(4.8, 0.28 * max(rows, len(types)) + 1.8))
        figure.set_layout_engine("constrained", h_pad=0.08)
        layer_ax, type_ax = figure.subplots(1, 2, gridspec_kw={"width_ratios": [1.25, 1.0]})
        key = layers[["predicted_s", "measured_s"]].max(axis=1) if has_measured else layers["predicted_s"]
        biggest = layers.loc[key.sort_values(ascending=False, kind="stable").index[:rows]]
        _bars(layer_ax, biggest, "name", level_names, has_measured, "layer")
        layer_ax.set_title(f"top {rows} layers by time", loc="left")
        type_key = types[["predicted_s", "measured_s"]].max(axis=1) if has_measured else types["predicted_s"]
        _bars(type_ax, types.loc[type_key.sort_values(ascending=False, kind="stable").index], "type", level_names,
              has_measured, "type")
        type_ax.set_title("time by layer type", loc="left")

        bounds = list(dict.fromkeys([*biggest["bound"], *types["bound"]]))
        handles: list[Artist] = [Patch(facecolor=bound_colour(b, level_names), label=f"{b}-bound") for b in bounds]
        if has_measured:
            handles.append(Patch(facecolor="white", edgecolor="black", label="predicted"))
            handles.append(Patch(facecolor="white", edgecolor="black", hatch="////", label="measured"))
        # Below the plots: at the top, the title and the legend shared one band and overprinted (issue 14).
        legend = figure.legend(handles=handles, loc="outside lower center", ncol=min(7, len(handles)), frameon=False)
        legend.set_gid("legend")
        figure.suptitle(title, x=0.01, ha="left", fontweight="bold", fontsize=11)
        caption = "Bars coloured by the bound the roofline predicts for the layer (or the type's largest share)."
        if not has_measured:
            caption += " Not measured: predicted time only."
    return Chart("time", figure, caption)


def _bars(ax: Axes, frame: pd.DataFrame, label_column: str, level_names: Sequence[str], has_measured: bool,
          gid: str) -> None:
    positions = np.arange(len(frame))[::-1]
    colours = [bound_colour(b, level_names) for b in frame["bound"]]
    height = 0.4 if has_measured else 0.7
    shift = height / 2 if has_measured else 0.0
    link = layer_link if label_column == "name" else type_link
    links = [link(str(v)) for v in frame[label_column]]
    bars: list[Rectangle] = list(ax.barh(positions + shift, frame["predicted_s"], height=height, color=colours,
                                         edgecolor="black", linewidth=0.3, gid=f"predicted-{gid}"))
    if has_measured:
        bars += ax.barh(positions - shift, frame["measured_s"].fillna(0.0), height=height, color=colours, alpha=0.55,
                        hatch="////", edgecolor="black", linewidth=0.3, gid=f"measured-{gid}")
        links = links * 2
    for bar, url in zip(bars, links):
        bar.set_url(url)
        bar.set_gid(f"{bar.get_gid()}:{url.partition(':')[2]}")  # one id per bar: the SVG's ids stay unique
    ax.set_yticks(positions, [str(v) for v in frame[label_column]], fontsize=7.5)
    ax.xaxis.set_major_locator(MaxNLocator(nbins=5))
    ax.xaxis.set_major_formatter(FuncFormatter(lambda v, _: format_time(v) if v else "0"))
    ax.set_xlabel("time per forward pass")
    ax.grid(True, axis="x", color="#E3E3E3", linewidth=0.6)
    ax.set_axisbelow(True)
    ax.set_ylim(-0.7, len(frame) - 0.3)


# ---- files --------------------------------------------------------------------------------------

def sweep_chart(table: pd.DataFrame, *, title: str) -> Chart:
    """A group sweep (explain.sweep_conv's table): predicted (and measured) time against the group count, beside
    the time the layer would take if it fell with its FLOPs, so the gap between the two lines is the lesson."""
    with matplotlib.rc_context(_FONT):
        figure = _new_figure(7.5, 4.6)
        figure.subplots_adjust(left=0.12, right=0.97, top=0.9, bottom=0.13)
        ax = figure.add_subplot()
        ax.set_xscale("log", base=2)
        ax.set_yscale("log")
        groups = table["groups"].to_numpy(dtype=float)
        first = float(table["predicted_s"].iloc[0])
        ax.plot(groups, first / table["flops_ratio"].to_numpy(dtype=float), linestyle="--", color=_OVERHEAD_COLOUR,
                label="if time fell with FLOPs", gid="sweep:flops")
        ax.plot(groups, table["predicted_s"], marker="o", color=_COMPUTE_COLOUR, label="predicted", gid="sweep:predicted")
        if "measured_s" in table:
            ax.plot(groups, table["measured_s"], marker="s", color=_MEMORY_SHADES[-1], label="measured",
                    gid="sweep:measured")
        for g, seconds, bound in zip(groups, table["predicted_s"], table["bound"], strict=True):
            ax.annotate(str(bound).split(" ")[0], (g, seconds), textcoords="offset points", xytext=(4, 6), fontsize=7)
        ax.set_xlabel("groups")
        ax.set_ylabel("time per call (s)")
        ax.set_title(title, loc="left")
        ax.grid(True, which="both", alpha=0.25)
        ax.legend(frameon=False)
    caption = (f"{len(table)} group counts; each predicted point is labelled with its bound. The dashed line is "
               "the first point's time divided by the FLOPs ratio.")
    return Chart("sweep", figure, caption)


def save_chart(chart: Chart, directory: str | Path, *, dpi: int = 100) -> list[Path]:
    """Write the chart as `<name>.png` and `<name>.svg` in `directory`; returns both paths."""
    directory = Path(directory)
    paths = [directory / f"{chart.name}.png", directory / f"{chart.name}.svg"]
    # Text stays text in the SVG (smaller, searchable); a fixed hash salt and no date keep files reproducible.
    with matplotlib.rc_context({"svg.fonttype": "none", "svg.hashsalt": "roofline"}):
        chart.figure.savefig(paths[0], dpi=dpi, facecolor="white")
        chart.figure.savefig(paths[1], facecolor="white", metadata={"Date": None})
    return paths


def llm_devices_chart(table: pd.DataFrame, *, model: str, batch: int) -> Chart:
    """Decode tokens/s of each device's split (roofline.serving.compare_devices): the group, and per device."""
    rows = table[table["fits"]] if "fits" in table else table
    figure = _new_figure(8.5, 1.0 + 0.55 * max(1, len(rows)))
    ax = figure.add_subplot(1, 1, 1)
    labels = [f"{r.device} x{int(r.devices)} (TP={int(r.tp)}, PP={int(r.pp)})" for r in rows.itertuples()]
    y = np.arange(len(rows))
    ax.barh(y + 0.2, rows["tokens_per_s"], height=0.38, color=_TYPE_PALETTE[0], label="tokens/s (the group)",
            gid="bar:group")
    ax.barh(y - 0.2, rows["tokens_per_s_per_device"], height=0.38, color=_TYPE_PALETTE[1],
            label="tokens/s per device", gid="bar:per-device")
    ax.set_yticks(y, labels)
    ax.invert_yaxis()
    ax.set_xlabel("decode tokens/s")
    shown = model if len(model) <= 48 else model[:45] + "..."
    ax.set_title(f"{shown}: batch {batch}", fontsize=9)
    ax.legend(loc="upper left", bbox_to_anchor=(1.01, 1.0))
    figure.tight_layout()
    caption = ("Predicted decode tokens/s (roofline terms, collectives on each profile's interconnect) for the "
               "smallest TP x PP of each device that holds weights, KV cache and activations; per device = group / "
               "devices. Devices where no split of up to 8 fits are left out.")
    return Chart("llm_devices", figure, caption)

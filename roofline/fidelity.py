"""Checks of a measurement against its prediction that say when a number cannot be right.

A layer measured faster than its roofline allows breaks physics as the profile states it: its measured
FLOP/s is above the peak in force, or its bytes/s above the bandwidth of the level it streams from. That
means the count, the profile or the timing is wrong, and the check says which figures disagree.
"""
from __future__ import annotations

import math
from typing import Any

import pandas as pd

from roofline.formatting import format_si, format_time
from roofline.predict import Prediction

__all__ = ["ROOF_MARGIN", "faster_than_roof", "roof_sentence"]

# A measured time may beat the roof by this much before it is flagged: timing noise (a timer's own error and
# a turbo clock the datasheet peak does not state). Beyond it the figures themselves disagree.
ROOF_MARGIN = 0.10


def faster_than_roof(prediction: Prediction, measured: pd.DataFrame, margin: float = ROOF_MARGIN) -> pd.DataFrame:
    """The layers of `measured` (name, measured_s) that ran faster than `prediction`'s roofline allows, with
    the rates that disagree: one row per layer, empty when none did."""
    layers = prediction.layers.set_index("name")
    ops = prediction.ops
    rows: list[dict[str, Any]] = []
    for name, seconds in zip(measured["name"], measured["measured_s"], strict=True):
        if name not in layers.index or not seconds or math.isnan(seconds):
            continue
        row = layers.loc[name]
        roof = float(row["roofline_s"])
        if roof <= 0 or seconds * (1 + margin) >= roof:
            continue
        own = ops[ops["layer"] == name]
        main = own.loc[own["roofline_s"].idxmax()]
        rate, limit, unit, what = ((float(row["flops"]) / seconds, float(main["peak_flops_per_s"]), "FLOP/s",
                                    f"the {main['compute_type']} peak") if main["roof"] == "compute" else
                                   (float(row["bytes"]) / seconds, float(main["bandwidth_bytes_per_s"]), "B/s",
                                    f"the {main['memory_level']} bandwidth"))
        rows.append({"name": name, "measured_s": seconds, "roofline_s": roof, "roof": str(main["roof"]),
                     "measured_rate": rate, "limit": limit, "unit": unit, "limit_name": what,
                     "times_the_roof": roof / seconds})
    return pd.DataFrame(rows, columns=["name", "measured_s", "roofline_s", "roof", "measured_rate", "limit", "unit",
                                       "limit_name", "times_the_roof"])


def roof_sentence(flagged: pd.DataFrame, margin: float = ROOF_MARGIN, top: int = 3) -> str | None:
    """One sentence naming the layers measured faster than the roof, with the figures, or None."""
    if not len(flagged):
        return None
    worst = flagged.sort_values("times_the_roof", ascending=False, kind="stable").head(top)
    listed = "; ".join(
        f"{r.name} measured {format_time(r.measured_s)} against a roofline of {format_time(r.roofline_s)}: "
        f"{format_si(r.measured_rate, r.unit)} above {r.limit_name} of {format_si(r.limit, r.unit)}"
        for r in worst.itertuples(index=False))
    return (f"{len(flagged)} layer{'s' if len(flagged) != 1 else ''} ran faster than the roofline allows (by more than "
            f"the {margin:.0%} margin for timing noise): {listed}. The count, the profile or the timing is wrong for "
            "these: a FLOP or byte count too high, a peak or bandwidth too low, or a timer that missed work.")

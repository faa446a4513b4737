"""Why is a layer slow, and what would change it; sweeps that teach; comparisons across devices.

Every sentence is built from the numbers of an Analysis and a Prediction (and a measurement when
given): intensity against the ridge point decides the bound, and each what-if re-costs the same
trace (another precision, a larger batch, fused bytes, more bandwidth) rather than guessing.
"""
from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import pandas as pd
import torch
from torch import nn

from roofline.analysis import Analysis, analyze
from roofline.errors import RooflineError, close_matches, positive_int
from roofline.formatting import format_bytes, format_si, format_time
from roofline.hardware.profile import HardwareProfile, MemoryLevel
from roofline.precision import MEASURABLE_DTYPES, PRECISIONS, get_precision
from roofline.predict import Prediction, batch_size, predict

__all__ = ["Explanation", "compare", "explain", "explain_model", "sweep_conv"]


@dataclass(frozen=True)
class Explanation:
    """One layer's diagnosis: the figures, the verdict in words, and the what-ifs."""

    layer: str
    facts: dict[str, Any]
    verdict: list[str]
    what_if: pd.DataFrame

    def text(self) -> str:
        f = self.facts
        lines = [
            f"{self.layer} ({f['type']}) on {f['hardware']} @ {f['precision']}",
            (f"  work: {format_si(f['flops'])}FLOP ({format_si(f['macs'])} MACs); bytes: "
             f"{format_bytes(f['bytes'])} eager ({format_bytes(f['weight_bytes'])} weights, "
             f"{format_bytes(f['activation_bytes'])} activations), {format_bytes(f['fused_bytes'])} if fused"),
            (f"  intensity {f['arithmetic_intensity']:.3g} FLOP/B vs ridge point {f['ridge_point']:.3g} FLOP/B "
             f"({f['memory_level']}); bound: {f['bound']}"),
            (f"  predicted {format_time(f['predicted_s'])} = max(compute {format_time(f['compute_s'])}, memory "
             f"{format_time(f['memory_s'])}) + overhead {format_time(f['overhead_s'])}; attainable "
             f"{format_si(f['attainable_flops_per_s'], 'FLOP/s')} of {format_si(f['peak_flops_per_s'], 'FLOP/s')} peak"),
        ]
        if f.get("measured_s"):
            lines.append(
                f"  measured {format_time(f['measured_s'])}: achieved {format_si(f['achieved_flops_per_s'], 'FLOP/s')}"
                f" = {f['fraction_of_roofline']:.0%} of the roofline's attainable rate"
            )
        lines += [f"  - {sentence}" for sentence in self.verdict]
        lines.append("  what if:")
        for row in self.what_if.itertuples(index=False):
            lines.append(f"    {row.change:<34} {format_time(row.predicted_s):>10}  ({row.speedup:.2f}x)  {row.note}")
        return "\n".join(lines)

    def to_dict(self) -> dict[str, Any]:
        return {"layer": self.layer, "facts": self.facts, "verdict": self.verdict,
                "what_if": self.what_if.to_dict(orient="records")}

    def __repr__(self) -> str:
        return self.text()


def _row(prediction: Prediction, layer: str) -> pd.Series:
    layers = prediction.layers
    if layer not in set(layers["name"]):
        raise RooflineError(f"no layer named {layer!r}{close_matches(layer, list(layers['name']))}")
    return layers.set_index("name").loc[layer]


def _with_bandwidth(profile: HardwareProfile, factor: float) -> HardwareProfile:
    levels = tuple(
        MemoryLevel(level.name, level.capacity_bytes,
                    level.bandwidth_bytes_per_s * factor if level.bandwidth_bytes_per_s else None, level.note)
        for level in profile.memory_levels
    )
    return dataclasses.replace(profile, name=f"{profile.name} x{factor:g} bandwidth", memory_levels=levels)


def explain(analysis: Analysis, layer: str, profile: HardwareProfile, *, measured_s: float | None = None,
            calibrated: bool = False) -> Explanation:
    """Diagnose one layer (a name from analysis.layers) on a profile."""
    prediction = predict(analysis, profile, calibrated=calibrated)
    row = _row(prediction, layer)
    p = analysis.precision
    weight_bytes = float(row["weight_bytes"])
    activation_bytes = float(row["bytes"]) - weight_bytes
    facts: dict[str, Any] = {
        "type": row["type"], "hardware": profile.name, "precision": p.name,
        "macs": int(row["macs"]), "flops": int(row["flops"]), "bytes": float(row["bytes"]),
        "weight_bytes": weight_bytes, "activation_bytes": activation_bytes, "fused_bytes": float(row["fused_bytes"]),
        "arithmetic_intensity": float(row["arithmetic_intensity"]), "ridge_point": float(row["ridge_point"]),
        "memory_level": row["memory_level"], "bound": row["bound"], "compute_s": float(row["compute_s"]),
        "memory_s": float(row["memory_s"]), "overhead_s": float(row["overhead_s"]),
        "predicted_s": float(row["predicted_s"]), "attainable_flops_per_s": float(row["attainable_flops_per_s"]),
        "peak_flops_per_s": prediction.peak_flops_per_s,
    }
    if measured_s:
        achieved = row["flops"] / measured_s
        facts.update(measured_s=measured_s, achieved_flops_per_s=achieved,
                     fraction_of_roofline=achieved / row["attainable_flops_per_s"] if row["attainable_flops_per_s"] else 0.0)
    return Explanation(layer, facts, _verdict(facts), _what_if(analysis, layer, profile, calibrated, facts))


def _verdict(f: dict[str, Any]) -> list[str]:
    sentences = []
    intensity, ridge = f["arithmetic_intensity"], f["ridge_point"]
    if f["bound"] == "overhead":
        sentences.append(
            f"Per-op overhead ({format_time(f['overhead_s'])}) exceeds both roofline times: the layer is too small "
            "to keep the device busy; batch more work per call or fuse it with its neighbours."
        )
    elif f["bound"] == "compute":
        sentences.append(
            f"Compute-bound: intensity {intensity:.3g} FLOP/B is {intensity / ridge:.1f}x the ridge point, so the "
            "ALUs set the speed; a faster compute type (lower precision) helps, more bandwidth does not."
        )
    else:
        sentences.append(
            f"Memory-bound on {f['memory_level']}: intensity {intensity:.3g} FLOP/B is {ridge / intensity:.1f}x below "
            f"the ridge point, so the memory system, not the ALUs, sets its speed; cutting FLOPs would not make "
            "it faster, cutting bytes would."
        )
    if f["weight_bytes"] > f["activation_bytes"] and f["bound"].startswith("memory"):
        sentences.append("Weights dominate its bytes: a larger batch reuses them and raises intensity; weight "
                         "quantization (w8a16, w4a16) cuts them directly.")
    elif f["bound"].startswith("memory"):
        sentences.append("Activations dominate its bytes: fusing it with its neighbours (keeping the tensors "
                         "on-chip) or lower-precision activations cut them.")
    if "fraction_of_roofline" in f:
        fraction = f["fraction_of_roofline"]
        sentences.append(
            f"Measured at {fraction:.0%} of its roofline"
            + (": the kernel leaves performance on the table (low occupancy, poor layout or a slow library path)."
               if fraction < 0.5 else ".")
        )
    return sentences


def _what_if(analysis: Analysis, layer: str, profile: HardwareProfile, calibrated: bool,
             facts: dict[str, Any]) -> pd.DataFrame:
    base = facts["predicted_s"]
    rows = []

    def add(change: str, seconds: float, note: str = "") -> None:
        rows.append({"change": change, "predicted_s": seconds, "speedup": base / seconds if seconds else float("inf"),
                     "note": note})

    for name in ("fp32", "bf16", "fp16", "int8", "fp8", "w8a16", "w4a16"):
        precision = PRECISIONS[name]
        if name == analysis.precision.name or precision.compute_type not in profile.peak_flops_per_s:
            continue
        other = predict(analysis.with_precision(precision), profile, calibrated=calibrated)
        add(f"precision {name}", float(_row(other, layer)["predicted_s"]), f"bound {_row(other, layer)['bound']}")
    for factor in (4, 16):
        other = predict(analysis.scaled_batch(factor), profile, calibrated=calibrated)
        per_sample = float(_row(other, layer)["predicted_s"]) / factor
        add(f"batch x{factor} (time per sample)", per_sample, f"bound {_row(other, layer)['bound']}")
    fused_level = profile.memory_level_for(facts["fused_bytes"])
    fused_memory = (facts["fused_bytes"] / fused_level.bandwidth_bytes_per_s if fused_level.bandwidth_bytes_per_s
                    else facts["memory_s"])
    add("fused with its neighbours", max(facts["compute_s"], fused_memory) + profile.overhead_s,
        "only boundary tensors move; one launch")
    faster = _with_bandwidth(profile, 2.0)
    add("2x memory bandwidth", float(_row(predict(analysis, faster, calibrated=calibrated), layer)["predicted_s"]))
    return pd.DataFrame(rows)


def explain_model(analysis: Analysis, profile: HardwareProfile, top: int = 10, calibrated: bool = False) -> pd.DataFrame:
    """The top layers by predicted time, each with a one-line diagnosis."""
    prediction = predict(analysis, profile, calibrated=calibrated)
    layers = prediction.layers.sort_values("predicted_s", ascending=False).head(top)
    rows = []
    for row in layers.itertuples(index=False):
        if row.bound == "compute":
            line = f"compute-bound, intensity {row.arithmetic_intensity:.3g} >= ridge {row.ridge_point:.3g}"
        elif row.bound == "overhead":
            line = "overhead-bound: too little work per op"
        else:
            line = (f"memory-bound on {row.memory_level}, intensity {row.arithmetic_intensity:.3g} < ridge "
                    f"{row.ridge_point:.3g}")
        rows.append({"name": row.name, "type": row.type, "predicted_s": row.predicted_s, "share": row.share,
                     "bound": row.bound, "diagnosis": line})
    return pd.DataFrame(rows)


def sweep_conv(channels: int, size: tuple[int, int], groups: Sequence[int], profile: HardwareProfile, *,
               batch: int = 1, kernel: int = 3, precision: str = "fp32", measure: bool = False,
               calibrated: bool = False, device: str = "cpu", progress: bool = True) -> pd.DataFrame:
    """A C -> C, k x k convolution at each group count: MACs, bytes, intensity, predicted (and measured) time.

    FLOPs fall as 1/groups while the bytes (input and output activations) stay almost constant, so
    intensity falls below the ridge point and the layer turns memory-bound: latency falls far less
    than FLOPs.
    """
    for what, value in (("channels", channels), ("kernel", kernel), ("batch", batch), *zip(("height", "width"), size)):
        positive_int(what, value)
    if not groups:
        raise RooflineError("groups must list at least one group count")
    bad = [g for g in groups if g < 1 or channels % g]
    if bad:
        raise RooflineError(f"groups {bad} do not divide {channels} channels")
    rows = []
    for g in groups:
        with torch.device("meta"):
            conv = nn.Conv2d(channels, channels, kernel, padding=kernel // 2, groups=g, bias=False)
            x = torch.randn(batch, channels, *size)
        analysis = analyze(conv, inputs=[x], precision=precision, warn_unsupported=False)
        layer = predict(analysis, profile, calibrated=calibrated).layers.iloc[0]
        rows.append({
            "groups": g, "macs": int(layer["macs"]), "params": int(analysis.totals["params"]),
            "bytes": float(layer["bytes"]), "arithmetic_intensity": float(layer["arithmetic_intensity"]),
            "ridge_point": float(layer["ridge_point"]), "bound": layer["bound"],
            "predicted_s": float(layer["predicted_s"]),
        })
    table = pd.DataFrame(rows)
    if measure:
        table["measured_s"] = _measure_convs(channels, size, groups, batch, kernel, precision, device, progress)
        table["measured_speedup"] = table["measured_s"].iloc[0] / table["measured_s"]
    table["flops_ratio"] = table["macs"].iloc[0] / table["macs"]
    table["predicted_speedup"] = table["predicted_s"].iloc[0] / table["predicted_s"]
    return table


def _measure_convs(channels: int, size: tuple[int, int], groups: Sequence[int], batch: int, kernel: int,
                   precision: str, device: str, progress: bool) -> list[float]:
    from tqdm import tqdm

    from roofline.timing import time_callable

    dtype = MEASURABLE_DTYPES.get(get_precision(precision).name)
    if dtype is None:
        raise RooflineError(f"precision {precision} is not measurable here; measure fp32, bf16 or fp16")
    x = torch.randn(batch, channels, *size, device=device, dtype=dtype)
    times = []
    for g in tqdm(groups, desc="measuring convolutions", disable=not progress, leave=False):
        conv = nn.Conv2d(channels, channels, kernel, padding=kernel // 2, groups=g, bias=False).to(device, dtype).eval()

        def run(conv: nn.Module = conv) -> None:
            with torch.inference_mode():
                conv(x)

        times.append(time_callable(run, device=device).median_s)
    return times


def explain_sweep(table: pd.DataFrame) -> str:
    """The lesson of a group sweep in three sentences, from its own numbers."""
    first, last = table.iloc[0], table.iloc[-1]
    text = (
        f"From groups={first.groups} to groups={last.groups}, MACs fall {first.macs / last.macs:.0f}x while bytes "
        f"fall only {first.bytes / last.bytes:.2f}x, so intensity drops from {first.arithmetic_intensity:.3g} to "
        f"{last.arithmetic_intensity:.3g} FLOP/B against a ridge point of {first.ridge_point:.3g}: "
        + (f"the layer goes from {first.bound} to {last.bound}." if first.bound != last.bound
           else f"the layer stays {first.bound}-bound on this device.")
        + f" Predicted latency falls {first.predicted_s / last.predicted_s:.1f}x."
    )
    if "measured_s" in table:
        text += (f" Measured latency falls {first.measured_s / last.measured_s:.1f}x: library kernels for grouped "
                 "and depthwise convolution also reach a lower fraction of bandwidth than dense ones.")
    return text


def compare(analysis: Analysis, profiles: Sequence[HardwareProfile], precisions: Sequence[str],
            batches: Sequence[int] = (1,), calibrated: bool = False) -> pd.DataFrame:
    """Device x precision x batch: predicted latency, throughput, memory-bound share, speed-up, bound changes.

    A combination the device has no peak for is listed with a reason, never with a number.
    """
    if not batches:
        raise RooflineError("batches must list at least one batch size")
    for batch in batches:
        positive_int("batch size", batch)
    base_batch = batch_size(analysis)
    rows = []
    reference: Prediction | None = None
    for profile in profiles:
        for name in precisions:
            precision = get_precision(name)
            for batch in batches:
                row: dict[str, Any] = {"device": profile.name, "precision": precision.name, "batch": batch}
                if precision.compute_type not in profile.peak_flops_per_s:
                    row["note"] = f"no {precision.compute_type} peak on this device"
                    rows.append(row)
                    continue
                scaled = analysis.with_precision(precision)
                if batch != base_batch:
                    scaled = scaled.scaled_batch(batch / base_batch)
                prediction = predict(scaled, profile, calibrated=calibrated)
                totals = prediction.totals
                if reference is None:
                    reference = prediction
                changed = _bound_changes(reference, prediction)
                row.update(
                    predicted_latency_s=totals["predicted_latency_s"],
                    throughput_samples_per_s=totals["throughput_samples_per_s"],
                    memory_bound_fraction=totals["memory_bound_time_fraction"],
                    # throughput ratio, so rows at other batch sizes compare fairly
                    speedup=totals["throughput_samples_per_s"] / reference.totals["throughput_samples_per_s"],
                    bound_changes=len(changed),
                    changed_layers=", ".join(changed[:5]) + (" ..." if len(changed) > 5 else ""),
                    note="",
                )
                rows.append(row)
    return pd.DataFrame(rows)


def _bound_changes(reference: Prediction, other: Prediction) -> list[str]:
    """Layers whose bound kind (compute / memory / overhead) differs from the reference's."""

    def kind(bound: str) -> str:
        return bound.split(":")[0]

    a = reference.layers.set_index("name")["bound"].map(kind)
    b = other.layers.set_index("name")["bound"].map(kind)
    return [name for name in a.index if name in b.index and a[name] != b[name]]

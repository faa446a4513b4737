"""Why is a layer slow, and what would change it; sweeps that teach; comparisons across devices.

Nothing here computes a time: every figure is a term of roofline.predict's one model of time (compute,
memory at its level, efficiency, overhead, module call, pass penalty, the combine rule), rendered, and
every what-if calls predict again with one input changed (precision, batch, bandwidth, another
profile) or asks it for the fused group (Prediction.fused_group).
"""
from __future__ import annotations

import dataclasses
import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import pandas as pd
import torch
from torch import nn

from roofline.analysis import Analysis, analyze
from roofline.errors import RooflineError, close_matches, positive_int
from roofline.formatting import format_bytes, format_si, format_time
from roofline.hardware.profile import HardwareProfile
from roofline.precision import PRECISIONS, get_precision
from roofline.predict import (
    LATENCY_TERMS,
    PASS_TERMS,
    TERM_COLUMNS,
    Prediction,
    batch_size,
    format_percent,
    overhead_exit_batch,
    overhead_sentence,
    predict,
)

__all__ = ["Explanation", "compare", "compare_notes", "explain", "explain_model", "sweep_conv"]

# The per-op terms an explanation carries (and its JSON), beside the op's identity.
_OP_TERMS = ["op", "op_class", "compute_type", "memory_level", "roof", "efficiency", *TERM_COLUMNS]


@dataclass(frozen=True)
class Explanation:
    """One layer's diagnosis: its terms (from the prediction), the verdict in words, and the what-ifs."""

    layer: str
    facts: dict[str, Any]
    terms: dict[str, Any]
    ops: pd.DataFrame
    verdict: list[str]
    what_if: pd.DataFrame

    def text(self) -> str:
        f, t = self.facts, self.terms
        lines = [
            f"{self.layer} ({f['type']}) on {f['hardware']} @ {f['precision']}"
            + (" (calibrated)" if f["calibrated"] else " (plain roofline: a bound on speed, not an estimate)"),
            (f"  work: {format_si(f['flops'])}FLOP ({format_si(f['macs'])} MACs); bytes: "
             f"{format_bytes(f['bytes'])} eager ({format_bytes(f['weight_bytes'])} weights, "
             f"{format_bytes(f['activation_bytes'])} activations), {format_bytes(f['fused_bytes'])} at its boundary"),
            (f"  intensity {f['arithmetic_intensity']:.3g} FLOP/B vs ridge point {f['ridge_point']:.3g} FLOP/B "
             f"({f['compute_type']} peak over {f['memory_level']}); roof: {t['roof']}; bound: {t['bound_label']}"),
            f"  time, {_rule_words(t['rule'])}:",
            *_term_lines(t),
        ]
        if f.get("measured_s"):
            lines.append(
                f"  measured {format_time(f['measured_s'])}: achieved {format_si(f['achieved_flops_per_s'], 'FLOP/s')}"
                f" = {format_percent(f['fraction_of_roofline'])} of the roofline's attainable rate"
            )
        lines += [f"  - {sentence}" for sentence in self.verdict]
        lines.append("  what if:")
        for row in self.what_if.itertuples(index=False):
            lines.append(f"    {row.change:<40} {format_time(row.predicted_s):>10} against {format_time(row.baseline_s):>10}"
                         f"  ({row.speedup:.2f}x)  {row.note}")
        return "\n".join(lines)

    def to_dict(self) -> dict[str, Any]:
        return {"layer": self.layer, "facts": self.facts, "terms": self.terms,
                "ops": self.ops.to_dict(orient="records"), "verdict": self.verdict,
                "what_if": self.what_if.to_dict(orient="records")}

    def __repr__(self) -> str:
        return self.text()


def _rule_words(rule: str) -> str:
    if rule == "max":
        return "GPU rule per op: max(kernel, launch overhead), the launch hiding behind a longer kernel"
    return "CPU rule per op: kernel + dispatch overhead, plus one module call per layer"


def _term_lines(t: dict[str, Any]) -> list[str]:
    """The layer's time as the sum of its terms, each with where it comes from; they add up exactly."""
    ops = t["op_count"]
    lines = [(f"      roofline     {format_time(t['roofline_s']):>10}   each op's max(compute, memory): compute "
             f"{format_time(t['compute_s'])}, memory {format_time(t['memory_s'])} ({ops} op{'s' * (ops != 1)})")]
    if t["calibrated"]:
        lines.append(f"    + efficiency   {format_time(t['efficiency_s']):>10}   {t['efficiency_source']}")
    overhead = (f"launch {format_time(t['overhead_s'])} in all, {format_time(t['overhead_s'] - t['exposed_overhead_s'])} "
                "of it hidden behind kernels" if t["rule"] == "max"
                else f"{t['overhead_source']}")
    lines.append(f"    + overhead     {format_time(t['exposed_overhead_s']):>10}   {overhead}")
    if t["module_call_s"]:
        lines.append(f"    + module call  {format_time(t['module_call_s']):>10}   one Python nn.Module call (measured)")
    if t.get("collective_s"):
        lines.append(f"    + collectives  {format_time(t['collective_s']):>10}   tensor-parallel collectives on the interconnect")
    lines.append(f"    = predicted    {format_time(t['predicted_s']):>10}   the layer alone, as `predict` gives it")
    if t["in_pass"]:
        lines.append(f"    + in a pass    {format_time(t['pass_penalty_s']):>10}   fresh output buffers "
                     f"{format_time(t['pass_fresh_s'])}, cold weights {format_time(t['pass_cold_weight_s'])}, "
                     f"cold calls {format_time(t['pass_call_s'])} (the pass model)")
        lines.append(f"    = in the pass  {format_time(t['in_pass_s']):>10}")
    return lines


def _row(prediction: Prediction, layer: str) -> pd.Series:
    layers = prediction.layers
    if layer not in set(layers["name"]):
        raise RooflineError(f"no layer named {layer!r}{close_matches(layer, list(layers['name']))}")
    return layers.set_index("name").loc[layer]


def _with_bandwidth(profile: HardwareProfile, factor: float) -> HardwareProfile:
    levels = tuple(
        dataclasses.replace(level, bandwidth_bytes_per_s=level.bandwidth_bytes_per_s * factor if level.bandwidth_bytes_per_s else None)
        for level in profile.memory_levels
    )
    return dataclasses.replace(profile, name=f"{profile.name} x{factor:g} bandwidth", memory_levels=levels)


def efficiency_source(prediction: Prediction, ops: pd.DataFrame) -> str:
    """Where the efficiency in force for these ops came from: class, factor, when measured, on which sizes, fit."""
    if not prediction.calibrated:
        return "plain roofline: every op at 100% of its roof"
    profile = prediction.profile
    parts = []
    keys = ["op_class", "group_rate"] if "group_rate" in ops else ["op_class"]
    for key, group in ops.groupby(keys, sort=False):
        op_class = key[0]
        factor = float(group["efficiency"].iloc[0])
        own = profile.efficiency_for(str(op_class), str(group["memory_level"].iloc[0]))
        if own is None:
            parts.append(f"{op_class}: no factor measured, the profile's median class ({format_percent(factor)})")
            continue
        date = profile.metadata.get("recalibrated") or profile.metadata.get("date", "?")
        # How well the class's line fits the sizes it was fitted on: residual r = log(measured / line).
        errors = [abs(math.exp(-r) - 1) for r in prediction.line_residuals(str(op_class))]
        evidence = (f", {len(errors)} sizes, line within {format_percent(max(errors))} of each" if errors else "")
        rate = float(group["group_rate"].iloc[0]) if "group_rate" in group else 1.0
        line = factor / rate
        raised = (f", raised from its class's {format_percent(own)}: it streams from "
                  f"{group['memory_level'].iloc[0]}, deeper than the sizes the line was fitted at" if line > own * (1 + 1e-9) else "")
        grouped = (f"; grouped, {int(group['channels_per_group'].iloc[0])} channels per group, at {format_percent(rate)} "
                   f"of dense's rate (measured: narrow groups fill fewer vector lanes), so at {format_percent(factor)}"
                   if rate < 1.0 else "")
        parts.append(f"{op_class} runs at {format_percent(line)} of its roof on this machine "
                     f"(measured {date[:10]}{evidence}{raised}){grouped}")
    return "; ".join(parts) or "no ops"


def overhead_source(prediction: Prediction, ops: pd.DataFrame) -> str:
    """Where the per-op overhead in force came from."""
    if not len(ops):
        return "no ops"
    if prediction.calibrated:
        parts = [f"{c} {format_time(float(g['overhead_s'].iloc[0]))} x{len(g)}"
                 + ("" if c in prediction.profile.fixed_overhead_s else " (the profile's per-op figure)")
                 for c, g in ops.groupby("op_class", sort=False)]
        return "fixed cost per call of each class's line: " + ", ".join(parts)
    return (f"the profile's per-op dispatch cost {format_time(prediction.profile.overhead_s)} x{len(ops)} op"
            + ("s" if len(ops) != 1 else ""))


def layer_terms(prediction: Prediction, layer: str) -> tuple[dict[str, Any], pd.DataFrame]:
    """A layer's terms, straight from the prediction (so explain and predict can never disagree), and its ops."""
    row = _row(prediction, layer)
    ops = prediction.ops[prediction.ops["layer"] == layer]
    terms: dict[str, Any] = {column: float(row[column]) for column in (*TERM_COLUMNS, *PASS_TERMS)}
    terms.update(
        roof=str(row["roof"]), bound=str(row["bound"]), bound_label=str(row["bound_label"]),
        efficiency=float(row["efficiency"]), rule=prediction.rule, calibrated=prediction.calibrated,
        in_pass=prediction.in_pass, op_count=len(ops),
        efficiency_source=efficiency_source(prediction, ops), overhead_source=overhead_source(prediction, ops),
    )
    return terms, ops[_OP_TERMS].reset_index(drop=True)


def explain(analysis: Analysis, layer: str, profile: HardwareProfile, *, measured_s: float | None = None,
            calibrated: bool = False, other_profiles: Sequence[HardwareProfile] = ()) -> Explanation:
    """Diagnose one layer (a name from analysis.layers) on a profile."""
    prediction = predict(analysis, profile, calibrated=calibrated)
    row = _row(prediction, layer)
    terms, ops = layer_terms(prediction, layer)
    weight_bytes = float(row["weight_bytes"])
    facts: dict[str, Any] = {
        "type": row["type"], "hardware": profile.name, "precision": analysis.precision.name, "calibrated": calibrated,
        "macs": int(row["macs"]), "flops": int(row["flops"]), "bytes": float(row["bytes"]),
        "weight_bytes": weight_bytes, "activation_bytes": float(row["bytes"]) - weight_bytes,
        "fused_bytes": float(row["fused_bytes"]), "arithmetic_intensity": float(row["arithmetic_intensity"]),
        "ridge_point": float(row["ridge_point"]), "memory_level": row["memory_level"],
        "compute_type": row["compute_type"], "attainable_flops_per_s": float(row["attainable_flops_per_s"]),
        "peak_flops_per_s": profile.peak(str(row["compute_type"])), "batch": batch_size(analysis),
    }
    if measured_s:
        achieved = row["flops"] / measured_s
        facts.update(measured_s=measured_s, achieved_flops_per_s=achieved,
                     fraction_of_roofline=achieved / row["attainable_flops_per_s"] if row["attainable_flops_per_s"] else 0.0)
    what_if = _what_if(prediction, layer, other_profiles)
    return Explanation(layer, facts, terms, ops, _verdict(facts, terms, what_if, prediction), what_if)


def _verdict(f: dict[str, Any], t: dict[str, Any], what_if: pd.DataFrame, prediction: Prediction) -> list[str]:
    sentences = []
    intensity, ridge = f["arithmetic_intensity"], f["ridge_point"]
    roof_words = (f"compute roof {format_time(t['roofline_s'])}" if t["roof"] == "compute"
                  else f"{t['roof']} roof {format_time(t['roofline_s'])}")
    if t["bound"] == "efficiency":
        sentences.append(
            f"{roof_words}, but the layer runs at {format_percent(t['efficiency'])} of it: {t['efficiency_source']}. "
            "The kernel, not the " + ("ALUs" if t["roof"] == "compute" else "memory system")
            + f", sets its speed: {format_time(t['efficiency_s'])} of its {format_time(t['predicted_s'])} is time "
            f"above the roof, which an implementation reaching the roof (a faster library path, a fused or compiled "
            f"kernel) would save. The calibrated line scales with the roof, so the what-ifs below move it in "
            "proportion."
        )
    elif t["bound"] == "overhead":
        per_sample = what_if[what_if["change"].str.startswith("batch")]
        better = per_sample[per_sample["speedup"] > 1.05]
        best = better.loc[better["speedup"].idxmax()] if len(better) else None
        advice = (f"a larger batch amortises it ({best['change']}: {best['speedup']:.2f}x per sample)"
                  if best is not None else "a larger batch does not amortise it here")
        sentences.append(
            f"Overhead-bound: {format_time(t['exposed_overhead_s'] + t['module_call_s'])} of its "
            f"{format_time(t['predicted_s'])} is per-op {'launch' if t['rule'] == 'max' else 'dispatch'} cost "
            f"against a {roof_words}: the layer is too small to keep the device busy; {advice}, and fusing it with "
            "its neighbours saves launches."
        )
    elif t["bound"] == "compute":
        sentences.append(
            f"Compute-bound: intensity {intensity:.3g} FLOP/B is {intensity / ridge:.1f}x the ridge point, so the "
            "ALUs set the speed; a faster compute type (lower precision) helps, more bandwidth does not."
        )
    else:
        sentences.append(
            f"Memory-bound on {f['memory_level']}: intensity {intensity:.3g} FLOP/B is {ridge / max(intensity, 1e-12):.1f}x "
            "below the ridge point, so the memory system, not the ALUs, sets its speed; cutting FLOPs would not make "
            "it faster, cutting bytes would."
        )
    if t["bound"].startswith("memory"):
        if f["weight_bytes"] > f["activation_bytes"]:
            sentences.append("Weights dominate its bytes: a larger batch reuses them and raises intensity; weight "
                             "quantization (w8a16, w4a16) cuts them directly.")
        else:
            sentences.append("Activations dominate its bytes: fusing it with its neighbours (keeping the tensors "
                             "on-chip) or lower-precision activations cut them.")
    if "fraction_of_roofline" in f:
        fraction = f["fraction_of_roofline"]
        sentences.append(
            f"Measured at {format_percent(fraction)} of its roofline"
            + (": the kernel leaves performance on the table (low occupancy, poor layout or a slow library path)."
               if fraction < 0.5 else ".")
        )
    regime = overhead_sentence(prediction)
    if regime:
        sentences.append("The whole model: " + regime)
    return sentences


def _what_if(prediction: Prediction, layer: str, other_profiles: Sequence[HardwareProfile]) -> pd.DataFrame:
    """Each row: the same model of time with one input changed, against this layer's own predicted time."""
    analysis, profile, calibrated = prediction.analysis, prediction.profile, prediction.calibrated
    base = float(_row(prediction, layer)["predicted_s"])
    rows = []

    def add(change: str, seconds: float, baseline: float = base, note: str = "") -> None:
        rows.append({"change": change, "predicted_s": seconds, "baseline_s": baseline,
                     "speedup": baseline / seconds if seconds else float("inf"), "note": note})

    for name in ("fp32", "bf16", "fp16", "int8", "fp8", "w8a16", "w4a16"):
        precision = PRECISIONS[name]
        if name == analysis.precision.name or precision.compute_type not in profile.peak_flops_per_s:
            continue
        other = _row(predict(analysis.with_precision(precision), profile, calibrated=calibrated), layer)
        add(f"precision {name}", float(other["predicted_s"]), note=f"bound {other['bound_label']}")
    for factor in (4, 16):
        other = _row(predict(analysis.scaled_batch(factor), profile, calibrated=calibrated), layer)
        add(f"batch x{factor} (time per sample)", float(other["predicted_s"]) / factor,
            note=f"bound {other['bound_label']}")
    fused = prediction.fused_group(layer)
    together = f"{len(fused.layers)} layers" if len(fused.layers) > 1 else "the layer alone"
    add("fused with its neighbours" if len(fused.layers) > 1 else "its ops fused into one kernel", fused.predicted_s,
        fused.unfused_s, f"{together} ({', '.join(fused.layers[1:]) or layer}): only "
        f"{format_bytes(fused.boundary_bytes)} of {format_bytes(fused.eager_bytes)} move; one overhead")
    faster = _with_bandwidth(profile, 2.0)
    other = _row(predict(analysis, faster, calibrated=calibrated), layer)
    add("2x memory bandwidth", float(other["predicted_s"]), note=f"bound {other['bound_label']}")
    for other_profile in other_profiles:
        if analysis.precision.compute_type not in other_profile.peak_flops_per_s:
            continue
        on_other = calibrated and bool(other_profile.efficiency)
        other = _row(predict(analysis, other_profile, calibrated=on_other), layer)
        add(f"on {other_profile.name}", float(other["predicted_s"]),
            note=f"bound {other['bound_label']}" + ("" if on_other or not calibrated else " (plain: no calibration)"))
    return pd.DataFrame(rows)


def explain_model(analysis: Analysis, profile: HardwareProfile, top: int = 10, calibrated: bool = False) -> pd.DataFrame:
    """The top layers by predicted time, each with a one-line diagnosis built from its terms."""
    prediction = predict(analysis, profile, calibrated=calibrated)
    layers = prediction.layers.sort_values("predicted_s", ascending=False).head(top)
    rows = []
    for row in layers.itertuples(index=False):
        if row.bound == "compute":
            line = f"compute-bound, intensity {row.arithmetic_intensity:.3g} >= ridge {row.ridge_point:.3g}"
        elif row.bound == "overhead":
            line = (f"overhead-bound: {format_time(row.exposed_overhead_s + row.module_call_s)} of overhead against a "
                    f"{format_time(row.roofline_s)} {row.roof} roof")
        elif row.bound == "efficiency":
            line = (f"below its roof: {row.roof} roof {format_time(row.roofline_s)}, but the kernel runs at "
                    f"{format_percent(row.efficiency)} of it on this machine")
        else:
            line = (f"memory-bound on {row.memory_level}, intensity {row.arithmetic_intensity:.3g} < ridge "
                    f"{row.ridge_point:.3g}")
        rows.append({"name": row.name, "type": row.type, "predicted_s": row.predicted_s, "share": row.share,
                     "roofline_s": row.roofline_s, "efficiency_s": row.efficiency_s,
                     "overhead_s": row.exposed_overhead_s + row.module_call_s, "bound": row.bound_label,
                     "diagnosis": line})
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
            "ridge_point": float(layer["ridge_point"]), "bound": layer["bound_label"],
            "roofline_s": float(layer["roofline_s"]), "efficiency_s": float(layer["efficiency_s"]),
            "overhead_s": float(layer["exposed_overhead_s"] + layer["module_call_s"]),
            "predicted_s": float(layer["predicted_s"]),
        })
    table = pd.DataFrame(rows)
    if measure:
        times, speedups, spreads = _measure_convs(channels, size, groups, batch, kernel, precision, device, progress)
        table["measured_s"] = times
        table["measured_speedup"] = speedups  # in alternation with the first group count, not from the times
        table["measured_speedup_spread"] = spreads
    table["flops_ratio"] = table["macs"].iloc[0] / table["macs"]
    table["predicted_speedup"] = table["predicted_s"].iloc[0] / table["predicted_s"]
    return table


def _measure_convs(channels: int, size: tuple[int, int], groups: Sequence[int], batch: int, kernel: int,
                   precision: str, device: str, progress: bool) -> tuple[list[float], list[float], list[float]]:
    """Per group count: its median time, its speed-up over the first group count measured in alternation
    with it (roofline.timing.time_ratio: the machine's drift cancels in the ratio), and that ratio's spread."""
    from tqdm import tqdm

    from roofline.measure.device import check_device, float_dtype
    from roofline.timing import time_ratio

    device = check_device(device)  # the one device/precision check every measurer shares
    dtype = float_dtype(precision, device, "sweep --measure")
    x = torch.randn(batch, channels, *size, device=device, dtype=dtype)

    def runner(g: int) -> Callable[[], None]:
        conv = nn.Conv2d(channels, channels, kernel, padding=kernel // 2, groups=g, bias=False).to(device, dtype).eval()

        def run() -> None:
            with torch.inference_mode():
                conv(x)

        return run

    reference = runner(groups[0])
    times, speedups, spreads = [], [], []
    for g in tqdm(groups, desc="measuring convolutions (in alternation with the first)", disable=not progress,
                  leave=False):
        ratio = time_ratio(reference, runner(g), blocks=8, block_s=0.03, device=device)
        times.append(ratio.b.median_s)
        speedups.append(ratio.median)
        spreads.append(ratio.spread)
    return times, speedups, spreads


def explain_sweep(table: pd.DataFrame) -> str:
    """The lesson of a group sweep in three sentences, from its own numbers."""
    first, last = table.iloc[0], table.iloc[-1]
    text = (
        f"From groups={first.groups} to groups={last.groups}, MACs fall {first.macs / last.macs:.0f}x while bytes "
        f"fall only {first.bytes / last.bytes:.2f}x, so intensity drops from {first.arithmetic_intensity:.3g} to "
        f"{last.arithmetic_intensity:.3g} FLOP/B against a ridge point of {first.ridge_point:.3g}: "
        + (f"the layer goes from {first.bound} to {last.bound}." if first.bound != last.bound
           else f"the layer stays {first.bound}-bound on this device.")
        + f" Predicted latency falls {first.predicted_s / last.predicted_s:.3g}x."
    )
    if "measured_s" in table:
        text += (f" Measured in alternation, it falls {last.measured_speedup:.3g}x (block ratios within "
                 f"{last.measured_speedup_spread:.0%}) against {last.predicted_speedup:.3g}x predicted"
                 + (": library kernels for grouped and depthwise convolution reach a lower fraction of their roof "
                    "than dense ones." if last.measured_speedup < 0.8 * last.predicted_speedup else "."))
    return text


def compare(analysis: Analysis, profiles: Sequence[HardwareProfile], precisions: Sequence[str],
            batches: Sequence[int] = (1,), calibrated: bool = False) -> pd.DataFrame:
    """Device x precision x batch: predicted latency, throughput, the terms of the latency, what bounds it,
    speed-up and bound changes against the first cell; where a cell is in the overhead regime, the smallest
    batch (of those given, else searched) at which it leaves it.

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
                on_profile = calibrated and bool(profile.efficiency)
                prediction = predict(scaled, profile, calibrated=on_profile)
                totals = prediction.totals
                if reference is None:
                    reference = prediction
                changed = _bound_changes(reference, prediction)
                exit_batch = (overhead_exit_batch(scaled, profile, on_profile, [b for b in batches if b > batch] or None)
                              if prediction.overhead_regime else None)
                row.update(
                    predicted_latency_s=totals["predicted_latency_s"],
                    throughput_samples_per_s=totals["throughput_samples_per_s"],
                    **{term: totals[term] for term in LATENCY_TERMS},
                    memory_bound_fraction=totals["memory_bound_time_fraction"],
                    compute_bound_fraction=totals["compute_bound_time_fraction"],
                    efficiency_bound_fraction=totals["efficiency_bound_time_fraction"],
                    overhead_bound_fraction=totals["overhead_bound_time_fraction"],
                    leaves_overhead_at_batch=exit_batch,
                    # throughput ratio, so rows at other batch sizes compare fairly
                    speedup=totals["throughput_samples_per_s"] / reference.totals["throughput_samples_per_s"],
                    bound_changes=len(changed),
                    changed_layers=", ".join(changed[:5]) + (" ..." if len(changed) > 5 else ""),
                    calibrated=on_profile,
                    note="" if on_profile or not calibrated else "plain: the profile has no calibration",
                )
                rows.append(row)
    return pd.DataFrame(rows)




def compare_notes(table: pd.DataFrame) -> list[str]:
    """Sentences under a comparison: which cells launch or dispatch overhead sets, and the batch that leaves it."""
    if "overhead_bound_fraction" not in table:
        return []
    regime = table[table["overhead_bound_fraction"].fillna(0.0) > 0.5]
    if not len(regime):
        return []
    notes = [(f"{len(regime)} of {int(table['overhead_bound_fraction'].notna().sum())} cells are more than half "
             "overhead-bound: per-op launch or dispatch cost, not the device's compute or memory, sets those times, "
             "so they tie across devices and precisions.")]
    for (device, batch), cells in regime.groupby(["device", "batch"], sort=False):
        exits = cells["leaves_overhead_at_batch"].dropna()
        where = (f"leaves the overhead regime at batch {int(exits.min())}" if len(exits)
                 else "does not leave it at any batch tried")
        notes.append(f"{device} at batch {batch} ({', '.join(cells['precision'])}): {where}.")
    return notes


def _bound_changes(reference: Prediction, other: Prediction) -> list[str]:
    """Layers whose bound kind (compute / memory / overhead) differs from the reference's."""

    def kind(bound: str) -> str:
        return bound.split(":")[0]

    a = reference.layers.set_index("name")["bound"].map(kind)
    b = other.layers.set_index("name")["bound"].map(kind)
    return [name for name in a.index if name in b.index and a[name] != b[name]]

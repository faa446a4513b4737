"""Analysis + HardwareProfile -> predicted time per op and per layer. Never runs the model.

The model is an eager, unfused roofline, op by op (as PyTorch runs it in eager mode):
- compute time = FLOPs / peak of the precision's compute type;
- memory time = bytes moved / bandwidth of the memory level the op's working set streams from
  (hierarchical roofline: an op whose inputs and outputs fit in a cache is bounded by that cache);
- time = max(compute, memory) + the profile's per-op overhead (dispatch or kernel launch) on a CPU,
  where dispatch and execution take turns; max(compute, memory, overhead) on a GPU, where the host
  queues kernel launches while earlier kernels run, so launch cost hides behind long kernels.
A layer's time is the sum of its ops, plus on a CPU the profile's measured cost of one Python
module call (`module_call_s`), which even a layer with no op pays. Its bound is whichever of
compute, memory or overhead is the largest part of that time.

Calibrated mode uses, per op class, the line fitted by `roofline hw measure` on the device: time =
fixed per-call cost + roofline time / efficiency (profile.fixed_overhead_s, profile.efficiency), so
it still explains itself: "conv at 62% of the attainable rate plus 90 us per call, as convolutions
measure on this machine".

Two times per layer. `predicted_s` is the layer alone, repeated, as `measure` times it: its code,
weights and output buffer stay warm in cache. `in_pass_s` is the layer inside a full forward pass,
where the layers before it have evicted them; calibrated on a profile that timed its ops that way
(profile.pass_efficiency: on a CPU, each op called once per cycle over all of them), it uses that
line, and otherwise equals `predicted_s`. The end-to-end latency is the sum of `in_pass_s`.
"""
from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass
from functools import cached_property
from typing import Any

import numpy as np
import pandas as pd

from roofline.analysis import Analysis
from roofline.errors import RooflineError
from roofline.formatting import (
    format_bytes,
    format_markdown,
    format_si,
    format_table,
    format_time,
    json_records,
    json_value,
)
from roofline.hardware.profile import HardwareProfile, MemoryLevel
from roofline.precision import Precision, get_precision
from roofline.trace import UNUSED_NAME

__all__ = ["Prediction", "predict", "render"]


def batch_size(analysis: Analysis) -> int:
    """The batch of the traced inputs: the leading dimension of the first input."""
    inputs = analysis.trace.inputs
    return int(inputs[0][0]) if inputs and inputs[0] else 1


@dataclass(frozen=True)
class Prediction:
    """Predicted per-op and per-layer times of one Analysis on one HardwareProfile."""

    analysis: Analysis
    profile: HardwareProfile
    calibrated: bool = False

    @property
    def precision(self) -> Precision:
        return self.analysis.precision

    @cached_property
    def peak_flops_per_s(self) -> float:
        return self.profile.peak(self.precision.compute_type)

    @cached_property
    def ops(self) -> pd.DataFrame:
        """Per op call: compute, memory and overhead time, the level it streams from, the bound."""
        records = self.analysis.records.copy()
        levels = self._levels
        # The fastest level whose capacity holds the op's working set, else the slowest (DRAM/HBM).
        capacities = np.array([level.capacity_bytes or np.inf for level in levels], dtype=float)
        capacities[-1] = np.inf
        working_set = records["bytes"].to_numpy(dtype=float)
        level_index = np.argmax(working_set[:, None] <= capacities[None, :], axis=1)
        bandwidth = np.array([level.bandwidth_bytes_per_s for level in levels], dtype=float)[level_index]
        records["memory_level"] = [levels[i].name for i in level_index]
        records["bandwidth_bytes_per_s"] = bandwidth
        records["compute_s"] = records["flops"] / self.peak_flops_per_s
        records["memory_s"] = records["bytes"] / bandwidth
        roofline_s = np.maximum(records["compute_s"], records["memory_s"])
        records["efficiency"] = self._efficiency(records["op_class"], records["memory_level"])
        records["overhead_s"] = self._overhead(records["op_class"])
        records["predicted_s"] = self._op_time(roofline_s / records["efficiency"], records["overhead_s"])
        if self.in_pass:
            efficiency = self._efficiency(records["op_class"], records["memory_level"], in_pass=True)
            overhead = self._overhead(records["op_class"], in_pass=True)
            records["in_pass_s"] = self._op_time(roofline_s / efficiency, overhead)
        else:
            records["in_pass_s"] = records["predicted_s"]
        records["ridge_point"] = self.peak_flops_per_s / bandwidth
        records["attainable_flops_per_s"] = np.minimum(
            self.peak_flops_per_s, records["arithmetic_intensity"] * bandwidth
        )
        return records

    @cached_property
    def _levels(self) -> list[MemoryLevel]:
        """The memory levels with a known bandwidth, fastest first; the last is where streaming ops read."""
        levels = [level for level in self.profile.memory_levels if level.bandwidth_bytes_per_s]
        if not levels:
            raise RooflineError(
                f"profile {self.profile.name!r} has no memory bandwidth; measure it: roofline hw measure --save FILE"
            )
        return levels

    @property
    def in_pass(self) -> bool:
        """Whether times inside a full pass differ from times alone: calibrated, on a profile that
        measured its ops as in a pass (HardwareProfile.pass_efficiency)."""
        return self.calibrated and bool(self.profile.pass_efficiency)

    def _op_time(self, roofline_s: pd.Series, overhead_s: pd.Series) -> pd.Series:
        if self.profile.kind == "gpu":
            return np.maximum(roofline_s, overhead_s)
        return roofline_s + overhead_s

    def _efficiency(self, op_class: pd.Series, level: pd.Series, in_pass: bool = False) -> pd.Series:
        if not self.calibrated:
            return pd.Series(1.0, index=op_class.index)
        factors = self.profile.pass_efficiency if in_pass else self.profile.efficiency
        if not factors:
            raise RooflineError(
                f"profile {self.profile.name!r} has no efficiency factors for calibrated prediction;"
                " make a measured profile with: roofline hw measure --save FILE"
            )
        # A class the profile has no factor for gets the median class (in-cache factors only).
        default = float(np.median([value for key, value in factors.items() if "@" not in key] or list(factors.values())))
        found = [self.profile.efficiency_for(c, lvl, in_pass) for c, lvl in zip(op_class, level, strict=True)]
        return pd.Series([default if f is None else f for f in found], index=op_class.index, dtype=float)

    def _overhead(self, op_class: pd.Series, in_pass: bool = False) -> pd.Series:
        """Per-op overhead: the class's fitted fixed cost when calibrated, else the profile's one figure."""
        fixed = dict(self.profile.pass_fixed_overhead_s if in_pass else self.profile.fixed_overhead_s) if self.calibrated else {}
        return op_class.map(lambda c: fixed.get(c, self.profile.overhead_s)).astype(float)

    @cached_property
    def layers(self) -> pd.DataFrame:
        """Per layer (rows join the analysis and measurement on `name`)."""
        ops = self.ops
        times = ["compute_s", "memory_s", "overhead_s", "predicted_s", "in_pass_s"]
        sums = ops.groupby("layer", sort=False)[times].sum()
        # The level that carries most of the layer's bytes names its memory bound.
        main_level = ops.sort_values("bytes", ascending=False).groupby("layer", sort=False)["memory_level"].first()
        layers = self.analysis.layers[["name", "type", "macs", "flops", "params", "weight_bytes", "bytes",
                                       "fused_bytes", "arithmetic_intensity", "ops"]].copy()
        layers = layers.join(sums, on="name").join(main_level, on="name")
        for column in times:
            layers[column] = layers[column].fillna(0.0)
        layers["memory_level"] = layers["memory_level"].fillna(self._levels[-1].name)
        if self.profile.kind == "cpu" and self.profile.module_call_s:
            # Every row is one module call, which a CPU pays in Python before its ops run.
            calls = layers["name"] != UNUSED_NAME
            layers.loc[calls, "overhead_s"] += self.profile.module_call_s
            layers.loc[calls, ["predicted_s", "in_pass_s"]] += self.profile.module_call_s
        level_bandwidth = {level.name: level.bandwidth_bytes_per_s for level in self.profile.memory_levels}
        bandwidth = layers["memory_level"].map(level_bandwidth).astype(float)
        layers["ridge_point"] = self.peak_flops_per_s / bandwidth
        layers["attainable_flops_per_s"] = np.minimum(self.peak_flops_per_s, layers["arithmetic_intensity"] * bandwidth)
        layers["predicted_flops_per_s"] = (layers["flops"] / layers["predicted_s"].where(layers["predicted_s"] > 0)).fillna(0.0)
        layers["bound"] = [
            _bound(c, m, o, level)
            for c, m, o, level in zip(layers["compute_s"], layers["memory_s"], layers["overhead_s"], layers["memory_level"])
        ]
        total = layers["predicted_s"].sum()
        layers["share"] = layers["predicted_s"] / total if total else 0.0
        return layers

    @cached_property
    def totals(self) -> dict[str, Any]:
        layers = self.layers
        latency = float(layers["in_pass_s"].sum())  # a forward pass: each layer once, after the others
        alone = float(layers["predicted_s"].sum())
        batch = batch_size(self.analysis)
        streaming = float(self._levels[-1].bandwidth_bytes_per_s or 0.0)  # nonzero: _levels keeps known ones
        # Shares of the pass's time, by the bound each layer has alone (where the roofline puts it).
        memory_time = float(layers.loc[layers["bound"].str.startswith("memory"), "in_pass_s"].sum())
        compute_time = float(layers.loc[layers["bound"] == "compute", "in_pass_s"].sum())
        return {
            "predicted_latency_s": latency,
            "sum_of_layers_s": alone,  # each layer timed alone, as `measure` times them
            "batch": batch,
            "throughput_samples_per_s": batch / latency if latency else float("inf"),
            "compute_s": float(layers["compute_s"].sum()),
            "memory_s": float(layers["memory_s"].sum()),
            "overhead_s": float(layers["overhead_s"].sum()),
            "memory_bound_time_fraction": memory_time / latency if latency else 0.0,
            "compute_bound_time_fraction": compute_time / latency if latency else 0.0,
            "overhead_bound_time_fraction": max(0.0, 1.0 - (memory_time + compute_time) / latency) if latency else 0.0,
            "peak_flops_per_s": self.peak_flops_per_s,
            "dram_bandwidth_bytes_per_s": streaming,
            "ridge_point": self.peak_flops_per_s / streaming,
            "compute_type": self.precision.compute_type,
        }

    def bound_summary(self) -> str:
        """One plain-language sentence on what bounds the model."""
        t = self.totals
        shares = {
            "memory bandwidth": t["memory_bound_time_fraction"],
            "compute": t["compute_bound_time_fraction"],
            "per-op overhead (dispatch/launch)": t["overhead_bound_time_fraction"],
        }
        kind = max(shares, key=lambda k: shares[k])
        return (
            f"{shares['memory bandwidth']:.0%} of the predicted time is in memory-bound layers, "
            f"{shares['compute']:.0%} compute-bound, {shares['per-op overhead (dispatch/launch)']:.0%} "
            f"overhead-bound: {kind} sets the speed. Ridge point "
            f"{t['ridge_point']:.3g} FLOP/B against a model intensity of "
            f"{self.analysis.totals['arithmetic_intensity']:.3g} FLOP/B."
        )

    def to_dict(self) -> dict[str, Any]:
        columns = ["name", "type", "flops", "bytes", "arithmetic_intensity", "compute_s", "memory_s", "overhead_s",
                   "predicted_s", "in_pass_s", "bound", "memory_level", "ridge_point", "attainable_flops_per_s"]
        return {
            "model": self.analysis.model_name,
            "hardware": self.profile.name,
            "precision": self.precision.name,
            "calibrated": self.calibrated,
            "totals": {k: json_value(v) for k, v in self.totals.items()},
            "layers": json_records(self.layers[columns]),
        }

    def summary(self) -> str:
        t = self.totals
        mode = "calibrated" if self.calibrated else "roofline"
        alone = f" (layers alone: {format_time(t['sum_of_layers_s'])})" if self.in_pass else ""
        return (
            f"{self.analysis.model_name} on {self.profile.name} @ {self.precision.name} ({mode}): "
            f"{format_time(t['predicted_latency_s'])} per batch of {t['batch']}{alone}, "
            f"{t['throughput_samples_per_s']:.4g} samples/s; peak {format_si(t['peak_flops_per_s'], 'FLOP/s')}, "
            f"DRAM {format_si(t['dram_bandwidth_bytes_per_s'], 'B/s')}\n  {self.bound_summary()}"
        )

    def __repr__(self) -> str:
        return self.summary()

    def _repr_html_(self) -> str:
        return f"<pre>{self.summary()}</pre>" + str(self.layers.to_html(index=False, float_format=lambda v: f"{v:.4g}"))


def _bound(compute_s: float, memory_s: float, overhead_s: float, level: str) -> str:
    if overhead_s >= max(compute_s, memory_s):
        return "overhead"
    return "compute" if compute_s >= memory_s else f"memory:{level}"



def predict(analysis: Analysis, profile: HardwareProfile | str, precision: str | Precision | None = None,
            calibrated: bool = False) -> Prediction:
    """Predict per-layer latency of `analysis` on `profile` (a HardwareProfile, name, path or 'auto')."""
    if not isinstance(analysis, Analysis):
        raise RooflineError(f"predict() needs an Analysis from roofline.analyze(...), got {type(analysis).__name__}")
    if not isinstance(profile, (HardwareProfile, str)):
        raise RooflineError(f"predict() needs a HardwareProfile or a profile name, path or 'auto', got "
                            f"{type(profile).__name__} {profile!r}"[:200])
    if isinstance(profile, str):
        from roofline.hardware import load_profile

        profile = load_profile(profile)
    profile.check_streaming_bandwidth()  # a detected profile may lack it: the rule is stated in the error
    if precision is not None:
        analysis = analysis.with_precision(get_precision(precision))
    prediction = Prediction(analysis, profile, calibrated)
    prediction.peak_flops_per_s  # noqa: B018  (fail early, naming the missing peak)
    return prediction


_FORMATTERS: dict[str, Callable[[Any], str]] = {
    "macs": format_si, "flops": format_si, "params": format_si, "bytes": format_bytes, "fused_bytes": format_bytes,
    "compute_s": format_time, "memory_s": format_time, "overhead_s": format_time, "predicted_s": format_time,
    "in_pass_s": format_time, "attainable_flops_per_s": lambda v: format_si(v, "FLOP/s"),
}


def render(prediction: Prediction, fmt: str = "table") -> str:
    if fmt == "json":
        return json.dumps(prediction.to_dict(), indent=2)
    columns = ["name", "type", "flops", "bytes", "arithmetic_intensity", "compute_s", "memory_s", "overhead_s",
               "predicted_s", *(["in_pass_s"] if prediction.in_pass else []), "bound"]
    table = prediction.layers[columns]
    if fmt == "csv":
        return str(table.to_csv(index=False)).rstrip("\n")
    if fmt == "markdown":
        return format_markdown(table) + "\n\n" + prediction.summary()
    return format_table(table, _FORMATTERS) + "\n\n" + prediction.summary()

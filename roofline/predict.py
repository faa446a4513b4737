"""Analysis + HardwareProfile -> predicted time per op and per layer, as TERMS that add up. Never runs the model.

The one model of time (everything that prints or plots a time renders these terms; README states it):
- compute_s = FLOPs / peak of the op's compute type (the precision's, except fp32 convolutions on a GPU
  with a TF32 peak: cuDNN runs those in TF32 by default, torch.backends.cudnn.allow_tf32 = True);
- memory_s = bytes moved / bandwidth of the level the op streams from (HardwareProfile.memory_level_for:
  the fastest level with a known bandwidth whose capacity holds the op's working set);
- roofline_s = max(compute_s, memory_s), and the op's roof is whichever is larger;
- kernel_s = roofline_s / efficiency, where efficiency is 1 for a plain prediction and the class's
  fitted factor when calibrated; efficiency_s = kernel_s - roofline_s is the time above the roof.
  An op that streams from a level deeper than every size its class's line was fitted at (with no
  CLASS@LEVEL factor for it) takes that line's time at the deepest fitted level, or its own roof if
  that is longer (_beyond_fitted_levels): a factor of 0.007 fitted on max-pools in cache says the
  core, not the level, sets their time, and divided into a DRAM roof 5x longer it made one 5x too slow.
  A grouped (not depthwise) convolution on a profile with measured rates by channels per group
  (HardwareProfile.conv_group_rate) takes the conv line, its factor times that rate (group_rate);
- overhead: the profile's per-op figure, or the class's fitted fixed cost when calibrated;
- the combine rule: a CPU dispatches and executes in turn, so op time = kernel_s + overhead (sum);
  a GPU queues launches while earlier kernels run, so op time = max(kernel_s, overhead) (max), and
  only the part of the launch not hidden behind the kernel (exposed_overhead_s) adds time;
- a layer pays, on a CPU, one Python module call (module_call_s) besides its ops;
- a model split across devices (roofline.parallel.shard) pays, on the ops that carry them, its
  collectives on the profile's interconnect (collective_s: ring all-reduce 2(N-1)/N x bytes / bandwidth
  + (N-1) x latency, all-gather, pipeline sends), after the kernel: they do not overlap with compute;
- inside a full pass (calibrated, on a CPU profile with a pass model: HardwareProfile.pass_call_s), an
  op pays what a layer repeated alone does not (pass_penalty_s, the pass model, _pass_terms): its output
  buffer is cold unless it writes in place (fresh output bytes at the deepest level's bandwidth:
  pass_fresh_s); its weights come back from the level that holds the whole pass (weights and peak
  activations: a weight's reuse distance is one pass) instead of its own level (pass_cold_weight_s);
  and its call runs cold (the profile's pass_call_s, measured on a chain of small layers:
  calibrate.measure_pass_call). Its inputs were just written by the op before, so they stream from where
  they did alone.

So, for every op and every layer, exactly:
    predicted_s = roofline_s + efficiency_s + exposed_overhead_s + module_call_s + collective_s
    in_pass_s   = predicted_s + pass_penalty_s
and the end-to-end latency is the sum of in_pass_s. A layer's bound is the largest of its roofline
time on the compute roof, on the memory roof, its efficiency time, its exposed overhead and its
collective time (bound "interconnect").
"""
from __future__ import annotations

import json
import math
from collections.abc import Callable, Sequence
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
    format_number,
    format_si,
    format_table,
    format_time,
    json_records,
    json_value,
)
from roofline.hardware.profile import HardwareProfile, MemoryLevel
from roofline.opclass import OpClass, writes_in_place
from roofline.parallel import COLLECTIVE_COLUMNS, collective_seconds
from roofline.precision import Precision, get_precision
from roofline.records import UNUSED_NAME

__all__ = ["INTERVAL_COLUMNS", "INTERVAL_COVERAGE", "LATENCY_TERMS", "PASS_TERMS", "FusedGroup", "Prediction", "bound_label", "overhead_exit_batch", "overhead_sentence", "predict", "render"]

# The classes whose fp32 ops a GPU with TF32 runs in TF32 by PyTorch's defaults (cuDNN convolutions);
# fp32 matmuls stay in full fp32 (torch.backends.cuda.matmul.allow_tf32 is False by default).
TF32_BY_DEFAULT_CLASSES = ("conv", "pointwise_conv", "grouped_conv")
# Op classes a "fuse with its neighbours" what-if may take into the group after a layer.
POINTWISE_CLASSES = ("elementwise", "activation", "norm")
# More than this share of the time in overhead-bound layers: the model is "in the overhead regime".
OVERHEAD_REGIME_FRACTION = 0.5
# The largest batch searched (powers of two) for where a model leaves the overhead regime.
MAX_SEARCHED_BATCH = 4096

# Prediction intervals (calibrated only): the stated coverage and its two-sided normal quantile, on log time.
INTERVAL_COVERAGE = 0.8
_INTERVAL_Z = 1.2816  # Phi^-1(0.9): 80% of a normal lies within +-1.2816 sigma

# The terms every op and layer carries, in the order they are rendered; they add up as the module says.
TERM_COLUMNS = ["compute_s", "memory_s", "roofline_s", "efficiency_s", "overhead_s", "exposed_overhead_s",
                "module_call_s", "collective_s", "predicted_s", "pass_penalty_s", "in_pass_s"]
# The terms of a predicted latency in `Prediction.totals`; they add up to predicted_latency_s.
LATENCY_TERMS = ("roofline_compute_s", "roofline_memory_s", "efficiency_s", "exposed_overhead_s", "module_call_s",
                 "collective_s", "pass_penalty_s")
# The parts of pass_penalty_s (the pass model; the module docstring), per op and per layer; they add up to it.
PASS_TERMS = ("pass_fresh_s", "pass_cold_weight_s", "pass_call_s")
# A calibrated prediction's interval at INTERVAL_COVERAGE, per layer (NaN for a plain roofline, which has none).
INTERVAL_COLUMNS = ["predicted_low_s", "predicted_high_s", "in_pass_low_s", "in_pass_high_s"]


def batch_size(analysis: Analysis) -> int:
    """The batch of the traced inputs: the leading dimension of the first input."""
    inputs = analysis.trace.inputs
    return int(inputs[0][0]) if inputs and inputs[0] else 1


def combine_rule(profile: HardwareProfile) -> str:
    """How an op's kernel time and its overhead combine on this kind of device: 'sum' (CPU) or 'max' (GPU)."""
    return "max" if profile.kind == "gpu" else "sum"


def _combine(rule: str, kernel_s: Any, overhead_s: Any) -> Any:
    return np.maximum(kernel_s, overhead_s) if rule == "max" else kernel_s + overhead_s


@dataclass(frozen=True)
class FusedGroup:
    """A what-if: a layer and the pointwise layers right after it run as one kernel.

    Only tensors crossing the group's boundary move (each op's memory time scaled by boundary bytes /
    eager bytes, so every op keeps the level it streams from), the group runs at its own ops' mean
    efficiency, and it pays one overhead (the largest of its ops') and one module call. By
    construction it is never slower than the layers unfused.
    """

    layers: tuple[str, ...]
    unfused_s: float
    compute_s: float
    memory_s: float
    roofline_s: float
    kernel_s: float
    overhead_s: float
    module_call_s: float
    rule: str
    predicted_s: float
    boundary_bytes: float
    eager_bytes: float


@dataclass(frozen=True)
class Prediction:
    """Predicted per-op and per-layer times of one Analysis on one HardwareProfile, as terms."""

    analysis: Analysis
    profile: HardwareProfile
    calibrated: bool = False

    def __post_init__(self) -> None:
        _check_analysis(self.analysis)
        if not isinstance(self.profile, HardwareProfile):
            raise RooflineError(f"predict() needs a HardwareProfile or a profile name, path or 'auto', got "
                                f"{type(self.profile).__name__} {self.profile!r}"[:200])
        # The efficiency lines fitted on this precision's own ops, where the profile has them (calibrate).
        object.__setattr__(self, "profile", self.profile.for_compute_type(self.precision.compute_type))
        if self.calibrated and not self.profile.efficiency:
            raise RooflineError(
                f"profile {self.profile.name!r} has no efficiency factors for calibrated prediction;"
                " make a measured profile with: roofline hw measure --save FILE"
            )

    @property
    def precision(self) -> Precision:
        return self.analysis.precision

    @property
    def rule(self) -> str:
        return combine_rule(self.profile)

    @cached_property
    def peak_flops_per_s(self) -> float:
        return self.profile.peak(self.precision.compute_type)

    @cached_property
    def tf32_convolutions(self) -> bool:
        """Whether fp32 convolutions are costed at the TF32 peak (a GPU with one, PyTorch's cuDNN default)."""
        return (self.precision.name == "fp32" and self.profile.kind == "gpu"
                and "tf32" in self.profile.peak_flops_per_s)

    @cached_property
    def _levels(self) -> tuple[MemoryLevel, ...]:
        return self.profile.streaming_levels()

    @property
    def in_pass(self) -> bool:
        """Whether times inside a full pass differ from times alone: calibrated, on a profile with a pass
        model (HardwareProfile.pass_call_s, measured on a CPU)."""
        return self.calibrated and self.profile.pass_call_s is not None and self.profile.kind == "cpu"

    @cached_property
    def ops(self) -> pd.DataFrame:
        """Per op call: every term of its time, the level it streams from, its roof and what sets it."""
        records = self.analysis.records.copy()
        levels = self._levels
        level_index = self.profile.level_indices(records["bytes"].to_numpy(dtype=float))
        bandwidth = np.array([level.bandwidth_bytes_per_s for level in levels], dtype=float)[level_index]
        records["memory_level"] = [levels[i].name for i in level_index]
        records["bandwidth_bytes_per_s"] = bandwidth
        tf32 = records["op_class"].isin(TF32_BY_DEFAULT_CLASSES) & self.tf32_convolutions
        records["compute_type"] = np.where(tf32, "tf32", self.precision.compute_type)
        peak = np.where(tf32, self.profile.peak("tf32") if self.tf32_convolutions else 0.0, self.peak_flops_per_s)
        records["peak_flops_per_s"] = peak
        records["compute_s"] = records["flops"] / peak
        records["memory_s"] = records["bytes"] / bandwidth
        records["roofline_s"] = np.maximum(records["compute_s"], records["memory_s"])
        records["roof"] = np.where(records["compute_s"] >= records["memory_s"], "compute",
                                   "memory:" + records["memory_level"])
        if self.calibrated and OpClass.POINTWISE_CONV.value not in self._line_classes():
            # A profile measured before 1x1 convolutions had a line of their own fitted them into conv's.
            records.loc[records["op_class"] == OpClass.POINTWISE_CONV.value, "op_class"] = OpClass.CONV.value
        rate = self._group_rate(records)
        # A grouped convolution with a measured rate runs on the dense conv line, at that rate's fraction of it.
        records.loc[rate.notna(), "op_class"] = OpClass.CONV.value
        records["group_rate"] = rate.fillna(1.0)
        records["efficiency"] = self._efficiency(records) * records["group_rate"]
        records["overhead_s"] = self._overhead(records["op_class"])
        kernel = records["roofline_s"] / records["efficiency"]
        records["efficiency_s"] = kernel - records["roofline_s"]
        records["collective_s"] = self._collective(records)
        records["predicted_s"] = _combine(self.rule, kernel, records["overhead_s"]) + records["collective_s"]
        records["exposed_overhead_s"] = records["predicted_s"] - kernel - records["collective_s"]
        records["module_call_s"] = 0.0
        terms = self._pass_terms(records)  # the same as pass_terms, from the records being built
        for column in PASS_TERMS:
            records[column] = terms[column] if self.in_pass else 0.0
        records["pass_penalty_s"] = records[list(PASS_TERMS)].sum(axis=1)
        records["in_pass_s"] = records["predicted_s"] + records["pass_penalty_s"]
        # The pass model's own error is the reference network's evidence (model_sigma("layer")), not a class's.
        records["sigma"] = records["op_class"].map(self._class_sigma()).astype(float)
        # A grouped convolution's rate was measured at two sizes, not its own: their spread adds to its line's.
        rated = rate.notna()
        records.loc[rated, "sigma"] = np.hypot(records.loc[rated, "sigma"], self.profile.group_rate_sigma())
        records["in_pass_sigma"] = records["sigma"]
        records["ridge_point"] = peak / bandwidth
        records["attainable_flops_per_s"] = np.minimum(peak, records["arithmetic_intensity"] * bandwidth)
        return records

    def _pass_terms(self, records: pd.DataFrame) -> pd.DataFrame:
        """Per op, what it pays inside a full pass beyond its time alone (the module docstring's pass model):
        pass_fresh_s, pass_cold_weight_s and pass_call_s (the profile's, 0 without one)."""
        levels = self._levels
        working_set = float(records["weight_bytes"].sum()) + float(self.analysis.totals["peak_activation_bytes"])
        whole_pass = float(levels[int(self.profile.level_indices(np.array([working_set]))[0])].bandwidth_bytes_per_s
                           or math.nan)
        deepest = float(levels[-1].bandwidth_bytes_per_s or math.nan)  # streaming_levels: always measured
        fresh = records["bytes_written"].where(~records["op"].map(writes_in_place).astype(bool), 0.0)
        slower = np.maximum(0.0, 1.0 / whole_pass - 1.0 / records["bandwidth_bytes_per_s"])
        return pd.DataFrame({"pass_fresh_s": fresh / deepest, "pass_cold_weight_s": records["weight_bytes"] * slower,
                             "pass_call_s": float(self.profile.pass_call_s or 0.0)}, index=records.index)

    @cached_property
    def pass_terms(self) -> pd.DataFrame:
        """Per op (the index of `ops`), the pass model's terms whether or not they are in force (in_pass): what
        a study of the pass, or calibration, sets against measured passes."""
        return self._pass_terms(self.ops)

    def cold_data_s(self) -> float:
        """The pass model's cold-data terms (fresh output buffers, cold weights) over all ops, whether or not the
        profile has a pass model: what calibration takes off a measured pass penalty to leave its per-call cost."""
        return float((self.pass_terms["pass_fresh_s"] + self.pass_terms["pass_cold_weight_s"]).sum())

    def _collective(self, records: pd.DataFrame) -> Any:
        """Interconnect time of the collectives roofline.parallel attached to ops (0 for a model on one device)."""
        moved = records[list(COLLECTIVE_COLUMNS)].to_numpy(dtype=float) * self.precision.activation_bytes
        if not moved.any():
            return 0.0
        link = self.profile.interconnect
        if link is None:
            raise RooflineError(f"{self.profile.where}: no 'interconnect' entry, which --tp/--pp need to cost "
                                "collectives; add one (name, bandwidth_bytes_per_s, latency_s, source)")
        return collective_seconds(moved[:, 0], moved[:, 1], moved[:, 2], self.analysis.trace.tensor_parallel, link)

    def _efficiency(self, records: pd.DataFrame) -> pd.Series:
        """Per op, the factor in force: its class's (at its level), raised beyond the levels it was fitted at."""
        op_class, level = records["op_class"], records["memory_level"]
        if not self.calibrated:
            return pd.Series(1.0, index=op_class.index)
        default = self.default_efficiency()
        found = [self.profile.efficiency_for(c, lvl) for c, lvl in zip(op_class, level, strict=True)]
        factor = pd.Series([default if f is None else f for f in found], index=op_class.index, dtype=float)
        return self._beyond_fitted_levels(records, factor)

    def _line_classes(self) -> set[str]:
        """The op classes the profile (for this compute type) has a calibrated line of."""
        return {key.partition("@")[0] for key in self.profile.efficiency}

    def _group_rate(self, records: pd.DataFrame) -> pd.Series:
        """Per op, the rate against dense convolution that calibration measured for a grouped (not depthwise)
        convolution's channels per group (HardwareProfile.group_rate); NaN for every other op, and for all in
        a plain prediction or on a profile without the rates."""
        if not self.calibrated or not self.profile.conv_group_rate or "channels_per_group" not in records:
            return pd.Series(np.nan, index=records.index)
        convolution = records["op_class"].isin([OpClass.CONV.value, OpClass.GROUPED_CONV.value])
        rated = convolution & (records["channels_per_group"] >= 2)
        counts = records["channels_per_group"].to_numpy(dtype=float)
        return pd.Series(np.where(rated, self.profile.group_rate(counts), np.nan), index=records.index)

    def _beyond_fitted_levels(self, records: pd.DataFrame, factor: pd.Series) -> pd.Series:
        """`factor` where an op streams from a level deeper than all the sizes its class's line was fitted at
        (and the class has no factor of that level's own) raised to roofline_s / max(roofline_s, roofline at
        the deepest fitted level / factor), never below `factor`: the line's time where it was measured,
        unless the op's own level is slower still. Classes with no recorded samples are left as they are."""
        names = [lvl.name for lvl in self._levels]
        bandwidth = np.array([lvl.bandwidth_bytes_per_s or np.nan for lvl in self._levels], dtype=float)
        deepest = {c: self._deepest_fitted_level(str(c), names) for c in records["op_class"].unique()}
        fitted = records["op_class"].map(deepest).astype(float)
        here = records["memory_level"].map({name: i for i, name in enumerate(names)}).astype(float)
        own = pd.Series([f"{c}@{lvl}" in self.profile.efficiency
                         for c, lvl in zip(records["op_class"], records["memory_level"], strict=True)], index=records.index)
        beyond = fitted.notna() & (here > fitted) & ~own
        if not beyond.any():
            return factor
        at_fitted = bandwidth[fitted[beyond].astype(int).to_numpy()]
        roof_fitted = np.maximum(records.loc[beyond, "compute_s"], records.loc[beyond, "bytes"] / at_fitted)
        roof_here = records.loc[beyond, "roofline_s"]
        raised = roof_here / np.maximum(roof_here, roof_fitted / factor[beyond])
        out = factor.copy()
        out[beyond] = np.maximum(factor[beyond], raised.where(roof_here > 0, factor[beyond]))
        return out

    def _deepest_fitted_level(self, op_class: str, names: list[str]) -> int | None:
        """Index (in streaming levels) of the deepest level among the sizes the class's own factor was fitted
        on: its samples, less those at a level with a CLASS@LEVEL factor (fitted on their own); None if none."""
        levels = {s.level for s in self.profile.calibration_samples(op_class)
                  if f"{op_class}@{s.level}" not in self.profile.efficiency}
        indices = [names.index(name) for name in levels if name in names]
        return max(indices) if indices else None

    def default_efficiency(self) -> float:
        """The factor of a class the profile has none for: the median of its classes (in-cache factors only)."""
        factors = self.profile.efficiency
        return float(np.median([value for key, value in factors.items() if "@" not in key] or list(factors.values())))

    def _class_sigma(self) -> dict[str, float]:
        """Per op class, the spread (sigma of log time) of the calibrated line's error, from its own evidence:
        the residuals of the fitted line at the sizes it was fitted on, and the round-to-round spread of those
        timings, added in quadrature. A class with no evidence (no factor of its own) takes the largest sigma
        of the classes that have some; a plain prediction, or a profile with no evidence, has none (NaN)."""
        if not self.calibrated:
            return {}
        sigmas: dict[str, float] = {}
        for op_class in self._line_classes():
            residuals = self.line_residuals(op_class)
            if not residuals:
                continue
            spread = self.profile.calibration_spread(op_class) or 0.0
            sigmas[op_class] = math.sqrt(float(np.mean(np.square(residuals))) + spread**2)
        if not sigmas:
            return {}
        widest = max(sigmas.values())
        return {c: sigmas.get(c, widest) for c in (*sigmas, *self.analysis.records["op_class"].unique())}

    def model_sigma(self, scope: str) -> float:
        """How far the calibrated lines miss real layers (sigma of log time), as the profile measured it on a
        reference network (calibrate.reference_network_evidence): a layer alone ("alone"), a layer inside a
        pass ("layer"), a whole pass ("pass"). Without a pass model a layer's in-pass time is its time alone,
        and so is its error. 0 where there is none: a plain prediction, a whole pass without a pass model, or a
        profile measured before the evidence was kept."""
        if not self.calibrated or (scope == "pass" and not self.in_pass):
            return 0.0
        if scope == "layer" and not self.in_pass:
            scope = "alone"
        key = {"alone": "alone_model_sigma", "layer": "pass_model_sigma", "pass": "pass_model_total_sigma"}[scope]
        text = self.profile.metadata.get(key)
        try:
            return float(text) if text is not None else 0.0
        except ValueError as error:
            raise RooflineError(f"profile {self.profile.name!r}: metadata {key} must be a number, got {text!r}") from error

    def line_residuals(self, op_class: str) -> list[float]:
        """log(measured / line) at each size the class's line was fitted on."""
        fixed = self.profile.fixed_overhead_s.get(op_class, self.profile.overhead_s)
        out = []
        for sample in self.profile.calibration_samples(op_class):
            factor = self.profile.efficiency_for(op_class, sample.level)
            if factor and sample.measured_s > 0:
                out.append(math.log(sample.measured_s / (fixed + sample.roofline_s / factor)))
        return out

    def _overhead(self, op_class: pd.Series) -> pd.Series:
        """Per-op overhead: the class's fitted fixed cost when calibrated, else the profile's one figure."""
        fixed = dict(self.profile.fixed_overhead_s) if self.calibrated else {}
        return op_class.map(lambda c: fixed.get(c, self.profile.overhead_s)).astype(float)

    @property
    def module_call_s(self) -> float:
        """What a CPU pays per layer row for Python's module call (0 on a GPU, where it hides behind kernels)."""
        return float(self.profile.module_call_s or 0.0) if self.profile.kind == "cpu" else 0.0

    @cached_property
    def layers(self) -> pd.DataFrame:
        """Per layer (rows join the analysis and measurement on `name`): the op terms summed, plus the
        module call, the layer's roof, its bound and where its time sits against the roof."""
        ops = self.ops
        sums = ["compute_s", "memory_s", "roofline_s", "efficiency_s", "overhead_s", "exposed_overhead_s",
                "collective_s", "predicted_s", *PASS_TERMS, "pass_penalty_s", "in_pass_s"]
        by_layer = ops.groupby("layer", sort=False)
        summed = by_layer[sums].sum()
        on_compute = ops["roofline_s"].where(ops["roof"] == "compute", 0.0)
        summed["compute_roof_s"] = on_compute.groupby(ops["layer"], sort=False).sum()
        summed["memory_roof_s"] = (ops["roofline_s"] - on_compute).groupby(ops["layer"], sort=False).sum()
        # The level that carries most of the layer's bytes names its memory roof.
        main_level = ops.sort_values("bytes", ascending=False).groupby("layer", sort=False)["memory_level"].first()
        compute_type = by_layer["compute_type"].agg(lambda types: types.mode().iloc[0])
        layers = self.analysis.layers[["name", "type", "macs", "flops", "params", "weight_bytes", "bytes",
                                       "fused_bytes", "arithmetic_intensity", "ops"]].copy()
        layers = layers.join(summed, on="name").join(main_level, on="name").join(compute_type, on="name")
        for column in [*sums, "compute_roof_s", "memory_roof_s"]:
            layers[column] = layers[column].fillna(0.0).astype(float)
        layers["memory_level"] = layers["memory_level"].fillna(self._levels[-1].name)
        layers["compute_type"] = layers["compute_type"].fillna(self.precision.compute_type)
        # Every row is one module call, which a CPU pays in Python before its ops run.
        layers["module_call_s"] = np.where(layers["name"] != UNUSED_NAME, self.module_call_s, 0.0)
        for column in ("predicted_s", "in_pass_s"):
            layers[column] = layers[column] + layers["module_call_s"]
        layers["overhead_s"] = layers["overhead_s"] + layers["module_call_s"]
        level_bandwidth = {level.name: level.bandwidth_bytes_per_s for level in self._levels}
        bandwidth = layers["memory_level"].map(level_bandwidth).astype(float)
        peak = layers["compute_type"].map(self.profile.peak).astype(float)
        layers["ridge_point"] = peak / bandwidth
        layers["attainable_flops_per_s"] = np.minimum(peak, layers["arithmetic_intensity"] * bandwidth)
        layers["predicted_flops_per_s"] = (layers["flops"] / layers["predicted_s"].where(layers["predicted_s"] > 0)).fillna(0.0)
        # Where the predicted time sits against the roof: roofline time / predicted time (1 = on the roof).
        layers["fraction_of_roof"] = (layers["roofline_s"] / layers["predicted_s"].where(layers["predicted_s"] > 0)).fillna(0.0)
        layers["roof"] = np.where(layers["compute_roof_s"] >= layers["memory_roof_s"], "compute",
                                  "memory:" + layers["memory_level"])
        layers["bound"] = [
            _bound(c, m, e, o, level, x) for c, m, e, o, level, x in zip(
                layers["compute_roof_s"], layers["memory_roof_s"], layers["efficiency_s"],
                layers["exposed_overhead_s"] + layers["module_call_s"], layers["memory_level"],
                layers["collective_s"], strict=True)
        ]
        for column, sigma in (("predicted_s", "sigma"), ("in_pass_s", "in_pass_sigma")):
            half = _interval_sigma(ops, column, sigma, "layer").reindex(layers["name"]).to_numpy(dtype=float)
            # The module call (a measured constant) and collectives (not calibrated) carry no error of their own,
            # and the pass model's is the network evidence below, not the class lines'.
            timed = layers[column].to_numpy(dtype=float)
            fixed = layers["module_call_s"].to_numpy() + layers["collective_s"].to_numpy()
            if column == "in_pass_s":
                fixed = fixed + layers["pass_penalty_s"].to_numpy()
            half = half * np.divide(timed - fixed, timed, out=np.zeros_like(timed),
                                    where=timed > 0)
            # The lines' own error on layers of other shapes, and inside a pass the pass model's for a real pass.
            half = np.sqrt(half**2 + self.model_sigma("alone" if column == "predicted_s" else "layer") ** 2)
            stem = column.removesuffix("_s")
            layers[f"{stem}_low_s"] = layers[column].to_numpy() * np.exp(-_INTERVAL_Z * half)
            layers[f"{stem}_high_s"] = layers[column].to_numpy() * np.exp(_INTERVAL_Z * half)
        kernel = layers["roofline_s"] + layers["efficiency_s"]
        layers["efficiency"] = (layers["roofline_s"] / kernel.where(kernel > 0)).fillna(1.0)  # the ops' mean factor
        layers["bound_label"] = [bound_label(b, r, e) for b, r, e in
                                 zip(layers["bound"], layers["roof"], layers["efficiency"], strict=True)]
        total = layers["predicted_s"].sum()
        layers["share"] = layers["predicted_s"] / total if total else 0.0
        return layers

    @cached_property
    def totals(self) -> dict[str, Any]:
        layers = self.layers
        latency = float(layers["in_pass_s"].sum())  # a forward pass: each layer once, after the others
        alone = float(layers["predicted_s"].sum())
        batch = batch_size(self.analysis)
        streaming = float(self._levels[-1].bandwidth_bytes_per_s or 0.0)  # nonzero: streaming_levels checks it

        def share(seconds: float) -> float:
            return seconds / latency if latency else 0.0

        # Shares of the pass's time by each layer's bound (what sets its speed)...
        by_bound = {kind: float(layers.loc[layers["bound"].str.startswith(kind), "in_pass_s"].sum())
                    for kind in ("memory", "compute", "efficiency", "interconnect")}
        # ... and the exact terms of the latency, which add up to it.
        terms = {
            "roofline_compute_s": float(layers["compute_roof_s"].sum()),
            "roofline_memory_s": float(layers["memory_roof_s"].sum()),
            "efficiency_s": float(layers["efficiency_s"].sum()),
            "exposed_overhead_s": float(layers["exposed_overhead_s"].sum()),
            "module_call_s": float(layers["module_call_s"].sum()),
            "collective_s": float(layers["collective_s"].sum()),
            "pass_penalty_s": float(layers["pass_penalty_s"].sum()),
        }
        ops = self.ops.assign(whole="model")
        half = float(_interval_sigma(ops, "in_pass_s", "in_pass_sigma", "whole").get("model", math.nan))
        # The module calls carry no error of their own (a measured constant), nor the class lines the pass model's:
        # they scale the interval's width down (the pass model's error is model_sigma's).
        weight = ((latency - float(layers["module_call_s"].sum()) - float(layers["collective_s"].sum())
                   - terms["pass_penalty_s"]) / latency if latency else 0.0)
        half = math.sqrt((half * weight) ** 2 + self.model_sigma("pass") ** 2)
        low, high = latency * math.exp(-_INTERVAL_Z * half), latency * math.exp(_INTERVAL_Z * half)
        return {
            "predicted_latency_s": latency,
            "predicted_latency_low_s": low,
            "predicted_latency_high_s": high,
            "interval_coverage": INTERVAL_COVERAGE if not math.isnan(half) else math.nan,
            "sum_of_layers_s": alone,  # each layer timed alone, as `measure` times them
            "batch": batch,
            "throughput_samples_per_s": batch / latency if latency else float("inf"),
            "compute_s": float(layers["compute_s"].sum()),
            "memory_s": float(layers["memory_s"].sum()),
            "overhead_s": float(layers["overhead_s"].sum()),
            **terms,
            "efficiency_time_fraction": share(terms["efficiency_s"]),  # above the roofline for want of efficiency
            "overhead_time_fraction": share(terms["exposed_overhead_s"] + terms["module_call_s"]),
            "memory_bound_time_fraction": share(by_bound["memory"]),
            "compute_bound_time_fraction": share(by_bound["compute"]),
            "efficiency_bound_time_fraction": share(by_bound["efficiency"]),
            "interconnect_bound_time_fraction": share(by_bound["interconnect"]),
            "overhead_bound_time_fraction": max(0.0, 1.0 - share(sum(by_bound.values()))) if latency else 0.0,
            "peak_flops_per_s": self.peak_flops_per_s,
            "dram_bandwidth_bytes_per_s": streaming,
            "ridge_point": self.peak_flops_per_s / streaming,
            "compute_type": self.precision.compute_type,
            "combine_rule": self.rule,
        }

    @property
    def overhead_regime(self) -> bool:
        """More than half of the time in layers whose exposed overhead outweighs their kernels."""
        return bool(self.totals["overhead_bound_time_fraction"] > OVERHEAD_REGIME_FRACTION)

    def fused_group(self, layer: str) -> FusedGroup:
        """`layer` and the leaf layers right after it whose ops are all pointwise (norm, activation,
        elementwise), fused into one kernel: the same terms, fewer bytes and one overhead."""
        layers = self.layers.set_index("name", drop=False)
        if layer not in layers.index:
            raise RooflineError(f"no layer named {layer!r}")
        order = list(layers.index)
        ops = self.ops
        classes = ops.groupby("layer", sort=False)["op_class"].agg(set)
        group = [layer]
        for name in order[order.index(layer) + 1:]:
            if name not in classes.index or not classes[name] <= set(POINTWISE_CLASSES):
                break
            group.append(name)
        rows = layers.loc[group]
        members = ops[ops["layer"].isin(group)]
        eager = float(members["bytes"].sum())
        # The tensor between two fused layers is written by one and read by the next: the pointwise
        # layer's output size, counted once in each layer's boundary bytes.
        inner = 2.0 * float(members.loc[members["layer"].isin(group[1:]), "bytes_written"].sum())
        boundary = min(eager, max(0.0, float(rows["fused_bytes"].sum()) - inner))
        compute = float(members["compute_s"].sum())
        memory = float(members["memory_s"].sum()) * (boundary / eager if eager else 0.0)
        roofline = max(compute, memory)
        kernel_sum = float((members["roofline_s"] + members["efficiency_s"]).sum())
        roofline_sum = float(members["roofline_s"].sum())
        kernel = roofline * (kernel_sum / roofline_sum) if roofline_sum else 0.0
        overhead = float(members["overhead_s"].max()) if len(members) else 0.0
        module_call = self.module_call_s
        return FusedGroup(
            layers=tuple(group), unfused_s=float(rows["predicted_s"].sum()), compute_s=compute, memory_s=memory,
            roofline_s=roofline, kernel_s=kernel, overhead_s=overhead, module_call_s=module_call, rule=self.rule,
            predicted_s=float(_combine(self.rule, kernel, overhead)) + module_call + float(rows["collective_s"].sum()),
            boundary_bytes=boundary,
            eager_bytes=eager,
        )

    def bound_summary(self) -> str:
        """Plain-language sentences on what bounds the model, from the terms."""
        t = self.totals
        shares = {
            "memory bandwidth": t["memory_bound_time_fraction"],
            "compute": t["compute_bound_time_fraction"],
            "kernel efficiency (below the roofline)": t["efficiency_bound_time_fraction"],
            "per-op overhead (dispatch/launch)": t["overhead_bound_time_fraction"],
        }
        kind = max(shares, key=lambda k: shares[k])
        text = (
            f"{shares['memory bandwidth']:.0%} of the predicted time is in memory-bound layers, "
            f"{shares['compute']:.0%} compute-bound, "
            + (f"{shares['kernel efficiency (below the roofline)']:.0%} efficiency-bound, " if self.calibrated else "")
            + f"{shares['per-op overhead (dispatch/launch)']:.0%} overhead-bound: {kind} sets the speed. "
            f"Ridge point {t['ridge_point']:.3g} FLOP/B against a model intensity of "
            f"{self.analysis.totals['arithmetic_intensity']:.3g} FLOP/B."
        )
        if self.calibrated:
            text += (f" {t['efficiency_time_fraction']:.0%} of the time is above the roofline because ops run below "
                     "their roof on this machine (the calibrated efficiency of their class).")
        else:
            text += " A plain roofline is a bound on speed (a lower bound on time), not an estimate."
        if self.tf32_convolutions:
            text += (" fp32 convolutions are costed at the TF32 peak, as PyTorch runs them by default on this GPU "
                     "(torch.backends.cudnn.allow_tf32).")
        return text

    def to_dict(self) -> dict[str, Any]:
        columns = ["name", "type", "flops", "bytes", "arithmetic_intensity", *TERM_COLUMNS, *INTERVAL_COLUMNS,
                   "bound", "roof", "memory_level", "compute_type", "ridge_point", "attainable_flops_per_s",
                   "fraction_of_roof"]
        return {
            "model": self.analysis.model_name,
            "hardware": self.profile.name,
            "precision": self.precision.name,
            "calibrated": self.calibrated,
            "combine_rule": self.rule,
            "totals": {k: json_value(v) for k, v in self.totals.items()},
            "layers": json_records(self.layers[columns]),
        }

    def interval_text(self, measured_s: float | None = None) -> str:
        """'3.3 ms [2.9 ms, 3.8 ms] (80% interval)', and against a measurement, whether it falls inside; a plain
        roofline says what it is instead."""
        t = self.totals
        if math.isnan(t["interval_coverage"]):
            text = (f"{format_time(t['predicted_latency_s'])} (plain roofline: no interval)" if not self.calibrated else
                    f"{format_time(t['predicted_latency_s'])} (no interval: the profile keeps no calibration evidence)")
        else:
            text = (f"{format_time(t['predicted_latency_s'])} [{format_time(t['predicted_latency_low_s'])}, "
                    f"{format_time(t['predicted_latency_high_s'])}] ({t['interval_coverage']:.0%} interval)")
        if measured_s is None or math.isnan(t["interval_coverage"]):
            return text
        inside = t["predicted_latency_low_s"] <= measured_s <= t["predicted_latency_high_s"]
        return f"predicted {text}; measured {format_time(measured_s)}: {'inside' if inside else 'outside'}"

    def summary(self) -> str:
        t = self.totals
        mode = "calibrated" if self.calibrated else "roofline"
        alone = f" (layers alone: {format_time(t['sum_of_layers_s'])})" if self.in_pass else ""
        return (
            f"{self.analysis.model_name} on {self.profile.name} @ {self.precision.name} ({mode}): "
            f"{self.interval_text()} per batch of {t['batch']}{alone}, "
            f"{format_number(t['throughput_samples_per_s'])} samples/s; peak {format_si(t['peak_flops_per_s'], 'FLOP/s')}, "
            f"DRAM {format_si(t['dram_bandwidth_bytes_per_s'], 'B/s')}\n  {self.bound_summary()}"
        )

    def __repr__(self) -> str:
        return self.summary()

    def _repr_html_(self) -> str:
        return f"<pre>{self.summary()}</pre>" + str(self.layers.to_html(index=False, float_format=lambda v: f"{v:.4g}"))


def _interval_sigma(ops: pd.DataFrame, time: str, sigma: str, group: str) -> pd.Series:
    """Per group (a layer, the model), the sigma of log time of a sum of ops: errors within an op class are
    taken as fully correlated (one fitted line is off the same way for all of its ops, so they do not average
    out as 1/sqrt(n)), and independent between classes: sqrt(sum over classes of (class share x sigma)^2)."""
    if sigma not in ops or ops[sigma].isna().all():
        return pd.Series(math.nan, index=ops[group].unique(), dtype=float)
    by_class = ops.groupby([group, "op_class"], sort=False).agg(time=(time, "sum"), sigma=(sigma, "first"))
    total = by_class.groupby(level=0, sort=False)["time"].transform("sum")
    share = (by_class["time"] / total.where(total > 0)).fillna(0.0)
    return np.sqrt(((share * by_class["sigma"]) ** 2).groupby(level=0, sort=False).sum())


def _bound(compute_s: float, memory_s: float, efficiency_s: float, overhead_s: float, level: str,
           collective_s: float = 0.0) -> str:
    """What sets a layer's speed: the largest of its terms (ties go to the roofline, then efficiency)."""
    parts = {"compute": compute_s, f"memory:{level}": memory_s, "efficiency": efficiency_s, "overhead": overhead_s,
             "interconnect": collective_s}
    if not any(parts.values()):
        return "overhead"
    return max(parts, key=lambda k: parts[k])


def bound_label(bound: str, roof: str, efficiency: float) -> str:
    """The bound as people read it: an efficiency-bound layer names the roof it runs below, and how far."""
    if bound == "efficiency":
        return f"efficiency ({format_percent(efficiency)} of its {roof} roof)"
    return bound


def format_percent(fraction: float) -> str:
    """A fraction as a percentage with the digits that small ones need (0.7%, 12%, 100%)."""
    percent = 100 * fraction
    return f"{percent:.2g}%" if percent < 10 else f"{percent:.0f}%"


def _check_analysis(analysis: object) -> None:
    if not isinstance(analysis, Analysis):
        raise RooflineError(f"predict() needs an Analysis from roofline.analyze(...), got {type(analysis).__name__}")


def predict(analysis: Analysis, profile: HardwareProfile | str, precision: str | Precision | None = None,
            calibrated: bool = False) -> Prediction:
    """Predict per-layer latency of `analysis` on `profile` (a HardwareProfile, name, path or 'auto')."""
    _check_analysis(analysis)  # before loading a profile by name
    if isinstance(profile, str):
        from roofline.hardware import load_profile

        profile = load_profile(profile)
    if precision is not None:
        analysis = analysis.with_precision(get_precision(precision))
    prediction = Prediction(analysis, profile, calibrated)
    prediction.peak_flops_per_s  # noqa: B018  (fail early, naming the missing peak)
    prediction._levels  # noqa: B018  (and a last level without bandwidth)
    return prediction


def overhead_exit_batch(analysis: Analysis, profile: HardwareProfile, calibrated: bool = False,
                        batches: Sequence[int] | None = None) -> int | None:
    """The smallest batch at which the model is no longer in the overhead regime on `profile`: of `batches`
    when given, else searched over powers of two above the traced batch (up to MAX_SEARCHED_BATCH); None
    if none leaves it."""
    base = batch_size(analysis)
    candidates = sorted(b for b in batches if b > 0) if batches else [
        2**i for i in range(1, int(math.log2(MAX_SEARCHED_BATCH)) + 1) if 2**i > base]
    for batch in candidates:
        scaled = analysis if batch == base else analysis.scaled_batch(batch / base)
        if not Prediction(scaled, profile, calibrated).overhead_regime:
            return batch
    return None


def overhead_sentence(prediction: Prediction, batches: Sequence[int] | None = None) -> str | None:
    """When more than half of a prediction is overhead-bound: say so, and at which batch it stops being."""
    if not prediction.overhead_regime:
        return None
    t = prediction.totals
    exit_batch = overhead_exit_batch(prediction.analysis, prediction.profile, prediction.calibrated, batches)
    where = ("of those given" if batches else f"searching powers of two up to {MAX_SEARCHED_BATCH}")
    after = (f"the model leaves the overhead regime at batch {exit_batch} ({where})" if exit_batch
             else f"no batch {where} leaves it")
    return (f"{t['overhead_bound_time_fraction']:.0%} of the time on {prediction.profile.name} is in overhead-bound "
            f"layers at batch {t['batch']}: per-op {'launch' if prediction.rule == 'max' else 'dispatch'} cost, "
            f"not the device's compute or memory, sets this time; {after}.")


_FORMATTERS: dict[str, Callable[[Any], str]] = {
    "macs": format_si, "flops": format_si, "params": format_si, "bytes": format_bytes, "fused_bytes": format_bytes,
    **{column: format_time for column in TERM_COLUMNS}, "attainable_flops_per_s": lambda v: format_si(v, "FLOP/s"),
}


def render(prediction: Prediction, fmt: str = "table") -> str:
    if fmt == "json":
        return json.dumps(prediction.to_dict(), indent=2)
    columns = ["name", "type", "flops", "bytes", "arithmetic_intensity", "roofline_s",
               *(["efficiency_s"] if prediction.calibrated else []), "exposed_overhead_s",
               *(["module_call_s"] if prediction.module_call_s else []),
               *(["collective_s"] if prediction.totals["collective_s"] else []), "predicted_s",
               *(["in_pass_s"] if prediction.in_pass else []), "bound"]
    table = prediction.layers[columns]
    if fmt == "csv":
        return str(prediction.layers[["name", "type", "flops", "bytes", "arithmetic_intensity", *TERM_COLUMNS,
                                      *INTERVAL_COLUMNS, "bound", "roof", "memory_level"]].to_csv(index=False)).rstrip("\n")
    notes = [prediction.summary(), overhead_sentence(prediction)]
    text = "\n  ".join(n for n in notes if n)
    if fmt == "markdown":
        return format_markdown(table) + "\n\n" + text
    return format_table(table, _FORMATTERS) + "\n\n" + text

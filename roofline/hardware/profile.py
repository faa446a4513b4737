"""HardwareProfile and MemoryLevel: what one device can do, where each figure came from.

A profile is a YAML file people edit by hand, so loading checks every key and value and names the
file and the field in the error (the way pyperf's `_metadata.py` checks each key). Units are in the
field names: FLOP/s (op/s for integer types), bytes, bytes/s, seconds.
"""
from __future__ import annotations

import dataclasses
import math
import os
import re
import types
import warnings
from collections.abc import Hashable, Mapping
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from typing import Any

import numpy as np
import yaml

import roofline
from roofline.errors import RooflineError, close_matches
from roofline.opclass import OpClass
from roofline.precision import COMPUTE_TYPES

__all__ = [
    "EFFICIENCY_CLASSES",
    "FORMAT_VERSION",
    "CalibrationSample",
    "HardwareProfile",
    "Interconnect",
    "MemoryLevel",
    "hwprofiles_dir",
    "list_profiles",
    "load_profile_file",
    "profile_from_dict",
    "profile_paths",
    "save_profile",
    "saved_profiles",
    "user_profile_dir",
]

# Version of the profile file format; bump on an incompatible change (pyperf's _JSON_VERSION habit).
FORMAT_VERSION = 1
KINDS = ("gpu", "cpu")
SOURCES = ("datasheet", "detected", "measured")

# Op classes a profile may carry an efficiency factor for. The meaning of a factor is defined once,
# in HardwareProfile.efficiency's docstring below.
EFFICIENCY_CLASSES = tuple(c.value for c in OpClass if c not in (OpClass.VIEW, OpClass.UNSUPPORTED))

# Plausibility limits. A peak under 1e6 is almost always a figure typed in TFLOPS, not FLOP/s.
_MIN_PEAK, _MAX_PEAK = 1e6, 1e17
_MIN_BW, _MAX_BW = 1e6, 1e14
_MAX_CAPACITY = 1e15  # 1 PB: more than any single device's memory
_MAX_OVERHEAD_S = 1.0
_MAX_EFFICIENCY = 1.5

_REQUIRED = ("name", "kind", "vendor", "source", "reference", "peak_flops_per_s", "memory_levels", "overhead_s")
_OPTIONAL = ("format_version", "module_call_s", "efficiency", "fixed_overhead_s", "pass_call_s", "conv_group_rate",
             "interconnect", "notes", "aliases", "metadata")
# Fields of profiles measured before the pass model (issue 16): a pass line per class, timed with each op called
# once per cycle over all calibration ops. Still read without complaint; prediction no longer uses them.
_RETIRED = ("pass_efficiency", "pass_fixed_overhead_s")
_FACTOR_FIELDS = ("efficiency",)  # op class (or CLASS@LEVEL) -> fraction of the roofline
_FIXED_FIELDS = ("fixed_overhead_s",)  # op class -> seconds per call
_LEVEL_REQUIRED = ("name", "capacity_bytes", "bandwidth_bytes_per_s")
_LEVEL_OPTIONAL = ("note", "effective_capacity_bytes")
_INTERCONNECT_FIELDS = ("name", "bandwidth_bytes_per_s", "latency_s", "source")
_MAX_LINK_LATENCY_S = 1e-3


@dataclass(frozen=True)
class MemoryLevel:
    """One level of the memory hierarchy; None means not known (capacity) or not measured yet (bandwidth).

    `effective_capacity_bytes` is the working set at which a measured bandwidth sweep left this level
    (microbench.effective_capacities), where it is smaller than the reported size: a VM may report a
    cache its guest does not get, and a core running alone uses its own share of a per-core cache.
    """

    name: str
    capacity_bytes: float | None
    bandwidth_bytes_per_s: float | None
    note: str = ""
    effective_capacity_bytes: float | None = None

    @property
    def holds_bytes(self) -> float | None:
        """The largest working set that streams from this level: the measured capacity, else the reported one."""
        return self.effective_capacity_bytes if self.effective_capacity_bytes is not None else self.capacity_bytes


@dataclass(frozen=True)
class Interconnect:
    """The device-to-device link that tensor and pipeline parallelism use (NVLink, PCIe).

    bandwidth_bytes_per_s is per direction (what one device sends while it receives as much), the
    figure the ring all-reduce formula takes; datasheets often print the two directions added.
    latency_s is the time of one message step on the link; source says where both figures come from.
    """

    name: str
    bandwidth_bytes_per_s: float
    latency_s: float
    source: str


@dataclass(frozen=True)
class CalibrationSample:
    """One op timed to fit a class's efficiency line: its roofline time, its measured time, its level."""

    description: str
    roofline_s: float
    measured_s: float
    level: str

    def __str__(self) -> str:  # the metadata format, read back by _SAMPLE
        return f"{self.description}: roofline {self.roofline_s:.3g} s, measured {self.measured_s:.3g} s ({self.level})"


_SAMPLE = re.compile(r"(?:^|; )(?P<description>[^;]+?): roofline (?P<roofline>[-+.0-9eE]+) s, "
                     r"measured (?P<measured>[-+.0-9eE]+) s \((?P<level>[^)]*)\)")


@dataclass(frozen=True)
class HardwareProfile:
    """Peaks, memory levels and per-op overhead of one device, with the source of every figure.

    `efficiency` and `fixed_overhead_s` describe, per op class (EFFICIENCY_CLASSES), how ops of that
    class measured on this device relate to their roofline time, fitted over several sizes:

        time_roofline   = max(flops / peak(compute_type), bytes / bandwidth(memory_level_for(bytes)))
        time_measured  ~= fixed_overhead_s[class] + time_roofline / efficiency[class]

    so a calibrated prediction uses exactly that line. The factor divides the roofline-attainable
    rate, whichever roof binds: still a roofline (the bound and ridge point do not move), just a
    lower one; the fixed part is the class's per-call cost (dispatch, kernel setup, threading), which
    replaces the generic `overhead_s` for that class. An efficiency key `CLASS@LEVEL` (gemm@DRAM)
    holds the factor for the class's ops whose working set streams from that memory level, where
    it differs from the in-cache one (a GEMM whose weights stream from DRAM is slower per FLOP);
    other levels use the class's own factor (`efficiency_for`).

    `pass_call_s` is what an op call costs inside a full forward pass beyond its time alone and the
    cold data the pass model costs by itself (roofline.predict: fresh output buffers, cold weights), per
    call: its code and dispatch path run cold. Calibration measures it on a chain of small layers
    (calibrate.measure_chain_pass_call; a CPU's; None elsewhere, and in profiles measured before the pass model: then a layer's in-pass time is its
    time alone).

    `conv_group_rate` maps a grouped convolution's input channels per group (2 or more; depthwise has its own
    class) to its rate per FLOP against a dense convolution of the same size, measured on this device
    (calibrate.measure_conv_group_rate): a kernel vectorised over the channels of a group fills fewer lanes the
    fewer they are, so 4 channels per group ran at about a quarter of dense's rate on an AVX-512 CPU. A
    calibrated prediction costs such a convolution on the conv line at that fraction of its factor
    (`group_rate`). fp32's, used for every compute type; None in profiles measured before it.

    Keys of these mappings may name the compute type their ops ran in, `TYPE:CLASS[@LEVEL]`
    (bf16:gemm): that type's own line, fitted on ops of that dtype; a plain key is fp32's.
    `for_compute_type` puts one type's lines in force, as prediction does for its precision.
    """

    name: str
    kind: str
    vendor: str
    source: str
    reference: str
    peak_flops_per_s: Mapping[str, float]
    memory_levels: tuple[MemoryLevel, ...]
    overhead_s: float
    # Host cost of calling an nn.Module (Python __call__), measured; each layer row pays it on a CPU.
    module_call_s: float | None = None
    efficiency: Mapping[str, float] = field(default_factory=dict)
    fixed_overhead_s: Mapping[str, float] = field(default_factory=dict)  # op class -> seconds per call
    pass_call_s: float | None = None  # seconds per op call inside a pass, beyond alone and cold data
    conv_group_rate: Mapping[int, float] | None = None  # channels per group -> rate against dense convolution
    interconnect: Interconnect | None = None  # the link between devices of this kind, for --tp/--pp
    notes: Mapping[str, str] = field(default_factory=dict)  # field path -> where the figure came from
    aliases: tuple[str, ...] = ()  # names the device reports (NVML name, CPU brand) for detection
    metadata: Mapping[str, str] = field(default_factory=dict)
    path: str | None = None

    def __post_init__(self) -> None:
        # Freeze the mappings too, so a loaded profile cannot drift from its validated state.
        for name in ("peak_flops_per_s", *_FACTOR_FIELDS, *_FIXED_FIELDS):
            object.__setattr__(self, name, types.MappingProxyType(dict(getattr(self, name))))
        for name in ("notes", "metadata"):  # plain str, so YAML/JSON writers never meet a str subclass
            text = {str(k): str(v) for k, v in getattr(self, name).items()}
            object.__setattr__(self, name, types.MappingProxyType(text))
        if self.conv_group_rate is not None:
            rates = {int(k): float(v) for k, v in self.conv_group_rate.items()}
            object.__setattr__(self, "conv_group_rate", types.MappingProxyType(dict(sorted(rates.items()))))
        object.__setattr__(self, "memory_levels", tuple(self.memory_levels))
        object.__setattr__(self, "aliases", tuple(self.aliases))
        _check_values(self)

    @property
    def where(self) -> str:
        """How errors name this profile: its file if it has one, else its name."""
        return _display_path(self.path) if self.path else f"profile {self.name!r}"

    def peak(self, compute_type: str) -> float:
        """Dense peak in FLOP/s (op/s for int8) for a compute type; the error lists what the profile has."""
        if compute_type not in self.peak_flops_per_s:
            have = ", ".join(self.peak_flops_per_s) or "none"
            raise RooflineError(
                f"{self.where}: field 'peak_flops_per_s.{compute_type}': no peak for compute type "
                f"{compute_type!r} on {self.name}; this profile has: {have}"
            )
        return float(self.peak_flops_per_s[compute_type])

    @property
    def dram(self) -> MemoryLevel:
        """The last (slowest, largest) memory level: DRAM or HBM."""
        return self.memory_levels[-1]

    def level(self, name: str) -> MemoryLevel:
        """A memory level by name (case-insensitive)."""
        for level in self.memory_levels:
            if level.name.lower() == name.lower():
                return level
        names = [level.name for level in self.memory_levels]
        raise RooflineError(f"{self.where}: no memory level {name!r}{close_matches(name, names)}; levels: {', '.join(names)}")

    def bandwidth(self, level: str | MemoryLevel | None = None) -> float:
        """Bandwidth of a level (default DRAM) in bytes/s; an unmeasured level is an error saying how to fix it."""
        chosen = self.dram if level is None else level if isinstance(level, MemoryLevel) else self.level(level)
        if chosen.bandwidth_bytes_per_s is None:
            raise RooflineError(
                f"{self.where}: memory level {chosen.name!r} has no bandwidth (unknown until measured); "
                "run `roofline hw measure` or use a datasheet profile"
            )
        return float(chosen.bandwidth_bytes_per_s)

    def check_streaming_bandwidth(self) -> None:
        """Prediction's rule for memory levels: an op streams from the fastest level that holds its
        working set and has a bandwidth; a level with none (null) is skipped, so its ops are costed at
        the next level down. The last level is where the largest ops stream from, so it must have one."""
        last = self.dram
        if last.bandwidth_bytes_per_s is None:
            raise _fail(
                self.where, f"memory_levels[{len(self.memory_levels) - 1}].bandwidth_bytes_per_s",
                f"the last memory level ({last.name}) needs a bandwidth for prediction: ops too large for every "
                "cache stream from it (a faster level may be null; its ops are then costed at the next level that "
                "has one); give its figure or run `roofline hw measure`",
            )

    def ridge_point(self, compute_type: str, level: str | MemoryLevel | None = None) -> float:
        """Arithmetic intensity (FLOP/byte) where compute and memory time are equal: peak / bandwidth."""
        return self.peak(compute_type) / self.bandwidth(level)

    def streaming_levels(self) -> tuple[MemoryLevel, ...]:
        """The levels an op can stream from, fastest first: those with a known bandwidth. The last level
        (DRAM/HBM) must be one of them, or a working set too large for every cache would have no roof."""
        self.check_streaming_bandwidth()
        return tuple(level for level in self.memory_levels if level.bandwidth_bytes_per_s is not None)

    def memory_level_for(self, working_set_bytes: float) -> MemoryLevel:
        """The level an op streams from, the one rule for it: the fastest level with a known bandwidth whose
        capacity (its measured effective capacity where the profile has one, MemoryLevel.holds_bytes) holds
        the op's working set, else the last level (DRAM/HBM)."""
        levels = self.streaming_levels()
        return levels[int(self.level_indices(np.array([working_set_bytes], dtype=float))[0])]

    def level_indices(self, working_set_bytes: np.ndarray) -> np.ndarray:
        """memory_level_for over an array: indices into streaming_levels()."""
        levels = self.streaming_levels()
        capacities = np.array([level.holds_bytes or np.inf for level in levels], dtype=float)
        capacities[-1] = np.inf
        fits: np.ndarray = np.asarray(working_set_bytes, dtype=float)[:, None] <= capacities[None, :]
        return np.asarray(np.argmax(fits, axis=1))

    def for_compute_type(self, compute_type: str) -> HardwareProfile:
        """This profile with `compute_type`'s own efficiency lines (keys TYPE:CLASS) in force as the plain
        keys, class by class: a class without a line of that type keeps fp32's (the plain keys). Lines of
        other types are left out, so everything that reads the plain keys reads this type's."""
        if not any(":" in key for name in (*_FACTOR_FIELDS, *_FIXED_FIELDS) for key in getattr(self, name)):
            return self
        prefix = f"{compute_type}:"
        own = {key.removeprefix(prefix).partition("@")[0]
               for name in _FACTOR_FIELDS for key in getattr(self, name) if key.startswith(prefix)}

        def pick(mapping: Mapping[str, Any]) -> dict[str, Any]:
            plain = {k: v for k, v in mapping.items() if ":" not in k and k.partition("@")[0] not in own}
            return plain | {k.removeprefix(prefix): v for k, v in mapping.items() if k.startswith(prefix)}

        # Calibration evidence (samples, spreads) is kept in metadata as "<field>.<key>", with the same keys.
        evidence = ("efficiency.", "efficiency_spread.")
        metadata = {k: v for k, v in self.metadata.items() if not k.startswith(evidence)}
        for stem in evidence:
            keyed = {k.removeprefix(stem): v for k, v in self.metadata.items() if k.startswith(stem)}
            metadata |= {stem + k: v for k, v in pick(keyed).items()}
        return dataclasses.replace(
            self, efficiency=pick(self.efficiency), fixed_overhead_s=pick(self.fixed_overhead_s), metadata=metadata)

    def efficiency_for(self, op_class: str, level: str) -> float | None:
        """The calibrated factor for `op_class` streaming from `level`: CLASS@LEVEL, else CLASS, else None."""
        return self.efficiency.get(f"{op_class}@{level}", self.efficiency.get(op_class))

    def group_rate(self, channels_per_group: np.ndarray) -> np.ndarray:
        """Per grouped convolution, its rate against a dense one (conv_group_rate), linear in log2(channels per
        group) between the measured counts and held at the nearest one beyond them, never above 1; 1 where
        there is no grouped convolution (channels per group under 2) or no measured rate."""
        counts = np.asarray(channels_per_group, dtype=float)
        if not self.conv_group_rate:
            return np.ones_like(counts)
        known = np.log2(np.array(list(self.conv_group_rate), dtype=float))
        rates = np.minimum(1.0, np.interp(np.log2(np.maximum(counts, 1.0)), known,
                                          np.array(list(self.conv_group_rate.values()), dtype=float)))
        return np.where(counts >= 2, rates, 1.0)

    def group_rate_sigma(self) -> float:
        """How far a grouped convolution's rate may be off at a size calibration did not time (sigma of log rate,
        metadata conv_group_rate_sigma); 0 where not recorded."""
        try:
            return float(self.metadata.get("conv_group_rate_sigma", 0.0))
        except ValueError:
            return 0.0

    def calibration_spread(self, op_class: str) -> float | None:
        """How much the class's calibration ops moved between timing rounds (relative half-range), if recorded."""
        text = self.metadata.get(f"efficiency_spread.{op_class}")
        try:
            return float(text) if text is not None else None
        except ValueError:
            return None

    def calibration_samples(self, op_class: str) -> list[CalibrationSample]:
        """The timed ops a class's efficiency line was fitted to (from metadata), for the evidence behind a factor."""
        text = self.metadata.get(f"efficiency.{op_class}", "")
        return [CalibrationSample(m["description"], float(m["roofline"]), float(m["measured"]), m["level"])
                for m in _SAMPLE.finditer(text)]

    def to_dict(self) -> dict[str, Any]:
        """Plain data in file order, ready for YAML or JSON (path left out: it is where, not what)."""
        data: dict[str, Any] = {
            "format_version": FORMAT_VERSION,
            "name": self.name,
            "kind": self.kind,
            "vendor": self.vendor,
            "source": self.source,
            "reference": self.reference,
            "aliases": list(self.aliases),
            "peak_flops_per_s": {k: float(v) for k, v in self.peak_flops_per_s.items()},
            "memory_levels": [
                {
                    "name": level.name,
                    "capacity_bytes": level.capacity_bytes,
                    "bandwidth_bytes_per_s": level.bandwidth_bytes_per_s,
                    **({"note": level.note} if level.note else {}),
                    **({"effective_capacity_bytes": level.effective_capacity_bytes}
                       if level.effective_capacity_bytes is not None else {}),
                }
                for level in self.memory_levels
            ],
            "overhead_s": self.overhead_s,
            "module_call_s": self.module_call_s,
            "efficiency": dict(self.efficiency),
            "fixed_overhead_s": dict(self.fixed_overhead_s),
            "pass_call_s": self.pass_call_s,
            "conv_group_rate": dict(self.conv_group_rate) if self.conv_group_rate else None,
            "interconnect": dataclasses.asdict(self.interconnect) if self.interconnect else None,
            "notes": dict(self.notes),
            "metadata": dict(self.metadata),
        }
        return {k: v for k, v in data.items() if v != [] and v != {} and v is not None}

    def summary(self) -> str:
        """A few lines for people: peaks, levels, overhead, source."""
        from roofline.formatting import format_bytes, format_si, format_time

        lines = [f"{self.name} ({self.kind}, {self.vendor}; source: {self.source})"]
        lines.append("  peaks: " + ", ".join(f"{k} {format_si(v, 'FLOP/s')}" for k, v in self.peak_flops_per_s.items()))
        for level in self.memory_levels:
            capacity = format_bytes(level.capacity_bytes) if level.capacity_bytes is not None else "?"
            if level.effective_capacity_bytes is not None:
                capacity += f" (in use {format_bytes(level.effective_capacity_bytes)})"
            bandwidth = (
                format_si(level.bandwidth_bytes_per_s, "B/s") if level.bandwidth_bytes_per_s is not None else "not measured"
            )
            lines.append(f"  {level.name}: {capacity} at {bandwidth}")
        lines.append(f"  per-op overhead: {format_time(self.overhead_s)}")
        if self.module_call_s:
            lines.append(f"  module call: {format_time(self.module_call_s)}")
        if self.efficiency:
            lines.append("  efficiency: " + ", ".join(f"{k} {v:.2f}" for k, v in self.efficiency.items()))
        if self.pass_call_s is not None:
            lines.append(f"  in a pass, per op call: {format_time(self.pass_call_s)} (and its cold data)")
        if self.conv_group_rate:
            lines.append("  grouped conv against dense, by channels per group: "
                         + ", ".join(f"{k}: {v:.2f}" for k, v in self.conv_group_rate.items()))
        return "\n".join(lines)

    def __repr__(self) -> str:
        return f"HardwareProfile({self.name!r}, kind={self.kind!r}, source={self.source!r})\n{self.summary()}"

    def _repr_html_(self) -> str:
        import html

        return f"<pre>{html.escape(self.summary())}</pre>"


# ---- validation ----------------------------------------------------------------------------------

def _fail(where: str, field_path: str, message: str) -> RooflineError:
    return RooflineError(f"{where}: field '{field_path}': {message}")


def _number(where: str, field_path: str, value: object, unit: str, low: float, high: float, *, allow_none: bool = False) -> float | None:
    """A finite real in (low, high]; the message says the unit expected and what was given."""
    if value is None and allow_none:
        return None
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        raise _fail(where, field_path, f"must be a positive number in {unit}, got {value!r}")
    number = float(value)
    if number <= 0:
        raise _fail(where, field_path, f"must be a positive number in {unit}, got {value!r}")
    if number < low:
        raise _fail(where, field_path, f"{value!r} is implausibly small (wrong units? values are in {unit})")
    if number > high:
        raise _fail(where, field_path, f"{value!r} is implausibly large (more than {high:g} {unit}; wrong units?)")
    return number


def _check_keys(where: str, field_path: str, mapping: Mapping[Any, Any]) -> None:
    """Keys are names (a compute type, an op class): a number there is a typo YAML read as an int."""
    for key in mapping:
        if not isinstance(key, str):
            raise _fail(where, f"{field_path}.{key}", f"keys must be names (strings), got the {type(key).__name__} {key!r}")


def _check_values(profile: HardwareProfile) -> None:
    """Checks on a constructed profile, whether it came from a file or from code."""
    where = profile.where
    if profile.kind not in KINDS:
        raise _fail(where, "kind", f"must be one of {', '.join(KINDS)}, got {profile.kind!r}")
    if profile.source not in SOURCES:
        raise _fail(where, "source", f"must be one of {', '.join(SOURCES)}, got {profile.source!r}")
    if not profile.peak_flops_per_s:
        raise _fail(where, "peak_flops_per_s", "needs at least one compute type")
    for name in ("peak_flops_per_s", *_FACTOR_FIELDS, *_FIXED_FIELDS):
        _check_keys(where, name, getattr(profile, name))
    for key, value in profile.peak_flops_per_s.items():
        if key not in COMPUTE_TYPES:
            raise _fail(where, f"peak_flops_per_s.{key}", f"unknown compute type{close_matches(key, COMPUTE_TYPES)}; accepted: {', '.join(COMPUTE_TYPES)}")
        _number(where, f"peak_flops_per_s.{key}", value, "FLOP/s", _MIN_PEAK, _MAX_PEAK)
    if not profile.memory_levels:
        raise _fail(where, "memory_levels", "needs at least one level (DRAM/HBM)")
    previous: float | None = None
    for i, level in enumerate(profile.memory_levels):
        _number(where, f"memory_levels[{i}].capacity_bytes", level.capacity_bytes, "bytes", 1.0, _MAX_CAPACITY, allow_none=True)
        _number(where, f"memory_levels[{i}].bandwidth_bytes_per_s", level.bandwidth_bytes_per_s, "bytes/s", _MIN_BW, _MAX_BW, allow_none=True)
        effective = _number(where, f"memory_levels[{i}].effective_capacity_bytes", level.effective_capacity_bytes, "bytes",
                            1.0, _MAX_CAPACITY, allow_none=True)
        if effective is not None and (level.capacity_bytes is None or effective > level.capacity_bytes):
            raise _fail(where, f"memory_levels[{i}].effective_capacity_bytes",
                        f"{effective:.0f} must not exceed the level's capacity_bytes ({level.capacity_bytes}): it is the "
                        "part of that capacity a bandwidth sweep found in use")
        if level.capacity_bytes is not None:
            if previous is not None and level.capacity_bytes <= previous:
                raise _fail(where, f"memory_levels[{i}].capacity_bytes", "levels go from fastest (smallest) to slowest (largest); this one is not larger than the one before")
            previous = level.capacity_bytes
    if profile.source != "detected":  # detection leaves bandwidths unknown until `hw measure`; prediction refuses then
        profile.check_streaming_bandwidth()
    _number(where, "overhead_s", profile.overhead_s, "seconds", 1e-9, _MAX_OVERHEAD_S)
    _number(where, "module_call_s", profile.module_call_s, "seconds", 1e-9, _MAX_OVERHEAD_S, allow_none=True)
    _number(where, "pass_call_s", profile.pass_call_s, "seconds", 1e-9, _MAX_OVERHEAD_S, allow_none=True)
    for count, rate in (profile.conv_group_rate or {}).items():
        if count < 2:
            raise _fail(where, f"conv_group_rate.{count}", "channels per group must be 2 or more (depthwise, 1, is "
                        "the grouped_conv class's own line)")
        _number(where, f"conv_group_rate.{count}", rate, "rate against a dense convolution", 1e-6, _MAX_EFFICIENCY)
    level_names = [level.name for level in profile.memory_levels]
    for name in _FACTOR_FIELDS:
        for key, value in getattr(profile, name).items():
            _check_compute_type_prefix(where, f"{name}.{key}", key)
            op_class, _, level = key.rpartition(":")[2].partition("@")
            if op_class not in EFFICIENCY_CLASSES:
                raise _fail(where, f"{name}.{key}", f"unknown op class{close_matches(op_class, EFFICIENCY_CLASSES)}; accepted: {', '.join(EFFICIENCY_CLASSES)}")
            if "@" in key and level not in level_names:
                raise _fail(where, f"{name}.{key}", f"unknown memory level{close_matches(level, level_names)}; this profile's levels: {', '.join(level_names)}")
            _number(where, f"{name}.{key}", value, "fraction of the roofline", 1e-6, _MAX_EFFICIENCY)
    for name in _FIXED_FIELDS:
        for key, value in getattr(profile, name).items():
            _check_compute_type_prefix(where, f"{name}.{key}", key)
            if key.rpartition(":")[2] not in EFFICIENCY_CLASSES:
                raise _fail(where, f"{name}.{key}", f"unknown op class{close_matches(key, EFFICIENCY_CLASSES)}; accepted: {', '.join(EFFICIENCY_CLASSES)}")
            _number(where, f"{name}.{key}", value, "seconds", 1e-9, _MAX_OVERHEAD_S)
    link = profile.interconnect
    if link is not None:
        for key in ("name", "source"):
            if not isinstance(getattr(link, key), str) or not getattr(link, key).strip():
                raise _fail(where, f"interconnect.{key}", f"must be a non-empty string, got {getattr(link, key)!r}")
        _number(where, "interconnect.bandwidth_bytes_per_s", link.bandwidth_bytes_per_s, "bytes/s", _MIN_BW, _MAX_BW)
        _number(where, "interconnect.latency_s", link.latency_s, "seconds", 1e-9, _MAX_LINK_LATENCY_S)


def _check_compute_type_prefix(where: str, field_path: str, key: str) -> None:
    """A factor key's `TYPE:` prefix (HardwareProfile.for_compute_type) names a compute type."""
    kind, colon, _ = key.partition(":")
    if colon and kind not in COMPUTE_TYPES:
        raise _fail(where, field_path, f"unknown compute type {kind!r}{close_matches(kind, COMPUTE_TYPES)}; "
                                       f"accepted: {', '.join(COMPUTE_TYPES)}")


def _group_rate(where: str, raw: object) -> dict[int, float] | None:
    """The optional conv_group_rate mapping: whole channel counts to numbers (the values are checked with the
    profile's)."""
    if raw is None:
        return None
    if not isinstance(raw, dict) or not raw:
        raise _fail(where, "conv_group_rate", "must be a mapping of channels per group to a rate against dense")
    rates: dict[int, float] = {}
    for key, value in raw.items():
        try:
            count = int(key)
        except (TypeError, ValueError):
            raise _fail(where, f"conv_group_rate.{key}", "must be a whole number of channels per group") from None
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise _fail(where, f"conv_group_rate.{key}", "must be a number")
        rates[count] = float(value)
    return rates


def _interconnect(where: str, raw: object) -> Interconnect | None:
    """The optional interconnect mapping: exactly its four fields (values are checked with the profile's)."""
    if raw is None:
        return None
    if not isinstance(raw, dict):
        raise _fail(where, "interconnect", f"must be a mapping with {', '.join(_INTERCONNECT_FIELDS)}")
    for key in raw:
        if key not in _INTERCONNECT_FIELDS:
            raise _fail(where, f"interconnect.{key}", f"unknown key; accepted: {', '.join(_INTERCONNECT_FIELDS)}")
    for key in _INTERCONNECT_FIELDS:
        if key not in raw:
            raise _fail(where, f"interconnect.{key}", f"missing (an interconnect needs {', '.join(_INTERCONNECT_FIELDS)})")
    return Interconnect(raw["name"], raw["bandwidth_bytes_per_s"], raw["latency_s"], raw["source"])


def profile_from_dict(data: object, where: str, path: str | None = None) -> HardwareProfile:
    """Check the structure of a parsed file (keys, types), then build the profile (which checks values)."""
    if not isinstance(data, dict):
        raise RooflineError(f"{where}: a profile must be a YAML mapping of fields, got {type(data).__name__}")
    unknown = [k for k in data if k not in _REQUIRED + _OPTIONAL + _RETIRED]
    if unknown:
        key = str(unknown[0])
        raise _fail(where, key, f"unknown key{close_matches(key, _REQUIRED + _OPTIONAL)}; accepted: {', '.join(_REQUIRED + _OPTIONAL)}")
    missing = [k for k in _REQUIRED if k not in data]
    if missing:
        raise _fail(where, missing[0], "missing (required fields: " + ", ".join(_REQUIRED) + ")")
    version = data.get("format_version", FORMAT_VERSION)
    if version != FORMAT_VERSION:
        raise _fail(where, "format_version", f"this roofline reads format {FORMAT_VERSION}, got {version!r}")
    for key in ("name", "kind", "vendor", "source", "reference"):
        if not isinstance(data[key], str) or not data[key].strip():
            raise _fail(where, key, f"must be a non-empty string, got {data[key]!r}")
    for key in ("peak_flops_per_s", *_FACTOR_FIELDS, *_FIXED_FIELDS, "notes", "metadata"):
        if not isinstance(data.get(key, {}), dict):
            raise _fail(where, key, f"must be a mapping, got {type(data[key]).__name__}")
        _check_keys(where, key, data.get(key, {}))
    aliases = data.get("aliases", [])
    if not isinstance(aliases, list) or not all(isinstance(a, str) for a in aliases):
        raise _fail(where, "aliases", "must be a list of strings")
    notes = data.get("notes", {})
    for key, value in notes.items():
        if not isinstance(value, str):
            raise _fail(where, f"notes.{key}", "must be a string")
    levels_raw = data["memory_levels"]
    if not isinstance(levels_raw, list):
        raise _fail(where, "memory_levels", f"must be a list of levels, got {type(levels_raw).__name__}")
    levels = []
    for i, raw in enumerate(levels_raw):
        if not isinstance(raw, dict):
            raise _fail(where, f"memory_levels[{i}]", "must be a mapping with name, capacity_bytes, bandwidth_bytes_per_s")
        for key in raw:
            if key not in _LEVEL_REQUIRED + _LEVEL_OPTIONAL:
                raise _fail(where, f"memory_levels[{i}].{key}", f"unknown key; accepted: {', '.join(_LEVEL_REQUIRED + _LEVEL_OPTIONAL)}")
        for key in _LEVEL_REQUIRED:
            if key not in raw:
                raise _fail(where, f"memory_levels[{i}].{key}", "missing (use null for 'unknown')")
        if not isinstance(raw["name"], str):
            raise _fail(where, f"memory_levels[{i}].name", "must be a string")
        levels.append(MemoryLevel(raw["name"], raw["capacity_bytes"], raw["bandwidth_bytes_per_s"], str(raw.get("note", "")),
                                  raw.get("effective_capacity_bytes")))
    return HardwareProfile(
        name=data["name"],
        kind=data["kind"],
        vendor=data["vendor"],
        source=data["source"],
        reference=data["reference"],
        peak_flops_per_s=data["peak_flops_per_s"],
        memory_levels=tuple(levels),
        overhead_s=data["overhead_s"],
        module_call_s=data.get("module_call_s"),
        efficiency=data.get("efficiency", {}),
        fixed_overhead_s=data.get("fixed_overhead_s", {}),
        pass_call_s=data.get("pass_call_s"),
        conv_group_rate=_group_rate(where, data.get("conv_group_rate")),
        interconnect=_interconnect(where, data.get("interconnect")),
        notes=notes,
        aliases=tuple(aliases),
        metadata={str(k): str(v) for k, v in data.get("metadata", {}).items()},
        path=path,
    )


# ---- files ---------------------------------------------------------------------------------------

class _Loader(yaml.SafeLoader):
    """SafeLoader that also reads 80e9 and 3.35e12 as numbers (YAML 1.1 wants 3.35e+12), and refuses a
    key given twice in one mapping (PyYAML keeps the last silently: an edited figure may not be the one read)."""

    def construct_mapping(self, node: yaml.MappingNode, deep: bool = False) -> dict[Hashable, Any]:
        first_line: dict[Any, int] = {}
        for key_node, _ in node.value:
            if key_node.tag == "tag:yaml.org,2002:merge":  # `<<: *base` may be overridden on purpose
                continue
            key = self.construct_object(key_node, deep=True)
            try:
                seen = key in first_line
            except TypeError:  # an unhashable key: SafeLoader's own error names it
                continue
            if seen:
                raise yaml.constructor.ConstructorError(
                    None, None, f"duplicate key {key!r} (first given at line {first_line[key] + 1})", key_node.start_mark)
            first_line[key] = key_node.start_mark.line
        return super().construct_mapping(node, deep)


_Loader.add_implicit_resolver(
    "tag:yaml.org,2002:float",
    re.compile(r"^[-+]?[0-9][0-9_]*(?:\.[0-9_]*)?[eE][-+]?[0-9]+$"),
    list("-+0123456789"),
)


class _Dumper(yaml.SafeDumper):
    """Writes floats as 3.35e+12 rather than 3350000000000.0, so files stay readable."""


def _represent_float(dumper: yaml.SafeDumper, value: float) -> yaml.Node:
    return dumper.represent_scalar("tag:yaml.org,2002:float", f"{value:.12g}" if math.isfinite(value) else str(value))


_Dumper.add_representer(float, _represent_float)


def _display_path(path: str) -> str:
    """Shipped profiles are shown by their place in the package (roofline/hwprofiles/h100-sxm.yaml),
    the same in a checkout and in an installed wheel; other files as given."""
    resolved = Path(path).resolve()
    root = Path(roofline.__file__).resolve().parents[1]
    try:
        return str(resolved.relative_to(root))
    except ValueError:
        return str(path)


def load_profile_file(path: str | os.PathLike[str]) -> HardwareProfile:
    """Read and validate one profile file; every error names the file (and the field)."""
    where = _display_path(str(path))
    try:
        text = Path(path).read_text(encoding="utf-8")
    except OSError as error:
        raise RooflineError(f"{where}: cannot read hardware profile ({error.strerror or error})") from error
    except UnicodeDecodeError as error:
        raise RooflineError(f"{where}: a hardware profile must be UTF-8 text; byte {error.object[error.start]:#04x} "
                            f"at offset {error.start} is not") from error
    try:
        data = yaml.load(text, Loader=_Loader)
    except yaml.YAMLError as error:
        mark = getattr(error, "problem_mark", None)
        at = f" at line {mark.line + 1}" if mark is not None else ""
        raise RooflineError(f"{where}: not valid YAML{at}: {getattr(error, 'problem', None) or error}") from error
    return profile_from_dict(data, where, path=str(path))


def save_profile(profile: HardwareProfile, path: str | os.PathLike[str]) -> Path:
    """Write a profile as YAML (atomically: a temp file renamed over the target)."""
    target = Path(path)
    target.parent.mkdir(parents=True, exist_ok=True)
    text = yaml.dump(profile.to_dict(), Dumper=_Dumper, sort_keys=False, allow_unicode=True, width=110)
    temporary = target.with_name(f".{target.name}.tmp")
    temporary.write_text(text, encoding="utf-8")
    os.replace(temporary, target)
    return target


def hwprofiles_dir() -> Path:
    """The shipped profiles: package data roofline/hwprofiles/ (read through importlib.resources, so an
    installed wheel finds them), or the directory in $ROOFLINE_HWPROFILES."""
    override = os.environ.get("ROOFLINE_HWPROFILES")
    if override:
        return Path(override)
    shipped = resources.files("roofline").joinpath("hwprofiles")
    if not isinstance(shipped, Path):
        # A zipped install (a zipimport of the wheel): profiles are files read by path here and in
        # error messages, so there is no directory to hand out.
        raise RooflineError(
            f"roofline's shipped profiles are not files on disk ({shipped}); install roofline unzipped "
            "or set $ROOFLINE_HWPROFILES to a directory of profiles"
        )
    return shipped


def user_profile_dir() -> Path:
    """Where measured profiles of this machine are kept: $ROOFLINE_PROFILE_DIR or ~/.cache/roofline/hwprofiles."""
    override = os.environ.get("ROOFLINE_PROFILE_DIR")
    return Path(override) if override else Path.home() / ".cache" / "roofline" / "hwprofiles"


def _profile_files(directory: Path) -> list[Path]:
    return sorted(p for p in directory.glob("*.y*ml") if p.suffix in (".yaml", ".yml")) if directory.is_dir() else []


def _shipped_files() -> list[Path]:
    """The shipped profile files; none at all means a broken install (or a wrong override), never 'no devices'."""
    directory = hwprofiles_dir()
    files = _profile_files(directory)
    if not files:
        where = "$ROOFLINE_HWPROFILES" if os.environ.get("ROOFLINE_HWPROFILES") else "the installed package"
        raise RooflineError(
            f"no hardware profiles (*.yaml) in {directory} ({where}); "
            "reinstall roofline, or point $ROOFLINE_HWPROFILES at a directory of profiles"
        )
    return files


def profile_paths() -> dict[str, Path]:
    """Profile name (file stem, lower case) -> file; the shipped directory wins over the user one."""
    found: dict[str, Path] = {path.stem.lower(): path for path in _profile_files(user_profile_dir())}
    found.update({path.stem.lower(): path for path in _shipped_files()})
    return found


def _by_kind_and_name(profiles: list[HardwareProfile]) -> list[HardwareProfile]:
    return sorted(profiles, key=lambda p: (p.kind != "gpu", p.name.lower()))


def list_profiles() -> list[HardwareProfile]:
    """Every shipped profile, loaded and validated, GPUs first, then by name."""
    return _by_kind_and_name([load_profile_file(p) for p in _shipped_files()])


def saved_profiles() -> list[HardwareProfile]:
    """The profiles saved in the user directory (`hw measure`, `--hw auto`), GPUs first, then by name.

    A file there that does not load is skipped with a warning naming it: one broken cache file must
    not hide the others (`hw show FILE` gives its full error).
    """
    profiles = []
    for path in _profile_files(user_profile_dir()):
        try:
            profiles.append(load_profile_file(path))
        except RooflineError as error:
            warnings.warn(f"skipping saved profile {path}: {error}", stacklevel=2)
    return _by_kind_and_name(profiles)

"""Microbenchmarks that turn this machine into a measured profile: bandwidth per memory level, matmul
rate per compute type, per-op overhead, and efficiency factors per op class.

Every figure is the median of repeated timings (roofline.timing) with its IQR kept in metadata.
Bytes follow the STREAM convention: each array read or written once, write-allocate traffic not
counted (copy and scale move 2 arrays, add and triad 3).
"""
from __future__ import annotations

import dataclasses
import datetime
import math
import os
import platform
import statistics
import warnings
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F

from roofline.errors import RooflineError
from roofline.hardware.detect import detect
from roofline.hardware.profile import HardwareProfile, MemoryLevel
from roofline.timing import (
    Measurement,
    reference_matmul,
    retained_heap,
    time_callable,
    time_in_sequence,
    time_interleaved,
    with_matmul_tf32,
)

__all__ = ["FULL", "QUICK", "BandwidthPoint", "BenchConfig", "measure_profile", "recalibrate"]

_KIB = 1024
_MIB = 1024 * 1024
# A point whose time is under this many per-op overheads measures dispatch, not memory: not used.
_OVERHEAD_BOUND_FACTOR = 10.0
# A compute type slower than this fraction of fp32 has no fast path on this device (said in notes).
_SLOW_PATH_FRACTION = 0.05


@dataclass(frozen=True)
class BenchConfig:
    """How much to measure. QUICK finishes in under 30 s on a 2-core CPU, FULL in under 3 minutes."""

    min_bytes: int = 16 * _KIB
    max_bytes: int = 512 * _MIB
    past_llc: bool = True  # also sweep to 4 x the last-level cache when that is larger (up to 1/4 of RAM)
    size_step: float = 2.0  # working sets grow by this factor
    min_run_time_s: float = 0.05  # per timed point
    matmul_sizes: tuple[int, ...] = (512, 1024, 2048)
    efficiency_scale: float = 1.0  # scales the representative ops' sizes
    efficiency: bool = True
    rounds: int = 3  # interleaved passes over the efficiency ops (timing.time_interleaved)
    sequence_cycles: int = 15  # cycles over the efficiency ops timed as in a pass (CPU; 0: not measured)

    @property
    def cycles_per_round(self) -> int:
        """Sequence cycles run after each alone round (sequence_cycles spread over the rounds)."""
        return math.ceil(self.sequence_cycles / self.rounds)

    def efficiency_steps(self, device: str) -> int:
        """Progress steps of measure_efficiency: each op and the reference per round, then the cycles."""
        cycles = self.rounds * self.cycles_per_round if device == "cpu" else 0
        return self.rounds * (len(representative_ops("meta", 0.01)) + 1) + cycles


FULL = BenchConfig()
QUICK = BenchConfig(max_bytes=128 * _MIB, size_step=4.0, min_run_time_s=0.01, matmul_sizes=(256, 512, 1024), efficiency_scale=0.5,
                    sequence_cycles=9)


def config_of(profile: HardwareProfile) -> BenchConfig:
    """The configuration a measured profile was made with (its op sizes and timing), by its metadata."""
    return QUICK if profile.metadata.get("mode") == "quick" else FULL


@dataclass(frozen=True)
class BandwidthPoint:
    """One kernel at one working set: bytes moved per call and the timing."""

    kernel: str
    working_set_bytes: int
    bytes_moved: int
    measurement: Measurement

    @property
    def bandwidth_bytes_per_s(self) -> float:
        return self.bytes_moved / self.measurement.median_s


def _sizes(config: BenchConfig, llc_bytes: float | None) -> list[int]:
    """Working sets from min_bytes to well past the last-level cache, limited to 1/4 of free RAM."""
    top = max(config.max_bytes, int(4 * (llc_bytes or 0))) if config.past_llc else config.max_bytes
    ram = _available_ram_bytes()
    if ram:
        top = min(top, int(ram / 4 / config.size_step))
    sizes, size = [], float(config.min_bytes)
    while True:  # the last size is the first one at or past `top`, so DRAM is always reached
        sizes.append(int(size) // 64 * 64)
        if size >= top * 0.9999:
            return sizes
        size *= config.size_step


def _available_ram_bytes() -> float | None:
    try:
        with open("/proc/meminfo") as handle:
            for line in handle:
                if line.startswith("MemAvailable:"):
                    return float(line.split()[1]) * 1024
    except OSError:
        pass
    return None


def _stream_kernels(working_set: int, device: str, llc_bytes: float | None) -> Iterator[tuple[str, int, Callable[[], object]]]:
    """(kernel, bytes moved per call, callable) for one working set, fp32, torch ops with out=."""
    element = 4
    two = max(1, working_set // (2 * element))
    three = max(1, working_set // (3 * element))
    a, c = torch.rand(two, device=device), torch.empty(two, device=device)
    yield "copy", 2 * two * element, lambda: c.copy_(a)
    yield "scale", 2 * two * element, lambda: torch.mul(a, 3.0, out=c)
    x, y, z = torch.rand(three, device=device), torch.rand(three, device=device), torch.empty(three, device=device)
    yield "add", 3 * three * element, lambda: torch.add(x, y, out=z)
    yield "triad", 3 * three * element, lambda: torch.add(y, z, alpha=3.0, out=x)
    if llc_bytes is None or working_set <= llc_bytes:
        # In-cache read: a sum over a stride-0 repeated view re-reads the same small buffer `repeat`
        # times in one op, so cache levels are not hidden behind per-op dispatch cost.
        n = max(1, working_set // element)
        repeat = max(2, math.ceil(16 * _MIB / working_set))
        r, out = torch.rand(n, device=device), torch.empty(n, device=device)
        view = r.expand(repeat, n)
        yield "read", (repeat + 1) * n * element, lambda: torch.sum(view, dim=0, out=out)


def _spread(m: Measurement, work: float) -> str:
    """'rate (IQR x%)' for metadata: the rate from the median and the IQR as a share of the median."""
    return f"{work / m.median_s:.4g} (IQR {100 * m.iqr_s / m.median_s:.1f}%, {m.repeats}x{m.number})"


class _Progress:
    """A tqdm bar when asked for, otherwise nothing."""

    def __init__(self, total: int, enabled: bool, desc: str) -> None:
        self._bar = None
        if enabled:
            from tqdm import tqdm

            self._bar = tqdm(total=total, desc=desc, unit="bench", leave=False)

    def step(self, label: str) -> None:
        if self._bar is not None:
            self._bar.set_postfix_str(label, refresh=False)
            self._bar.update(1)

    def close(self) -> None:
        if self._bar is not None:
            self._bar.close()


def measure_module_call(device: str, config: BenchConfig) -> Measurement:
    """Latency of calling an nn.Identity: Python's module call alone, which every layer pays on top
    of its ops (and a leaf with no op, such as eval-mode Dropout, pays alone)."""
    x = torch.zeros(1, device=device)
    identity = torch.nn.Identity()
    return time_callable(lambda: identity(x), device=device, min_run_time_s=config.min_run_time_s, label="module call")


def measure_overhead(device: str, config: BenchConfig) -> Measurement:
    """Latency of a tiny op (1-element add): the dispatch (CPU) or launch (CUDA) cost per op."""
    x = torch.zeros(1, device=device)
    return time_callable(lambda: torch.add(x, x, out=x), device=device, min_run_time_s=config.min_run_time_s, label="tiny add")


def _plateaus(
    levels: tuple[MemoryLevel, ...], points: list[BandwidthPoint], overhead_s: float
) -> tuple[list[MemoryLevel], dict[str, str]]:
    """Each level's bandwidth: the best kernel median among working sets that fit in it (and not in
    the level before), skipping points dominated by per-op overhead. DRAM uses working sets of at
    least 4x the last cache, STREAM kernels only."""
    metadata: dict[str, str] = {}
    usable = [p for p in points if p.measurement.median_s >= _OVERHEAD_BOUND_FACTOR * overhead_s]
    caches = [level for level in levels[:-1] if level.capacity_bytes]
    measured: list[MemoryLevel] = []
    lower = 0.0
    for level in caches:
        capacity = float(level.capacity_bytes or 0)
        window = [p for p in usable if lower < p.working_set_bytes <= capacity / 2]
        best: BandwidthPoint | None = max(window, key=lambda p: p.bandwidth_bytes_per_s, default=None)
        if best is None:
            note = f"not measured: no working set in ({lower:.0f}, {capacity / 2:.0f}] bytes ran longer than {_OVERHEAD_BOUND_FACTOR:g}x the per-op overhead"
            measured.append(dataclasses.replace(level, bandwidth_bytes_per_s=None, note=note))
        else:
            note = (
                f"measured: best of {len(window)} kernel x size points that fit this level: {best.kernel} at "
                f"{best.working_set_bytes} B, IQR {100 * best.measurement.iqr_s / best.measurement.median_s:.1f}%"
            )
            measured.append(dataclasses.replace(level, bandwidth_bytes_per_s=best.bandwidth_bytes_per_s, note=note))
            for kernel in sorted({p.kernel for p in window}):
                top = max((p for p in window if p.kernel == kernel), key=lambda p: p.bandwidth_bytes_per_s)
                metadata[f"bandwidth.{level.name}.{kernel}"] = _spread(top.measurement, top.bytes_moved)
        lower = capacity
    dram = levels[-1]
    stream = [p for p in points if p.kernel != "read"]
    largest = max((p.working_set_bytes for p in stream), default=0)
    threshold = 4 * lower if lower else largest
    far = [p for p in stream if p.working_set_bytes >= min(threshold, largest)]
    per_kernel: dict[str, BandwidthPoint] = {}
    for p in far:  # each kernel's DRAM figure: its point at the largest working set
        if p.kernel not in per_kernel or p.working_set_bytes > per_kernel[p.kernel].working_set_bytes:
            per_kernel[p.kernel] = p
    for kernel, p in per_kernel.items():
        metadata[f"bandwidth.{dram.name}.{kernel}"] = _spread(p.measurement, p.bytes_moved)
    best_dram = max(per_kernel.values(), key=lambda p: p.bandwidth_bytes_per_s, default=None)
    if best_dram is None:
        measured.append(dataclasses.replace(dram, note="not measured: no STREAM point"))
    else:
        upper = "" if largest >= threshold else f"; largest working set {largest} B is under 4x the last cache, so this is an upper bound"
        note = (
            f"measured: best STREAM kernel ({best_dram.kernel}) at {best_dram.working_set_bytes} B working set, "
            f"IQR {100 * best_dram.measurement.iqr_s / best_dram.measurement.median_s:.1f}%; per-kernel figures in metadata{upper}"
        )
        measured.append(dataclasses.replace(dram, bandwidth_bytes_per_s=best_dram.bandwidth_bytes_per_s, note=note))
    return measured, metadata


_MATMUL_TYPES: dict[str, torch.dtype] = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}


def _matmul(compute_type: str, n: int, device: str) -> Callable[[], object] | None:
    """A square n x n product for one compute type, or None when torch has no kernel for it here."""
    if compute_type == "int8":
        if not hasattr(torch, "_int_mm"):
            return None
        a = torch.randint(-128, 127, (n, n), dtype=torch.int8, device=device)
        b = torch.randint(-128, 127, (n, n), dtype=torch.int8, device=device)
        try:
            torch._int_mm(a, b)
        except RuntimeError:
            return None
        return lambda: torch._int_mm(a, b)
    if compute_type == "tf32":
        x = torch.randn(n, n, device=device)
        return with_matmul_tf32(lambda: torch.mm(x, x), enabled=True)
    dtype = _MATMUL_TYPES[compute_type]
    x, y = torch.randn(n, n, device=device, dtype=dtype), torch.randn(n, n, device=device, dtype=dtype)
    out = torch.empty(n, n, device=device, dtype=dtype)
    return lambda: torch.mm(x, y, out=out)


def _compute_peaks(
    device: str, config: BenchConfig, progress: _Progress
) -> tuple[dict[str, float], dict[str, str], dict[str, str]]:
    """Best sustained matmul rate per compute type (2 n^3 FLOP per product), with slow paths named."""
    types = ["fp32", "bf16", "fp16", "int8"] + (["tf32"] if device.startswith("cuda") else [])
    peaks: dict[str, float] = {}
    notes: dict[str, str] = {}
    metadata: dict[str, str] = {}
    for compute_type in types:
        best: tuple[float, Measurement, int] | None = None
        for n in config.matmul_sizes:
            fn = _matmul(compute_type, n, device)
            if fn is None:
                notes[f"peak_flops_per_s.{compute_type}"] = "not measured: torch has no kernel for it on this device"
                break
            m = time_callable(fn, device=device, min_run_time_s=config.min_run_time_s, warmup=1, label=f"{compute_type} mm {n}")
            progress.step(f"{compute_type} mm {n}")
            rate = 2 * n**3 / m.median_s
            if best is None or rate > best[0]:
                best = (rate, m, n)
            if "fp32" in peaks and compute_type != "fp32" and rate < _SLOW_PATH_FRACTION * peaks["fp32"]:
                break  # no fast path: larger sizes would only take longer
        if best is None:
            continue
        rate, m, n = best
        peaks[compute_type] = rate
        metadata[f"matmul.{compute_type}"] = f"{_spread(m, 2 * n**3)} FLOP/s at n={n}"
        note = f"measured: best median rate of torch matmul over n in {list(config.matmul_sizes)} (at n={n}), IQR {100 * m.iqr_s / m.median_s:.1f}%"
        if compute_type != "fp32" and "fp32" in peaks and rate < _SLOW_PATH_FRACTION * peaks["fp32"]:
            note += f"; NO FAST PATH: {100 * rate / peaks['fp32']:.2g}% of the fp32 rate on this device (kept as measured, not hidden)"
        notes[f"peak_flops_per_s.{compute_type}"] = note
    return peaks, notes, metadata


# ---- efficiency factors --------------------------------------------------------------------------

class _Call(torch.nn.Module):
    """Wraps one functional call so the tracer can cost it with the project's own rules."""

    def __init__(self, fn: Callable[..., object]) -> None:
        super().__init__()
        self.fn = fn

    def forward(self, *inputs: torch.Tensor) -> object:
        return self.fn(*inputs)


# (op class, description, function, inputs)
RepresentativeOp = tuple[str, str, Callable[..., object], list[torch.Tensor]]


def representative_ops(device: str, scale: float) -> list[RepresentativeOp]:
    """(op class, description, function, inputs): per class, one or two fp32 ops at three sizes.

    Three sizes (small, cache-sized, large) separate a class's fixed per-call cost from its
    efficiency; the sizes bracket the layers of common CNNs and transformers at batch 1.
    """

    def dim(base: int) -> int:
        return max(2, int(base * scale))

    def randn(*shape: int) -> torch.Tensor:
        return torch.randn(*shape, device=device)

    ops: list[RepresentativeOp] = []
    # Transformer-shaped products too (MLP up and down projections, an LM head whose weight does not
    # fit in cache): square products alone overstate what real layers reach.
    for m, k, n in ((dim(16), 256, 256), (dim(128), 768, 768), (dim(128), 768, 3072), (dim(128), 3072, 768),
                    (dim(512), 1024, 1024), (dim(64), 768, 16384), (dim(128), 1024, 16384)):
        ops.append(("gemm", f"linear {m}x{k} @ {k}x{n}", F.linear, [randn(m, k), randn(n, k)]))
    for c, hw in ((32, dim(14)), (64, dim(28)), (64, dim(56))):
        ops.append(("conv", f"conv3x3 {c}->{c} at {hw}x{hw}", lambda x, w: F.conv2d(x, w, padding=1),
                    [randn(1, c, hw, hw), randn(c, c, 3, 3)]))
        ops.append(("conv", f"conv1x1 {4 * c}->{c} at {hw}x{hw}", F.conv2d, [randn(1, 4 * c, hw, hw), randn(c, 4 * c, 1, 1)]))
    for c, hw in ((64, dim(14)), (128, dim(28)), (256, dim(56))):
        ops.append(("grouped_conv", f"depthwise 3x3 {c}ch at {hw}x{hw}",
                    lambda x, w: F.conv2d(x, w, padding=1, groups=w.shape[0]), [randn(1, c, hw, hw), randn(c, 1, 3, 3)]))
    for n in (dim(4096), dim(262144), dim(4194304)):
        ops.append(("elementwise", f"add of {n}", torch.add, [randn(n), randn(n)]))
        ops.append(("activation", f"gelu of {n}", F.gelu, [randn(n)]))
        ops.append(("memory", f"cat of two {n // 2}", lambda a, b: torch.cat([a, b]), [randn(n // 2), randn(n // 2)]))
    for rows in (dim(8), dim(128), dim(2048)):
        ops.append(("norm", f"layer_norm {rows}x768", lambda x: F.layer_norm(x, (768,)), [randn(rows, 768)]))
        ops.append(("softmax", f"softmax {rows}x512", lambda x: torch.softmax(x, -1), [randn(rows, 512)]))
        ops.append(("reduction", f"mean {rows}x1024", lambda x: x.mean(-1), [randn(rows, 1024)]))
    for c, hw in ((32, dim(14)), (64, dim(28)), (64, dim(56))):
        stats = [randn(c), randn(c).abs() + 1]
        ops.append(("norm", f"batch_norm {c}ch at {hw}x{hw}", lambda x, m, v: F.batch_norm(x, m, v),
                    [randn(1, c, hw, hw), *stats]))
    for c, hw in ((16, dim(28)), (32, dim(56)), (64, dim(112))):
        ops.append(("pool", f"max_pool 3x3/2 {c}ch at {hw}x{hw}", lambda x: F.max_pool2d(x, 3, 2, 1), [randn(1, c, hw, hw)]))
    for length in (dim(32), dim(128), dim(512)):
        q = randn(1, 8, length, 64)
        ops.append(("attention", f"SDPA 8 heads, L={length}, d=64", F.scaled_dot_product_attention, [q, q, q]))
    return ops


def _roofline_s(fn: Callable[..., object], inputs: list[torch.Tensor], profile: HardwareProfile) -> tuple[float, str]:
    """The op's uncalibrated roofline time, costed by roofline's own rules (no overhead), and the
    memory level its largest op streams from."""
    from roofline.analysis import Analysis
    from roofline.precision import get_precision
    from roofline.predict import Prediction
    from roofline.trace import trace

    ops = Prediction(Analysis(trace(_Call(fn), inputs), get_precision("fp32")), profile).ops
    level = str(ops.loc[ops["bytes"].idxmax(), "memory_level"])
    return float((ops[["compute_s", "memory_s"]].max(axis=1)).sum()), level


_MAX_FITTED_EFFICIENCY = 1.5  # above the roof by up to 50%: cache effects the level model misses


def fit_line(roofline_s: list[float], measured_s: list[float]) -> tuple[float, float]:
    """(fixed seconds, efficiency) of measured = fixed + roofline / efficiency, least squares in
    relative error (every size counts alike), fixed >= 0 and efficiency in (0, 1.5]."""
    r = torch.tensor(roofline_s, dtype=torch.float64)
    t = torch.tensor(measured_s, dtype=torch.float64)
    weight = 1.0 / t
    design = torch.stack([torch.ones_like(r), r], dim=1) * weight[:, None]
    solution = torch.linalg.lstsq(design, t * weight, rcond=None).solution
    fixed, slope = float(solution[0]), float(solution[1])
    if fixed < 0 or slope <= 0:  # no sensible intercept: a pure proportional fit
        fixed = 0.0
        slope = float((t * r * weight**2).sum() / (r * r * weight**2).sum())
    efficiency = min(_MAX_FITTED_EFFICIENCY, max(1e-6, 1.0 / slope))
    return max(fixed, 1e-9), efficiency


def measure_efficiency(
    profile: HardwareProfile, device: str, config: BenchConfig, progress: _Progress
) -> tuple[dict[str, dict[str, float]], dict[str, str]]:
    """Per op class: efficiency and fixed per-call cost, fitted to measured = fixed + roofline / eff.

    Roofline times come from the measured profile itself and roofline's own cost rules, so a factor
    says how close ops of the class get to this device's own roofs, and the fixed part is what a
    call costs however small it is. Returns the profile fields (efficiency, fixed_overhead_s and, on
    a CPU, pass_efficiency and pass_fixed_overhead_s from the same ops timed as in a pass) and
    metadata. On a GPU the host queues kernels ahead of the device, so a per-call timing in a
    cycle would time synchronisation, not the kernel: no pass factors there.
    """
    ops = representative_ops(device, config.efficiency_scale)
    fns, labels, reference_flops = efficiency_callables(ops, device)
    in_sequence = device == "cpu" and config.sequence_cycles > 0
    alone_rounds: list[list[float]] = []  # per round, per callable: median seconds
    sequence_rounds: list[list[float]] = []
    for _ in range(config.rounds):
        # Each round times every op alone (interleaved, so a slow spell of a shared machine does not
        # land on one class and not another), then on a CPU every op in sequence, right after.
        alone = time_interleaved(fns, 1, min_run_time_s=config.min_run_time_s / config.rounds, labels=labels,
                                 step=lambda index: progress.step(labels[index]), device=device)
        alone_rounds.append([m.median_s for m in alone])
        if in_sequence:
            timed = time_in_sequence(fns[:-1], config.cycles_per_round, labels=labels[:-1], device=device,
                                     step=lambda cycle: progress.step(f"in sequence, cycle {cycle + 1}"))
            sequence_rounds.append([m.median_s for m in timed])
    return fit_rounds(profile, ops, alone_rounds, sequence_rounds, reference_flops)


def fit_rounds(profile: HardwareProfile, ops: list[RepresentativeOp], alone_rounds: Sequence[Sequence[float]],
               sequence_rounds: Sequence[Sequence[float]], reference_flops: float,
               ) -> tuple[dict[str, dict[str, float]], dict[str, str]]:
    """The profile fields and metadata fitted from per-round median times: `alone_rounds` per round,
    per op then the reference matmul last; `sequence_rounds` per round, per op timed in sequence, or
    none (no pass line: efficiency and fixed_overhead_s only)."""
    medians = [statistics.median(column) for column in zip(*alone_rounds, strict=True)]
    efficiency, fixed, metadata = fit_efficiency(profile, ops, medians[:-1], reference_flops / medians[-1])
    fields = {"efficiency": efficiency, "fixed_overhead_s": fixed}
    if sequence_rounds:
        in_pass = paired_sequence_medians([row[:-1] for row in alone_rounds], sequence_rounds)
        pass_efficiency, pass_fixed, pass_metadata = fit_efficiency(profile, ops, in_pass, name="pass_efficiency")
        fields |= {"pass_efficiency": pass_efficiency, "pass_fixed_overhead_s": pass_fixed}
        metadata |= pass_metadata
    return fields, metadata


def _count(n: int, noun: str) -> str:
    return f"{n} {noun}" + ("" if n == 1 else "s")


def paired_sequence_medians(alone_rounds: Sequence[Sequence[float]],
                            sequence_rounds: Sequence[Sequence[float]]) -> list[float]:
    """Per op, its time in sequence as its median time alone times the median, over rounds, of its
    in-sequence / alone ratio within a round. Each round times both back to back, so a slow spell
    of a shared machine that hits one phase moves the ratio of that round only, not the whole line
    (one such spell made a pass line 1.9x slower than its alone line for GEMMs)."""
    per_op = zip(zip(*alone_rounds, strict=True), zip(*sequence_rounds, strict=True), strict=True)
    return [statistics.median(alone) * statistics.median(s / a for a, s in zip(alone, seq, strict=True))
            for alone, seq in per_op]


def efficiency_callables(ops: list[RepresentativeOp], device: str) -> tuple[list[Callable[[], object]], list[str], float]:
    """What to time for `ops`: each op on its inputs, then the reference matmul (the machine's speed
    while they ran); their labels; the reference's FLOPs per call."""
    reference, reference_flops = reference_matmul(device)
    fns = [lambda fn=fn, inputs=inputs: fn(*inputs) for _, _, fn, inputs in ops]
    return [*fns, reference], [op[0] for op in ops] + ["reference"], reference_flops


def fit_efficiency(
    profile: HardwareProfile, ops: list[RepresentativeOp], medians_s: Sequence[float],
    reference_flops_per_s: float | None = None, name: str = "efficiency",
) -> tuple[dict[str, float], dict[str, float], dict[str, str]]:
    """(efficiency, fixed_overhead_s, metadata) from the median time of each of `ops`, fitted per class;
    metadata keys start with `name`."""
    points: dict[str, list[tuple[float, float, str, str]]] = {}
    for (op_class, description, fn, inputs), median_s in zip(ops, medians_s, strict=True):
        roofline_s, level = _roofline_s(fn, inputs, profile)
        points.setdefault(op_class, []).append((roofline_s, median_s, level, description))
    efficiency: dict[str, float] = {}
    fixed: dict[str, float] = {}
    metadata: dict[str, str] = {}
    if reference_flops_per_s is not None:
        metadata["reference_flops_per_s"] = f"{reference_flops_per_s:.4g}"
    last_level = profile.memory_levels[-1].name
    for op_class, samples in points.items():
        factors, fixed[op_class] = fit_class(samples, last_level)
        efficiency.update({op_class if level is None else f"{op_class}@{level}": f for level, f in factors.items()})
        metadata[f"{name}.{op_class}"] = "; ".join(
            f"{description}: roofline {r:.3g} s, measured {t:.3g} s ({level})" for r, t, level, description in samples
        )
    return efficiency, fixed, metadata


def fit_class(samples: list[tuple[float, float, str, str]], last_level: str) -> tuple[dict[str | None, float], float]:
    """({None: class efficiency, maybe last_level: its own}, fixed seconds) from (roofline s, measured
    s, level, description) samples.

    With two or more in-cache sizes, the line is fitted to those alone and the sizes that stream
    from the last level (DRAM/HBM) get their own factor over the same fixed cost: a GEMM whose
    weights do not fit in cache runs at a lower fraction of its roof than one whose weights do, and
    one line through both would misstate each.
    """
    cached = [(r, t) for r, t, level, _ in samples if level != last_level]
    streamed = [(r, t) for r, t, level, _ in samples if level == last_level]
    if len(cached) < 2 or not streamed:
        fixed, factor = fit_line([r for r, _, _, _ in samples], [t for _, t, _, _ in samples])
        return {None: factor}, fixed
    fixed, factor = fit_line([r for r, _ in cached], [t for _, t in cached])
    # A streamed size no slower than the fixed cost says nothing about its rate: left out.
    ratios = [r / (t - fixed) for r, t in streamed if t > fixed]
    if not ratios:
        return {None: factor}, fixed
    streamed_factor = min(_MAX_FITTED_EFFICIENCY, max(1e-6, statistics.median(ratios)))
    return {None: factor, last_level: streamed_factor}, fixed


def local_device(profile: HardwareProfile) -> tuple[str | None, str]:
    """The device here of the profile's kind, or None and why there is none (a GPU profile, no GPU)."""
    if profile.kind == "cpu":
        return "cpu", ""
    if torch.cuda.is_available():
        return "cuda", ""
    return None, f"{profile.name} is a GPU profile and this machine has no CUDA GPU"


def recalibration_device(profile: HardwareProfile) -> str:
    """The device here to time `profile`'s efficiency ops on; a one-line error when it has none or no
    factors. Cheap: callers check it before slow work."""
    device, why_not = local_device(profile)
    if device is None:
        raise RooflineError(f"cannot recalibrate: {why_not}")
    if profile.source != "measured" or not profile.efficiency:
        raise RooflineError(f"{profile.where} is not a measured profile with efficiency factors, so there is "
                            "nothing to recalibrate; make one with: roofline hw measure --save FILE")
    return device


def recalibrate(profile: HardwareProfile, device: str | None = None, progress: bool = True) -> HardwareProfile:
    """The measured `profile` with its efficiency lines (alone and, on a CPU, in a pass) timed again now,
    on `device` (default: recalibration_device(profile)).

    A shared machine's speed drifts by tens of percent over minutes; bandwidths and peaks are what
    the hardware can do, but the factors say what it does now. Re-timing only the efficiency ops
    (10-60 s) just before a measurement puts prediction and measurement in the same minutes. The
    profile's own roofs and benchmark sizes are kept, so the factors mean what they meant.
    """
    here = recalibration_device(profile)  # the one-line errors: no device of its kind here, nothing to refit
    device = device or here
    config = config_of(profile)
    bar = _Progress(config.efficiency_steps(device), progress, f"recalibrating on {device}")
    try:
        with torch.inference_mode(), retained_heap():
            fields, metadata = measure_efficiency(profile, device, config, bar)
    finally:
        bar.close()
    date = datetime.datetime.now().isoformat(timespec="seconds")
    stale = ("pass_efficiency", "pass_fixed_overhead_s")  # a GPU recalibration has no pass line to keep
    kept = {key: value for key, value in profile.metadata.items()
            if not key.startswith(("efficiency.", "pass_efficiency."))}
    refit: dict[str, Any] = {**{name: {} for name in stale}, **fields}
    return dataclasses.replace(
        profile, **refit,
        metadata={**kept, **metadata, "recalibrated": date},
        notes={**profile.notes, "recalibrated": f"efficiency factors timed again on {date}; roofs from {profile.metadata.get('date', '?')}"},
    )


# ---- the measured profile ------------------------------------------------------------------------

def measure_profile(
    device: str = "cpu", quick: bool = False, progress: bool = True, config: BenchConfig | None = None
) -> HardwareProfile:
    """Run the microbenchmarks on `device` (cpu or cuda) and return a profile with source 'measured'."""
    if device not in ("cpu", "cuda") and not device.startswith("cuda:"):
        raise RooflineError(f"unknown device {device!r}; choose cpu or cuda")
    if device.startswith("cuda") and not torch.cuda.is_available():
        raise RooflineError(f"device {device!r} requested but CUDA is not available to torch; use --device cpu")
    config = config or (QUICK if quick else FULL)
    base = detect("cuda" if device.startswith("cuda") else "cpu")
    levels = base.memory_levels
    llc = next((level.capacity_bytes for level in reversed(levels[:-1]) if level.capacity_bytes), None)
    sizes = _sizes(config, llc)
    kernels_per_size = 5
    total = (1 + len(sizes) * kernels_per_size + len(config.matmul_sizes) * 5
             + (config.efficiency_steps(device) if config.efficiency else 0))
    load = os.getloadavg() if hasattr(os, "getloadavg") else None
    load_before = " ".join(f"{x:.2f}" for x in load) if load else "unknown"
    cpus = os.cpu_count() or 1
    if load and load[0] > 0.5 * cpus:
        warnings.warn(
            f"the machine is busy (1-minute load average {load[0]:.1f} on {cpus} CPUs): measured figures will be "
            "low and noisy; re-run `roofline hw measure` when it is idle",
            stacklevel=2,
        )
    bar = _Progress(total, progress, f"measuring {device}")
    try:
        with torch.inference_mode(), retained_heap() as allocator:
            overhead = measure_overhead(device, config)
            module_call = measure_module_call(device, config)
            bar.step("overhead")
            points: list[BandwidthPoint] = []
            for size in sizes:
                for kernel, nbytes, fn in _stream_kernels(size, device, llc):
                    m = time_callable(fn, device=device, min_run_time_s=config.min_run_time_s, label=f"{kernel} {size} B")
                    points.append(BandwidthPoint(kernel, size, nbytes, m))
                    bar.step(f"{kernel} {size // _KIB} KiB")
            measured_levels, bw_metadata = _plateaus(levels, points, overhead.median_s)
            peaks, peak_notes, peak_metadata = _compute_peaks(device, config, bar)
            if "fp32" not in peaks:
                raise RooflineError(f"no fp32 matmul could be timed on {device}")
            notes = {
                **peak_notes,
                "overhead_s": f"measured: median latency of a 1-element torch.add (dispatch/launch cost), IQR {100 * overhead.iqr_s / overhead.median_s:.1f}%",
                "module_call_s": f"measured: median latency of calling an nn.Identity (Python module call), IQR {100 * module_call.iqr_s / module_call.median_s:.1f}%",
                "memory_levels": "capacities detected; bandwidths measured: STREAM copy/scale/add/triad (+ an in-cache read) swept "
                f"over {len(sizes)} working sets from {sizes[0]} to {sizes[-1]} B; each level = best kernel among sizes that fit it",
            }
            metadata = {
                **{k: v for k, v in base.metadata.items() if k in ("machine", "brand", "physical_cores", "clock_hz", "flags_used", "nvml_name", "compute_capability", "gpu")},
                "date": datetime.datetime.now().isoformat(timespec="seconds"),
                "torch_version": torch.__version__,
                "device": device if device != "cuda" else f"cuda:{torch.cuda.current_device()}",
                "threads": str(torch.get_num_threads()),
                "python": platform.python_version(),
                "mode": "quick" if config is QUICK else "full" if config is FULL else "custom",
                "overhead": f"{overhead.median_s:.4g} s (IQR {100 * overhead.iqr_s / overhead.median_s:.1f}%)",
                "load_average_before": load_before,  # other work on the machine skews every figure
                "allocator": allocator,
                "noisy_points": f"{sum(p.measurement.noisy for p in points)} of {len(points)} bandwidth points had IQR > 10% of the median",
                **bw_metadata,
                **peak_metadata,
            }
            if device.startswith("cuda"):
                metadata["gpu_name"] = torch.cuda.get_device_name()
            profile = HardwareProfile(
                name=f"{base.metadata.get('machine', base.name)} (measured)",
                kind=base.kind,
                vendor=base.vendor,
                source="measured",
                reference=f"measured with roofline microbenchmarks (torch {torch.__version__}) on {metadata['date']}",
                peak_flops_per_s=peaks,
                memory_levels=tuple(measured_levels),
                overhead_s=overhead.median_s,
                module_call_s=module_call.median_s,
                notes=notes,
                metadata=metadata,
            )
            if config.efficiency and any(level.bandwidth_bytes_per_s for level in profile.memory_levels):
                fields, eff_metadata = measure_efficiency(profile, device, config, bar)
                notes["efficiency"] = (
                    "fitted per op class over fp32 ops at three sizes (in metadata): "
                    "time_measured = fixed_overhead_s + time_roofline / efficiency; time_calibrated uses that line"
                )
                if "pass_efficiency" in fields:
                    notes["pass_efficiency"] = (
                        "the same line fitted to the same ops called once each per cycle over all of them, as "
                        f"layers run in a pass ({_count(config.cycles_per_round, 'cycle')} "
                        f"after each of {_count(config.rounds, 'round')} alone; per op, median alone x median "
                        "in-sequence/alone ratio)"
                    )
                refit: dict[str, Any] = {**fields, "notes": notes, "metadata": {**profile.metadata, **eff_metadata}}
                profile = dataclasses.replace(profile, **refit)
    finally:
        bar.close()
    return profile

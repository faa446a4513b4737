"""Microbenchmarks that turn this machine into a measured profile: bandwidth per memory level, matmul
rate per compute type, per-op overhead, and efficiency factors per op class.

Every figure is the median of repeated timings (roofline.timing) with its IQR kept in metadata.
Bytes follow the STREAM convention: each array read or written once, write-allocate traffic not
counted (copy and scale move 2 arrays, add and triad 3).
"""
from __future__ import annotations

import dataclasses
import math
import os
import warnings
from collections.abc import Callable, Iterator
from dataclasses import dataclass

import torch

from roofline.errors import RooflineError
from roofline.hardware.detect import detect
from roofline.hardware.profile import HardwareProfile, MemoryLevel
from roofline.machine import collect
from roofline.timing import (
    Measurement,
    retained_heap,
    time_callable,
    with_matmul_tf32,
)

__all__ = ["FULL", "QUICK", "SLOW_PATH_FRACTION", "BandwidthPoint", "BenchConfig", "check_bench_device", "config_of", "effective_capacities",
           "local_device", "measure_roofs"]

_KIB = 1024
_MIB = 1024 * 1024
# A point whose time is under this many per-op overheads measures dispatch, not memory: not used.
_OVERHEAD_BOUND_FACTOR = 10.0
# A compute type slower than this fraction of fp32 has no fast path on this device (said in notes, and
# not calibrated: roofline.calibrate.calibrated_types).
SLOW_PATH_FRACTION = 0.05
# Two levels whose measured bandwidths differ by less than this factor cannot be told apart in a sweep
# whose points move 10-30% (IQR) on a shared machine: the drop between them is not placed (reported size kept).
_DISTINCT_LEVELS_FACTOR = 1.25


@dataclass(frozen=True)
class BenchConfig:
    """How much to measure. On a 2-core CPU with bf16 calibrated too, QUICK took 100 s and FULL about 5 minutes
    while other work shared the cores (under 30 s and 3 minutes when only fp32 was calibrated)."""

    min_bytes: int = 16 * _KIB
    max_bytes: int = 512 * _MIB
    past_llc: bool = True  # also sweep to 4 x the last-level cache when that is larger (up to 1/4 of RAM)
    size_step: float = 2.0  # working sets grow by this factor
    min_run_time_s: float = 0.05  # per timed point
    matmul_sizes: tuple[int, ...] = (512, 1024, 2048)
    efficiency_scale: float = 1.0  # scales the representative ops' sizes
    efficiency: bool = True
    rounds: int = 3  # interleaved passes over the efficiency ops (timing.time_interleaved)
    # The pass model's per-call cost (CPU): a chain of small layers' pass against its layers repeated, timed in
    # this many alternating blocks of pass_block_s per side (calibrate.measure_pass_call; 0: not measured).
    pass_blocks: int = 12
    pass_block_s: float = 0.1


FULL = BenchConfig()
QUICK = BenchConfig(max_bytes=128 * _MIB, size_step=4.0, min_run_time_s=0.01, matmul_sizes=(256, 512, 1024), efficiency_scale=0.5,
                    pass_blocks=8, pass_block_s=0.05)


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
        # times in one op, so cache levels are not hidden behind per-op dispatch cost. The buffer and
        # the output it sums into are each half the working set, so the point sits where its data does.
        n = max(1, working_set // (2 * element))
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

    def extend(self, steps: int) -> None:
        """Add `steps` to the total: work whose size is known only part-way through."""
        if self._bar is not None and steps:
            self._bar.total += steps
            self._bar.refresh()

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


def effective_capacities(
    levels: list[MemoryLevel], points: list[BandwidthPoint], overhead_s: float, size_step: float = 2.0
) -> list[MemoryLevel]:
    """`levels` (measured) with each cache's effective capacity: the working set at which the sweep's
    bandwidth falls to the geometric mean of this level's bandwidth and the next measured level's,
    where that is below the reported size (a VM may report a cache its guest does not get).

    The curve is the best kernel per working set among points not dominated by per-op overhead; the
    crossing is interpolated on log size and log bandwidth between the last point at or above the
    threshold and the next size. Left as reported when the crossing is not below the reported size by
    more than one sweep step (`size_step`: two sweeps of a 2-core EPYC VM, at 2 threads while it was idle
    and at 1 thread while other tests ran, placed its L3's crossing at 40 MiB and at 19 MiB of a reported
    32 MiB, so a drop that close is within the noise, not evidence against the reported size), or when the two levels' bandwidths are within
    _DISTINCT_LEVELS_FACTOR of each other.
    """
    curve: dict[int, float] = {}
    for p in points:
        if p.measurement.median_s >= _OVERHEAD_BOUND_FACTOR * overhead_s:
            curve[p.working_set_bytes] = max(curve.get(p.working_set_bytes, 0.0), p.bandwidth_bytes_per_s)
    sizes = sorted(curve)
    out = list(levels)
    for i, level in enumerate(levels[:-1]):
        below = next((lower for lower in levels[i + 1:] if lower.bandwidth_bytes_per_s), None)
        if level.capacity_bytes is None or level.bandwidth_bytes_per_s is None or below is None:
            continue
        fast, slow = level.bandwidth_bytes_per_s, float(below.bandwidth_bytes_per_s or 0.0)
        if fast < _DISTINCT_LEVELS_FACTOR * slow:
            continue
        threshold = math.sqrt(fast * slow)
        above = [k for k, size in enumerate(sizes) if curve[size] >= threshold]
        if not above or above[-1] + 1 == len(sizes):
            continue
        k = above[-1]
        (s0, b0), (s1, b1) = (sizes[k], curve[sizes[k]]), (sizes[k + 1], curve[sizes[k + 1]])
        fraction = math.log(b0 / threshold) / math.log(b0 / b1)
        crossing = math.exp(math.log(s0) + fraction * math.log(s1 / s0))
        if crossing * size_step >= level.capacity_bytes:
            continue
        note = (f"{level.note}; effective capacity {crossing:.0f} B: where the sweep's best bandwidth fell to "
                f"{threshold:.3g} B/s (geometric mean of this level's and {below.name}'s), between {s0} and {s1} B")
        out[i] = dataclasses.replace(level, effective_capacity_bytes=crossing, note=note)
    return out


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
    peaks: dict[str, float] = {}
    notes: dict[str, str] = {}
    metadata: dict[str, str] = {}
    for compute_type in _peak_types(device):
        best: tuple[float, Measurement, int] | None = None
        for index, n in enumerate(config.matmul_sizes):
            fn = _matmul(compute_type, n, device)
            if fn is None:
                notes[f"peak_flops_per_s.{compute_type}"] = "not measured: torch has no kernel for it on this device"
                _skip(progress, compute_type, config.matmul_sizes[index:])
                break
            m = time_callable(fn, device=device, min_run_time_s=config.min_run_time_s, warmup=1, label=f"{compute_type} mm {n}")
            progress.step(f"{compute_type} mm {n}")
            rate = 2 * n**3 / m.median_s
            if best is None or rate > best[0]:
                best = (rate, m, n)
            if "fp32" in peaks and compute_type != "fp32" and rate < SLOW_PATH_FRACTION * peaks["fp32"]:
                _skip(progress, compute_type, config.matmul_sizes[index + 1:])
                break  # no fast path: larger sizes would only take longer
        if best is None:
            continue
        rate, m, n = best
        peaks[compute_type] = rate
        metadata[f"matmul.{compute_type}"] = f"{_spread(m, 2 * n**3)} FLOP/s at n={n}"
        note = f"measured: best median rate of torch matmul over n in {list(config.matmul_sizes)} (at n={n}), IQR {100 * m.iqr_s / m.median_s:.1f}%"
        if compute_type != "fp32" and "fp32" in peaks and rate < SLOW_PATH_FRACTION * peaks["fp32"]:
            note += f"; NO FAST PATH: {100 * rate / peaks['fp32']:.2g}% of the fp32 rate on this device (kept as measured, not hidden)"
        notes[f"peak_flops_per_s.{compute_type}"] = note
    return peaks, notes, metadata


def _peak_types(device: str) -> list[str]:
    """The compute types whose matmul peak is measured on `device` (TF32 only on a GPU)."""
    return ["fp32", "bf16", "fp16", "int8"] + (["tf32"] if device.startswith("cuda") else [])


def _skip(progress: _Progress, compute_type: str, sizes: tuple[int, ...]) -> None:
    """Advance the bar past matmul sizes left untimed, so it still ends at its total."""
    for n in sizes:
        progress.step(f"{compute_type} mm {n} (skipped)")


def local_device(profile: HardwareProfile) -> tuple[str | None, str]:
    """The device here of the profile's kind, or None and why there is none (a GPU profile, no GPU)."""
    if profile.kind == "cpu":
        return "cpu", ""
    if torch.cuda.is_available():
        return "cuda", ""
    return None, f"{profile.name} is a GPU profile and this machine has no CUDA GPU"


# ---- the measured profile ------------------------------------------------------------------------

def check_bench_device(device: str) -> None:
    """A device the microbenchmarks can run on here, or a one-line error."""
    if device not in ("cpu", "cuda") and not device.startswith("cuda:"):
        raise RooflineError(f"unknown device {device!r}; choose cpu or cuda")
    if device.startswith("cuda") and not torch.cuda.is_available():
        raise RooflineError(f"device {device!r} requested but CUDA is not available to torch; use --device cpu")


def roof_steps(config: BenchConfig, device: str) -> int:
    """Progress steps of measure_roofs for `config` on `device`."""
    base = detect("cuda" if device.startswith("cuda") else "cpu")
    llc = next((level.capacity_bytes for level in reversed(base.memory_levels[:-1]) if level.capacity_bytes), None)
    return 1 + len(_sizes(config, llc)) * 5 + len(config.matmul_sizes) * len(_peak_types(device))


def measure_roofs(device: str, config: BenchConfig, bar: _Progress) -> HardwareProfile:
    """Run the roof microbenchmarks on `device` (cpu or cuda): a profile with source 'measured' holding
    bandwidths, matmul peaks, per-op overhead and the module-call cost, and no efficiency factors (those are
    fitted above prediction, by roofline.calibrate)."""
    check_bench_device(device)
    base = detect("cuda" if device.startswith("cuda") else "cpu")
    levels = base.memory_levels
    llc = next((level.capacity_bytes for level in reversed(levels[:-1]) if level.capacity_bytes), None)
    sizes = _sizes(config, llc)
    load = os.getloadavg() if hasattr(os, "getloadavg") else None
    load_before = " ".join(f"{x:.2f}" for x in load) if load else "unknown"
    cpus = os.cpu_count() or 1
    if load and load[0] > 0.5 * cpus:
        warnings.warn(
            f"the machine is busy (1-minute load average {load[0]:.1f} on {cpus} CPUs): measured figures will be "
            "low and noisy; re-run `roofline hw measure` when it is idle",
            stacklevel=2,
        )
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
        measured_levels = effective_capacities(measured_levels, points, overhead.median_s, config.size_step)
        peaks, peak_notes, peak_metadata = _compute_peaks(device, config, bar)
        if "fp32" not in peaks:
            raise RooflineError(f"no fp32 matmul could be timed on {device}")
        notes = {
            **peak_notes,
            "overhead_s": f"measured: median latency of a 1-element torch.add (dispatch/launch cost), IQR {100 * overhead.iqr_s / overhead.median_s:.1f}%",
            "module_call_s": f"measured: median latency of calling an nn.Identity (Python module call), IQR {100 * module_call.iqr_s / module_call.median_s:.1f}%",
            "memory_levels": "capacities detected; bandwidths measured: STREAM copy/scale/add/triad (+ an in-cache read) swept "
            f"over {len(sizes)} working sets from {sizes[0]} to {sizes[-1]} B; each level = best kernel among sizes that fit it; "
            "a cache's effective capacity = where the sweep's bandwidth fell halfway (log scale) to the next level's",
        }
        metadata = {
            **{k: v for k, v in base.metadata.items() if k in ("machine", "brand", "physical_cores", "clock_hz", "flags_used", "nvml_name", "compute_capability", "gpu")},
            # the one machine record, shared with measurements (roofline.machine): UTC, num_threads, load
            **collect(device if device != "cuda" else f"cuda:{torch.cuda.current_device()}", allocator,
                      load[0] if load else None).to_profile_metadata(),
            "mode": "quick" if config is QUICK else "full" if config is FULL else "custom",
            "overhead": f"{overhead.median_s:.4g} s (IQR {100 * overhead.iqr_s / overhead.median_s:.1f}%)",
            "load_average_before": load_before,  # all three load averages: other work skews every figure
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
    return profile

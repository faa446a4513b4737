"""Build a profile of this machine from what it reports: py-cpuinfo for the CPU, NVML for NVIDIA GPUs.

Every peak is a formula written out below. Figures that cannot be known without measuring (a CPU's
cache and DRAM bandwidth) are left as None and say so; `roofline hw measure` fills them. No GPU, no
NVML library or no driver is a normal case: detection notes it and returns the CPU.
"""
from __future__ import annotations

import datetime
import os
import platform
import re
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from roofline.hardware.profile import HardwareProfile, MemoryLevel, hwprofiles_dir, load_profile_file

__all__ = ["cpu_peaks", "detect", "detect_cpu", "detect_gpus", "gpu_peaks_from_clocks", "match_datasheet"]

# Dense tensor/vector throughput per SM per clock (FLOP, or int8 op), from the reference table
# (datasheet TFLOPS / (SMs x clock)). Key: (compute capability, GeForce?). Rates the reference marks
# unknown are absent, so detection gives no figure rather than a guess. fp64 is the FP64 tensor rate
# where the part has one (A100, H100), as in the datasheet profiles.
_PER_SM_PER_CLOCK: dict[tuple[tuple[int, int], bool], dict[str, int]] = {
    ((7, 0), False): {"fp16": 1024, "fp32": 128, "fp64": 64},
    ((7, 5), False): {"fp16": 1024, "int8": 2048, "fp32": 128},
    ((8, 0), False): {"fp16": 2048, "bf16": 2048, "tf32": 1024, "int8": 4096, "fp32": 128, "fp64": 128},
    ((8, 6), False): {"fp16": 1024, "bf16": 1024, "tf32": 512, "int8": 2048, "fp32": 256},
    ((8, 6), True): {"fp16": 512, "bf16": 512, "tf32": 256, "int8": 2048, "fp32": 256},
    ((8, 7), False): {"int8": 4096, "fp32": 256},
    ((8, 9), False): {"fp16": 1024, "bf16": 1024, "tf32": 512, "fp8": 2048, "int8": 2048, "fp32": 256},
    ((8, 9), True): {"fp16": 512, "bf16": 512, "tf32": 256, "fp8": 1024, "int8": 2048, "fp32": 256},
    ((9, 0), False): {"fp16": 4096, "bf16": 4096, "tf32": 2048, "fp8": 8192, "int8": 8192, "fp32": 256, "fp64": 256},
}
# FP32 cores per SM, to turn NVML's core count into an SM count (reference README).
_FP32_CORES_PER_SM = {(7, 0): 64, (7, 5): 64, (8, 0): 64}
_DEFAULT_FP32_CORES_PER_SM = 128  # CC 8.6 and later

GPU_OVERHEAD_ESTIMATE_S = 5e-6
CPU_OVERHEAD_ESTIMATE_S = 5e-6
_OVERHEAD_NOTE = "ESTIMATE, not measured: typical PyTorch eager {what}; `roofline hw measure` replaces it"
_UNMEASURED = "unknown until measured: run `roofline hw measure`"


def _today() -> str:
    return datetime.date.today().isoformat()


# ---- CPU -----------------------------------------------------------------------------------------

def _physical_cores() -> int:
    """Physical cores this process may run on: distinct (package, core id) pairs over its affinity set.

    py-cpuinfo's `count` is logical CPUs (SMT threads included), which would double a peak.
    """
    try:
        allowed = sorted(os.sched_getaffinity(0))
    except AttributeError:  # not Linux
        allowed = list(range(os.cpu_count() or 1))
    cores: set[tuple[str, str]] = set()
    for cpu in allowed:
        topology = Path(f"/sys/devices/system/cpu/cpu{cpu}/topology")
        try:
            cores.add(((topology / "physical_package_id").read_text().strip(), (topology / "core_id").read_text().strip()))
        except OSError:
            cores.add(("?", str(cpu)))  # no topology: count the logical CPU
    return max(1, len(cores))


def _sysfs_caches() -> dict[str, float]:
    """Total data-cache capacity per level over the CPUs this process may use (Linux sysfs)."""
    try:
        allowed = sorted(os.sched_getaffinity(0))
    except AttributeError:
        return {}
    seen: dict[tuple[str, str], float] = {}
    for cpu in allowed:
        for index in sorted(Path(f"/sys/devices/system/cpu/cpu{cpu}/cache").glob("index*")):
            try:
                kind = (index / "type").read_text().strip()
                level = (index / "level").read_text().strip()
                size = (index / "size").read_text().strip()
                shared = (index / "shared_cpu_list").read_text().strip()
            except OSError:
                continue
            if kind == "Instruction":
                continue
            match = re.fullmatch(r"(\d+)([KMG]?)", size)
            if match:
                scale = {"": 1, "K": 2**10, "M": 2**20, "G": 2**30}[match.group(2)]
                seen[(f"L{level}", shared)] = float(int(match.group(1)) * scale)  # one entry per cache instance
    totals: dict[str, float] = {}
    for (name, _), size_bytes in seen.items():
        totals[name] = totals.get(name, 0.0) + size_bytes
    return totals


def _total_memory_bytes() -> float | None:
    try:
        return float(os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES"))
    except (AttributeError, ValueError, OSError):
        return None


def _flags(info: Mapping[str, Any]) -> set[str]:
    flags = {str(flag).lower() for flag in info.get("flags", [])}
    brand = str(info.get("brand_raw", ""))
    if not flags and brand.startswith("Apple M"):
        # macOS on Apple silicon reports no flags; M-series P-cores have NEON, FP16, dot product, BF16
        # (M2 and later) and I8MM (reference README, Apple M2 row).
        flags = {"asimd", "fphp", "asimdhp", "asimddp"} | ({"bf16", "i8mm"} if not brand.startswith("Apple M1") else set())
    return flags


def _vector_unit(info: Mapping[str, Any], flags: set[str]) -> tuple[int, int, str]:
    """(vector bits per FMA unit, FMA units per core, why) from the ISA flags and vendor."""
    vendor = str(info.get("vendor_id_raw", "")) + " " + str(info.get("brand_raw", ""))
    if "avx512f" in flags:
        if "AMD" in vendor:  # Zen 4 executes 512-bit ops on two 256-bit FMA pipes
            return 256, 2, "AVX-512 on AMD (Zen 4: 2 x 256-bit FMA pipes)"
        return 512, 2, "AVX-512 with 2 FMA units (as on Xeon Platinum; some parts have 1)"
    if "avx2" in flags and "fma" in flags:
        return 256, 2, "AVX2 + FMA3: 2 x 256-bit FMA units (Haswell and later, Zen 2/3)"
    if "avx" in flags:
        return 256, 1, "AVX without FMA: one 256-bit multiply + one add per cycle"
    if "asimd" in flags:
        if str(info.get("brand_raw", "")).startswith("Apple"):
            return 128, 4, "NEON on Apple P-cores: 4 x 128-bit FMA pipes (measured on M1 Firestorm)"
        return 128, 2, "NEON: 2 x 128-bit FMA pipes assumed (Cortex-A76/Neoverse N1 class; A72 has 1)"
    if "sse2" in flags:
        return 128, 1, "SSE2 only: one 128-bit unit assumed"
    return 64, 1, "no SIMD flags recognised: scalar FMA assumed"


def cpu_peaks(cores: int, clock_hz: float, info: Mapping[str, Any]) -> tuple[dict[str, float], dict[str, str]]:
    """Peak FLOP/s per compute type and the formula used for each.

    Vector types: peak = cores x clock x FMA units x lanes x 2 (multiply + add), lanes = bits / element
    bits. Matrix engines (AMX) are rated per core per cycle directly. Dot-product instructions (VNNI,
    AVX512_BF16, SDOT) are counted as FMA-rate instructions with 2 (bf16) or 4 (int8) MACs per 32-bit
    lane: an architecture-derived rate, not a sourced one, and said so in the note.
    """
    flags = _flags(info)
    bits, units, why = _vector_unit(info, flags)
    peaks: dict[str, float] = {}
    notes: dict[str, str] = {}
    base = f"{cores} cores x {clock_hz / 1e9:.3g} GHz x {units} FMA units"

    def vector(name: str, element_bits: int, extra: str = "") -> None:
        lanes = bits // element_bits
        peaks[name] = cores * clock_hz * units * lanes * 2
        notes[name] = f"{base} x {lanes} lanes x 2 = {peaks[name]:.4g} ({why}){extra}"

    vector("fp64", 64)
    vector("fp32", 32)
    if "avx512_fp16" in flags or "asimdhp" in flags:
        vector("fp16", 16, "; native FP16 FMA")
    unverified = "; dot-product rate derived from the ISA, unverified"
    if "amx_bf16" in flags:
        peaks["bf16"] = cores * clock_hz * 1024
        notes["bf16"] = f"AMX: {cores} cores x {clock_hz / 1e9:.3g} GHz x 1024 BF16 FLOP/cycle = {peaks['bf16']:.4g}"
    elif "avx512_bf16" in flags or "bf16" in flags:
        # VDPBF16PS / BFDOT: per 32-bit lane, 2 bf16 products summed into fp32 = 2 MACs = 4 FLOP.
        lanes = bits // 32
        peaks["bf16"] = cores * clock_hz * units * lanes * 2 * 2
        notes["bf16"] = f"{base} x {lanes} lanes x 2 MACs x 2 = {peaks['bf16']:.4g}{unverified}"
    if "amx_int8" in flags:
        peaks["int8"] = cores * clock_hz * 2048
        notes["int8"] = f"AMX: {cores} cores x {clock_hz / 1e9:.3g} GHz x 2048 INT8 op/cycle = {peaks['int8']:.4g}"
    elif {"avx512_vnni", "avx512vnni"} & flags or "avx_vnni" in flags or "asimddp" in flags:
        # VPDPBUSD / SDOT: per 32-bit lane, 4 int8 products summed into int32 = 4 MACs = 8 ops.
        lane_bits = bits if ({"avx512_vnni", "avx512vnni", "asimddp"} & flags) else 256
        lanes = lane_bits // 32
        peaks["int8"] = cores * clock_hz * units * lanes * 4 * 2
        notes["int8"] = f"{base} x {lanes} lanes x 4 MACs x 2 = {peaks['int8']:.4g}{unverified}"
    return peaks, notes


def detect_cpu(info: Mapping[str, Any] | None = None, cores: int | None = None) -> HardwareProfile:
    """This machine's CPU (or one described by a py-cpuinfo dict, for tests): peaks from flags, caches, no bandwidths."""
    live = info is None
    if info is None:
        import cpuinfo  # py-cpuinfo: imported here because it spawns probes on import-time use

        info = cpuinfo.get_cpu_info()
    if cores is None:
        cores = _physical_cores() if live else int(info.get("count", 1))
    brand = str(info.get("brand_raw") or info.get("hardware_raw") or platform.processor() or "unknown CPU")
    hz = info.get("hz_advertised") or info.get("hz_actual") or (0, 0)
    clock_hz = float(hz[0] if isinstance(hz, (tuple, list)) else hz)
    notes: dict[str, str] = {}
    if clock_hz <= 0:
        clock_hz = 1e9
        notes["clock"] = "py-cpuinfo reported no clock; 1 GHz assumed, peaks are placeholders to replace by measuring"
    peaks, peak_notes = cpu_peaks(cores, clock_hz, info)
    notes.update({f"peak_flops_per_s.{k}": v for k, v in peak_notes.items()})
    notes["peak_flops_per_s"] = (
        "clock = py-cpuinfo's advertised clock (brand-string base or lscpu max), not the sustained AVX/AMX clock; "
        f"physical cores only ({cores})"
    )
    caches = _sysfs_caches() if live else {}
    if not caches:  # py-cpuinfo's keys; l2 may be a package total and l3 may really be L2 (reference README)
        for level, key in (("L1", "l1_data_cache_size"), ("L2", "l2_cache_size"), ("L3", "l3_cache_size")):
            if info.get(key):
                caches[level] = float(info[key])
    levels: list[MemoryLevel] = []
    for name in ("L1", "L2", "L3"):
        size = caches.get(name)
        if size and (not levels or size > (levels[-1].capacity_bytes or 0)):
            levels.append(MemoryLevel(name, size, None, f"capacity detected (all instances this process can use); bandwidth {_UNMEASURED}"))
    levels.append(MemoryLevel("DRAM", _total_memory_bytes() if live else None, None, f"bandwidth {_UNMEASURED}"))
    notes["overhead_s"] = _OVERHEAD_NOTE.format(what="CPU op dispatch (1e-6..1e-5 s)")
    vendor = str(info.get("vendor_id_raw", "")).replace("AuthenticAMD", "AMD").replace("GenuineIntel", "Intel") or "unknown"
    metadata = {
        "date": _today(),
        "machine": f"{brand} ({cores} cores)",
        "brand": brand,
        "arch": str(info.get("arch", platform.machine())),
        "physical_cores": str(cores),
        "logical_cpus": str(info.get("count", "")),
        "clock_hz": f"{clock_hz:.6g}",
        "flags_used": " ".join(sorted(_flags(info) & _INTERESTING_FLAGS)),
        "cpuinfo_version": str(info.get("cpuinfo_version_string", "")),
    }
    match = match_datasheet(brand, "cpu")
    if match is not None and match.path:
        metadata["datasheet_match"] = Path(match.path).stem
    return HardwareProfile(
        name=f"{brand} ({cores} cores, detected)",
        kind="cpu",
        vendor=vendor,
        source="detected",
        reference="detected with py-cpuinfo, sysfs and os.sched_getaffinity; peaks from the ISA flags (formulas in notes)",
        peak_flops_per_s=peaks,
        memory_levels=tuple(levels),
        overhead_s=CPU_OVERHEAD_ESTIMATE_S,
        notes=notes,
        metadata=metadata,
    )


_INTERESTING_FLAGS = {
    "avx", "avx2", "fma", "avx512f", "avx512_bf16", "avx512_vnni", "avx512vnni", "avx_vnni", "avx512_fp16",
    "amx_tile", "amx_bf16", "amx_int8", "asimd", "fphp", "asimdhp", "asimddp", "bf16", "i8mm", "sve", "sve2",
}


# ---- NVIDIA GPUs ---------------------------------------------------------------------------------

def match_datasheet(reported_name: str, kind: str) -> HardwareProfile | None:
    """The shipped profile whose aliases include the name the device reports (exact, case-insensitive)."""
    wanted = reported_name.strip().lower()
    directory = hwprofiles_dir()
    for path in sorted(directory.glob("*.yaml")) if directory.is_dir() else []:
        profile = load_profile_file(path)
        if profile.kind == kind and any(alias.lower() == wanted for alias in profile.aliases):
            return profile
    return None


def gpu_peaks_from_clocks(
    sm_count: int, sm_clock_hz: float, capability: tuple[int, int], geforce: bool, cuda_cores: int | None = None
) -> tuple[dict[str, float], dict[str, str]]:
    """Peaks from clocks: fp32 = CUDA cores x 2 x clock; others = SMs x per-SM-per-clock rate x clock."""
    rates = _PER_SM_PER_CLOCK.get((capability, geforce)) or _PER_SM_PER_CLOCK.get((capability, False), {})
    peaks: dict[str, float] = {}
    notes: dict[str, str] = {}
    clock = f"{sm_clock_hz / 1e6:.0f} MHz"
    for name, per_clock in rates.items():
        peaks[name] = sm_count * per_clock * sm_clock_hz
        notes[name] = f"{sm_count} SMs x {per_clock}/SM/clock x {clock} = {peaks[name]:.4g} (per-SM rate from the datasheet table)"
    if cuda_cores:
        peaks["fp32"] = cuda_cores * 2 * sm_clock_hz
        notes["fp32"] = f"{cuda_cores} CUDA cores x 2 x {clock} = {peaks['fp32']:.4g}"
    elif "fp32" not in peaks:
        per_sm = _FP32_CORES_PER_SM.get(capability, _DEFAULT_FP32_CORES_PER_SM)
        peaks["fp32"] = sm_count * per_sm * 2 * sm_clock_hz
        notes["fp32"] = f"{sm_count} SMs x {per_sm} FP32 cores x 2 x {clock} = {peaks['fp32']:.4g}"
    if not rates:
        notes["tensor"] = f"compute capability {capability[0]}.{capability[1]} has no per-SM tensor rate in the table; only fp32 given"
    if capability == (9, 0):
        notes["clock"] = "max SM clock overstates Hopper tensor peaks by about 8% (tensor figures correspond to ~1830 MHz)"
    return peaks, notes


def _nvml_value(call: Any, *args: Any) -> Any:
    """One NVML query, or None when the device or driver does not support it."""
    try:
        return call(*args)
    except Exception:  # noqa: BLE001  # pynvml raises NVMLError subclasses (NOT_SUPPORTED on MIG, Jetson)
        return None


def detect_gpus() -> tuple[list[HardwareProfile], str]:
    """Profiles of the NVIDIA GPUs NVML sees, and a note (empty, or why there are none)."""
    try:
        import pynvml
    except ImportError:
        return [], "no GPU detected: nvidia-ml-py (pynvml) is not installed"
    try:
        pynvml.nvmlInit()
    except Exception as error:  # noqa: BLE001  # library present but no driver / no libnvidia-ml.so
        return [], f"no GPU detected: NVML did not initialise ({error})"
    try:
        count = int(pynvml.nvmlDeviceGetCount())
        profiles = [_detect_one_gpu(pynvml, i) for i in range(count)]
    finally:
        _nvml_value(pynvml.nvmlShutdown)
    return profiles, "" if profiles else "no GPU detected: NVML reports no devices"


def _detect_one_gpu(nvml: Any, index: int) -> HardwareProfile:
    handle = nvml.nvmlDeviceGetHandleByIndex(index)
    name = nvml.nvmlDeviceGetName(handle)
    name = name.decode() if isinstance(name, bytes) else str(name)
    capability = tuple(_nvml_value(nvml.nvmlDeviceGetCudaComputeCapability, handle) or (0, 0))
    sm_clock_mhz = _nvml_value(nvml.nvmlDeviceGetMaxClockInfo, handle, nvml.NVML_CLOCK_SM)
    mem_clock_mhz = _nvml_value(nvml.nvmlDeviceGetMaxClockInfo, handle, nvml.NVML_CLOCK_MEM)
    bus_bits = _nvml_value(nvml.nvmlDeviceGetMemoryBusWidth, handle)
    cuda_cores = _nvml_value(nvml.nvmlDeviceGetNumGpuCores, handle)
    memory = _nvml_value(nvml.nvmlDeviceGetMemoryInfo, handle)
    brand = _nvml_value(nvml.nvmlDeviceGetBrand, handle)
    geforce = "geforce" in name.lower() or (brand is not None and brand == getattr(nvml, "NVML_BRAND_GEFORCE", -1))
    metadata = {
        "date": _today(),
        "machine": name,
        "device": f"cuda:{index}",
        "nvml_name": name,
        "compute_capability": f"{capability[0]}.{capability[1]}",
        "max_sm_clock_mhz": str(sm_clock_mhz),
        "max_mem_clock_mhz": str(mem_clock_mhz),
        "memory_bus_width_bits": str(bus_bits),
        "cuda_cores": str(cuda_cores),
        "memory_total_bytes": str(getattr(memory, "total", None)),
    }
    datasheet = match_datasheet(name, "gpu")
    if datasheet is not None:
        metadata["datasheet_match"] = Path(datasheet.path or "").stem
        return HardwareProfile(
            name=datasheet.name,
            kind="gpu",
            vendor="NVIDIA",
            source="detected",
            reference=f"NVML name {name!r} matched datasheet profile {metadata['datasheet_match']}: {datasheet.reference}",
            peak_flops_per_s=datasheet.peak_flops_per_s,
            memory_levels=datasheet.memory_levels,
            overhead_s=datasheet.overhead_s,
            notes=datasheet.notes,
            aliases=datasheet.aliases,
            metadata={**datasheet.metadata, **metadata},
        )
    sm_count = _sm_count(index, cuda_cores, capability)
    notes: dict[str, str] = {}
    peaks: dict[str, float] = {}
    if sm_count and sm_clock_mhz:
        peaks, peak_notes = gpu_peaks_from_clocks(sm_count, float(sm_clock_mhz) * 1e6, capability, geforce, cuda_cores)
        notes.update({f"peak_flops_per_s.{k}": v for k, v in peak_notes.items()})
        metadata["sm_count"] = str(sm_count)
    levels: list[MemoryLevel] = []
    l2_bytes = _l2_bytes(index)
    if l2_bytes:
        levels.append(MemoryLevel("L2", float(l2_bytes), None, f"capacity from CUDA device properties; bandwidth {_UNMEASURED} --device cuda"))
    total = float(memory.total) if memory is not None else None
    if mem_clock_mhz and bus_bits:
        bandwidth = 2 * float(mem_clock_mhz) * 1e6 * float(bus_bits) / 8
        note = f"2 x {mem_clock_mhz} MHz x {bus_bits} bit / 8 = {bandwidth:.4g} B/s (DDR formula, NVML clocks)"
    else:
        bandwidth, note = None, f"NVML gave no memory clock or bus width (Jetson/MIG); bandwidth {_UNMEASURED} --device cuda"
    levels.append(MemoryLevel("DRAM", total, bandwidth, note))
    notes["overhead_s"] = _OVERHEAD_NOTE.format(what="CUDA kernel launch (~5 us)")
    if not peaks:
        raise _no_peaks(name)
    return HardwareProfile(
        name=f"{name} (detected)",
        kind="gpu",
        vendor="NVIDIA",
        source="detected",
        reference="derived from NVML clocks, core count and bus width (no datasheet profile matched this name)",
        peak_flops_per_s=peaks,
        memory_levels=tuple(levels),
        overhead_s=GPU_OVERHEAD_ESTIMATE_S,
        notes=notes,
        metadata=metadata,
    )


def _no_peaks(name: str) -> Exception:
    from roofline.errors import RooflineError

    return RooflineError(f"GPU {name!r}: NVML gave neither a core count nor an SM clock, so no peak can be derived; use a datasheet profile (roofline hw list)")


def _sm_count(index: int, cuda_cores: int | None, capability: tuple[int, ...]) -> int | None:
    """SMs from the CUDA properties when torch sees the GPU, else NVML cores / FP32 cores per SM."""
    import torch

    if torch.cuda.is_available() and index < torch.cuda.device_count():
        return int(torch.cuda.get_device_properties(index).multi_processor_count)
    if cuda_cores:
        return int(cuda_cores) // _FP32_CORES_PER_SM.get((capability[0], capability[1]), _DEFAULT_FP32_CORES_PER_SM)
    return None


def _l2_bytes(index: int) -> int | None:
    import torch

    if torch.cuda.is_available() and index < torch.cuda.device_count():
        return int(getattr(torch.cuda.get_device_properties(index), "L2_cache_size", 0)) or None
    return None


def detect(device: str | None = None) -> HardwareProfile:
    """This machine: the first NVIDIA GPU if there is one (or device='cuda'), else the CPU.

    With no GPU the CPU profile carries a note saying why in metadata['gpu'].
    """
    if device not in (None, "cpu", "cuda") and not str(device).startswith("cuda:"):
        from roofline.errors import RooflineError

        raise RooflineError(f"unknown device {device!r}; choose cpu or cuda")
    if device != "cpu":
        gpus, note = detect_gpus()
        index = int(device.split(":")[1]) if device and ":" in device else 0
        if gpus and index < len(gpus):
            return gpus[index]
        if device is not None:
            from roofline.errors import RooflineError

            raise RooflineError(f"device {device!r} requested but {note or 'no such GPU'}")
    else:
        note = "not checked (device cpu requested)"
    profile = detect_cpu()
    if note:
        return _with_metadata(profile, gpu=note)
    return profile


def _with_metadata(profile: HardwareProfile, **extra: str) -> HardwareProfile:
    import dataclasses

    return dataclasses.replace(profile, metadata={**profile.metadata, **extra})

"""Detection against fake py-cpuinfo dicts and a fake NVML module, with peaks computed by hand."""
from __future__ import annotations

import sys
import types
from typing import Any

import pytest

from roofline.hardware import detect, load_profile
from roofline.hardware.detect import detect_cpu, detect_gpus


def cpu(brand: str, hz: int, flags: list[str], vendor: str = "GenuineIntel", **extra: Any) -> dict[str, Any]:
    return {"brand_raw": brand, "vendor_id_raw": vendor, "hz_advertised": (hz, 0), "flags": flags, "arch": "X86_64", **extra}


def test_sapphire_rapids() -> None:
    info = cpu("Intel(R) Xeon(R) Platinum 8480+", 2_000_000_000,
               ["avx2", "fma", "avx512f", "avx512_bf16", "avx512_vnni", "avx512_fp16", "amx_tile", "amx_bf16", "amx_int8"],
               l3_cache_size=105 * 2**20, l2_cache_size=112 * 2**20, count=112)
    p = detect_cpu(info, cores=56)
    assert p.peak("fp32") == pytest.approx(7.168e12)  # 56 cores x 2.0e9 x 2 FMA x 16 lanes x 2
    assert p.peak("fp64") == pytest.approx(3.584e12)  # 56 x 2.0e9 x 2 x 8 x 2
    assert p.peak("fp16") == pytest.approx(14.336e12)  # 56 x 2.0e9 x 2 x 32 x 2 (AVX512-FP16)
    assert p.peak("bf16") == pytest.approx(114.688e12)  # AMX: 56 x 2.0e9 x 1024
    assert p.peak("int8") == pytest.approx(229.376e12)  # AMX: 56 x 2.0e9 x 2048
    assert p.source == "detected" and p.dram.bandwidth_bytes_per_s is None  # DRAM bandwidth needs measuring
    assert "unknown until measured" in p.dram.note
    assert p.metadata["datasheet_match"] == "xeon-8480plus"
    assert "56 cores x 2 GHz x 2 FMA units x 16 lanes x 2" in p.notes["peak_flops_per_s.fp32"]


def test_zen4_with_pycpuinfo_vnni_spelling() -> None:
    info = cpu("AMD EPYC 9654 96-Core Processor", 2_400_000_000, ["avx2", "fma", "avx512f", "avx512_bf16", "avx512vnni"], vendor="AuthenticAMD")
    p = detect_cpu(info, cores=96)
    assert p.peak("fp32") == pytest.approx(7.3728e12)  # 96 x 2.4e9 x 2 FMA x 8 lanes (256-bit pipes) x 2
    assert p.peak("bf16") == pytest.approx(14.7456e12)  # 96 x 2.4e9 x 2 x 8 lanes x 2 MACs x 2
    assert p.peak("int8") == pytest.approx(29.4912e12)  # 96 x 2.4e9 x 2 x 8 lanes x 4 MACs x 2
    assert "fp16" not in p.peak_flops_per_s


def test_zen3_no_datasheet_match_no_low_precision() -> None:
    p = detect_cpu(cpu("AMD EPYC", 2_445_412_000, ["avx", "avx2", "fma", "f16c"], vendor="AuthenticAMD"), cores=2)
    assert p.peak("fp32") == pytest.approx(2 * 2.445412e9 * 2 * 8 * 2)  # = 156.5e9
    assert set(p.peak_flops_per_s) == {"fp64", "fp32"}
    assert "datasheet_match" not in p.metadata


def test_raspberry_pi_5_arm() -> None:
    info = {"brand_raw": "Cortex-A76", "hz_advertised": (2_400_000_000, 0), "arch": "ARM_8", "flags": ["fp", "asimd", "fphp", "asimdhp", "asimddp"]}
    p = detect_cpu(info, cores=4)
    assert p.peak("fp32") == pytest.approx(153.6e9)  # 4 x 2.4e9 x 2 FMA x 4 lanes x 2
    assert p.peak("fp16") == pytest.approx(307.2e9)  # 4 x 2.4e9 x 2 x 8 lanes x 2
    assert p.peak("int8") == pytest.approx(614.4e9)  # SDOT: 4 x 2.4e9 x 2 x 4 lanes x 4 MACs x 2


def test_apple_m2_without_flags() -> None:
    p = detect_cpu({"brand_raw": "Apple M2", "hz_advertised": (3_490_000_000, 0), "arch": "ARM_8", "flags": []}, cores=4)
    assert p.peak("fp32") == pytest.approx(446.72e9)  # 4 x 3.49e9 x 4 FMA pipes x 4 lanes x 2
    assert p.metadata["datasheet_match"] == "apple-m2"


# ---- NVML ----------------------------------------------------------------------------------------

class NVMLError(Exception):
    pass


def fake_nvml(gpus: list[dict[str, Any]], init_error: bool = False) -> types.ModuleType:
    """A stand-in for the pynvml module: the same function names, answering from `gpus`."""
    nvml = types.ModuleType("pynvml")
    nvml.NVML_CLOCK_SM, nvml.NVML_CLOCK_MEM, nvml.NVML_BRAND_GEFORCE = 1, 2, 5  # type: ignore[attr-defined]

    def init() -> None:
        if init_error:
            raise NVMLError("Driver Not Loaded")

    def get(key: str) -> Any:
        def call(handle: int, *args: Any) -> Any:
            value = gpus[handle].get(key)
            if value is None:
                raise NVMLError("Not Supported")
            return value

        return call

    def max_clock(handle: int, clock: int) -> int:
        return int(gpus[handle]["sm_mhz" if clock == 1 else "mem_mhz"])

    functions = {
        "nvmlInit": init, "nvmlShutdown": lambda: None, "nvmlDeviceGetCount": lambda: len(gpus),
        "nvmlDeviceGetHandleByIndex": lambda i: i, "nvmlDeviceGetName": get("name"),
        "nvmlDeviceGetCudaComputeCapability": get("cc"), "nvmlDeviceGetMaxClockInfo": max_clock,
        "nvmlDeviceGetMemoryBusWidth": get("bus"), "nvmlDeviceGetNumGpuCores": get("cores"),
        "nvmlDeviceGetMemoryInfo": lambda h: types.SimpleNamespace(total=gpus[h]["memory"]),
        "nvmlDeviceGetBrand": get("brand"),
    }
    for name, fn in functions.items():
        setattr(nvml, name, fn)
    return nvml


H100 = {"name": "NVIDIA H100 80GB HBM3", "cc": (9, 0), "sm_mhz": 1980, "mem_mhz": 2619, "bus": 5120, "cores": 16896, "memory": 85520809984, "brand": 14}
A40 = {"name": "NVIDIA A40", "cc": (8, 6), "sm_mhz": 1740, "mem_mhz": 7251, "bus": 384, "cores": 10752, "memory": 48e9, "brand": 2}
RTX3080 = {"name": "NVIDIA GeForce RTX 3080", "cc": (8, 6), "sm_mhz": 1710, "mem_mhz": 9501, "bus": 320, "cores": 8704, "memory": 10e9, "brand": 5}
MIG = {"name": "NVIDIA A100-SXM4-40GB MIG 1g.5gb", "cc": (8, 0), "sm_mhz": 1410, "mem_mhz": 1215, "bus": 5120, "cores": None, "memory": 5e9, "brand": 2}


def test_gpu_matched_to_datasheet(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "pynvml", fake_nvml([H100]))
    (p,), note = detect_gpus()
    assert note == "" and p.source == "detected" and p.metadata["datasheet_match"] == "h100-sxm"
    assert dict(p.peak_flops_per_s) == dict(load_profile("h100-sxm").peak_flops_per_s)
    assert detect().name == "NVIDIA H100 SXM 80GB"  # detect() prefers the GPU


def test_unknown_gpu_derived_from_clocks(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "pynvml", fake_nvml([A40, RTX3080]))
    (a40, rtx), _ = detect_gpus()
    assert a40.peak("fp32") == pytest.approx(37.41696e12)  # 10752 cores x 2 x 1.74e9
    assert a40.peak("fp16") == pytest.approx(149.66784e12)  # 84 SMs (10752/128) x 1024 x 1.74e9
    assert a40.dram.bandwidth_bytes_per_s == pytest.approx(696.096e9)  # 2 x 7251e6 x 384 / 8
    assert a40.metadata["sm_count"] == "84"
    # GeForce: FP32-accumulate tensor math is half rate (512 / SM / clock on CC 8.6).
    assert rtx.peak("fp16") == pytest.approx(59.53536e12)  # 68 SMs x 512 x 1.71e9
    assert rtx.peak("fp32") == pytest.approx(29.76768e12)  # 8704 x 2 x 1.71e9
    assert rtx.dram.bandwidth_bytes_per_s == pytest.approx(760.08e9)  # 2 x 9501e6 x 320 / 8


def test_gpu_without_core_count_gives_clear_error(monkeypatch: pytest.MonkeyPatch) -> None:
    from roofline.errors import RooflineError

    monkeypatch.setitem(sys.modules, "pynvml", fake_nvml([MIG]))
    with pytest.raises(RooflineError, match="no peak can be derived"):
        detect_gpus()


def test_no_nvml_library_is_a_note(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "pynvml", None)  # import pynvml -> ImportError
    profile = detect()
    assert profile.kind == "cpu" and "not installed" in profile.metadata["gpu"]


def test_no_driver_is_a_note(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "pynvml", fake_nvml([], init_error=True))
    profile = detect()
    assert profile.kind == "cpu" and "Driver Not Loaded" in profile.metadata["gpu"]
    assert profile.peak("fp32") > 0 and profile.memory_levels[-1].name == "DRAM"


def test_no_gpus_and_cuda_requested_is_an_error(monkeypatch: pytest.MonkeyPatch) -> None:
    from roofline.errors import RooflineError

    monkeypatch.setitem(sys.modules, "pynvml", fake_nvml([]))
    with pytest.raises(RooflineError, match="no GPU detected"):
        detect("cuda")

"""The shared timer and the CPU measurement path, on tiny sizes: structure only, never absolute times."""
from __future__ import annotations

import subprocess
import sys
from pathlib import Path
from typing import ClassVar

import pytest
import torch

import roofline
from roofline import calibrate, cli, timing
from roofline.calibrate import measure_profile
from roofline.errors import RooflineError
from roofline.hardware import (
    EFFICIENCY_CLASSES,
    load_profile,
    microbench,
)
from roofline.hardware.microbench import BenchConfig
from roofline.predict import Prediction
from roofline.timing import Measurement, retained_heap, time_callable

pytestmark = pytest.mark.filterwarnings("ignore:the machine is busy")

def test_measurement_statistics() -> None:
    m = Measurement((1.0, 2.0, 3.0, 4.0, 100.0), number=10, device="cpu", num_threads=1)
    assert m.median_s == 3.0 and m.iqr_s == 2.0 and m.noisy and "IQR" in (m.warning or "")
    steady = Measurement((1.0, 1.01, 1.0, 0.99, 1.0), number=1, device="cpu", num_threads=1)
    assert not steady.noisy and steady.warning is None


def test_the_pass_measurement_solves_for_the_pass_penalty_block_by_block(monkeypatch: pytest.MonkeyPatch) -> None:
    """A = L + P (one pass), B = R L + P (each layer R times in a row): per block rho = A / B gives
    P / L = (rho R - 1) / (1 - rho) whatever the machine's speed in that block. Hand-made blocks: L = 2 ms,
    P = 0.5 ms (P / L = 0.25) in three blocks, one with the machine twice as slow (rho is the same) and one
    block off (P / L = 1); the median keeps 0.25, and L comes from B's median over R + 0.25."""
    repeats = calibrate._LAYER_REPEATS
    alone, penalty = 2e-3, 0.5e-3
    rho = (alone + penalty) / (repeats * alone + penalty)
    off = (alone + 4 * penalty) / (repeats * alone + 4 * penalty)
    b = timing.Measurement((repeats * alone + penalty,) * 3, number=1, device="cpu", num_threads=1)
    monkeypatch.setattr(calibrate, "time_ratio", lambda *a, **k: timing.Ratio((rho, off, rho), b, b))
    module, inputs = calibrate._pass_call_chain()
    counted = roofline.analyze(module, inputs=inputs)
    profile = load_profile("epyc-7763")
    measured = calibrate.measure_pass_call(profile, calibrate._pass_call_chain, counted, microbench.QUICK)
    assert measured.alone_s == pytest.approx(alone) and measured.pass_s == pytest.approx(alone + penalty)
    cold = Prediction(counted, profile).cold_data_s()
    assert measured.cold_data_s == pytest.approx(cold) and measured.ops == len(counted.records)
    assert cold < 0.5e-6 * measured.ops  # the chain moves little data: what its pass adds is the calls' own cost
    assert measured.pass_call_s == pytest.approx((penalty - cold) / len(counted.records))
    assert set(measured.metadata()) >= {"pass_call.pass_s", "pass_call.penalty_iqr"} and f"{measured.ops} ops" in measured.note()
    # A pass that took longer than its layers repeated R times cannot be solved: one line, not a number.
    monkeypatch.setattr(calibrate, "time_ratio", lambda *a, **k: timing.Ratio((1.5,), b, b))
    with pytest.raises(RooflineError, match="cannot be measured on this machine now"):
        calibrate.measure_pass_call(profile, calibrate._pass_call_chain, counted, microbench.QUICK)


def test_time_callable_blocks_threads_and_callback(monkeypatch: pytest.MonkeyPatch) -> None:
    import types

    # A clock that moves 0.1 ms per call and never otherwise: block sizing is then exact, whatever the machine
    # is doing (a real clock made this test fail when the machine sped up between sizing and timing).
    clock = types.SimpleNamespace(now=0.0)
    monkeypatch.setattr(timing, "time", types.SimpleNamespace(perf_counter=lambda: clock.now))

    def work() -> None:
        clock.now += 1e-4

    calls: list[tuple[int, float]] = []
    before = torch.get_num_threads()
    m = time_callable(work, min_run_time_s=0.01, num_threads=1, callback=lambda n, s: calls.append((n, s)))
    assert m.num_threads == 1 and torch.get_num_threads() == before  # fixed for the run, then restored
    assert m.number > 1 and m.repeats >= 5 and len(calls) == m.repeats
    assert all(t == pytest.approx(1e-4) for t in m.raw_times_s)  # per call: the block's time / its size
    assert all(n * t >= 1e-3 * (1 - 1e-9) for n, t in zip([m.number] * m.repeats, m.raw_times_s))  # blocks >= 1 ms
    assert len(time_callable(lambda: None, repeats=3).raw_times_s) == 3


_RETENTION_SCRIPT = """
import contextlib, os, torch
from roofline.timing import retained_heap
def resident():
    with open("/proc/self/statm") as statm:
        return int(statm.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")
for context in (contextlib.nullcontext, retained_heap):  # a fresh process first: glibc's defaults
    with context():
        buffer = torch.ones(6 * 1024 * 1024)  # 24 MiB
        before = resident()
        del buffer
        print(context.__name__, (before - resident()) // (1024 * 1024))
"""


@pytest.mark.skipif(not Path("/proc/self/statm").exists() or timing._mallopt() is None, reason="needs Linux and glibc")
def test_retained_heap_keeps_freed_buffers_resident() -> None:
    # In a fresh process (a known allocator state) glibc hands a freed 24 MiB buffer back to the OS;
    # inside retained_heap it keeps it, so the next pass reuses those pages instead of faulting.
    done = subprocess.run([sys.executable, "-c", _RETENTION_SCRIPT], capture_output=True, text=True, check=True)
    returned = dict(line.split() for line in done.stdout.splitlines())
    assert int(returned["nullcontext"]) >= 16 and int(returned["retained_heap"]) == 0


def test_retained_heap_sets_and_restores_glibc_thresholds(monkeypatch: pytest.MonkeyPatch) -> None:
    calls: list[tuple[int, int]] = []
    monkeypatch.setattr(timing, "_mallopt", lambda: lambda param, value: calls.append((param, value)) or 1)
    with retained_heap():
        assert calls == [(-3, 32 * 1024 * 1024), (-1, 1 << 30)]  # mmap threshold, trim threshold
    assert calls[-1] == (-1, 64 * 1024 * 1024)  # back to the most glibc's own rule reaches
    calls.clear()
    with retained_heap(), retained_heap():
        pass
    assert calls.count((-1, 64 * 1024 * 1024)) == 1  # only the outermost exit restores


def test_retained_heap_without_mallopt_says_so(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(timing, "_mallopt", lambda: None)
    with retained_heap() as allocator:
        assert allocator.startswith("system default")


def test_cuda_timing_without_gpu_is_a_clear_error(tiny_bench: BenchConfig) -> None:
    from roofline.errors import RooflineError

    if torch.cuda.is_available():
        pytest.skip("a GPU is present")
    with pytest.raises(RooflineError, match="CUDA is not available"):
        time_callable(lambda: None, device="cuda")
    with pytest.raises(RooflineError, match="CUDA is not available"):
        measure_profile(device="cuda", config=tiny_bench, progress=False)


def test_measure_cpu_profile_structure(tiny_bench: BenchConfig) -> None:
    p = measure_profile("cpu", progress=False, config=tiny_bench)
    assert p.source == "measured" and p.kind == "cpu"
    assert p.metadata["torch_version"] == torch.__version__ and p.metadata["date"].endswith("+00:00")
    assert int(p.metadata["num_threads"]) == torch.get_num_threads()  # the machine record shared with measurements
    assert p.peak("fp32") > 0 and {"bf16", "fp16"} <= set(p.peak_flops_per_s)
    measured = [level.bandwidth_bytes_per_s for level in p.memory_levels if level.bandwidth_bytes_per_s is not None]
    assert measured and all(b > 0 for b in measured) and p.dram.bandwidth_bytes_per_s
    capacities = [level.capacity_bytes for level in p.memory_levels if level.capacity_bytes]
    assert capacities == sorted(capacities)
    assert 0 < p.overhead_s < 1e-2
    assert p.module_call_s is not None and 0 < p.module_call_s < 1e-2
    assert {key.rpartition(":")[2].partition("@")[0] for key in p.efficiency} <= set(EFFICIENCY_CLASSES)
    assert {key.partition("@")[2] for key in p.efficiency if "@" in key} <= {p.memory_levels[-1].name}
    # Each fast compute type has lines of its own, keyed TYPE:CLASS (fp32's plain), for the same classes.
    types = calibrate.calibrated_types(p)
    assert {key.partition(":")[0] for key in p.efficiency if ":" in key} == set(types) - {"fp32"}
    for compute_type in types:
        classes = {k.partition("@")[0] for k in p.for_compute_type(compute_type).efficiency}
        assert classes == {k.partition("@")[0] for k in p.efficiency if ":" not in k}
    assert p.efficiency and all(0 < v <= 1.5 for v in p.efficiency.values())
    assert "time_calibrated" in p.notes["efficiency"]
    # The pass model's per-call cost, measured on a chain of small layers, with its figures.
    assert p.pass_call_s is not None and 0 < p.pass_call_s < 1e-2
    assert "chain of small layers' pass" in p.notes["pass_call_s"] and "pass_call.pass_s" in p.metadata
    assert float(p.metadata["reference_flops_per_s"]) > 1e8  # speed while the efficiency ops ran
    assert any(k.startswith("bandwidth.") for k in p.metadata) and "matmul.fp32" in p.metadata


def test_cli_measure_saves_and_auto_uses_it(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str],
                                            tiny_bench: BenchConfig) -> None:
    monkeypatch.setenv("ROOFLINE_PROFILE_DIR", str(tmp_path))
    assert cli.main(["hw", "measure", "--quick", "--no-progress"]) == 0
    saved = list(tmp_path.glob("measured-*.yaml"))
    assert len(saved) == 1 and "saved" in capsys.readouterr().err
    again = load_profile(str(saved[0]))
    assert again.source == "measured"
    if not torch.cuda.is_available():
        assert load_profile("auto").source == "measured"  # auto prefers this machine's saved measurement


def test_with_matmul_tf32_sets_the_flag_per_call_and_restores_it() -> None:
    before = torch.backends.cuda.matmul.allow_tf32  # a cuBLAS property, not a plain attribute
    torch.backends.cuda.matmul.allow_tf32 = True
    try:
        seen: list[bool] = []
        call = timing.with_matmul_tf32(lambda: seen.append(torch.backends.cuda.matmul.allow_tf32), enabled=False)
        call()
        assert seen == [False] and torch.backends.cuda.matmul.allow_tf32 is True
    finally:
        torch.backends.cuda.matmul.allow_tf32 = before


def test_recalibrate_times_the_efficiency_ops_again_and_keeps_the_roofs(tiny_bench: BenchConfig) -> None:
    measured = measure_profile("cpu", progress=False, config=tiny_bench)
    assert microbench.config_of(measured) is tiny_bench  # so recalibrate times the same tiny ops
    again = calibrate.recalibrate(measured, "cpu", progress=False)
    assert again.peak_flops_per_s == measured.peak_flops_per_s and again.memory_levels == measured.memory_levels
    assert set(again.efficiency) and again.pass_call_s is not None and again.metadata["recalibrated"]
    assert again.metadata["reference_flops_per_s"] != measured.metadata["reference_flops_per_s"]  # timed again
    detected = load_profile("epyc-7763")
    with pytest.raises(RooflineError, match="not a measured profile with efficiency factors"):
        calibrate.recalibrate(detected, "cpu", progress=False)


class _CountingBar:
    """Stands in for microbench._Progress: what a bar was told to expect, and what it was given."""

    bars: ClassVar[list[_CountingBar]] = []

    def __init__(self, total: int, enabled: bool, desc: str) -> None:
        self.total, self.labels = total, []
        _CountingBar.bars.append(self)

    def step(self, label: str) -> None:
        self.labels.append(label)

    def extend(self, steps: int) -> None:
        self.total += steps

    def close(self) -> None:
        pass


def test_the_progress_bar_counts_every_step_to_the_end(tiny_bench: BenchConfig, monkeypatch: pytest.MonkeyPatch) -> None:
    """hw measure's and recalibrate's bars reach their totals, the pass model and reference network included (a
    bar that closed before them once left seconds of work with nothing on screen)."""
    monkeypatch.setattr(calibrate, "_Progress", _CountingBar)
    monkeypatch.setattr(microbench, "_Progress", _CountingBar)
    _CountingBar.bars = []
    measured = measure_profile("cpu", progress=True, config=tiny_bench)
    recalibrated = calibrate.recalibrate(measured, "cpu", progress=True)
    assert len(_CountingBar.bars) == 2
    for bar in _CountingBar.bars:
        assert len(bar.labels) == bar.total
        assert bar.labels[-2:] == ["pass model: a chain of small layers", "the reference network"]
    # Both measure the grouped convolutions' rates (every count, the dense one at 1) and fit the 1x1 line.
    for profile in (measured, recalibrated):
        assert set(profile.conv_group_rate) == {*calibrate.GROUP_RATE_COUNTS, max(c for c, _ in calibrate.GROUP_RATE_SHAPES)}
        assert all(0 < rate <= 1 for rate in profile.conv_group_rate.values())
        assert float(profile.metadata[calibrate.GROUP_RATE_SIGMA]) >= 0
        assert "pointwise_conv" in profile.efficiency


def _sweep(curve: dict[int, float]) -> list[microbench.BandwidthPoint]:
    """One 'copy' point per working set moving 2 x the working set at the given bandwidth (B/s)."""
    return [microbench.BandwidthPoint("copy", size, 2 * size, Measurement((2 * size / bw,) * 5, 1, "cpu", 1))
            for size, bw in curve.items()]


def test_effective_capacity_is_where_the_sweep_falls_halfway_to_the_next_level() -> None:
    """Issue 16: a VM reported a 256 MiB L3 that a 96 MB weight set did not enjoy; the sweep says where it ends."""
    from roofline.hardware.profile import MemoryLevel

    mib = 1024 * 1024
    levels = [MemoryLevel("L2", 1 * mib, 200e9), MemoryLevel("L3", 256 * mib, 100e9), MemoryLevel("DRAM", 64e9, 20e9)]
    curve = {mib // 4: 200e9, mib // 2: 200e9, 2 * mib: 110e9, 8 * mib: 100e9, 16 * mib: 100e9, 32 * mib: 40e9,
             64 * mib: 20e9, 128 * mib: 20e9, 512 * mib: 20e9}
    out = microbench.effective_capacities(levels, _sweep(curve), overhead_s=1e-9)
    # L3: threshold sqrt(100e9 x 20e9) = 44.72e9 B/s; last size at or above it 16 MiB (100e9), next 32 MiB (40e9):
    # fraction ln(100/44.72) / ln(100/40) = 0.8047 / 0.9163 = 0.8782, so 16 MiB x 2^0.8782 = 16 x 1.8383 = 29.41 MiB.
    assert out[1].effective_capacity_bytes == pytest.approx(29.41 * mib, rel=1e-3)
    assert out[1].capacity_bytes == 256 * mib and "effective capacity" in out[1].note
    # L2: threshold sqrt(200e9 x 100e9) = 141.4e9; last above 512 KiB (200e9), next 2 MiB (110e9):
    # fraction ln(200/141.4) / ln(200/110) = 0.3466 / 0.5978 = 0.5798, so 512 KiB x 4^0.5798 = 1.117 MiB: past
    # the reported 1 MiB, so the reported size stays.
    assert out[0].effective_capacity_bytes is None
    assert out[2] == levels[2]
    # A crossing less than one sweep step (2x) below the reported size is within the noise: the reported size stays.
    # Reported 48 MiB: 29.41 MiB x 2 is past it. Reported 64 MiB: 29.41 MiB x 2 = 58.8 MiB is below it, so it is taken.
    for reported, expected in ((48 * mib, None), (64 * mib, pytest.approx(29.41 * mib, rel=1e-3))):
        near = [MemoryLevel("L3", reported, 100e9), levels[2]]
        assert microbench.effective_capacities(near, _sweep(curve), 1e-9)[0].effective_capacity_bytes == expected
    # Levels within 1.25x of each other cannot be told apart in the sweep: the reported size stays.
    close = [MemoryLevel("L3", 256 * mib, 100e9), MemoryLevel("DRAM", 64e9, 90e9)]
    assert microbench.effective_capacities(close, _sweep(curve), 1e-9)[0].effective_capacity_bytes is None


def test_prediction_streams_from_the_level_that_holds_the_working_set_by_its_effective_capacity(tmp_path: Path) -> None:
    from roofline.hardware.profile import HardwareProfile, MemoryLevel, save_profile

    mib = 1024 * 1024
    l3 = MemoryLevel("L3", 256 * mib, 100e9, effective_capacity_bytes=30 * mib)
    profile = HardwareProfile("vm", "cpu", "test", "measured", "written in the test", {"fp32": 1e11},
                              (l3, MemoryLevel("DRAM", 64e9, 20e9)), 1e-6)
    assert profile.memory_level_for(96e6).name == "DRAM"  # 96 MB of weights: past the 30 MiB in use
    assert profile.memory_level_for(8e6).name == "L3"
    path = tmp_path / "vm.yaml"
    save_profile(profile, path)
    assert load_profile(str(path)).memory_levels[0].effective_capacity_bytes == 30 * mib
    with pytest.raises(RooflineError, match=r"memory_levels\[0\]\.effective_capacity_bytes.*must not exceed"):
        HardwareProfile("vm", "cpu", "test", "measured", "written in the test", {"fp32": 1e11},
                        (MemoryLevel("L3", mib, 100e9, effective_capacity_bytes=2 * mib), MemoryLevel("DRAM", 64e9, 20e9)), 1e-6)

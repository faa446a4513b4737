"""--hw auto on a machine with no saved measurement measures it once (quick) and saves it."""
import pytest

from roofline import hardware
from roofline.hardware.profile import HardwareProfile, MemoryLevel


def _fake(source, bandwidth, machine="test machine"):
    return HardwareProfile(
        name="fake", kind="cpu", vendor="test", source=source, reference="test",
        peak_flops_per_s={"fp32": 1e11}, memory_levels=(MemoryLevel("DRAM", 8e9, bandwidth),), overhead_s=1e-6,
        metadata={"machine": machine, "date": "2026-11-29"},
    )


def test_auto_measures_once_then_reuses(monkeypatch):
    calls = []
    monkeypatch.setattr(hardware, "detect", lambda: _fake("detected", None))

    def fake_measure(device, quick):
        calls.append((device, quick))
        return _fake("measured", 2e10)

    monkeypatch.setattr(hardware, "measure_profile", fake_measure)
    with pytest.warns(UserWarning, match="measuring it once"):
        first = hardware.load_profile("auto")
    assert first.source == "measured" and first.dram.bandwidth_bytes_per_s == 2e10
    assert calls == [("cpu", True)]
    again = hardware.load_profile("auto")  # saved: no second measurement
    assert again.source == "measured" and calls == [("cpu", True)]


def test_auto_keeps_a_complete_detection(monkeypatch):
    monkeypatch.setattr(hardware, "detect", lambda: _fake("detected", 3e11))
    monkeypatch.setattr(hardware, "measure_profile", lambda **kw: pytest.fail("must not measure"))
    assert hardware.load_profile("auto").source == "detected"

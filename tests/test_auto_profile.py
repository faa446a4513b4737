"""--hw auto never benchmarks on its own: loading reads a saved measurement or detection; measuring is asked for."""
import pytest

from roofline import calibrate, cli, hardware
from roofline.errors import RooflineError
from roofline.hardware.profile import HardwareProfile, MemoryLevel


def _fake(source, bandwidth, machine="test machine"):
    return HardwareProfile(
        name="fake", kind="cpu", vendor="test", source=source, reference="test",
        peak_flops_per_s={"fp32": 1e11}, memory_levels=(MemoryLevel("DRAM", 8e9, bandwidth),), overhead_s=1e-6,
        metadata={"machine": machine, "date": "2026-11-29"},
    )


def test_loading_auto_never_measures(monkeypatch):
    monkeypatch.setattr(hardware, "detect", lambda: _fake("detected", None))
    monkeypatch.setattr(calibrate, "measure_profile", lambda **kw: pytest.fail("loading must not measure"))
    with pytest.raises(RooflineError, match="roofline hw measure --quick.*--measure-hw"):
        hardware.load_profile("auto")


def test_measure_hw_measures_once_then_reuses(monkeypatch):
    calls = []
    monkeypatch.setattr(hardware, "detect", lambda: _fake("detected", None))

    def fake_measure(device, quick, progress):
        calls.append((device, quick))
        return _fake("measured", 2e10)

    monkeypatch.setattr(calibrate, "measure_profile", fake_measure)
    with pytest.warns(UserWarning, match="measuring it once"):
        first = calibrate.ensure_measured_profile(progress=False)
    assert first.source == "measured" and first.dram.bandwidth_bytes_per_s == 2e10
    assert calls == [("cpu", True)]
    again = hardware.load_profile("auto")  # saved: plain loading now finds it, and nothing is measured again
    assert again.source == "measured" and calls == [("cpu", True)]
    assert calibrate.ensure_measured_profile(progress=False).source == "measured" and calls == [("cpu", True)]


def test_cli_measure_hw_is_the_explicit_step(monkeypatch, capsys):
    monkeypatch.setattr(hardware, "detect", lambda: _fake("detected", None))
    monkeypatch.setattr(calibrate, "measure_profile", lambda device, quick, progress: _fake("measured", 2e10))
    assert cli.main(["predict", "zoo:mlp", "--hw", "auto"]) == 2
    assert "--measure-hw" in capsys.readouterr().err
    with pytest.warns(UserWarning, match="measuring it once"):
        assert cli.main(["predict", "zoo:mlp", "--hw", "auto", "--measure-hw", "--format", "json"]) == 0


def test_auto_keeps_a_complete_detection(monkeypatch):
    monkeypatch.setattr(hardware, "detect", lambda: _fake("detected", 3e11))
    monkeypatch.setattr(calibrate, "measure_profile", lambda **kw: pytest.fail("must not measure"))
    assert hardware.load_profile("auto").source == "detected"

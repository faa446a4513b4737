"""Fidelity you can see (issue 16): prediction intervals from the calibration's own evidence, and a
measurement faster than the roof flagged with its figures."""
from __future__ import annotations

import math
from typing import ClassVar

import pandas as pd
import pytest
import torch
from torch import nn

import roofline
from roofline.fidelity import ROOF_MARGIN, faster_than_roof, roof_sentence
from roofline.hardware.profile import CalibrationSample, HardwareProfile, MemoryLevel
from roofline.predict import INTERVAL_COVERAGE, predict

Z = 1.2816  # the 80% two-sided normal quantile


def _samples(residual: float, efficiency: float) -> str:
    """Calibration evidence of a gemm line (fixed 1 us) that missed its three sizes by exp(+-residual)."""
    samples = []
    for roof, sign in ((1e-5, 1), (1e-4, -1), (1e-3, 1)):
        line = 1e-6 + roof / efficiency
        samples.append(str(CalibrationSample(f"linear {roof}", roof, line * math.exp(sign * residual), "DRAM")))
    return "; ".join(samples)


def _profile(residual: float, spread: float | None = None, pass_model: bool = False,
             evidence: dict[str, float] | None = None) -> HardwareProfile:
    """A measured CPU whose gemm line (fixed 1 us, efficiency 0.5) missed its three sizes by exp(+-residual);
    pass_model: also a pass model (a per-call cost of 1 us); evidence: the prediction's error on a network's
    layers alone, in a pass and of the whole pass (calibrate.reference_network_evidence)."""
    metadata = {"efficiency.gemm": _samples(residual, 0.5), "date": "2026-12-01T00:00:00"}
    if spread is not None:
        metadata["efficiency_spread.gemm"] = str(spread)
    metadata |= {key: str(value) for key, value in (evidence or {}).items()}
    return HardwareProfile(
        name="measured", kind="cpu", vendor="test", source="measured", reference="test",
        peak_flops_per_s={"fp32": 1e11}, memory_levels=(MemoryLevel("DRAM", 1e10, 1e10),), overhead_s=1e-6,
        efficiency={"gemm": 0.5}, fixed_overhead_s={"gemm": 1e-6}, metadata=metadata,
        pass_call_s=1e-6 if pass_model else None,
    )


def _linear(layers: int = 1):
    with torch.device("meta"):
        model = nn.Sequential(*[nn.Linear(512, 512, bias=False) for _ in range(layers)])
        return roofline.analyze(model.eval(), inputs=[torch.randn(64, 512)])


def _width(prediction, name="0") -> float:
    row = prediction.layers.set_index("name").loc[name]
    return math.log(row["predicted_high_s"] / row["predicted_low_s"])


def test_the_interval_widens_when_the_calibration_residuals_do():
    analysis = _linear()
    narrow, wide = predict(analysis, _profile(0.05), calibrated=True), predict(analysis, _profile(0.3), calibrated=True)
    assert _width(wide) > 5 * _width(narrow)
    # sigma = the RMS of the log residuals (all 0.05 here), no spread recorded: half-width z * sigma on log time.
    assert _width(narrow) == pytest.approx(2 * Z * 0.05, rel=0.02)  # the evidence is kept to 3 digits
    row = narrow.layers.set_index("name").loc["0"]
    assert row["predicted_low_s"] < row["predicted_s"] < row["predicted_high_s"]


def test_the_timed_spread_adds_in_quadrature():
    analysis = _linear()
    with_spread = predict(analysis, _profile(0.05, spread=0.12), calibrated=True)
    assert _width(with_spread) == pytest.approx(2 * Z * math.hypot(0.05, 0.12), rel=0.02)


def _in_pass_width(prediction, name="0") -> float:
    row = prediction.layers.set_index("name").loc[name]
    return math.log(row["in_pass_high_s"] / row["in_pass_low_s"])


EVIDENCE = {"alone_model_sigma": 0.15, "pass_model_sigma": 0.2, "pass_model_total_sigma": 0.1}


def test_the_lines_error_on_a_network_widens_each_interval_by_its_own_figure():
    analysis = _linear()
    without = predict(analysis, _profile(0.05, pass_model=True), calibrated=True)
    with_it = predict(analysis, _profile(0.05, pass_model=True, evidence=EVIDENCE), calibrated=True)
    # In a pass the class line's error covers the layer's time alone, not the pass model's penalty on top.
    row = without.layers.set_index("name").loc["0"]
    alone_share = row["predicted_s"] / row["in_pass_s"]
    assert row["pass_penalty_s"] > 0 and alone_share < 1
    assert _width(without) == pytest.approx(2 * Z * 0.05, rel=0.02)
    assert _in_pass_width(without) == pytest.approx(2 * Z * 0.05 * alone_share, rel=0.02)
    assert _width(with_it) == pytest.approx(2 * Z * math.hypot(0.05, 0.15), rel=0.02)  # a layer alone: 0.15
    assert _in_pass_width(with_it) == pytest.approx(2 * Z * math.hypot(0.05 * alone_share, 0.2), rel=0.02)  # in a pass

    def whole(prediction):
        return math.log(prediction.totals["predicted_latency_high_s"] / prediction.totals["predicted_latency_low_s"])

    assert whole(without) == pytest.approx(2 * Z * 0.05 * alone_share, rel=0.02)
    assert whole(with_it) == pytest.approx(2 * Z * math.hypot(0.05 * alone_share, 0.1), rel=0.02)  # the pass: 0.1
    no_pass_model = predict(analysis, _profile(0.05, evidence=EVIDENCE), calibrated=True)
    assert _in_pass_width(no_pass_model) == pytest.approx(2 * Z * math.hypot(0.05, 0.15), rel=0.02)  # alone's
    assert math.isnan(_width(predict(analysis, _profile(0.05, evidence=EVIDENCE))))  # plain: no interval at all


def test_the_network_evidence_is_the_rms_of_its_log_errors(monkeypatch):
    """Times that miss the predictions by exp(+-0.1) in the pass and exp(+-0.2) alone, alternately: RMS 0.1 and
    0.2 (means 0); and the whole pass, timed without the profiler 10% above the predicted latency: log 1.1."""
    from types import SimpleNamespace

    from roofline import calibrate, timing
    from roofline.analysis import Analysis
    from roofline.measure import api, passes
    from roofline.precision import get_precision
    from roofline.predict import Prediction
    from roofline.trace import trace

    profile = _profile(0.05, pass_model=True)
    module, inputs = calibrate._reference_network()
    counted = Analysis(trace(module, inputs), get_precision("fp32"))
    prediction = Prediction(counted, profile, calibrated=True)
    layers = prediction.layers
    names = [name for name, t in zip(layers["name"], layers["in_pass_s"], strict=True) if t > 0][:12]  # an even count
    predicted = layers.set_index("name").loc[names]

    def missed(column: str, by: float) -> dict[str, float]:
        return {name: float(t) * math.exp(by if i % 2 else -by) for i, (name, t) in enumerate(predicted[column].items())}

    in_pass, alone = missed("in_pass_s", 0.1), missed("predicted_s", 0.2)
    times = passes.PassTimes(in_pass_s=in_pass, ops_s=in_pass, gap_s={}, pass_s=sum(in_pass.values()),
                             outside_ops_s=0.0, passes=10, timeline="cpu")
    monkeypatch.setattr(passes, "profile_passes", lambda *args, **kwargs: {})
    monkeypatch.setattr(passes, "attribute_trace", lambda *args, **kwargs: times)
    measured = pd.DataFrame({"name": list(alone), "measured_s": list(alone.values())})
    monkeypatch.setattr(api, "measure", lambda *args, **kwargs: SimpleNamespace(layers=measured))
    plain_pass_s = 1.1 * prediction.totals["predicted_latency_s"]
    plain = timing.Measurement((plain_pass_s,) * 3, number=1, device="cpu", num_threads=1)
    monkeypatch.setattr(calibrate, "time_callable", lambda *args, **kwargs: plain)
    evidence = calibrate.reference_network_evidence(profile, "cpu", module, inputs, counted)
    assert float(evidence["pass_model_sigma"]) == pytest.approx(0.1, rel=1e-3)
    assert float(evidence["alone_model_sigma"]) == pytest.approx(0.2, rel=1e-3)
    assert float(evidence["pass_model_total_sigma"]) == pytest.approx(math.log(1.1), rel=1e-3)
    assert "12 layers" in evidence["model_sigma.evidence"] and "mean +0.000" in evidence["model_sigma.evidence"]


def test_errors_within_a_class_do_not_average_out():
    one, four = predict(_linear(1), _profile(0.1), calibrated=True), predict(_linear(4), _profile(0.1), calibrated=True)
    width_one = math.log(one.totals["predicted_latency_high_s"] / one.totals["predicted_latency_low_s"])
    width_four = math.log(four.totals["predicted_latency_high_s"] / four.totals["predicted_latency_low_s"])
    assert width_four == pytest.approx(width_one, rel=1e-6)  # four gemms: one line, fully correlated, no 1/sqrt(4)
    assert four.totals["interval_coverage"] == INTERVAL_COVERAGE


def test_a_plain_prediction_has_no_interval_and_says_so():
    plain = predict(_linear(), _profile(0.1))
    assert plain.layers["predicted_low_s"].isna().all() and math.isnan(plain.totals["predicted_latency_low_s"])
    assert "plain roofline: no interval" in plain.interval_text()
    assert "not an estimate" in plain.bound_summary()


def test_interval_text_says_whether_a_measurement_falls_inside():
    calibrated = predict(_linear(), _profile(0.1), calibrated=True)
    t = calibrated.totals
    assert calibrated.interval_text(t["predicted_latency_s"]).endswith(": inside")
    assert calibrated.interval_text(t["predicted_latency_high_s"] * 1.01).endswith(": outside")
    assert "80% interval" in calibrated.summary()


def test_a_measurement_faster_than_the_roof_is_flagged_with_its_figures():
    prediction = predict(_linear(), "t4")
    roof = float(prediction.layers.set_index("name").loc["0", "roofline_s"])
    measured = pd.DataFrame({"name": ["0"], "measured_s": [roof / 3]})
    flagged = faster_than_roof(prediction, measured)
    assert list(flagged["name"]) == ["0"] and flagged["times_the_roof"].iloc[0] == pytest.approx(3)
    flops = 2 * 64 * 512 * 512
    if flagged["roof"].iloc[0] == "compute":
        assert flagged["measured_rate"].iloc[0] == pytest.approx(flops / (roof / 3))
    sentence = roof_sentence(flagged)
    assert sentence is not None and "faster than the roofline allows" in sentence
    assert "the count, the profile or the timing is wrong" in sentence.lower()
    # Within the margin for timing noise: not flagged.
    inside = pd.DataFrame({"name": ["0"], "measured_s": [roof / (1 + ROOF_MARGIN / 2)]})
    assert faster_than_roof(prediction, inside).empty and roof_sentence(faster_than_roof(prediction, inside)) is None


def test_the_report_carries_the_roof_flag(tmp_path):
    from roofline.report import write_report

    prediction = predict(_linear(), "t4")
    roof = float(prediction.layers.set_index("name").loc["0", "roofline_s"])

    class Fake:
        layers = pd.DataFrame({"name": ["0"], "measured_s": [roof / 4], "iqr_s": [0.0], "repeats": [5],
                               "noisy": [False]})
        end_to_end = pd.DataFrame({"batch": [64], "latency_s": [roof / 4], "iqr_s": [0.0],
                                   "throughput_samples_per_s": [64 / (roof / 4)]})
        metadata: ClassVar[dict[str, object]] = {"notes": []}

    out = write_report(prediction, tmp_path / "r", measurement=Fake())
    assert "faster than the roofline allows" in (out / "report.md").read_text()
    assert "faster_than_roof" in (out / "layers.csv").read_text().splitlines()[0]

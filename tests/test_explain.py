"""Explain, sweep and compare: numbers against hand-computed values and against predict itself."""
import math

import pytest
import torch
from torch import nn

import roofline
from roofline import explain
from roofline.cli import main
from roofline.hardware.profile import HardwareProfile, MemoryLevel
from roofline.predict import predict


def profile(name="synthetic", peak=1e12, bandwidth=1e11, overhead=1e-9, peaks=None):
    return HardwareProfile(
        name=name, kind="cpu", vendor="test", source="datasheet", reference="written in the test",
        peak_flops_per_s=peaks or {"fp32": peak, "fp16": 2 * peak},
        memory_levels=(MemoryLevel("DRAM", 64e9, bandwidth),), overhead_s=overhead,
    )


def test_sweep_columns_match_hand_computed_values():
    channels, size = 64, 16
    table = explain.sweep_conv(channels, (size, size), [1, 4, 64], profile(), progress=False).set_index("groups")
    for groups in (1, 4, 64):
        macs = channels * size * size * (channels // groups) * 3 * 3
        params = channels * (channels // groups) * 3 * 3
        moved = 4 * (channels * size * size + params + channels * size * size)
        assert table.loc[groups, "macs"] == macs
        assert table.loc[groups, "params"] == params
        assert table.loc[groups, "bytes"] == moved
        assert table.loc[groups, "arithmetic_intensity"] == pytest.approx(2 * macs / moved)
        assert table.loc[groups, "predicted_s"] == pytest.approx(max(2 * macs / 1e12, moved / 1e11) + 1e-9)
    assert table.loc[64, "flops_ratio"] == 64
    assert table.loc[1, "bound"] == "compute" and table.loc[64, "bound"] == "memory:DRAM"
    # FLOPs fall 64x, predicted time much less: the lesson of the sweep.
    assert table.loc[64, "predicted_speedup"] < 64 / 4
    text = explain.explain_sweep(table.reset_index())
    assert "MACs fall 64x" in text and "memory:DRAM" in text


def test_explanation_names_memory_bound_depthwise_and_compute_bound_gemm():
    with torch.device("meta"):
        depthwise = nn.Conv2d(256, 256, 3, padding=1, groups=256, bias=False)
        gemm = nn.Linear(4096, 4096)
    hw = profile()
    conv = roofline.analyze(depthwise, inputs=[torch.randn(1, 256, 56, 56, device="meta")])
    text = explain.explain(conv, "(model)", hw).text()
    assert "Memory-bound on DRAM" in text and "cutting bytes would" in text
    dense = roofline.analyze(gemm, inputs=[torch.randn(2048, 4096, device="meta")])
    diagnosis = explain.explain(dense, "(model)", hw)
    assert diagnosis.terms["bound"] == "compute"
    assert "Compute-bound" in diagnosis.text()
    what_if = diagnosis.what_if.set_index("change")
    # fp16 doubles the peak on this profile: the compute-bound GEMM gets 2x faster.
    assert what_if.loc["precision fp16", "speedup"] == pytest.approx(2.0, rel=0.01)


def test_explain_with_measurement_reports_fraction_of_roofline():
    with torch.device("meta"):
        gemm = nn.Linear(1024, 1024)
    analysis = roofline.analyze(gemm, inputs=[torch.randn(512, 1024, device="meta")])
    hw = profile()
    predicted = explain.explain(analysis, "(model)", hw).terms["predicted_s"]
    diagnosis = explain.explain(analysis, "(model)", hw, measured_s=4 * predicted)
    assert diagnosis.facts["fraction_of_roofline"] == pytest.approx(0.25, rel=0.01)


def test_unknown_layer_suggests_names():
    analysis = roofline.analyze("zoo:convnet")
    with pytest.raises(roofline.RooflineError, match=r"did you mean: features\.0\."):
        explain.explain(analysis, "features.0.O", profile())


def test_compare_is_consistent_with_predict_on_each_device():
    analysis = roofline.analyze("zoo:convnet")
    devices = [profile("slow", peak=1e11, bandwidth=1e10), profile("fast", peak=1e13, bandwidth=1e12),
               profile("no-fp16", peaks={"fp32": 5e11})]
    table = explain.compare(analysis, devices, ["fp32", "fp16"])
    first = predict(analysis, devices[0]).totals["throughput_samples_per_s"]
    for row in table.itertuples(index=False):
        device = next(d for d in devices if d.name == row.device)
        if row.precision not in device.peak_flops_per_s:
            assert row.note == "no fp16 peak on this device" and math.isnan(row.predicted_latency_s)
            continue
        expected = predict(analysis, device, precision=row.precision).totals
        assert row.predicted_latency_s == pytest.approx(expected["predicted_latency_s"])
        assert row.speedup == pytest.approx(expected["throughput_samples_per_s"] / first)


def test_compare_batches_scale_throughput():
    analysis = roofline.analyze("zoo:mlp")
    table = explain.compare(analysis, [profile()], ["fp32"], batches=[1, 64])
    # At batch 1 the MLP streams its weights for one sample; at 64 it reuses them: > 10x throughput.
    assert table["throughput_samples_per_s"].iloc[1] > 10 * table["throughput_samples_per_s"].iloc[0]


def test_cli_explain_and_sweep(capsys):
    assert main(["explain", "zoo:mobile-block", "--hw", "raspberry-pi-5", "--layer", "blocks.0.depthwise.0"]) == 0
    out = capsys.readouterr().out
    assert "Memory-bound" in out and "what if" in out
    assert main(["sweep", "conv", "--channels", "32", "--size", "28x28", "--groups", "1,8,32", "--hw", "t4"]) == 0
    out = capsys.readouterr().out
    assert "MACs fall 32x" in out
    assert main(["sweep", "conv", "--channels", "32", "--groups", "1,3", "--hw", "t4"]) == 2
    assert "do not divide 32 channels" in capsys.readouterr().err
    assert main(["compare", "zoo:convnet", "--hw", "t4,h100-sxm", "--precision", "fp32,fp16,int8"]) == 0
    assert "NVIDIA H100" in capsys.readouterr().out


def test_sweep_out_writes_its_table_and_a_chart_a_person_can_open(tmp_path):
    from roofline import plots

    out = tmp_path / "sweep"
    assert main(["sweep", "conv", "--channels", "32", "--size", "14x14", "--groups", "1,8,32", "--hw", "t4",
                 "--out", str(out)]) == 0
    assert {p.name for p in out.iterdir()} >= {"sweep.csv", "sweep.png", "sweep.svg"}
    assert (out / "sweep.png").read_bytes()[:4] == b"\x89PNG"
    table = explain.sweep_conv(32, (14, 14), [1, 8, 32], profile(), progress=False)
    chart = plots.sweep_chart(table, title="t")
    ax = chart.figure.axes[0]
    from matplotlib.lines import Line2D

    flops_line = plots.artists(ax, "sweep:flops", Line2D)[0]
    # The dashed line is the first time divided by the FLOPs ratio: 32x lower at groups=32.
    assert flops_line.get_ydata()[-1] == pytest.approx(table["predicted_s"].iloc[0] / 32)

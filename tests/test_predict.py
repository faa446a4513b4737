"""Prediction of hand-built layers against times computed by hand on a synthetic profile."""
import dataclasses
import math

import pytest
import torch
from torch import nn

import roofline
from roofline.errors import RooflineError
from roofline.hardware.profile import HardwareProfile, MemoryLevel
from roofline.hardware.render import render_profile
from roofline.predict import predict, render

PEAK = 1e12  # FLOP/s
L2_BW, L2_SIZE = 1e12, 1_048_576  # 1 TB/s, 1 MiB
DRAM_BW = 1e11  # 100 GB/s
OVERHEAD = 1e-7


def synthetic(kind="cpu", efficiency=None):
    return HardwareProfile(
        name="synthetic", kind=kind, vendor="test", source="datasheet", reference="written in the test",
        peak_flops_per_s={"fp32": PEAK, "fp16": 2 * PEAK},
        memory_levels=(MemoryLevel("L2", L2_SIZE, L2_BW), MemoryLevel("DRAM", 64e9, DRAM_BW)),
        overhead_s=OVERHEAD, efficiency=efficiency or {},
    )


def layer_row(module, x, profile, **kwargs):
    analysis = roofline.analyze(module.to("meta").eval(), inputs=[x], warn_unsupported=False)
    layers = predict(analysis, profile, **kwargs).layers
    return layers[layers["ops"] > 0].iloc[0]


def test_compute_bound_gemm():
    batch, width = 512, 1024
    row = layer_row(nn.Linear(width, width), torch.randn(batch, width, device="meta"), synthetic())
    flops = 2 * batch * width * width + batch * width  # MACs x 2 + bias adds
    moved = 4 * (batch * width + width * width + width + batch * width)  # x, W, b read; y written
    assert moved > L2_SIZE  # streams from DRAM
    assert row["compute_s"] == pytest.approx(flops / PEAK)
    assert row["memory_s"] == pytest.approx(moved / DRAM_BW)
    assert flops / PEAK > moved / DRAM_BW
    assert row["predicted_s"] == pytest.approx(flops / PEAK + OVERHEAD)
    assert row["bound"] == "compute"
    assert row["ridge_point"] == pytest.approx(PEAK / DRAM_BW)


def test_memory_bound_elementwise():
    n = 4_000_000
    row = layer_row(nn.ReLU(), torch.randn(n, device="meta"), synthetic())
    assert row["memory_s"] == pytest.approx(8 * n / DRAM_BW)  # 4 B read + 4 B written per element
    assert row["predicted_s"] == pytest.approx(8 * n / DRAM_BW + OVERHEAD)
    assert row["bound"] == "memory:DRAM"


def test_cache_resident_layer_uses_cache_bandwidth():
    n = 65_536  # 256 KiB in + 256 KiB out: fits the 1 MiB L2
    row = layer_row(nn.ReLU(), torch.randn(n, device="meta"), synthetic())
    assert row["memory_level"] == "L2"
    assert row["memory_s"] == pytest.approx(8 * n / L2_BW)
    assert row["bound"] == "memory:L2"


def test_overhead_dominated_tiny_op():
    row = layer_row(nn.ReLU(), torch.randn(10, device="meta"), synthetic())
    assert row["predicted_s"] == pytest.approx(80 / L2_BW + OVERHEAD)
    assert row["bound"] == "overhead"


def test_gpu_launches_overlap_with_execution():
    n = 4_000_000
    row = layer_row(nn.ReLU(), torch.randn(n, device="meta"), synthetic(kind="gpu"))
    assert row["predicted_s"] == pytest.approx(max(8 * n / DRAM_BW, OVERHEAD))


def test_calibrated_divides_by_the_class_efficiency():
    batch, width = 512, 1024
    x = torch.randn(batch, width, device="meta")
    plain = layer_row(nn.Linear(width, width), x, synthetic(efficiency={"gemm": 0.5}))
    calibrated = layer_row(nn.Linear(width, width), x, synthetic(efficiency={"gemm": 0.5}), calibrated=True)
    assert calibrated["predicted_s"] - OVERHEAD == pytest.approx(2 * (plain["predicted_s"] - OVERHEAD))
    assert calibrated["bound"] == plain["bound"]  # still a roofline: the bound does not move


def test_calibrated_uses_the_factor_of_the_level_the_op_streams_from():
    # The same GEMM class, once cache-resident and once streaming its weights from DRAM.
    efficiency = {"gemm": 0.8, "gemm@DRAM": 0.4}
    small = layer_row(nn.Linear(64, 64), torch.randn(8, 64, device="meta"), synthetic(efficiency=efficiency), calibrated=True)
    large = layer_row(nn.Linear(1024, 1024), torch.randn(512, 1024, device="meta"), synthetic(efficiency=efficiency),
                      calibrated=True)
    assert (small["memory_level"], large["memory_level"]) == ("L2", "DRAM")
    for row, factor in ((small, 0.8), (large, 0.4)):
        roof = max(row["compute_s"], row["memory_s"])
        assert row["predicted_s"] - OVERHEAD == pytest.approx(roof / factor)


def test_cpu_layers_pay_one_module_call_each():

    model = nn.Sequential(nn.Linear(64, 64), nn.Dropout(0.1), nn.ReLU()).to("meta").eval()
    analysis = roofline.analyze(model, inputs=[torch.randn(8, 64, device="meta")], warn_unsupported=False)
    plain = predict(analysis, synthetic()).layers.set_index("name")
    called = predict(analysis, dataclasses.replace(synthetic(), module_call_s=2e-6)).layers.set_index("name")
    assert called.loc["1", "predicted_s"] == pytest.approx(2e-6)  # Dropout in eval runs no op, yet costs a call
    assert (called["predicted_s"] - plain["predicted_s"]).loc[["0", "1", "2"]].tolist() == pytest.approx([2e-6] * 3)
    assert called.loc["1", "bound"] == "overhead"
    # A GPU's host runs ahead of the device: the module call is not added there.
    gpu = predict(analysis, dataclasses.replace(synthetic("gpu"), module_call_s=2e-6)).layers.set_index("name")
    assert gpu.loc["1", "predicted_s"] == 0


def test_precision_selects_peak_and_bytes():
    batch, width = 512, 1024
    row = layer_row(nn.Linear(width, width), torch.randn(batch, width, device="meta"), synthetic(), precision="fp16")
    assert row["compute_s"] == pytest.approx((2 * batch * width * width + batch * width) / (2 * PEAK))


def test_predicted_never_below_either_bound_and_totals():
    analysis = roofline.analyze("zoo:mobile-block")
    prediction = predict(analysis, synthetic())
    layers = prediction.layers
    assert (layers["predicted_s"] >= layers["compute_s"]).all()
    assert (layers["predicted_s"] >= layers["memory_s"]).all()
    totals = prediction.totals
    assert totals["predicted_latency_s"] == pytest.approx(layers["predicted_s"].sum())
    assert totals["throughput_samples_per_s"] == pytest.approx(1 / totals["predicted_latency_s"])
    assert list(layers["name"]) == list(analysis.layers["name"])  # rows join on name


def test_missing_peak_names_the_field():
    analysis = roofline.analyze("zoo:mlp")
    with pytest.raises(RooflineError, match=r"peak_flops_per_s.int8.*this profile has: fp32, fp16"):
        predict(analysis, synthetic(), precision="int8")


def test_uncalibrated_profile_refuses_calibrated_mode():
    with pytest.raises(RooflineError, match="no efficiency factors"):
        _ = predict(roofline.analyze("zoo:mlp"), synthetic(), calibrated=True).layers


def elementwise_line(**pass_model):
    """A DRAM-only CPU profile whose elementwise ops reach half their roof and pay 30 us per call."""
    return HardwareProfile(
        name="synthetic", kind="cpu", vendor="test", source="measured", reference="written in the test",
        peak_flops_per_s={"fp32": PEAK}, memory_levels=(MemoryLevel("DRAM", 64e9, DRAM_BW),), overhead_s=OVERHEAD,
        efficiency={"elementwise": 0.5}, fixed_overhead_s={"elementwise": 3e-5}, **pass_model,
    )


def test_calibrated_uses_the_class_fixed_cost_instead_of_the_generic_overhead():
    n = 4_000_000
    row = layer_row(nn.ReLU(), torch.randn(n, device="meta"), elementwise_line(), calibrated=True)
    assert row["predicted_s"] == pytest.approx(3e-5 + (8 * n / DRAM_BW) / 0.5)


def test_in_pass_time_is_the_pass_model_and_sets_the_latency():
    n = 4_000_000
    hw = elementwise_line(pass_call_s=8e-5)
    analysis = roofline.analyze(nn.Sequential(nn.ReLU(), nn.ReLU()).to("meta"), inputs=[torch.randn(n, device="meta")])
    calibrated = predict(analysis, hw, calibrated=True)
    roof = 8 * n / DRAM_BW  # read n floats, write n floats
    fresh = 4 * n / DRAM_BW  # each writes n floats to a buffer nothing touched lately
    layers = calibrated.layers[calibrated.layers["ops"] > 0]
    assert list(layers["predicted_s"]) == pytest.approx([3e-5 + roof / 0.5] * 2)  # alone, as measure times it
    assert list(layers["pass_fresh_s"]) == pytest.approx([fresh] * 2)
    assert list(layers["in_pass_s"]) == pytest.approx([3e-5 + roof / 0.5 + fresh + 8e-5] * 2)
    totals = calibrated.totals
    assert totals["predicted_latency_s"] == pytest.approx(2 * (3e-5 + roof / 0.5 + fresh + 8e-5))
    assert totals["sum_of_layers_s"] == pytest.approx(2 * (3e-5 + roof / 0.5))
    assert totals["throughput_samples_per_s"] == pytest.approx(n / totals["predicted_latency_s"])
    # In place, a ReLU writes into the buffer the op before just wrote: no fresh buffer, only the cold call.
    in_place = roofline.analyze(nn.Sequential(nn.ReLU(inplace=True)).to("meta"), inputs=[torch.randn(n, device="meta")])
    row = predict(in_place, hw, calibrated=True).layers.set_index("name").loc["0"]
    assert row["pass_fresh_s"] == 0 and row["in_pass_s"] == pytest.approx(row["predicted_s"] + 8e-5)
    plain = predict(analysis, hw).layers  # the plain roofline has no pass model: both times agree
    assert list(plain["in_pass_s"]) == list(plain["predicted_s"])
    without = predict(analysis, elementwise_line(), calibrated=True).layers  # nor a profile measured without one
    assert list(without["in_pass_s"]) == list(without["predicted_s"])
    # The table shows the in-pass column only where it differs; the summary names the layers alone.
    assert "in_pass_s" in render(calibrated, "csv").splitlines()[0]
    assert "in_pass_s" in render(predict(analysis, hw), "csv").splitlines()[0]  # CSV carries every term, always
    assert "in_pass_s" in render(calibrated).splitlines()[0]  # the table shows it only where it differs
    assert "in_pass_s" not in render(predict(analysis, hw)).splitlines()[0]
    assert "layers alone:" in calibrated.summary()
    assert "in a pass, per op call: 80 us and its cold data" in render_profile(hw, "table")
    assert "in a pass" not in render_profile(elementwise_line(), "table")


def test_a_weight_that_fits_a_cache_alone_comes_back_from_dram_in_a_pass():
    """A weight's reuse distance in a pass is the whole pass: 512 KiB of weights fits a 1 MiB L2 alone, but
    the pass (1.5 MiB of weights) does not, so in the pass they stream from DRAM; the second layer's own
    working set is already past L2 alone and pays nothing more."""
    l2_bw, dram_bw = 4e11, 1e11
    hw = HardwareProfile(
        name="two levels", kind="cpu", vendor="test", source="measured", reference="written in the test",
        peak_flops_per_s={"fp32": PEAK}, memory_levels=(MemoryLevel("L2", 2**20, l2_bw), MemoryLevel("DRAM", 64e9, dram_bw)),
        overhead_s=OVERHEAD, efficiency={"gemm": 0.5}, fixed_overhead_s={"gemm": 1e-6}, pass_call_s=1e-6)
    model = nn.Sequential(nn.Linear(256, 512, bias=False), nn.Linear(512, 512, bias=False)).to("meta")
    layers = predict(roofline.analyze(model, inputs=[torch.randn(1, 256, device="meta")]), hw, calibrated=True).layers
    rows = layers.set_index("name")
    assert list(rows.loc[["0", "1"], "memory_level"]) == ["L2", "DRAM"]
    assert rows.loc["0", "pass_cold_weight_s"] == pytest.approx(256 * 512 * 4 * (1 / dram_bw - 1 / l2_bw))
    assert rows.loc["1", "pass_cold_weight_s"] == 0
    assert rows.loc["0", "pass_fresh_s"] == pytest.approx(512 * 4 / dram_bw)

def test_fit_line_recovers_fixed_cost_and_efficiency():
    from roofline.calibrate import fit_line

    roofline_s = [1e-6, 1e-4, 1e-2]
    measured = [5e-5 + r / 0.4 for r in roofline_s]
    fixed, efficiency = fit_line(roofline_s, measured)
    assert fixed == pytest.approx(5e-5, rel=1e-6) and efficiency == pytest.approx(0.4, rel=1e-6)
    # A set with no sensible intercept falls back to a proportional fit.
    fixed, efficiency = fit_line([1e-3, 2e-3], [1e-3, 4e-3])
    assert fixed == pytest.approx(1e-9) and 0 < efficiency <= 1.5


def test_fit_class_gives_streaming_sizes_their_own_factor():
    from roofline.calibrate import fit_class

    fixed, cached, streamed = 2e-5, 0.8, 0.5
    samples = [(r, fixed + r / cached, "L3", f"cached {r}") for r in (1e-5, 1e-3, 5e-3)]
    samples += [(r, fixed + r / streamed, "DRAM", f"streamed {r}") for r in (2e-2, 4e-2)]
    factors, fitted_fixed = fit_class(samples, "DRAM")
    assert fitted_fixed == pytest.approx(fixed, rel=1e-6)
    assert factors == {None: pytest.approx(cached, rel=1e-6), "DRAM": pytest.approx(streamed, rel=1e-6)}
    # One in-cache size cannot carry a line of its own: one line through all, no level factor.
    factors, _ = fit_class(samples[2:], "DRAM")
    assert set(factors) == {None}


def test_a_profile_whose_dram_bandwidth_is_unknown_is_refused_for_prediction():
    """Issue 14: a 1.28 MB op in a 1 MiB L2 was costed at L2 and its figure reported as DRAM's."""

    # A detected profile may lack it (unknown until measured): it loads, and prediction refuses it.
    hw = dataclasses.replace(synthetic(), source="detected",
                             memory_levels=(MemoryLevel("L2", L2_SIZE, L2_BW), MemoryLevel("DRAM", 64e9, None)))
    analysis = roofline.analyze(nn.Linear(1024, 1024).to("meta"), inputs=[torch.randn(512, 1024, device="meta")])
    with pytest.raises(RooflineError, match=r"the last memory level \(DRAM\) needs a bandwidth for prediction"):
        predict(analysis, hw)
    # A cache level with no bandwidth is skipped: its ops stream from the next level that has one.
    hw = dataclasses.replace(synthetic(), memory_levels=(MemoryLevel("L2", L2_SIZE, None), MemoryLevel("DRAM", 64e9, DRAM_BW)))
    assert set(predict(analysis, hw).ops["memory_level"]) == {"DRAM"}


def test_calibrated_bf16_uses_the_lines_fitted_on_bf16_ops():
    """Issue 16: fp32 factors reused for bf16 made resnet18's fp32/bf16 ratio 92% too high on an AMX Xeon."""

    efficiency = {"gemm": 0.8, "gemm@DRAM": 0.5, "conv": 0.6, "bf16:gemm": 0.4}
    fixed = {"gemm": 1e-5, "conv": 2e-5, "bf16:gemm": 3e-5}
    hw = dataclasses.replace(synthetic(efficiency=efficiency), fixed_overhead_s=fixed,
                             peak_flops_per_s={"fp32": PEAK, "bf16": 2 * PEAK})
    bf16 = hw.for_compute_type("bf16")
    # bf16 has a gemm line of its own: all of gemm's keys come from it (fp32's gemm@DRAM is not mixed in).
    assert dict(bf16.efficiency) == {"gemm": 0.4, "conv": 0.6} and dict(bf16.fixed_overhead_s) == {"gemm": 3e-5, "conv": 2e-5}
    assert dict(hw.for_compute_type("fp32").efficiency) == {"gemm": 0.8, "gemm@DRAM": 0.5, "conv": 0.6}
    batch, width = 64, 256  # in L2 in both precisions
    analysis = roofline.analyze(nn.Linear(width, width, bias=False).to("meta"), inputs=[torch.randn(batch, width, device="meta")])
    flops = 2 * batch * width * width  # 8,388,608
    for precision, factor, fixed_s, peak in (("fp32", 0.8, 1e-5, PEAK), ("bf16", 0.4, 3e-5, 2 * PEAK)):
        row = predict(analysis, hw, precision=precision, calibrated=True).layers.iloc[0]
        assert row["compute_s"] == pytest.approx(flops / peak)
        assert row["compute_s"] > row["memory_s"]  # compute-bound: bytes / 1 TB/s is under 1 us
        assert row["predicted_s"] == pytest.approx(fixed_s + flops / peak / factor + row["module_call_s"])
    with pytest.raises(RooflineError, match=r"efficiency\.bf17:gemm.*unknown compute type 'bf17'"):
        dataclasses.replace(hw, efficiency={"bf17:gemm": 0.5})


def test_calibration_fits_each_fast_compute_type_on_its_own_ops():

    from roofline.calibrate import calibrated_types, fit_efficiency

    hw = dataclasses.replace(synthetic(), peak_flops_per_s={"fp32": PEAK, "bf16": 2 * PEAK, "fp16": 0.01 * PEAK})
    assert calibrated_types(hw) == ["fp32", "bf16"]  # fp16 at 1% of fp32: a slow path, not calibrated
    # Three bf16 GEMMs in L2, compute-bound at the bf16 peak: roofline = 2 m k n / 2e12 s; timed as 1e-5 + roofline / 0.5.
    ops = [("gemm", f"linear {m}", torch.nn.functional.linear,
            [torch.randn(m, 256, dtype=torch.bfloat16), torch.randn(256, 256, dtype=torch.bfloat16)]) for m in (64, 128, 256)]
    medians = [1e-5 + 2 * m * 256 * 256 / (2 * PEAK) / 0.5 for m in (64, 128, 256)]
    efficiency, fixed, metadata = fit_efficiency(hw, ops, medians, compute_type="bf16")
    assert efficiency == {"bf16:gemm": pytest.approx(0.5, rel=1e-6)} and fixed == {"bf16:gemm": pytest.approx(1e-5, rel=1e-6)}
    calibrated = dataclasses.replace(hw, efficiency={"gemm": 0.9, **efficiency}, fixed_overhead_s={"gemm": 1e-6, **fixed},
                                     metadata=metadata)
    # The evidence follows the type: bf16's samples back its own line, with residuals of 0 on a line that fits exactly.
    samples = calibrated.for_compute_type("bf16").calibration_samples("gemm")
    # (kept to 3 significant digits in metadata)
    assert [s.roofline_s for s in samples] == pytest.approx([2 * m * 256 * 256 / (2 * PEAK) for m in (64, 128, 256)], rel=2e-3)
    analysis = roofline.analyze(nn.Linear(256, 256).to("meta"), inputs=[torch.randn(8, 256, device="meta")])
    prediction = predict(analysis, calibrated, precision="bf16", calibrated=True)
    assert prediction.line_residuals("gemm") == pytest.approx([0.0, 0.0, 0.0], abs=5e-3)


def test_an_op_beyond_the_levels_its_class_was_fitted_at_keeps_the_line_s_time_there():
    """Issue 16: max-pools fitted in cache at 0.7% of their roof made one streaming from DRAM 5x too slow."""

    from roofline.hardware.profile import CalibrationSample

    samples = "; ".join(str(CalibrationSample(f"pool {i}", r, 1e-6 + r / 0.01, "L2")) for i, r in enumerate((1e-8, 1e-7)))
    hw = dataclasses.replace(synthetic(efficiency={"pool": 0.01}), fixed_overhead_s={"pool": 1e-6},
                             metadata={"efficiency.pool": samples})
    pool, x = nn.MaxPool2d(3, 2, 1), torch.randn(1, 64, 224, 224, device="meta")
    row = layer_row(pool, x, hw, calibrated=True)
    # 4 B x 64 x 224 x 224 read, 4 B x 64 x 112 x 112 written, and as many int64 indices (aten's max_pool2d_with_indices):
    moved = 4 * 64 * 224 * 224 + (4 + 8) * 64 * 112 * 112  # 22,478,848 B: past the 1 MiB L2
    assert row["memory_level"] == "DRAM" and row["bytes"] == moved and row["memory_s"] > row["compute_s"]
    # The line's time at L2, the deepest level it was fitted at: moved / 1e12 / 0.01 = 2.248 ms, longer than the
    # DRAM roof (moved / 1e11 = 0.225 ms), so it stands; the class factor on the DRAM roof would give 22.48 ms.
    assert row["predicted_s"] - row["module_call_s"] == pytest.approx(1e-6 + moved / L2_BW / 0.01)
    # A class with a factor of its own at DRAM, or with no recorded samples, keeps its factor on the DRAM roof.
    for profile in (dataclasses.replace(hw, efficiency={"pool": 0.01, "pool@DRAM": 0.05}),
                    dataclasses.replace(hw, metadata={})):
        factor = profile.efficiency_for("pool", "DRAM")
        assert factor is not None
        row = layer_row(pool, x, profile, calibrated=True)
        assert row["predicted_s"] - row["module_call_s"] == pytest.approx(1e-6 + moved / DRAM_BW / factor)


def _conv_profile(rates=None):
    """A CPU profile with a dense conv line (80%, 5 us a call), a depthwise line (20%, 40 us) and, if given, the
    rates of grouped convolutions against dense by channels per group."""
    return HardwareProfile(
        name="synthetic", kind="cpu", vendor="test", source="measured", reference="written in the test",
        peak_flops_per_s={"fp32": PEAK}, memory_levels=(MemoryLevel("DRAM", 64e9, DRAM_BW),), overhead_s=OVERHEAD,
        efficiency={"conv": 0.8, "grouped_conv": 0.2}, fixed_overhead_s={"conv": 5e-6, "grouped_conv": 4e-5},
        conv_group_rate=rates,
    )


def test_a_grouped_conv_runs_on_the_dense_line_at_its_measured_rate():
    """Issue 16: 32 groups of 4 channels ran at about a quarter of dense's rate per FLOP. With measured rates, a
    grouped conv is costed on the conv line (its factor and fixed cost) times the rate at its channels per group,
    interpolated in log2 of the count; depthwise keeps its own line; without rates nothing changes."""
    rates = {2: 0.05, 4: 0.25, 16: 0.75, 256: 1.0}
    x = torch.randn(1, 128, 28, 28, device="meta")
    for groups, count, rate in ((32, 4, 0.25), (16, 8, 0.5), (64, 2, 0.05), (4, 32, 0.75 + 0.25 / 4)):
        conv = nn.Conv2d(128, 128, 3, padding=1, groups=groups, bias=False)
        row = layer_row(conv, x, _conv_profile(rates), calibrated=True)
        roof = max(row["compute_s"], row["memory_s"])
        assert row["predicted_s"] == pytest.approx(5e-6 + roof / (0.8 * rate)), (groups, count)
        old = layer_row(conv, x, _conv_profile(), calibrated=True)  # no rates: its class's line, as before
        line = (0.2, 4e-5) if count < 16 else (0.8, 5e-6)
        assert old["predicted_s"] == pytest.approx(line[1] + roof / line[0]), (groups, count)
    depthwise = layer_row(nn.Conv2d(128, 128, 3, padding=1, groups=128, bias=False), x, _conv_profile(rates),
                          calibrated=True)
    assert depthwise["predicted_s"] == pytest.approx(4e-5 + max(depthwise["compute_s"], depthwise["memory_s"]) / 0.2)
    dense = layer_row(nn.Conv2d(128, 128, 3, padding=1, bias=False), x, _conv_profile(rates), calibrated=True)
    assert dense["predicted_s"] == pytest.approx(5e-6 + max(dense["compute_s"], dense["memory_s"]) / 0.8)
    plain = layer_row(nn.Conv2d(128, 128, 3, padding=1, groups=32, bias=False), x, _conv_profile(rates))
    assert plain["predicted_s"] == pytest.approx(max(plain["compute_s"], plain["memory_s"]) + OVERHEAD)


def test_the_group_rate_is_measured_as_dense_time_per_flop_over_grouped(monkeypatch: pytest.MonkeyPatch) -> None:
    """measure_conv_group_rate turns interleaved timings into rates: a grouped conv with 1/k of dense's FLOPs
    that takes t has rate (dense time / k) / t, the geometric mean over the sizes timed; one timed faster per
    FLOP than dense is held at 1."""
    from roofline import calibrate
    from roofline.hardware.microbench import FULL, _Progress
    from roofline.timing import Measurement

    # Per size, the true rates (the second size's 2.25x the first's at 2, 4 and 8 channels per group).
    true_rate = [{2: 0.04, 4: 0.2, 8: 0.4, 16: 0.6, 32: 1.2, 64: 0.45},
                 {2: 0.09, 4: 0.45, 8: 0.9, 16: 0.6, 32: 1.6, 64: 0.8}]
    dense_s = 2e-3

    def fake(fns, rounds, **options):
        times = []
        for (channels, _), rates in zip(calibrate.GROUP_RATE_SHAPES, true_rate, strict=True):
            times += [dense_s] + [dense_s * count / channels / rates[count] for count in calibrate.GROUP_RATE_COUNTS]
        assert len(times) == len(fns)
        return [Measurement((t,) * 5, 1, "cpu", 1) for t in times]

    monkeypatch.setattr(calibrate, "time_interleaved", fake)
    rates, note, metadata = calibrate.measure_conv_group_rate("cpu", FULL, _Progress(0, False, ""))
    expected = {2: 0.06, 4: 0.3, 8: 0.6, 16: 0.6, 32: 1.0, 64: 0.6, 384: 1.0}
    assert rates == pytest.approx(expected)
    assert "384 channels at 14x14 and 192 channels at 28x28" in note
    # Each size lies half its log-ratio to the other from the mean: ln(2.25)/2 at 2, 4 and 8, ln(0.8/0.45)/2 at 64,
    # ln(1.6/1.2)/2 at 32 (before the hold at 1) and 0 at 16.
    half = [math.log(2.25) / 2] * 3 + [math.log(0.8 / 0.45) / 2, math.log(1.6 / 1.2) / 2, 0.0]
    assert float(metadata[calibrate.GROUP_RATE_SIGMA]) == pytest.approx(math.sqrt(sum(h * h for h in half) / 6), rel=1e-3)


def test_a_grouped_conv_s_interval_carries_the_rate_s_spread_over_sizes():
    """The rate was measured at two sizes, not the layer's: their spread (sigma of log rate) adds in quadrature to
    the conv line's own, so the interval of a grouped conv is wider than a dense one's by that much."""
    from roofline.hardware.profile import CalibrationSample

    samples = [CalibrationSample(f"conv {i}", r, t, "DRAM") for i, (r, t) in enumerate(((1e-4, 1.3e-4), (1e-3, 1.2e-3)))]
    profile = dataclasses.replace(_conv_profile({4: 0.25, 256: 1.0}), metadata={
        "efficiency.conv": "; ".join(map(str, samples)), "conv_group_rate_sigma": "0.3"})
    x = torch.randn(1, 128, 28, 28, device="meta")
    rows = {groups: predict(roofline.analyze(nn.Conv2d(128, 128, 3, padding=1, groups=groups, bias=False).to("meta"),
                                             inputs=[x], warn_unsupported=False), profile, calibrated=True).ops.iloc[0]
            for groups in (1, 32)}
    assert rows[1]["sigma"] > 0
    assert rows[32]["sigma"] == pytest.approx(math.hypot(rows[1]["sigma"], 0.3))

"""The one model of time (issue 13): terms that add up, one time per layer everywhere, fusion never slower.

Property tests over random layers, profiles (GPU and CPU, datasheet and measured, plain and calibrated),
precisions and batch sizes; plus the fixed cases the issue names, checked against hand-computed values.
"""
from __future__ import annotations

import dataclasses

import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from torch import nn

import roofline
from roofline import explain
from roofline.hardware import load_profile
from roofline.hardware.profile import EFFICIENCY_CLASSES, HardwareProfile, MemoryLevel
from roofline.opclass import writes_in_place
from roofline.predict import LATENCY_TERMS, PASS_TERMS, Prediction, overhead_exit_batch, predict

RELATIVE = 1e-9


def _measured_cpu(calibrated_by: dict[str, float], fixed_s: dict[str, float], pass_call_s: float) -> HardwareProfile:
    """A measured CPU profile with efficiency lines and a pass model as `roofline hw measure` writes them."""
    return HardwareProfile(
        name="measured test cpu", kind="cpu", vendor="test", source="measured", reference="written in the test",
        peak_flops_per_s={"fp32": 3e11, "bf16": 1.2e12, "fp16": 1e11},
        memory_levels=(MemoryLevel("L1", 48e3, 4e11), MemoryLevel("L2", 2e6, 2e11), MemoryLevel("L3", 3e7, 8e10),
                       MemoryLevel("DRAM", 2.4e10, 1.5e10)),
        overhead_s=2e-6, module_call_s=8e-7,
        efficiency=calibrated_by, fixed_overhead_s=fixed_s,
        pass_call_s=pass_call_s,
        metadata={"date": "2026-12-01T00:00:00", "machine": "test"},
    )


def _measured_gpu(calibrated_by: dict[str, float], fixed_s: dict[str, float]) -> HardwareProfile:
    base = load_profile("a100-80gb-sxm")
    return dataclasses.replace(base, name="measured test gpu", source="measured", efficiency=calibrated_by,
                               fixed_overhead_s=fixed_s)


@st.composite
def layers(draw: st.DrawFn) -> tuple[nn.Module, torch.Tensor]:
    """A small random model on meta: a conv (any grouping), then pointwise layers, or a linear stack."""
    batch = draw(st.integers(1, 4))
    if draw(st.booleans()):
        channels = draw(st.sampled_from([4, 8, 16, 32]))
        groups = draw(st.sampled_from([g for g in (1, 2, 4, channels) if channels % g == 0]))
        kernel = draw(st.sampled_from([1, 3, 5]))
        size = draw(st.integers(4, 40))
        tail: list[str] = draw(st.lists(st.sampled_from(["bn", "relu", "relu6", "gelu"]), max_size=3)).copy()
        pool = [nn.MaxPool2d(2)] if draw(st.booleans()) else []
        with torch.device("meta"):
            made = [{"bn": lambda: nn.BatchNorm2d(channels), "relu": nn.ReLU, "relu6": lambda: nn.ReLU6(inplace=True),
                     "gelu": nn.GELU}[name]() for name in tail]
            model = nn.Sequential(nn.Conv2d(channels, channels, kernel, padding=kernel // 2, groups=groups), *made, *pool)
            return model.eval(), torch.randn(batch, channels, size, size)
    width = draw(st.sampled_from([16, 64, 256, 1024]))
    depth = draw(st.integers(1, 3))
    with torch.device("meta"):
        modules: list[nn.Module] = []
        for _ in range(depth):
            modules += [nn.Linear(width, width), nn.ReLU()]
        return nn.Sequential(*modules, nn.LayerNorm(width)).eval(), torch.randn(batch, width)


factors = st.dictionaries(st.sampled_from(EFFICIENCY_CLASSES), st.floats(0.001, 1.5), min_size=1)
fixed = st.dictionaries(st.sampled_from(EFFICIENCY_CLASSES), st.floats(1e-8, 1e-3))


@st.composite
def profiles(draw: st.DrawFn) -> tuple[HardwareProfile, bool]:
    kind = draw(st.sampled_from(["datasheet-gpu", "datasheet-cpu", "measured-cpu", "measured-gpu"]))
    if kind == "datasheet-gpu":
        return load_profile(draw(st.sampled_from(["t4", "a100-80gb-sxm", "h100-sxm", "l4"]))), False
    if kind == "datasheet-cpu":
        return load_profile(draw(st.sampled_from(["raspberry-pi-5", "xeon-8480plus", "apple-m2"]))), False
    if kind == "measured-cpu":
        return _measured_cpu(draw(factors), draw(fixed), draw(st.floats(1e-7, 1e-4))), draw(st.booleans())
    return _measured_gpu(draw(factors), draw(fixed)), draw(st.booleans())


def _recombined(row: dict[str, float]) -> tuple[float, float]:
    alone = (row["roofline_s"] + row["efficiency_s"] + row["exposed_overhead_s"] + row["module_call_s"]
             + row["collective_s"])
    return alone, alone + row["pass_penalty_s"]


@settings(max_examples=30, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(model=layers(), chosen=profiles(), precision=st.sampled_from(["fp32", "fp16", "bf16", "int8"]),
       batch_factor=st.sampled_from([1, 2, 8]), layer_pick=st.integers(0, 10))
def test_terms_recombine_explain_agrees_and_fusion_is_never_slower(model, chosen, precision, batch_factor, layer_pick):
    module, x = model
    profile, calibrated = chosen
    if precision not in profile.peak_flops_per_s:
        return
    analysis = roofline.analyze(module, inputs=[x], precision=precision, warn_unsupported=False)
    if batch_factor != 1:
        analysis = analysis.scaled_batch(batch_factor)
    prediction = predict(analysis, profile, calibrated=calibrated)
    ops = prediction.ops
    for row in ops.to_dict(orient="records"):
        alone, in_pass = _recombined(row)
        assert alone == pytest.approx(row["predicted_s"], rel=RELATIVE)
        assert in_pass == pytest.approx(row["in_pass_s"], rel=RELATIVE)
        # The pass model's parts add up to the penalty, none is negative, and an op writing in place fills no
        # fresh buffer.
        assert sum(row[t] for t in PASS_TERMS) == pytest.approx(row["pass_penalty_s"], rel=RELATIVE, abs=1e-18)
        assert min(row[t] for t in PASS_TERMS) >= 0
        assert not (writes_in_place(row["op"]) and row["pass_fresh_s"])
        assert row["roofline_s"] == max(row["compute_s"], row["memory_s"])
        assert row["efficiency_s"] >= -1e-18 or row["efficiency"] > 1  # only a factor above 1 beats the roof
        assert row["exposed_overhead_s"] >= 0
    for row in prediction.layers.to_dict(orient="records"):
        alone, in_pass = _recombined(row)
        assert alone == pytest.approx(row["predicted_s"], rel=RELATIVE, abs=1e-18)
        assert in_pass == pytest.approx(row["in_pass_s"], rel=RELATIVE, abs=1e-18)
    totals = prediction.totals
    latency_terms = sum(totals[k] for k in ("roofline_compute_s", "roofline_memory_s", "efficiency_s",
                                            "exposed_overhead_s", "module_call_s", "collective_s",
                                            "pass_penalty_s"))
    assert latency_terms == pytest.approx(totals["predicted_latency_s"], rel=RELATIVE)
    assert sum(totals[k] for k in LATENCY_TERMS) == pytest.approx(latency_terms, rel=RELATIVE)  # the shared list
    named = list(prediction.layers[prediction.layers["ops"] > 0]["name"])
    for layer in named:
        fused = prediction.fused_group(layer)
        assert fused.predicted_s <= fused.unfused_s * (1 + RELATIVE)
    for layer in [named[layer_pick % len(named)]]:  # explain re-predicts for its what-ifs: one layer per example
        diagnosis = explain.explain(analysis, layer, profile, calibrated=calibrated)
        assert diagnosis.terms["predicted_s"] == float(prediction.layers.set_index("name").loc[layer, "predicted_s"])
        what_if = diagnosis.what_if.set_index("change")
        fusion = what_if[what_if.index.str.contains("fused")]
        assert (fusion["speedup"] >= 1 - RELATIVE).all()


def _depthwise():
    with torch.device("meta"):
        model = nn.Sequential(nn.Conv2d(96, 96, 3, padding=1, groups=96, bias=False), nn.BatchNorm2d(96), nn.ReLU6())
        return roofline.analyze(model.eval(), inputs=[torch.randn(1, 96, 56, 56)])


def test_gpu_rule_is_max_with_the_launch_and_the_explanation_adds_up():
    a100 = load_profile("a100-80gb-sxm")
    text = explain.explain(_depthwise(), "0", a100).text()
    # 96x56x56 fp32 in and out = 2.41 MB, in L2 (40 MiB): memory 2.41e6 / L2 bandwidth; launch 5 us hides it.
    moved = 2 * 96 * 56 * 56 * 4 + 96 * 9 * 4
    memory = moved / a100.level("L2").bandwidth_bytes_per_s
    terms = explain.explain(_depthwise(), "0", a100).terms
    assert terms["memory_s"] == pytest.approx(memory)
    assert terms["predicted_s"] == pytest.approx(max(memory, a100.overhead_s))
    assert terms["exposed_overhead_s"] == pytest.approx(a100.overhead_s - memory)
    assert "max(kernel, launch overhead)" in text and "= predicted" in text
    assert "+ efficiency" not in text  # a plain roofline has none


def test_fusing_the_depthwise_conv_with_bn_and_relu6_saves_two_launches_on_a_gpu():
    prediction = predict(_depthwise(), "a100-80gb-sxm")
    fused = prediction.fused_group("0")
    assert fused.layers == ("0", "1", "2")
    launch = prediction.profile.overhead_s
    assert fused.unfused_s == pytest.approx(3 * launch)  # each of the three ops overhead-bound
    assert fused.predicted_s == pytest.approx(launch)


def test_an_efficiency_bound_layer_names_its_roof_and_the_class():
    hw = _measured_cpu({"pool": 0.007, "conv": 0.5, "grouped_conv": 0.2, "norm": 0.3, "activation": 0.4},
                       {"pool": 1e-6}, 2e-6)
    with torch.device("meta"):
        analysis = roofline.analyze(nn.MaxPool2d(2).eval(), inputs=[torch.randn(1, 32, 56, 56)])
    diagnosis = explain.explain(analysis, "(model)", hw, calibrated=True)
    assert diagnosis.terms["bound"] == "efficiency"
    assert diagnosis.terms["bound_label"].startswith("efficiency (0.7% of its memory:")
    assert diagnosis.terms["efficiency_s"] == pytest.approx(diagnosis.terms["roofline_s"] * (1 / 0.007 - 1))
    text = diagnosis.text()
    assert "pool runs at 0.7% of its roof on this machine (measured 2026-12-01" in text
    assert "The kernel, not the memory system, sets its speed" in text


def test_overhead_regime_names_the_batch_that_leaves_it():
    analysis = roofline.analyze("zoo:convnet")
    a100 = load_profile("a100-80gb-sxm")
    prediction = Prediction(analysis, a100)
    assert prediction.overhead_regime
    exit_batch = overhead_exit_batch(analysis, a100)
    assert exit_batch is not None and exit_batch > 1
    assert not Prediction(analysis.scaled_batch(exit_batch), a100).overhead_regime
    assert Prediction(analysis.scaled_batch(exit_batch // 2), a100).overhead_regime  # the smallest power of two
    table = explain.compare(analysis, [a100], ["fp32", "fp16"])
    notes = explain.compare_notes(table)
    assert "2 of 2 cells are more than half overhead-bound" in notes[0]
    assert f"leaves the overhead regime at batch {exit_batch}" in notes[1]


def test_tf32_convolutions_on_ampere_and_full_fp32_matmuls():
    a100 = load_profile("a100-80gb-sxm")
    with torch.device("meta"):
        model = nn.Sequential(nn.Conv2d(64, 64, 3, padding=1), nn.Flatten(), nn.Linear(64 * 8 * 8, 512))
        analysis = roofline.analyze(model.eval(), inputs=[torch.randn(32, 64, 8, 8)])
    ops = predict(analysis, a100).ops.set_index("layer")
    assert ops.loc["0", "compute_type"] == "tf32" and ops.loc["0", "peak_flops_per_s"] == a100.peak("tf32")
    assert ops.loc["2", "compute_type"] == "fp32"  # the linear: cuBLAS fp32 matmuls stay in full fp32
    t4 = predict(analysis, "t4").ops  # Turing: no TF32, every op in fp32
    assert set(t4["compute_type"]) == {"fp32"}

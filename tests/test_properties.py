"""Rules that must hold for every shape (hypothesis)."""
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from torch import nn

import roofline

small = st.integers(min_value=1, max_value=24)


def _analyze(module, x):
    return roofline.analyze(module.eval(), inputs=[x], warn_unsupported=False)


@settings(max_examples=25, deadline=None)
@given(batch=small, features_in=small, features_out=small, bias=st.booleans())
def test_linear(batch, features_in, features_out, bias):
    with torch.device("meta"):
        layer = nn.Linear(features_in, features_out, bias=bias)
        x = torch.randn(batch, features_in)
    result = _analyze(layer, x)
    macs = batch * features_in * features_out
    assert result.totals["macs"] == macs
    assert result.totals["flops"] == 2 * macs + (batch * features_out if bias else 0)
    _check_invariants(result)


@settings(max_examples=25, deadline=None)
@given(
    batch=st.integers(1, 3), groups=st.integers(1, 4), per_group_in=st.integers(1, 4),
    per_group_out=st.integers(1, 4), kernel=st.integers(1, 4), stride=st.integers(1, 3),
    dilation=st.integers(1, 2), padding=st.integers(0, 2), size=st.integers(8, 20),
)
def test_conv2d(batch, groups, per_group_in, per_group_out, kernel, stride, dilation, padding, size):
    c_in, c_out = groups * per_group_in, groups * per_group_out
    with torch.device("meta"):
        conv = nn.Conv2d(c_in, c_out, kernel, stride=stride, padding=padding, dilation=dilation, groups=groups,
                         bias=False)
        x = torch.randn(batch, c_in, size, size)
    out = (size + 2 * padding - dilation * (kernel - 1) - 1) // stride + 1
    result = _analyze(conv, x)
    assert result.totals["macs"] == batch * c_out * out * out * per_group_in * kernel * kernel
    _check_invariants(result)


def _check_invariants(result):
    layers, totals = result.layers, result.totals
    for column in ("macs", "flops", "bytes_read", "bytes_written"):
        assert layers[column].sum() == pytest.approx(totals[column])
    moved = layers["bytes_read"] + layers["bytes_written"]
    assert (moved > 0).all()
    assert list(layers["arithmetic_intensity"]) == pytest.approx(list(layers["flops"] / moved))
    assert totals["arithmetic_intensity"] == pytest.approx(totals["flops"] / (totals["bytes_read"] + totals["bytes_written"]))


@given(st.lists(st.floats(0.01, 1.0), min_size=2, max_size=7), st.integers(1, 4096))
@settings(max_examples=200, deadline=None)
def test_a_group_rate_lies_between_its_measured_neighbours(rates, count):
    """Between two measured channel counts the rate is between theirs; beyond them it is the nearest one's; it
    is never above 1, and an op with fewer than 2 channels per group (not a grouped conv) runs at 1."""
    from roofline.hardware.profile import HardwareProfile, MemoryLevel

    counts = [2 ** (i + 1) for i in range(len(rates))]
    profile = HardwareProfile(name="p", kind="cpu", vendor="t", source="measured", reference="test",
                              peak_flops_per_s={"fp32": 1e12}, memory_levels=(MemoryLevel("DRAM", 1e9, 1e10),),
                              overhead_s=1e-6, conv_group_rate=dict(zip(counts, rates, strict=True)))
    rate = float(profile.group_rate([count])[0])
    if count < 2:
        assert rate == 1.0
        return
    below = [r for c, r in zip(counts, rates, strict=True) if c <= count] or [rates[0]]
    above = [r for c, r in zip(counts, rates, strict=True) if c >= count] or [rates[-1]]
    low, high = sorted((below[-1], above[0]))
    assert low - 1e-12 <= rate <= high + 1e-12
    assert rate <= 1.0

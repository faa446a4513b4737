"""Re-costing for a precision changes bytes and model size only, never the op graph."""
import pytest

import roofline
from roofline.errors import RooflineError


@pytest.fixture(scope="module")
def fp32():
    return roofline.analyze("zoo:tiny-transformer")


def test_int8_weight_bytes_are_a_quarter_of_fp32(fp32):
    int8 = fp32.with_precision("int8")
    assert int8.layers["weight_bytes"].sum() == fp32.layers["weight_bytes"].sum() / 4
    assert int8.totals["model_size_bytes"] == fp32.totals["params"] * 1


def test_w4a16_model_size_is_half_a_byte_per_parameter(fp32):
    w4 = fp32.with_precision("w4a16")
    assert w4.totals["model_size_bytes"] == fp32.totals["params"] / 2
    # Activations stay 16-bit: bytes written (activations only here) are half of fp32's.
    assert w4.totals["bytes_written"] == fp32.totals["bytes_written"] / 2


@pytest.mark.parametrize("name", list(roofline.PRECISIONS))
def test_flops_and_macs_identical_across_precisions(fp32, name):
    other = fp32.with_precision(name)
    assert other.totals["macs"] == fp32.totals["macs"]
    assert other.totals["flops"] == fp32.totals["flops"]
    assert list(other.layers["flops"]) == list(fp32.layers["flops"])
    assert other.trace is fp32.trace  # no re-trace


def test_unknown_precision_names_the_choices():
    with pytest.raises(RooflineError, match="unknown precision 'fp12'.*choose one of: fp32"):
        roofline.get_precision("fp12")


def test_kv_precision_override():
    p = roofline.get_precision("fp16").with_kv("fp8")
    assert p.kv_bytes == 1 and p.activation_bytes == 2 and p.name == "fp16+kv-fp8"


@pytest.mark.parametrize("spec", ["zoo:convnet", "zoo:tiny-transformer"])
def test_scaled_batch_equals_a_real_trace_at_that_batch(spec):
    one = roofline.analyze(spec)
    eight = roofline.analyze(spec, batch=8)
    scaled = one.scaled_batch(8)
    for key in ("macs", "flops", "bytes_read", "params"):
        assert scaled.totals[key] == pytest.approx(eight.totals[key], rel=1e-9), key
    # Batch norm's per-channel statistics (2 x 32..256 values per layer) do not grow with the batch.
    for key in ("bytes_written", "peak_activation_bytes"):
        assert scaled.totals[key] == pytest.approx(eight.totals[key], rel=1e-3), key
    assert scaled.trace.inputs[0][0] == 8

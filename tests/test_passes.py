"""In-pass times from torch.profiler traces: a real trace written in another process, then imported."""
from __future__ import annotations

import gzip
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from torch import nn

import roofline
from roofline import analyze
from roofline.cli import main
from roofline.errors import RooflineError
from roofline.measure import NotMeasurable, measure, measure_trace

ROOT = Path(__file__).resolve().parent.parent
MODEL = "zoo:convnet"


@pytest.fixture(scope="module")
def trace_file(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A trace written by scripts/write_trace.py in its own process, as a user's script would."""
    out = tmp_path_factory.mktemp("trace") / "convnet.json"
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    done = subprocess.run([sys.executable, str(ROOT / "scripts" / "write_trace.py"), MODEL, str(out), "--passes", "2"],
                          check=False, capture_output=True, text=True, env=env, timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    return out


def test_a_real_cpu_trace_gives_every_layer_its_time(trace_file: Path) -> None:
    result = measure_trace(MODEL, trace_file)
    layers = result.layers
    # Named as analyze names them, every row of it, so rows join on `name`.
    assert list(layers["name"]) == list(analyze(MODEL).layers["name"])
    assert (layers["in_pass_s"] > 0).all() and set(layers["timed_as"]) == {"trace"}
    assert (layers["in_pass_ops_s"] + layers["in_pass_gap_s"]).to_numpy() == pytest.approx(layers["in_pass_s"].to_numpy())
    meta = result.metadata
    assert meta["profiled_passes"] == 2 and meta["outside_ops_s"] >= 0
    # The rows plus what lies outside the ops make up the pass (means over passes: exactly, up to the trace file's
    # timestamps, kept to the nanosecond: each op's start + duration may miss its end by 1 ns; CI once saw 2.4 ns).
    ops = len(analyze(MODEL).trace.records)
    assert layers["in_pass_s"].sum() + meta["outside_ops_s"] == pytest.approx(meta["profiled_pass_s"], abs=1e-9 * ops)
    # A convolution is the costliest op of a conv layer: its layer gets more than a ReLU's.
    by_type = layers.groupby("type")["in_pass_s"].sum()
    assert by_type["Conv2d"] > by_type["ReLU"] > 0


def test_a_compressed_trace_reads_the_same(trace_file: Path, tmp_path: Path) -> None:
    packed = tmp_path / "convnet.json.gz"
    packed.write_bytes(gzip.compress(trace_file.read_bytes()))
    plain, compressed = measure_trace(MODEL, trace_file), measure_trace(MODEL, packed)
    assert list(compressed.layers["in_pass_s"]) == list(plain.layers["in_pass_s"])


def test_the_cli_reads_a_trace(trace_file: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["measure", MODEL, "--trace", str(trace_file), "--format", "json"]) == 0
    import json

    data = json.loads(capsys.readouterr().out)
    assert data["metadata"]["trace"] == str(trace_file) and all(row["in_pass_s"] > 0 for row in data["layers"])


def test_a_trace_of_another_model_is_a_one_line_error(trace_file: Path, capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(RooflineError) as caught:
        measure_trace("zoo:mlp", trace_file)
    message = str(caught.value)
    assert "\n" not in message
    # It names the trace's op where the models part and what the model runs there.
    assert "does not match zoo:mlp" in message and "aten::conv2d" in message and "aten::addmm" in message
    assert main(["measure", "zoo:mlp", "--trace", str(trace_file)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "does not match" in err[0]


def test_a_trace_at_another_batch_is_a_one_line_error(trace_file: Path) -> None:
    with pytest.raises(RooflineError, match=r"does not match .*2x3x64x64"):
        measure_trace(MODEL, trace_file, batch=2)


def test_an_unreadable_trace_is_a_one_line_error(tmp_path: Path) -> None:
    bad = tmp_path / "t.json"
    bad.write_text("{not json")
    with pytest.raises(RooflineError, match="not a readable Chrome trace"):
        measure_trace(MODEL, bad)
    with pytest.raises(RooflineError, match="no such file"):
        measure_trace(MODEL, tmp_path / "missing.json")


# ---- the one device/precision check, for each measurer ------------------------------------------

_REFUSED = "fp8 is not measurable on cpu: PyTorch's eager modules have no fp8 kernels"


def test_measure_refuses_an_unsupported_precision() -> None:
    with pytest.raises(NotMeasurable, match=_REFUSED):
        measure("zoo:mlp", precision="fp8", min_run_time_s=0.001, progress=False)


def test_llm_measure_refuses_it_the_same_way() -> None:
    from roofline.llm import llm

    with pytest.raises(NotMeasurable, match=_REFUSED):
        llm("hf:gpt2?n_layer=1&n_embd=64&n_head=2", "h100-sxm", precision="fp8", prompt_len=8, gen_len=2,
            measure_device="cpu")


def test_sweep_measure_refuses_it_the_same_way() -> None:
    from roofline.explain import sweep_conv
    from roofline.hardware import load_profile

    with pytest.raises(NotMeasurable, match=_REFUSED):
        sweep_conv(8, (8, 8), [1, 8], load_profile("h100-sxm"), precision="fp8", measure=True, progress=False)


def test_float_only_measurers_refuse_int8_by_name() -> None:
    from roofline.measure.device import float_dtype

    with pytest.raises(NotMeasurable, match="int8 is not measurable by sweep --measure"):
        float_dtype("int8", "cpu", "sweep --measure")


class _Shuffle(nn.Module):
    """shufflenet_v2's channel shuffle then a 1x1 conv: on a CPU the shuffle's contiguous copies data the
    meta trace's layout never needed (live `measure torchvision:shufflenet_v2_x1_0` failed on it)."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(8, 8, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, c, h, w = x.shape
        x = x.view(b, 2, c // 2, h, w).transpose(1, 2).contiguous().view(b, c, h, w)
        return self.conv(x[:, :, ::2])


def test_a_layout_copy_the_meta_trace_did_not_need_is_tolerated() -> None:
    from roofline.measure.passes import _tolerated

    assert all(_tolerated(f"aten::{name}") for name in ("contiguous", "clone", "copy_", "view", "empty"))
    assert not any(_tolerated(f"aten::{name}") for name in ("convolution", "addmm", "relu", "add"))
    result = roofline.measure(_Shuffle().eval(), inputs=[torch.randn(1, 8, 8, 8)], batch_sizes=[1], progress=False,
                              min_run_time_s=0.01)
    assert set(result.layers["name"]) >= {"conv"} and (result.layers["in_pass_s"] >= 0).all()


def test_the_profilers_own_log_lines_stay_out_of_the_output():
    """Kineto prints 'USDT ... profiler_start' (and, without a GPU, a gpuGetDeviceCount error) on stderr."""
    env = {k: v for k, v in os.environ.items() if k != "KINETO_LOG_LEVEL"}
    done = subprocess.run([sys.executable, "-m", "roofline", "measure", "zoo:mlp", "--no-progress", "--rounds", "1"],
                          capture_output=True, text=True, env=env, check=True)
    assert "profiler_start" not in done.stderr and "gpuGetDeviceCount" not in done.stderr, done.stderr[-500:]


# ---- the passes roofline profiles itself -----------------------------------------------------------

def _stripped(trace: dict, mark: bool) -> dict:
    """The trace as record_shapes=False writes it: no "Input Dims"; `mark`: as profile_passes labels it."""
    from roofline.measure.passes import SHAPES_KEY

    events = [{**e, "args": {k: v for k, v in e.get("args", {}).items() if k != "Input Dims"}} if isinstance(e, dict) else e
              for e in trace["traceEvents"]]
    return {**trace, "traceEvents": events, **({SHAPES_KEY: False} if mark else {})}


def test_a_trace_profiled_without_shapes_on_purpose_is_matched_by_name(trace_file: Path) -> None:
    from roofline.measure.passes import attribute_trace, read_trace

    records = analyze(MODEL).trace.records
    with_shapes = attribute_trace(read_trace(trace_file), records, MODEL)
    by_name = attribute_trace(_stripped(read_trace(trace_file), mark=True), records, MODEL)
    assert by_name.in_pass_s == pytest.approx(with_shapes.in_pass_s, rel=1e-9) and by_name.passes == 2
    # A user's trace without shapes is still refused: nothing checked that it is this model's.
    with pytest.raises(RooflineError, match="record_shapes=True"):
        attribute_trace(_stripped(read_trace(trace_file), mark=False), records, MODEL)


def test_profiled_passes_check_shapes_once_then_reuse_their_buffers() -> None:
    """record_shapes=True keeps each op's inputs alive while the profiler runs (pytorch#133444), so a pass
    writes fresh memory where a real one reuses freed buffers; the timed passes are profiled without shapes."""
    from roofline.measure.passes import module_records, profile_pass_times
    from roofline.timing import retained_heap

    net = nn.Sequential(nn.Conv2d(8, 32, 3, padding=1), nn.ReLU(), nn.Conv2d(32, 8, 3, padding=1)).eval()
    x = torch.randn(1, 8, 64, 64)
    records, _ = module_records(net, [x])
    addresses: list[int] = []  # where the first conv's output (the ReLU's input) lands, pass by pass
    net[0].register_forward_hook(lambda module, args, out: addresses.append(out.data_ptr()))

    def forward() -> None:
        with torch.no_grad():
            net(x)

    with retained_heap():
        times = profile_pass_times(forward, "cpu", records, "net", passes=4)
    assert times.passes == 4 and set(times.in_pass_s) == {"0", "1", "2"}
    timed = addresses[-4:]  # after the pass with shapes and its warmup, the four timed passes
    assert len(set(timed)) == 1, timed
    # The pass with shapes still checks the match: the records of another model are refused.
    with pytest.raises(RooflineError, match="does not match zoo:mlp"):
        profile_pass_times(forward, "cpu", analyze("zoo:mlp").trace.records, "zoo:mlp", passes=1)


def test_a_measurement_says_how_its_passes_were_matched(trace_file: Path) -> None:
    result = roofline.measure("zoo:mlp", batch_sizes=[1], rounds=1, progress=False, min_run_time_s=0.01)
    assert "matched by name" in result.metadata["in_pass_matching"]
    assert "in_pass_matching" not in measure_trace(MODEL, trace_file).metadata  # a user's trace: shapes, all passes

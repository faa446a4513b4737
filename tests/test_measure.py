"""Measurement: rows named as the analysis names them, honest 'not measurable' errors, never absolute times.

Time budgets are tiny (FAST) so the file runs in well under a minute; the checks are about structure
(one positive median per layer, the names join, throughput = batch / latency), not speed.
"""
import dataclasses
import json
import sys
import warnings

import pytest
import torch
from torch import nn

import roofline
from roofline.cli import main
from roofline.errors import RooflineError
from roofline.measure import NotMeasurable, measure

measure_module = sys.modules["roofline.measure.api"]  # `roofline.measure` is the function
device_module = sys.modules["roofline.measure.device"]
from roofline.measure.capture import Capture

FAST = {"progress": False, "min_run_time_s": 0.001, "max_repeats": 5, "warmup": 1}


class Twice(nn.Module):
    """Calls one Linear twice, has op-less leaves, and does its own arithmetic (a '(model)' row)."""

    def __init__(self) -> None:
        super().__init__()
        self.fc = nn.Linear(16, 16)
        self.act = nn.ReLU()
        self.skip = nn.Identity()
        self.drop = nn.Dropout(0.1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.fc(self.act(self.fc(x)))
        return self.drop(self.skip(y)) + 2 * x


def _measure_quietly(*args, **kwargs):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # noisy-layer warnings are expected at these budgets
        return measure(*args, **kwargs)


@pytest.fixture(scope="module")
def mobile():
    return _measure_quietly("zoo:mobile-block", batch_sizes=[1, 2], **FAST)


def test_one_positive_median_per_layer_with_spread(mobile):
    layers = mobile.layers
    assert len(layers) == layers["name"].nunique() > 0
    assert (layers["measured_s"] > 0).all()
    assert (layers["iqr_s"] >= 0).all() and (layers["repeats"] >= 1).all()
    assert layers["noisy"].dtype == bool
    assert mobile.sum_of_layers_s == pytest.approx(layers["measured_s"].sum())
    # The residual adds of each inverted-residual block are replayed as that block's own ops.
    blocks = layers[layers["name"].isin(["blocks.0", "blocks.1"])]
    assert list(blocks["timed_as"]) == ["own ops", "own ops"] and (blocks["replayed_ops"] >= 1).all()
    assert set(layers.loc[~layers["name"].isin(["blocks.0", "blocks.1"]), "timed_as"]) == {"module"}
    # Inside the pass too (torch.profiler): every row timed, each the sum of its ops' time and the
    # gaps before them, and the rows with what lies outside the ops make up the profiled pass (means
    # over the passes, so exactly).
    assert layers["in_pass_s"].notna().all() and (layers["in_pass_s"] >= 0).all()
    assert (layers["in_pass_ops_s"] + layers["in_pass_gap_s"]).to_numpy() == pytest.approx(layers["in_pass_s"].to_numpy())
    meta = mobile.metadata
    assert meta["profiled_passes"] == measure_module.PROFILED_PASSES and meta["outside_ops_s"] >= 0
    whole = layers["in_pass_s"].sum() + meta["outside_ops_s"]
    assert whole == pytest.approx(meta["profiled_pass_s"], rel=1e-6)
    # The profiler's own cost is stated against the plain pass timed in the same run.
    assert meta["profiler_overhead_fraction"] == pytest.approx(meta["profiled_pass_s"] / meta["plain_pass_s"] - 1)


def test_a_layer_not_timed_in_the_pass_is_null_in_json(mobile):
    untimed = dataclasses.replace(mobile, layers=mobile.layers.assign(in_pass_s=float("nan")))  # as on a GPU
    rows = json.loads(json.dumps(untimed.to_dict(), allow_nan=False))["layers"]
    assert all(row["in_pass_s"] is None for row in rows)


def test_end_to_end_latency_and_throughput(mobile):
    e2e = mobile.end_to_end
    assert list(e2e["batch"]) == [1, 2]
    assert (e2e["latency_s"] > 0).all()
    for row in e2e.itertuples():
        assert row.throughput_samples_per_s == pytest.approx(row.batch / row.latency_s)


def test_metadata_and_json(mobile):
    meta = mobile.metadata
    assert meta["torch_version"] == torch.__version__ and meta["num_threads"] >= 1
    assert meta["device_name"] and meta["date"] and meta["batch"] == 1
    assert meta["allocator"]  # how freed memory was kept while timing
    assert meta["reference_flops_per_s"] > 1e8  # the machine's speed during the run, from a real matmul
    slow, fast = meta["reference_flops_per_s_range"]
    assert slow <= meta["reference_flops_per_s"] <= fast
    data = json.loads(json.dumps(mobile.to_dict()))
    assert set(data) == {"model", "device", "precision", "metadata", "layers", "end_to_end"}
    assert (data["model"], data["device"], data["precision"]) == ("zoo:mobile-block", "cpu", "fp32")
    assert {"name", "type", "measured_s", "iqr_s", "repeats", "noisy"} <= set(data["layers"][0])
    assert set(data["end_to_end"][0]) >= {"batch", "latency_s", "iqr_s", "throughput_samples_per_s"}
    assert "zoo:mobile-block on cpu" in repr(mobile) and "<table" in mobile._repr_html_()


def _analysis_names(*args, **kwargs):
    return set(roofline.analyze(*args, **kwargs).layers["name"]) - {"(unused parameters)"}


@pytest.mark.parametrize("spec, options", [
    ("zoo:mobile-block", {}),
    ("zoo:tiny-transformer", {"seq_len": 16}),
    ("torchvision:resnet18", {"input_shape": "1x3x64x64"}),
])
def test_names_join_analysis(spec, options, mobile):
    result = mobile if spec == "zoo:mobile-block" else _measure_quietly(spec, batch_sizes=[1], **FAST, **options)
    assert set(result.layers["name"]) == _analysis_names(spec, **options)


def test_a_module_called_twice_and_op_less_leaves():
    model, inputs = Twice().eval(), [torch.randn(4, 16)]
    result = _measure_quietly(model, inputs, batch_sizes=[4], **FAST)
    names = set(result.layers["name"])
    assert names == _analysis_names(model, inputs)
    assert {"fc", "fc#1", "skip", "drop", "(model)"} <= names
    # Identity and eval Dropout run no op; they still cost a module call, which is what is measured.
    assert (result.layers.set_index("name").loc[["skip", "drop"], "measured_s"] > 0).all()
    # Inside the pass the same names: the second call of fc and the root's own arithmetic included.
    assert result.layers["in_pass_s"].notna().all()
    # The profiler sees no op of an Identity or eval Dropout: 0 s, their call cost in the next op's gap.
    assert (result.layers.set_index("name").loc[["skip", "drop"], "in_pass_s"] == 0).all()


class Shared(nn.Module):
    """One Linear registered under two attributes: both the trace and the pass timer name it by its first."""

    def __init__(self) -> None:
        super().__init__()
        self.first = nn.Linear(8, 8)
        self.second = self.first

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.second(self.first(x))


def test_a_module_under_two_names_is_timed_in_the_pass_under_the_trace_names():
    model, inputs = Shared().eval(), [torch.randn(2, 8)]
    result = _measure_quietly(model, inputs, batch_sizes=[2], **FAST)
    assert set(result.layers["name"]) == _analysis_names(model, inputs) == {"first", "first#1"}
    assert result.layers["in_pass_s"].notna().all()


def test_rows_join_prediction():
    predict = pytest.importorskip("roofline.predict")
    model, inputs = Twice().eval(), [torch.randn(4, 16)]
    measured = _measure_quietly(model, inputs, batch_sizes=[4], **FAST)
    predicted = predict.predict(roofline.analyze(model, inputs), "epyc-7763")
    assert set(measured.layers["name"]) == set(predicted.layers["name"]) - {"(unused parameters)"}


@pytest.mark.parametrize("precision", ["bf16", "fp16"])
def test_half_precisions_cast_a_copy(precision):
    model, inputs = Twice().eval(), [torch.randn(4, 16)]
    result = _measure_quietly(model, inputs, precision=precision, batch_sizes=[4], **FAST)
    assert set(result.layers["ran_as"]) == {precision}
    assert model.fc.weight.dtype == torch.float32 and inputs[0].dtype == torch.float32  # the user's objects


def test_int8_says_which_layers_ran_int8():
    model = nn.Sequential(nn.Linear(32, 64), nn.ReLU(), nn.Linear(64, 8)).eval()
    result = _measure_quietly(model, [torch.randn(2, 32)], precision="int8", batch_sizes=[2], **FAST)
    assert dict(zip(result.layers["name"], result.layers["ran_as"])) == {"0": "int8", "1": "fp32", "2": "int8"}
    assert result.metadata["int8_layers"] == ["0", "2"]
    assert isinstance(model[0], nn.Linear)  # quantised a copy


def test_int8_without_quantisable_layers_is_not_measurable():
    model = nn.Sequential(nn.Conv2d(3, 4, 3), nn.ReLU()).eval()
    with pytest.raises(NotMeasurable, match="int8 is not measurable .* nn.Linear"):
        measure(model, [torch.randn(1, 3, 8, 8)], precision="int8", **FAST)


@pytest.mark.parametrize("precision, reason", [
    ("w4a16", "w4a16 is not measurable on cpu: weight-only"),
    ("w8a16", "w8a16 is not measurable on cpu"),
    ("fp8", "fp8 is not measurable on cpu"),
    ("tf32", "tf32 is not measurable on cpu"),
])
def test_unrunnable_precision_is_not_measurable(precision, reason):
    with pytest.raises(NotMeasurable, match=reason) as error:
        measure("zoo:mlp", precision=precision, **FAST)
    assert isinstance(error.value, RooflineError) and "\n" not in str(error.value)


def test_cli_not_measurable_is_one_line_and_exit_2(capsys):
    code = main(["measure", "zoo:mlp", "--precision", "w4a16"])
    captured = capsys.readouterr()
    assert code == 2 and captured.out == ""
    assert captured.err.startswith("roofline: error: w4a16 is not measurable on cpu")
    assert captured.err.count("\n") == 1


def test_cuda_without_a_gpu_is_a_clear_error(monkeypatch, capsys):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    with pytest.raises(RooflineError, match=r"^no CUDA device: torch.cuda.is_available\(\) is False$"):
        measure("zoo:mlp", device="cuda", **FAST)
    code = main(["measure", "zoo:mlp", "--device", "cuda"])
    err = capsys.readouterr().err
    assert code == 2 and err == "roofline: error: no CUDA device: torch.cuda.is_available() is False\n"


def test_unknown_device_and_bad_batch_sizes():
    with pytest.raises(RooflineError, match="unknown device 'tpu'"):
        measure("zoo:mlp", device="tpu", **FAST)
    with pytest.raises(RooflineError, match="malformed batch sizes"):
        measure_module.parse_batch_sizes("1,x")


def test_timer_gets_the_device(monkeypatch):
    """The device string reaches the one timer (which syncs and uses CUDA events for cuda)."""
    from roofline import timing

    seen = []
    real = timing.time_callable

    def recording(fn, device="cpu", **kwargs):
        seen.append(device)
        return real(fn, device=device, **kwargs)

    monkeypatch.setattr(timing, "time_callable", recording)
    result = _measure_quietly(Twice().eval(), [torch.randn(2, 16)], batch_sizes=[2], rounds=2, **FAST)
    # in each round: every layer and the reference matmul, then the batch and the reference (the
    # profiled passes that follow are not timed by the timer: the profiler times them)
    assert seen == ["cpu"] * 2 * (len(result.layers) + 3)


def test_rounds_interleave_every_layer_and_merge_their_blocks():
    from roofline.timing import time_interleaved

    order = []
    calls = [lambda i=i: order.append(i) for i in range(3)]
    merged = time_interleaved(calls, rounds=2, repeats=5, warmup=0, labels=["a", "b", "c"])
    # Each pass visits every callable before the next pass starts (blocks grow while sizing, so the
    # number of calls per pass varies; the visiting order does not).
    passes = [i for k, i in enumerate(order) if k == 0 or order[k - 1] != i]
    assert passes == [0, 1, 2, 0, 1, 2]
    assert [m.label for m in merged] == ["a", "b", "c"]
    assert all(m.repeats == 10 for m in merged)  # 5 blocks per pass, both passes kept
    with pytest.raises(RooflineError, match="rounds must be at least 1"):
        time_interleaved(calls, rounds=0)


def test_cuda_precision_checks_without_a_gpu(monkeypatch):
    """The CUDA branches of the precision check, on a faked device: TF32 needs compute capability 8.0+."""
    monkeypatch.setattr(torch.cuda, "get_device_capability", lambda device=None: (7, 0))
    monkeypatch.setattr(torch.cuda, "get_device_name", lambda device=None: "Fake V100")
    with pytest.raises(NotMeasurable, match="tf32 is not measurable on Fake V100"):
        device_module.check_precision("tf32", "cuda")
    with pytest.raises(NotMeasurable, match="int8 is not measurable on cuda"):
        device_module.check_precision("int8", "cuda")
    monkeypatch.setattr(torch.cuda, "get_device_capability", lambda device=None: (9, 0))
    assert device_module.check_precision("tf32", "cuda") == "tf32"


def test_math_mode_sets_and_restores_tf32():
    before = (torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32)
    with device_module.math_mode("tf32", "cuda"):
        assert torch.backends.cuda.matmul.allow_tf32 and torch.backends.cudnn.allow_tf32
    with device_module.math_mode("fp32", "cuda"):  # cuDNN would use TF32 for fp32 convolutions by default
        assert not torch.backends.cuda.matmul.allow_tf32 and not torch.backends.cudnn.allow_tf32
        assert not torch.backends.mha.get_fastpath_enabled()
    assert (torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32) == before


def test_captured_inputs_keep_strides_and_survive_in_place_ops():
    capture = Capture(nn.Linear(2, 2))
    base = torch.randn(4, 6)
    for view in (base.t(), base[:, 1:4], base[:1].expand(5, 6)):
        copied = capture._copy_tensor(view)
        assert copied.shape == view.shape and copied.stride() == view.stride() and torch.equal(copied, view)
        assert copied.untyped_storage().data_ptr() != view.untyped_storage().data_ptr()
    weight = capture.model.weight
    assert capture._copy_tensor(weight) is weight  # weights are shared, not copied


def test_batch_tiling():
    inputs = {"input_ids": torch.arange(6).view(2, 3), "scale": torch.tensor(1.0)}
    tiled = measure_module._at_batch(inputs, 2, 5)
    assert tiled["input_ids"].shape == (5, 3) and tiled["scale"].shape == ()
    assert measure_module.batch_of(inputs) == 2


def test_cli_json_joins_analyze(capsys):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        code = main(["measure", "zoo:mlp", "--batch-sizes", "1", "--min-run-time", "0.001", "--no-progress",
                     "--format", "json"])
    out = capsys.readouterr().out
    assert code == 0
    measured = json.loads(out)
    assert main(["analyze", "zoo:mlp", "--format", "json"]) == 0
    analyzed = json.loads(capsys.readouterr().out)
    assert [row["name"] for row in measured["layers"]] == [row["name"] for row in analyzed["layers"]]
    assert [row["batch"] for row in measured["end_to_end"]] == [1]


def test_a_module_already_in_place_is_measured_without_a_copy(monkeypatch):
    """fp32 on its own device and in eval mode: nothing to change, so no second copy of the weights."""
    copies = []
    monkeypatch.setattr(measure_module.copy, "deepcopy", lambda obj: copies.append(obj) or obj)
    model = Twice().eval()
    _measure_quietly(model, [torch.randn(2, 16)], batch_sizes=[2], **FAST)
    assert copies == []
    _measure_quietly(model, [torch.randn(2, 16)], precision="bf16", batch_sizes=[2], **FAST)
    assert copies == [model]  # casting to bf16 needs a copy


class FailsWhenRepeated(nn.Module):
    """Runs once (the capture pass and the untimed check), then raises: a stateful layer."""

    def __init__(self) -> None:
        super().__init__()
        self.calls = 0

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self.calls += 1
        if self.calls > 2:
            raise RuntimeError("state exhausted\nsecond line")
        return x + 1


def test_a_layer_failing_while_timed_is_named_in_one_line():
    model = nn.Sequential(nn.Linear(4, 4), FailsWhenRepeated()).eval()
    with pytest.raises(RooflineError) as info:
        _measure_quietly(model, [torch.randn(1, 4)], batch_sizes=[1], **FAST)
    assert str(info.value) == "timing layer '1' failed: RuntimeError: state exhausted"


def test_speed_ratio_compares_like_with_like():
    from roofline.measure import speed_ratio

    profile = {"reference_flops_per_s": "8e10", "threads": "1", "device": "cpu"}
    assert speed_ratio(profile, {"reference_flops_per_s": 6e10, "num_threads": 1, "device": "cpu"}) == pytest.approx(0.75)
    assert speed_ratio(profile, {"reference_flops_per_s": 6e10, "num_threads": 2, "device": "cpu"}) is None
    assert speed_ratio(profile, {"reference_flops_per_s": 6e12, "num_threads": 1, "device": "cuda"}) is None
    assert speed_ratio({}, {"reference_flops_per_s": 6e10}) is None


def test_the_machine_s_own_speed_range_is_noted_only_when_it_varied():
    from roofline.measure import speed_range, unsteady_note

    flops = 1e9
    steady = [0.010, 0.0101, 0.0099, 0.0100, 0.0102]  # within 3%
    slow, fast = speed_range(steady, flops)
    assert slow < fast and fast / slow < 1.05 and unsteady_note(slow, fast) is None
    # One stray block (a 5x slower call) among twenty does not set the range: deciles, not extremes.
    slow, fast = speed_range([0.010] * 19 + [0.050], flops)
    assert fast / slow < 1.01
    # Half the blocks 40% slower: the machine itself varied, and the note says by how much.
    slow, fast = speed_range([0.010] * 10 + [0.014] * 10, flops)
    assert slow == pytest.approx(flops / 0.014) and fast == pytest.approx(flops / 0.010)
    note = unsteady_note(slow, fast)
    assert note is not None and "varied by 40%" in note and "71.4-100 GFLOP/s" in note
    assert speed_range([0.01], flops) == (pytest.approx(1e11), pytest.approx(1e11))


def test_a_measurement_on_an_unsteady_machine_says_so(monkeypatch):
    import importlib

    measure_module = importlib.import_module("roofline.measure.api")  # `roofline.measure` is also the function

    # The reference matmul ran between 50 and 80 GFLOP/s meanwhile: 60% apart.
    monkeypatch.setattr(measure_module, "speed_range", lambda times_s, flops: (5e10, 8e10))
    model = nn.Sequential(nn.Linear(8, 8)).eval()
    result = _measure_quietly(model, [torch.randn(1, 8)], batch_sizes=[1], **FAST)
    assert result.metadata["reference_flops_per_s_range"] == [5e10, 8e10]
    assert any("speed varied by 60%" in note and "50-80 GFLOP/s" in note for note in result.metadata["notes"])
    assert "speed varied by 60%" in result.summary()

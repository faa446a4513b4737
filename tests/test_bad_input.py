"""Bad input ends in one line on stderr and exit code 2, or in a warning; never a traceback or a wrong number (#14)."""
import json
import math
import warnings

import pytest
import torch
from torch import nn

import roofline
from roofline.cli import main
from roofline.errors import RooflineError
from roofline.hardware.profile import HardwareProfile, MemoryLevel, load_profile_file

PROFILE = """\
name: test-gpu
kind: gpu
vendor: test
source: datasheet
reference: "made up for a test"
peak_flops_per_s:
  fp32: 1.0e12
memory_levels:
  - {name: L2, capacity_bytes: 1048576, bandwidth_bytes_per_s: 1.0e12}
  - {name: DRAM, capacity_bytes: 16.0e9, bandwidth_bytes_per_s: 1.0e11}
overhead_s: 1.0e-6
"""

BUILDERS = '''\
import sys

import torch
from torch import nn


class Loud(nn.Linear):
    def forward(self, x):
        print("in forward")
        return super().forward(x)


def loud():
    print("building")
    return Loud(4, 2), (torch.randn(3, 4),)


def exits():
    sys.exit(0)


def string_inputs():
    return nn.Linear(4, 2), "str"
'''


def cli(capsys, *argv):
    code = main(list(argv))
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def one_line_error(capsys, *argv):
    """Run the CLI; it must exit 2 with exactly one stderr line, `roofline: error: ...`, and print nothing else."""
    code, out, err = cli(capsys, *argv)
    lines = err.splitlines()
    assert code == 2, (code, err)
    assert len(lines) == 1 and lines[0].startswith("roofline: error: "), err
    assert out == ""
    return lines[0]


@pytest.fixture
def profile_file(tmp_path):
    """Write a variant of PROFILE: (old, new) replacements, or raw bytes."""
    def write(*changes, raw=None, name="test.yaml"):
        text = PROFILE
        for old, new in changes:
            assert old in text
            text = text.replace(old, new)
        path = tmp_path / name
        path.write_bytes(raw if raw is not None else text.encode())
        return str(path)

    return write


@pytest.fixture
def builders(tmp_path):
    path = tmp_path / "builders.py"
    path.write_text(BUILDERS)
    return path


# ---- tracebacks --------------------------------------------------------------------------------------

@pytest.mark.parametrize("spec, named", [
    ("hf:llama?hidden_size=abc", "hidden_size must be a positive integer, got 'abc'"),
    ("hf:llama?num_hidden_layers=1.5", "num_hidden_layers must be a positive integer, got 1.5"),
    ("hf:gpt2?n_embd=abc", "n_embd (hidden_size) must be a positive integer, got 'abc'"),
    # a field roofline does not check itself: transformers' own validation, in one line naming it
    ("hf:llama?rms_norm_eps=abc", "config field rms_norm_eps='abc' rejected"),
])
def test_hf_config_values_of_the_wrong_type(capsys, spec, named):
    pytest.importorskip("transformers")
    assert named in one_line_error(capsys, "analyze", spec)


def test_a_profile_that_is_not_utf8(capsys, profile_file):
    path = profile_file(raw=PROFILE.replace("vendor: test", "vendor: caf\xe9").encode("latin-1"))
    line = one_line_error(capsys, "hw", "show", path)
    assert "must be UTF-8 text" in line and "0xe9" in line


@pytest.mark.parametrize("change, field", [
    (("  fp32: 1.0e12", "  fp32: 1.0e12\n  16: 2.0e12"), "peak_flops_per_s.16"),
    (("overhead_s: 1.0e-6", "overhead_s: 1.0e-6\nefficiency:\n  1: 0.5"), "efficiency.1"),
    (("overhead_s: 1.0e-6", "overhead_s: 1.0e-6\nfixed_overhead_s:\n  7: 1.0e-6"), "fixed_overhead_s.7"),
])
def test_an_integer_key_in_a_profile_mapping(capsys, profile_file, change, field):
    line = one_line_error(capsys, "hw", "show", profile_file(change))
    assert f"field '{field}'" in line and "keys must be names" in line
    with pytest.raises(RooflineError, match="keys must be names"):  # the same from code
        HardwareProfile("x", "gpu", "v", "datasheet", "r", {"fp32": 1e12, 16: 2e12},
                        (MemoryLevel("DRAM", 1e9, 1e11),), 1e-6)


def test_sweep_with_no_channels(capsys):
    assert "--channels must be a positive number, got 0" in one_line_error(capsys, "sweep", "conv", "--channels", "0",
                                                                          "--hw", "t4")


def test_predict_with_arguments_of_the_wrong_type():
    from roofline.predict import predict

    with pytest.raises(RooflineError, match=r"needs an Analysis .* got NoneType"):
        predict(None, "t4")
    analysis = roofline.analyze("zoo:mlp")
    with pytest.raises(RooflineError, match="needs a HardwareProfile or a profile name, path or 'auto', got int 42"):
        predict(analysis, 42)


# ---- wrong or silent results -----------------------------------------------------------------------

@pytest.mark.parametrize("argv, named", [
    (["sweep", "conv", "--kernel", "0", "--hw", "t4"], "--kernel must be a positive number, got 0"),
    (["sweep", "conv", "--batch", "0", "--hw", "t4"], "--batch must be a positive number, got 0"),
    (["sweep", "conv", "--groups", "1,0", "--hw", "t4"], "--groups must be comma-separated positive integers"),
    (["compare", "zoo:mlp", "--hw", "t4", "--batches", "1,0"], "--batches must be comma-separated positive integers"),
    (["compare", "zoo:mlp", "--hw", "t4", "--batches", "1,-4"], "got '1,-4'"),
])
def test_zero_and_negative_sizes_are_refused(capsys, argv, named):
    assert named in one_line_error(capsys, *argv)


def test_the_api_refuses_zero_sizes_too():
    from roofline.explain import compare, sweep_conv
    from roofline.hardware import load_profile

    t4 = load_profile("t4")
    for bad in ({"kernel": 0}, {"batch": 0}, {"channels": 0}, {"size": (0, 8)}, {"groups": []}):
        arguments = {"channels": 8, "size": (8, 8), "groups": [1, 2], "profile": t4, **bad}
        with pytest.raises(RooflineError):
            sweep_conv(**arguments)
    analysis = roofline.analyze("zoo:mlp")
    for batches in ([1, 0], [1, -4], []):
        with pytest.raises(RooflineError, match="batch"):
            compare(analysis, [t4], ["fp32"], batches)


def test_compare_keeps_the_batch_of_the_input_shape(capsys):
    code, out, _ = cli(capsys, "compare", "zoo:mlp", "--hw", "t4", "--input-shape", "4x1024", "--format", "json")
    assert code == 0 and [row["batch"] for row in json.loads(out)] == [4]  # was silently batch 1
    with pytest.warns(UserWarning, match="--batch 2 is ignored: --batches 1,8 sets the batch sizes"):
        code, out, _ = cli(capsys, "compare", "zoo:mlp", "--hw", "t4", "--batch", "2", "--batches", "1,8", "--format",
                           "json")
    assert code == 0 and [row["batch"] for row in json.loads(out)] == [1, 8]


@pytest.mark.parametrize("spec, named", [
    ("hf:gpt2?n_layer=1&vocab_size=0", "vocab_size must be a positive integer, got 0"),
    ("hf:gpt2?n_layer=0", "n_layer (num_hidden_layers) must be a positive integer, got 0"),
    ("hf:llama?num_hidden_layers=1&num_key_value_heads=5", "num_attention_heads 32 must divide by num_key_value_heads 5"),
])
def test_hf_sizes_that_make_no_model(capsys, spec, named):
    pytest.importorskip("transformers")
    assert named in one_line_error(capsys, "analyze", spec)


def test_hf_overrides_reach_the_fields_derived_from_them():
    pytest.importorskip("transformers")
    # Set after construction, hidden_size=256 left llama's head_dim at 4096 / 32 = 128, so q_proj
    # mapped 256 -> 32 x 128 = 4096 features; built into the config, head_dim = 256 / 32 = 8.
    loaded = roofline.load("hf:llama?hidden_size=256&intermediate_size=512&num_hidden_layers=1&vocab_size=1000")
    attention = loaded.module.model.layers[0].self_attn
    assert attention.q_proj.out_features == 256 and attention.o_proj.in_features == 256


def test_a_duplicate_key_in_a_profile(capsys, profile_file):
    path = profile_file(("overhead_s: 1.0e-6", "overhead_s: 1.0e-6\noverhead_s: 9.0e-6"))
    line = one_line_error(capsys, "hw", "show", path)
    # overhead_s is on line 11 and again on line 12 of the file
    assert "duplicate key 'overhead_s' (first given at line 11)" in line and "at line 12" in line
    nested = profile_file(("  fp32: 1.0e12", "  fp32: 1.0e12\n  fp32: 2.0e12"), name="nested.yaml")
    with pytest.raises(RooflineError, match="duplicate key 'fp32'"):
        load_profile_file(nested)


def test_the_last_memory_level_needs_a_bandwidth(capsys, profile_file):
    no_dram = ("bandwidth_bytes_per_s: 1.0e11", "bandwidth_bytes_per_s: null")
    line = one_line_error(capsys, "hw", "show", profile_file(no_dram))
    assert "field 'memory_levels[1].bandwidth_bytes_per_s'" in line and "the last memory level (DRAM)" in line
    # A detected profile leaves bandwidths unknown until measured: it loads and shows; predicting refuses.
    detected = profile_file(no_dram, ("source: datasheet", "source: detected"), name="detected.yaml")
    code, out, _ = cli(capsys, "hw", "show", detected)
    assert code == 0 and "test-gpu" in out
    line = one_line_error(capsys, "predict", "zoo:mlp", "--hw", detected)
    assert "the last memory level (DRAM) needs a bandwidth for prediction" in line


def test_a_cache_with_no_bandwidth_is_costed_at_the_next_level(profile_file):
    """The stated rule: an op that fits a level with a null bandwidth streams from the next level that has one."""
    from roofline.predict import predict

    profile = load_profile_file(profile_file(("bandwidth_bytes_per_s: 1.0e12", "bandwidth_bytes_per_s: null")))
    model = nn.Sequential(nn.Linear(16, 16)).to("meta")
    ops = predict(roofline.analyze(model, inputs=[torch.randn(1, 16, device="meta")]), profile).ops
    # fp32 linear, batch 1: reads 16 inputs, 256 weights and 16 biases, writes 16 outputs = 304 x 4 bytes, in L2's 1 MiB
    assert int(ops["bytes"].sum()) == 304 * 4
    assert set(ops["memory_level"]) == {"DRAM"}
    assert ops["memory_s"].sum() == pytest.approx(304 * 4 / 1e11)


@pytest.mark.parametrize("argv", [
    ["measure", "zoo:mlp", "--min-run-time", "-1"],
    ["measure", "zoo:mlp", "--min-run-time", "0"],
    ["report", "zoo:mlp", "--hw", "t4", "--min-run-time", "-1", "--out", "unused"],
])
def test_a_negative_timing_budget(capsys, argv):
    assert "--min-run-time must be a positive number" in one_line_error(capsys, *argv)


def test_a_negative_timing_budget_from_the_api():
    with pytest.raises(RooflineError, match=r"min_run_time_s \(--min-run-time\) must be a positive number"):
        roofline.measure(nn.Linear(2, 2), inputs=[torch.randn(1, 2)], min_run_time_s=-1, progress=False)
    from roofline.timing import time_callable

    with pytest.raises(RooflineError, match="min_run_time_s"):
        time_callable(lambda: None, min_run_time_s=math.nan)


def test_a_builder_that_exits(capsys, builders, tmp_path):
    assert "exits() called sys.exit(0) instead of returning a module" in one_line_error(
        capsys, "analyze", f"{builders}:exits")
    exiting = tmp_path / "exiting.py"
    exiting.write_text("import sys\nsys.exit(3)\n")
    assert "called sys.exit(3)" in one_line_error(capsys, "analyze", f"{exiting}:make")


def test_a_builder_that_prints_leaves_json_on_stdout_alone(capsys, tmp_path):
    builders = tmp_path / "loud.py"
    builders.write_text('print("importing the builders")\n' + BUILDERS)
    code, out, err = cli(capsys, "analyze", f"{builders}:loud", "--format", "json")
    assert code == 0
    assert json.loads(out)["totals"]["macs"] == 3 * 4 * 2  # batch 3, 4 -> 2 features
    assert "importing the builders" in err and "building" in err and "in forward" in err
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # noisy timings at this budget are not the point
        code, out, err = cli(capsys, "measure", f"{builders}:loud", "--min-run-time", "0.001", "--rounds", "1",
                             "--batch-sizes", "3", "--no-progress", "--format", "json")
    assert code == 0 and json.loads(out)["end_to_end"][0]["batch"] == 3 and "in forward" in err


def test_options_a_model_ignores_are_warned_about(capsys):
    with pytest.warns(UserWarning, match=r"--seq-len\) is ignored: zoo:convnet takes no token sequences"):
        code, _, _ = cli(capsys, "analyze", "zoo:convnet", "--seq-len", "7")
    assert code == 0
    with pytest.warns(UserWarning, match=r"--batch\) 4 replaces the first dimension of .*--input-shape\) 2x1024"):
        code, out, _ = cli(capsys, "analyze", "zoo:mlp", "--input-shape", "2x1024", "--batch", "4", "--format", "json")
    assert code == 0 and json.loads(out)["inputs"] == [[4, 1024]]
    with pytest.warns(UserWarning, match=r"--seq-len\) is ignored: torchvision:resnet18 takes images"):
        roofline.load("torchvision:resnet18", seq_len=32)
    with pytest.warns(UserWarning, match=r"--batch\) 5 is ignored: .* comes with its own inputs, shapes 2x3"):
        roofline.load(nn.Linear(3, 3), inputs=torch.randn(2, 3), batch=5)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # a sequence model uses --seq-len: nothing to warn about
        assert roofline.load("zoo:lstm", seq_len=7).input_shapes() == [[1, 7, 64]]


def test_hf_options_that_are_ignored_are_warned_about():
    pytest.importorskip("transformers")
    with pytest.warns(UserWarning, match=r"--input-shape\) is ignored: hf:gpt2\?n_layer=1 builds its own inputs"):
        roofline.load("hf:gpt2?n_layer=1", input_shape="1x4")
    with pytest.warns(UserWarning, match=r"--seq-len\) is ignored: hf:vit\?num_hidden_layers=1 takes images"):
        roofline.load("hf:vit?num_hidden_layers=1", seq_len=16)


def test_messages_that_say_what_is_wrong(capsys, builders):
    pytest.importorskip("transformers")
    line = one_line_error(capsys, "analyze", "hf:llama?num_attention_heads=7")
    assert "hidden_size 4096 must divide by num_attention_heads 7" in line and "such as 8" in line
    line = one_line_error(capsys, "analyze", f"{builders}:string_inputs")
    assert "the inputs must be tensors" in line and "got str 'str'" in line
    with pytest.raises(RooflineError, match="input_shape='1x3x224x224'") as caught:
        roofline.load(nn.Linear(4, 4))
    assert not str(caught.value).startswith("--input-shape")


@pytest.mark.parametrize("argv, named", [
    (["analyze", "zoo:mlp", "--batch", "x"], "argument --batch: invalid int value: 'x' (usage: roofline analyze --help)"),
    (["predict", "zoo:mlp"], "the following arguments are required: --hw (usage: roofline predict --help)"),
    (["analyze", "zoo:mlp", "--by", "rows"], "argument --by: invalid choice: 'rows'"),
    (["hw", "bogus"], "invalid choice: 'bogus'"),
    ([], "the following arguments are required: COMMAND (usage: roofline --help)"),
])
def test_usage_errors_are_one_line(capsys, argv, named):
    assert named in one_line_error(capsys, *argv)


def test_version(capsys):
    with pytest.raises(SystemExit) as exited:
        main(["--version"])
    assert exited.value.code == 0 and capsys.readouterr().out.strip() == f"roofline {roofline.__version__}"


# ---- measurement noise ---------------------------------------------------------------------------

def test_a_figure_is_noisy_when_the_machine_varied_more_than_its_iqr():
    from roofline.measure.api import _mark_unsteady

    # The case in #14: IQR 8.5% of the median, reference matmul 87% apart: the IQR understates it.
    rows = [{"name": "batch 1", "latency_s": 1.0, "iqr_s": 0.085, "noisy": False},
            {"name": "wide", "latency_s": 1.0, "iqr_s": 0.95, "noisy": True}]
    assert [row["name"] for row in _mark_unsteady(rows, "latency_s", 0.87)] == ["batch 1"]
    assert rows[0]["noisy"] and rows[1]["noisy"]
    # A steady machine (spread under the 10% IQR threshold) marks nothing, even a row with a smaller IQR.
    steady = [{"name": "a", "measured_s": 1.0, "iqr_s": 0.01, "noisy": False}]
    assert _mark_unsteady(steady, "measured_s", 0.08) == [] and not steady[0]["noisy"]


def test_an_unsteady_machine_marks_every_figure_noisy_and_says_why(monkeypatch):
    import importlib

    from roofline.timing import Measurement

    measure_module = importlib.import_module("roofline.measure.api")  # `roofline.measure` is also the function

    def steady_blocks(fns, rounds, labels, step, device, **timer):
        """Every item timed at 1 ms with a 1% IQR: steady by its own blocks."""
        for index, fn in enumerate(fns):
            fn()
            step(index)
        return [Measurement((0.99e-3, 1.0e-3, 1.0e-3, 1.0e-3, 1.01e-3), 1, device, 1, label) for label in labels]

    monkeypatch.setattr(measure_module, "time_interleaved", steady_blocks)
    # ... while the reference matmul ran between 50 and 93.5 GFLOP/s: the machine's speed 87% apart.
    monkeypatch.setattr(measure_module, "speed_range", lambda times_s, flops: (5e10, 9.35e10))
    model = nn.Sequential(nn.Linear(8, 8), nn.ReLU()).eval()
    with pytest.warns(UserWarning, match=r"4 of 4 figures measured noisy \(4 as the machine's own speed varied by 87%.*"
                                         r"raise --min-run-time \(min_run_time_s= in Python\)"):
        result = roofline.measure(model, inputs=[torch.randn(1, 8)], batch_sizes=[1, 2], progress=False)
    assert result.layers["noisy"].all() and result.end_to_end["noisy"].all()
    meta = result.metadata
    assert meta["machine_speed_spread"] == {"layers": pytest.approx(0.87), "end_to_end": pytest.approx(0.87)}
    assert meta["noisy_from_machine_speed"] == ["0", "1", "batch 1", "batch 2"]
    assert any("marked noisy though their own IQR is small" in note and "87%" in note for note in meta["notes"])
    assert "(! noisy: the machine's own speed varied more than its IQR)" in result.summary()
    # The same blocks on a steady machine (spread 2%): nothing is noisy.
    monkeypatch.setattr(measure_module, "speed_range", lambda times_s, flops: (5e10, 5.1e10))
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        steady = roofline.measure(model, inputs=[torch.randn(1, 8)], batch_sizes=[1], progress=False)
    assert steady.metadata["noisy_from_machine_speed"] == [] and not steady.layers["noisy"].any()


def test_the_noise_warning_names_the_flag():
    from roofline.timing import Measurement

    warning = Measurement((1.0, 2.0, 3.0, 4.0, 5.0), 1, "cpu", 1, "layer").warning
    assert warning is not None and "raise --min-run-time (min_run_time_s= in Python)" in warning

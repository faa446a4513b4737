"""The analyze command: output formats, the JSON contract, and one-line errors with exit code 2."""
import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from roofline.cli import main

FIXTURE = Path(__file__).parent / "fixtures" / "user_model.py"


def run(capsys, *argv):
    code = main(list(argv))
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def test_json_contract(capsys):
    code, out, _ = run(capsys, "analyze", "zoo:mlp", "--format", "json", "--precision", "fp16")
    assert code == 0
    data = json.loads(out)
    assert set(data) == {"model", "precision", "inputs", "totals", "layers", "unsupported_ops"}
    assert data["model"] == "zoo:mlp" and data["precision"] == "fp16" and data["inputs"] == [[1, 1024]]
    assert set(data["totals"]) == {
        "macs", "flops", "params", "model_size_bytes", "bytes_read", "bytes_written",
        "peak_activation_bytes", "arithmetic_intensity",
    }
    assert set(data["layers"][0]) == {
        "name", "type", "macs", "flops", "params", "weight_bytes", "bytes_read", "bytes_written",
        "fused_bytes", "arithmetic_intensity",
    }
    # 1024x4096 + 4096x4096 + 4096x1000 MACs at batch 1.
    assert data["totals"]["macs"] == 1024 * 4096 + 4096 * 4096 + 4096 * 1000
    assert data["unsupported_ops"] == []


@pytest.mark.parametrize("fmt, marker", [("table", "zoo:convnet @ fp32"), ("csv", "name,type,macs"),
                                          ("markdown", "| name | type |")])
def test_formats(capsys, fmt, marker):
    code, out, _ = run(capsys, "analyze", "zoo:convnet", "--format", fmt)
    assert code == 0 and marker in out


@pytest.mark.parametrize("by, column", [("op", "aten.convolution"), ("type", "Conv2d")])
def test_group_by(capsys, by, column):
    code, out, _ = run(capsys, "analyze", "zoo:convnet", "--by", by, "--format", "csv")
    assert code == 0 and column in out


def test_file_spec_and_batch(capsys):
    code, out, _ = run(capsys, "analyze", f"{FIXTURE}:make", "--input-shape", "4x16", "--format", "json")
    assert code == 0
    assert json.loads(out)["totals"]["macs"] == 4 * (16 * 32 + 32 * 4)
    code, out, _ = run(capsys, "analyze", f"{FIXTURE}:make_with_inputs", "--format", "json")
    assert json.loads(out)["inputs"] == [[2, 16]]


@pytest.mark.parametrize(
    "argv, message",
    [
        (["analyze", "nosuch:thing"], "unknown model spec 'nosuch:thing'"),
        (["analyze", "torchvision:resnet51"], "unknown torchvision model 'resnet51' (did you mean: resnet50"),
        (["analyze", "hf:lama"], "unknown Hugging Face model type 'lama' (did you mean: llama"),
        (["analyze", "hf:gpt2?n_layerz=2"], "hf:gpt2 config has no field 'n_layerz'"),
        (["analyze", "zoo:convnett"], "unknown zoo model 'convnett' (did you mean: convnet"),
        (["analyze", f"{FIXTURE}:mkae"], "does not define 'mkae' (did you mean: make"),
        (["analyze", "missing_file.py:make"], "model file 'missing_file.py' not found"),
        (["analyze", f"{FIXTURE}:broken"], "failed: ValueError: cannot build"),
        (["analyze", f"{FIXTURE}:make"], "give the input shape"),
        (["analyze", "zoo:mlp", "--input-shape", "1x3xfoo"], "malformed input shape '1x3xfoo'"),
        (["analyze", "zoo:mlp", "--precision", "fp13"], "unknown precision 'fp13'"),
        (["analyze", "zoo:mlp", "--input-shape", "1x999"], "forward pass failed in module '0' (Linear)"),
        (["analyze", f"{FIXTURE}:failing"], "forward pass failed in module 'second' (Linear)"),
        (["analyze", "zoo:mlp", "--batch", "0"], "batch must be a positive integer"),
    ],
)
def test_bad_input_is_one_line_and_exit_2(capsys, argv, message):
    code, _, err = run(capsys, *argv)
    assert code == 2
    assert err.startswith("roofline: error: ")
    assert message in err
    assert err.count("\n") == 1  # one line, no traceback


def test_module_entry_point_subprocess():
    done = subprocess.run([sys.executable, "-m", "roofline", "analyze", "zoo:nope"], capture_output=True, text=True,
                          check=False)
    assert done.returncode == 2
    assert done.stderr.strip().startswith("roofline: error: unknown zoo model 'nope'")
    assert "Traceback" not in done.stderr


@pytest.mark.parametrize("command", ["report", "predict"])
@pytest.mark.parametrize(("hw", "message"), [
    ("t4", "cannot recalibrate: NVIDIA T4"),  # a GPU profile on a machine without one
    ("epyc-7763", "is not a measured profile with efficiency factors"),
])
def test_recalibrate_needs_a_measured_profile_of_a_device_here(capsys, tmp_path, command, hw, message):
    if hw == "t4" and torch.cuda.is_available():
        pytest.skip("a GPU is present")
    extra = ["--no-progress", "--out", str(tmp_path / "r")] if command == "report" else []
    code, _, err = run(capsys, command, "zoo:mlp", "--hw", hw, "--recalibrate", *extra)
    assert code == 2 and message in err and err.count("\n") == 1


@pytest.mark.filterwarnings("ignore:the machine is busy")  # a tiny profile; its figures are not checked
def test_predict_recalibrate_predicts_with_the_factors_timed_now(capsys, tmp_path, monkeypatch, tiny_bench):
    import dataclasses

    from roofline import calibrate
    from roofline.hardware import save_profile

    measured = calibrate.measure_profile("cpu", progress=False, config=tiny_bench)
    save_profile(measured, tmp_path / "p.yaml")
    hw = ["--hw", str(tmp_path / "p.yaml"), "--format", "json"]
    _, out, _ = run(capsys, "predict", "zoo:mlp", *hw, "--calibrated")
    stored = json.loads(out)["totals"]["predicted_latency_s"]

    def slower_now(profile, device=None, progress=True):  # the machine at half the speed it was profiled at
        assert device == "cpu" and progress is False
        def scaled(factors, by):
            return {k: v * by for k, v in factors.items()}

        return dataclasses.replace(profile, efficiency=scaled(profile.efficiency, 0.5),
                                   fixed_overhead_s=scaled(profile.fixed_overhead_s, 2))

    monkeypatch.setattr(calibrate, "recalibrate", slower_now)
    code, out, _ = run(capsys, "predict", "zoo:mlp", *hw, "--recalibrate", "--no-progress")
    data = json.loads(out)
    assert code == 0 and data["calibrated"] is True  # --recalibrate implies --calibrated
    assert data["totals"]["predicted_latency_s"] > 1.2 * stored  # the recalibrated profile predicted


def test_version(capsys):
    import re

    with pytest.raises(SystemExit) as exit_info:
        main(["--version"])
    assert exit_info.value.code == 0
    # The one version is pyproject.toml's; the package's fallback __version__ must not drift from it.
    pyproject = (Path(__file__).parents[1] / "pyproject.toml").read_text(encoding="utf-8")
    declared = re.search(r'^version = "([^"]+)"$', pyproject, re.MULTILINE).group(1)  # tomllib is 3.11+
    assert capsys.readouterr().out == f"roofline {declared}\n"
    import roofline

    assert roofline.__version__ == declared

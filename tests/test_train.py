"""--mode train (issue 17): a training step's counts, attribution, memory and time against independent references."""
from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest
import torch
from torch import nn

from roofline.cli import main
from roofline.train import analyze_train, checkpoint_whatif, predict_step

REPO = Path(__file__).resolve().parents[1]
FIXTURE = REPO / "tests" / "fixtures" / "train_models.py"
LOSS_FIXTURE = REPO / "tests" / "fixtures" / "train_loss.py"
sys.path.insert(0, str(REPO / "benchmarks"))
import train_references

pytestmark = pytest.mark.filterwarnings("ignore::UserWarning")


def _cli(capsys, *argv):
    code = main(list(argv))
    captured = capsys.readouterr()
    return code, captured.out, captured.err


# ---- references ----------------------------------------------------------------------------------

@pytest.mark.parametrize("spec", ["torchvision:resnet18", "torchvision:vit_b_16", "hf:gpt2"])
def test_flops_match_flop_counter_forward_and_backward(spec):
    row = train_references.flop_reference(spec)
    assert abs(row["difference"]) < 0.01, row


def test_matmul_and_conv_backward_are_twice_forward():
    result = analyze_train("torchvision:resnet18", warn_unsupported=False)
    layers = result.layers.set_index("name")
    for name in ("layer1.0.conv1", "layer3.1.conv2", "layer2.0.downsample.0", "fc"):
        assert layers.at[f"{name} (backward)", "macs"] == 2 * layers.at[name, "macs"], name
    # The stem's input needs no gradient: only the weight's, 1 x the forward.
    assert layers.at["conv1 (backward)", "macs"] == layers.at["conv1", "macs"]


@pytest.mark.parametrize("spec", ["zoo:mlp", "zoo:convnet", "zoo:tiny-transformer"])
def test_peak_memory_matches_memtracker(spec):
    row = train_references.memory_reference(spec)
    ours, theirs = row["ours"], row["memtracker"]
    assert ours["total"] == pytest.approx(theirs["total"], rel=0.10)
    for name in ("parameters", "gradients", "optimizer_state", "activations", "temporaries"):
        # Within 10%, or within 1% of the peak where MemTracker's figure is (near) zero.
        assert abs(ours[name] - theirs.get(name, 0.0)) <= max(0.10 * theirs.get(name, 0.0), 0.01 * theirs["total"]), name


def test_peak_memory_matches_memtracker_when_activations_dominate():
    row = train_references.memory_reference("zoo:convnet", batch=16)
    assert row["ours"]["activations"] > row["ours"]["parameters"]  # the peak is in backward, activations lead
    for name in ("total", "activations", "gradients", "temporaries"):
        assert row["ours"][name] == pytest.approx(row["memtracker"][name], rel=0.10), name


@pytest.mark.parametrize("spec", ["hf:llama?num_hidden_layers=2", "hf:gpt2?n_layer=2"])
def test_dense_transformer_rule(spec):
    row = train_references.formula_reference(spec, seq_len=256)
    assert abs(row["difference"]) < 0.03, row


# ---- attribution, roles, optimizer -----------------------------------------------------------------

def test_rows_have_phases_and_add_up():
    result = analyze_train("zoo:tiny-transformer", warn_unsupported=False)
    layers = result.layers
    assert set(layers["phase"]) == {"forward", "backward", "optimizer"}
    assert int(layers["flops"].sum()) == result.totals["flops"]
    assert result.totals["forward_flops"] + result.totals["backward_flops"] + result.totals["optimizer_flops"] \
        == result.totals["flops"]
    forward = set(layers.loc[layers["phase"] == "forward", "name"])
    for name in layers.loc[layers["phase"] == "backward", "name"]:
        assert name.removesuffix(" (backward)") in forward | {"(loss)"}, name
    # Every parameter's gradient is written once, at the gradient role, in backward.
    records = result.records
    params = result.totals["params"]
    assert int(records.loc[records["phase"] == "backward", "grad_written"].sum()) == params


@pytest.mark.parametrize(("optimizer", "states"), [("adamw", 2), ("sgd", 1)])
def test_optimizer_state_and_rows(optimizer, states):
    result = analyze_train("zoo:mlp", optimizer=optimizer, warn_unsupported=False)
    params = result.totals["params"]
    assert result.training.state_elements == states * params
    optimizer_rows = result.layers[result.layers["phase"] == "optimizer"]
    assert set(optimizer_rows["name"]) == {f"{i} (optimizer)" for i in (0, 2, 4)}  # the three Linear layers
    # Each parameter's state is read at least once per step, at fp32.
    records = result.records[result.records["phase"] == "optimizer"]
    assert int(records["state_read"].sum()) >= states * params
    assert int(records["grad_read"].sum()) >= params


def test_mixed_precision_roles():
    fp32 = analyze_train("zoo:mlp", warn_unsupported=False)
    bf16 = fp32.with_precision("bf16")
    assert bf16.precision.name == "bf16-mixed"
    params = fp32.totals["params"]
    t = bf16.totals
    assert t["weights_bytes"] == 4 * params and t["weight_copies_bytes"] == 2 * params
    assert t["grads_bytes"] == 4 * params and t["optimizer_state_bytes"] == 8 * params
    r32, r16 = fp32.records, bf16.records
    # The optimizer's bytes do not change (fp32 master weights, grads, state); forward bytes halve.
    assert r16.loc[r16["phase"] == "optimizer", "bytes"].sum() == r32.loc[r32["phase"] == "optimizer", "bytes"].sum()
    forward = r32["phase"] == "forward"
    assert r16.loc[forward, "bytes"].sum() == pytest.approx(r32.loc[forward, "bytes"].sum() / 2, rel=0.01)
    with pytest.raises(Exception, match="not a training precision"):
        fp32.with_precision("int8")


def test_user_loss_from_the_model_file():
    result = analyze_train(f"{LOSS_FIXTURE}:pair", warn_unsupported=False)
    assert result.training.loss == "loss"
    loss_ops = result.records[result.records["layer"] == "(loss)"]["op"].tolist()
    assert "aten.pow" in loss_ops and "aten.mean" in loss_ops


# ---- time ------------------------------------------------------------------------------------------

def test_step_time_mfu_and_checkpointing():
    result = analyze_train("hf:gpt2?n_layer=2", seq_len=256, batch=2, warn_unsupported=False)
    step = predict_step(result, "h100-sxm")
    assert step.step_s == pytest.approx(sum(step.phases.values()))
    assert step.tokens_per_s == pytest.approx(2 * 256 / step.step_s)
    assert step.mfu == pytest.approx(step.model_flops / (step.step_s * step.peak_flops_per_s))
    assert 0 < step.mfu < 1
    whatif = checkpoint_whatif(result, "h100-sxm")
    blocks = result.layers[result.layers["path"].str.startswith("transformer.h.") & (result.layers["phase"] == "forward")]
    assert whatif.blocks == 2 and whatif.recompute_flops == int(blocks["flops"].sum())
    assert whatif.step_s_with > whatif.step_s and 0 < whatif.peak_bytes_with < whatif.peak_bytes


# ---- measurement -----------------------------------------------------------------------------------

def test_measured_step_rows_join_the_analysis():
    from roofline.train_measure import measure_train

    measured = measure_train("zoo:convnet", steps=2, min_run_time_s=0.05)
    names = set(analyze_train("zoo:convnet", warn_unsupported=False).layers["name"])
    assert set(measured.layers["name"]) <= names
    assert {"forward", "backward", "optimizer"} <= set(measured.layers["phase"])
    assert measured.end_to_end.iloc[0]["latency_s"] > 0 and (measured.layers["measured_s"] >= 0).all()


# ---- bad input: one line, exit 2 --------------------------------------------------------------------

def test_no_trainable_parameters(capsys):
    code, _, err = _cli(capsys, "analyze", f"{FIXTURE}:frozen", "--mode", "train")
    assert code == 2 and err.count("\n") == 1 and "no trainable parameters" in err


def test_output_without_a_scalar_loss(capsys):
    code, _, err = _cli(capsys, "analyze", f"{FIXTURE}:argmax", "--mode", "train")
    assert code == 2 and err.count("\n") == 1 and "cannot be reduced to a scalar loss" in err


def test_backward_without_a_rule_is_listed_with_its_count(capsys):
    code, out, _ = _cli(capsys, "analyze", f"{FIXTURE}:upsample", "--mode", "train", "--format", "json")
    assert code == 0
    data = json.loads(out)
    assert {"op": "aten.upsample_bilinear2d_backward", "count": 1} in data["unsupported_ops"]
    row = next(r for r in data["layers"] if r["name"] == "up (backward)")
    assert row["flops"] == 0 and row["bytes_read"] > 0  # not counted, but listed and its bytes kept
    code, out, _ = _cli(capsys, "analyze", f"{FIXTURE}:upsample", "--mode", "train")
    assert "unsupported ops (FLOPs not counted, bytes counted): aten.upsample_bilinear2d_backward x1" in out


def test_a_failing_user_loss_is_one_line(tmp_path, capsys):
    spec = tmp_path / "bad_loss.py"
    spec.write_text(FIXTURE.read_text() + "\n\ndef loss(output):\n    return output.mean()\n")
    code, _, err = _cli(capsys, "analyze", f"{spec}:argmax", "--mode", "train")
    assert code == 2 and err.count("\n") == 1 and "the loss failed" in err


def test_training_precision_and_mode_errors(capsys):
    code, _, err = _cli(capsys, "analyze", "zoo:mlp", "--mode", "train", "--precision", "int8")
    assert code == 2 and "not a training precision" in err and err.count("\n") == 1


def test_loss_must_be_scalar():
    class Net(nn.Module):
        def __init__(self):
            super().__init__()
            self.fc = nn.Linear(4, 4)

        def forward(self, x):
            return self.fc(x)

    with pytest.raises(Exception, match="loss must be a scalar"):
        analyze_train(Net().to("meta"), [torch.randn(2, 4, device="meta")], loss=lambda out: out * 2)


def test_cli_train_json_and_predict(capsys):
    code, out, _ = _cli(capsys, "predict", "zoo:mlp", "--mode", "train", "--hw", "h100-sxm", "--format", "json",
                        "--precision", "bf16")
    assert code == 0
    data = json.loads(out)
    assert data["training"]["mfu"] > 0 and data["training"]["memory"]["peak_bytes"] > 0

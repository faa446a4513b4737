"""Hand-derived expectations: every expected value is written from the formula, not from the tool."""
import pytest
import torch
import torch.nn.functional as F
from torch import nn

import roofline


def analyze_module(module, *inputs, precision="fp32"):
    return roofline.analyze(module.eval(), inputs=list(inputs), precision=precision, warn_unsupported=False)


def only_layer(result):
    rows = result.layers[result.layers["ops"] > 0]
    assert len(rows) == 1
    return rows.iloc[0]


def test_grouped_conv():
    # 64 -> 128 channels, groups 8, 3x3, 1x64x28x28, padding 1: output 1x128x28x28.
    conv = nn.Conv2d(64, 128, 3, padding=1, groups=8, bias=False)
    row = only_layer(analyze_module(conv, torch.randn(1, 64, 28, 28)))
    macs = 1 * 128 * 28 * 28 * (64 // 8) * 3 * 3  # 7,225,344
    assert row["macs"] == macs == 7_225_344
    assert row["flops"] == 2 * macs
    params = 128 * (64 // 8) * 3 * 3  # 9,216
    assert row["params"] == params
    elements = 64 * 28 * 28 + params + 128 * 28 * 28
    for precision, size in (("fp32", 4), ("fp16", 2), ("int8", 1)):
        row = only_layer(analyze_module(conv, torch.randn(1, 64, 28, 28), precision=precision))
        assert row["weight_bytes"] == params * size
        assert row["bytes_read"] + row["bytes_written"] == elements * size


def test_depthwise_conv():
    # 32 channels, groups 32, 3x3, stride 2, with bias: 1x32x56x56 -> 1x32x28x28.
    conv = nn.Conv2d(32, 32, 3, stride=2, padding=1, groups=32, bias=True)
    result = analyze_module(conv, torch.randn(1, 32, 56, 56))
    row = only_layer(result)
    macs = 32 * 28 * 28 * 1 * 3 * 3  # 225,792
    assert row["macs"] == macs
    assert row["flops"] == 2 * macs + 32 * 28 * 28  # bias adds are FLOPs, not MACs
    assert row["params"] == 32 * 9 + 32
    bytes_moved = 4 * (32 * 56 * 56 + 32 * 9 + 32 + 32 * 28 * 28)
    assert row["bytes_read"] + row["bytes_written"] == bytes_moved
    assert row["arithmetic_intensity"] == pytest.approx((2 * macs + 32 * 28 * 28) / bytes_moved)
    assert result.records.iloc[0]["op_class"] == "grouped_conv"


def test_transposed_conv():
    # ConvTranspose2d 16 -> 8, 4x4, stride 2, padding 1: 1x16x10x10 -> 1x8x20x20.
    conv = nn.ConvTranspose2d(16, 8, 4, stride=2, padding=1, bias=False)
    row = only_layer(analyze_module(conv, torch.randn(1, 16, 10, 10)))
    # Each of the 16x10x10 input pixels scatters into 8 output channels over a 4x4 kernel.
    assert row["macs"] == 1 * 16 * 10 * 10 * 8 * 4 * 4 == 204_800


def test_dilated_conv():
    # 3x3 dilation 2, padding 0 on 1x4x20x20: effective kernel 5, output 16x16.
    conv = nn.Conv2d(4, 6, 3, dilation=2, bias=False)
    row = only_layer(analyze_module(conv, torch.randn(1, 4, 20, 20)))
    assert row["macs"] == 6 * 16 * 16 * 4 * 3 * 3


def test_conv1d_and_conv3d():
    conv1 = nn.Conv1d(3, 5, 7, bias=False)  # 1x3x50 -> 1x5x44
    assert only_layer(analyze_module(conv1, torch.randn(1, 3, 50)))["macs"] == 5 * 44 * 3 * 7
    conv3 = nn.Conv3d(2, 4, 3, bias=False)  # 1x2x6x6x6 -> 1x4x4x4x4
    assert only_layer(analyze_module(conv3, torch.randn(1, 2, 6, 6, 6)))["macs"] == 4 * 64 * 2 * 27


class SdpaAttention(nn.Module):
    def forward(self, q, k, v):
        return F.scaled_dot_product_attention(q, k, v)


class MatmulAttention(nn.Module):
    def forward(self, q, k, v):
        scores = q @ k.transpose(-2, -1) / q.shape[-1] ** 0.5
        return scores.softmax(-1) @ v


@pytest.mark.parametrize("device", ["meta", "cpu"])
def test_attention_sdpa_equals_explicit_matmuls(device):
    batch, heads, length, dim = 2, 4, 16, 8
    q, k, v = (torch.randn(batch, heads, length, dim, device=device) for _ in range(3))
    sdpa = analyze_module(SdpaAttention(), q, k, v).totals
    manual = analyze_module(MatmulAttention(), q, k, v).totals
    macs = 2 * batch * heads * length * length * dim  # Q K^T and P V
    assert sdpa["macs"] == manual["macs"] == macs
    # Fused attention never writes the 2x4x16x16 score matrix: fewer bytes than the eager version.
    assert sdpa["bytes_written"] == 4 * batch * heads * length * dim
    assert manual["bytes_written"] > sdpa["bytes_written"]


def test_embedding_reads_selected_rows_only():
    table = nn.Embedding(50_000, 64)
    tokens = torch.randint(0, 50_000, (2, 10))
    row = only_layer(analyze_module(table, tokens))
    assert row["macs"] == 0 and row["flops"] == 0
    assert row["params"] == 50_000 * 64
    # 20 rows of 64 fp32 values, plus 20 int64 indices; writes 20 x 64 fp32.
    assert row["weight_bytes"] == 20 * 64 * 4
    assert row["bytes_read"] == 20 * 64 * 4 + 20 * 8
    assert row["bytes_written"] == 20 * 64 * 4


@pytest.mark.parametrize("device", ["meta", "cpu"])
def test_lstm(device):
    steps, batch, features, hidden = 5, 3, 10, 20
    with torch.device(device):
        lstm = nn.LSTM(features, hidden)
    totals = analyze_module(lstm, torch.randn(steps, batch, features, device=device)).totals
    gates = 4
    macs = steps * batch * gates * hidden * (features + hidden)
    assert totals["macs"] == macs
    other = steps * batch * (3 * gates * hidden + 9 * hidden)
    assert totals["flops"] == 2 * macs + other
    assert totals["params"] == gates * hidden * (features + hidden) + 2 * gates * hidden


def test_gru_meta_and_cpu_agree():
    counts = []
    for device in ("meta", "cpu"):
        with torch.device(device):
            gru = nn.GRU(10, 20, num_layers=2)
        counts.append(analyze_module(gru, torch.randn(5, 3, 10, device=device)).totals["macs"])
    # Per layer: 3 gates x hidden x (input + hidden) per step and batch entry.
    assert counts[0] == counts[1] == 5 * 3 * 3 * 20 * ((10 + 20) + (20 + 20))


def test_peak_activation_chain():
    # Sequential keeps only the current input alive: the peak is x + h1 + h2 at the second layer,
    # x (held by the caller) + relu output + the last linear's output afterwards is smaller.
    model = nn.Sequential(nn.Linear(100, 400), nn.ReLU(), nn.Linear(400, 50))
    totals = analyze_module(model, torch.randn(8, 100)).totals
    x, h1, h2 = 8 * 100, 8 * 400, 8 * 400
    assert totals["peak_activation_bytes"] == 4 * (x + h1 + h2)


class Residual(nn.Module):
    def __init__(self):
        super().__init__()
        self.a = nn.Linear(64, 64)
        self.b = nn.Linear(64, 64)

    def forward(self, x):
        return x + self.b(self.a(x))


def test_peak_activation_residual_and_rows():
    result = analyze_module(Residual(), torch.randn(4, 64))
    n = 4 * 64
    # While b runs: x (kept for the skip), a's output and b's output are alive (3n); then a's output
    # is freed and the add writes its sum while x and b's output are alive (3n again).
    assert result.totals["peak_activation_bytes"] == 4 * 3 * n
    names = list(result.layers["name"])
    assert names == ["a", "b", "(model)"]  # the residual add is the root module's own row
    own = result.layers.set_index("name").loc["(model)"]
    assert own["flops"] == n and own["macs"] == 0


def test_repeated_calls_are_separate_rows_and_params_count_once():
    class Twice(nn.Module):
        def __init__(self):
            super().__init__()
            self.layer = nn.Linear(8, 8)

        def forward(self, x):
            return self.layer(self.layer(x))

    result = analyze_module(Twice(), torch.randn(1, 8))
    layers = result.layers.set_index("name")
    assert list(layers.index) == ["layer", "layer#1"]
    assert layers.loc["layer", "params"] == 72 and layers.loc["layer#1", "params"] == 0
    assert layers.loc["layer#1", "weight_bytes"] == (64 + 8) * 4  # reused weight and bias are read again
    assert result.totals["params"] == 72


def test_rows_add_up_to_totals():
    result = roofline.analyze("zoo:mobile-block")
    layers, totals = result.layers, result.totals
    for column in ("macs", "flops", "bytes_read", "bytes_written", "params"):
        assert layers[column].sum() == pytest.approx(totals[column])
    assert result.records["flops"].sum() == totals["flops"]


def test_unsupported_op_is_listed_and_warned():
    class Odd(nn.Module):
        def forward(self, x):
            return torch.special.bessel_j0(x) + 1

    with pytest.warns(UserWarning, match="bessel_j0"):
        result = roofline.analyze(Odd(), inputs=[torch.randn(3, 3)])
    assert result.unsupported_ops == [{"op": "aten.special_bessel_j0", "count": 1}]
    assert result.totals["flops"] == 9  # only the add; the unsupported op's FLOPs are not guessed
    assert result.totals["bytes_read"] > 9 * 4  # its bytes are counted


def test_pooling_and_norm_constants():
    pool = nn.MaxPool2d(2)
    row = only_layer(analyze_module(pool, torch.randn(1, 3, 8, 8)))
    assert row["flops"] == 3 * 4 * 4 * (2 * 2)
    norm = nn.LayerNorm(32)
    assert only_layer(analyze_module(norm, torch.randn(5, 32)))["flops"] == 8 * 5 * 32
    soft = nn.Softmax(dim=-1)
    assert only_layer(analyze_module(soft, torch.randn(5, 32)))["flops"] == 5 * 5 * 32


def test_conv_calibration_class_follows_channels_per_group():
    x = torch.randn(1, 64, 8, 8)
    classes = {}
    for groups in (1, 2, 4, 8, 64):
        conv = nn.Conv2d(64, 64, 3, padding=1, groups=groups, bias=False)
        classes[groups] = analyze_module(conv, x).records.iloc[0]["op_class"]
    # 64, 32 and 16 input channels per group run dense kernels; 8 and 1 (depthwise) do not.
    assert classes == {1: "conv", 2: "conv", 4: "conv", 8: "grouped_conv", 64: "grouped_conv"}


def test_dense_stem_conv_with_few_channels_stays_dense():
    # ResNet's and ViT's stems see 3 input channels but run the dense kernels (groups=1).
    stem = nn.Conv2d(3, 64, 7, stride=2, padding=3, bias=False)
    assert analyze_module(stem, torch.randn(1, 3, 32, 32)).records.iloc[0]["op_class"] == "conv"


def test_a_grouped_conv_records_its_channels_per_group():
    """The trace keeps a grouped forward convolution's input channels per group (what its kernel's vectors hold,
    which calibration rates); 0 for dense and transposed convolutions and other ops."""
    x = torch.randn(1, 128, 14, 14, device="meta")
    for module, expected in ((nn.Conv2d(128, 128, 3, groups=32), 4), (nn.Conv2d(128, 128, 3, groups=128), 1),
                             (nn.Conv2d(128, 64, 1), 0), (nn.ConvTranspose2d(128, 128, 2, groups=4), 0)):
        records = roofline.analyze(module.to("meta"), inputs=[x], warn_unsupported=False).records
        convs = records[records["op"].str.contains("convolution")]
        assert convs["channels_per_group"].tolist() == [expected], module
        assert (records.loc[~records.index.isin(convs.index), "channels_per_group"] == 0).all()


def test_a_dense_1x1_convolution_is_its_own_class():
    """A dense 1x1 convolution (a GEMM over pixels) gets the pointwise_conv line; a grouped or transposed one, or
    any other window, stays where it was."""
    x = torch.randn(1, 64, 14, 14, device="meta")
    for module, expected in ((nn.Conv2d(64, 128, 1), "pointwise_conv"), (nn.Conv2d(64, 128, 1, stride=2), "pointwise_conv"),
                             (nn.Conv2d(64, 128, 3), "conv"), (nn.Conv2d(64, 128, 1, groups=2), "conv"),
                             (nn.Conv2d(64, 64, 1, groups=16), "grouped_conv"), (nn.ConvTranspose2d(64, 64, 1), "conv"),
                             (nn.Conv1d(64, 64, 1), "pointwise_conv")):
        inputs = [x[:, :, 0] if isinstance(module, nn.Conv1d) else x]
        records = roofline.analyze(module.to("meta"), inputs=inputs, warn_unsupported=False).records
        assert records.loc[records["op"].str.contains("convolution"), "op_class"].tolist() == [expected], module

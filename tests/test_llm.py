"""The LLM view: prefill and decode traced from the model's code, against formulas written here."""
import pytest

pytest.importorskip("transformers")

from roofline import llm
from roofline.hardware.profile import HardwareProfile, MemoryLevel

LAYERS, HIDDEN, HEADS, KV_HEADS, HEAD_DIM, FFN, VOCAB = 2, 256, 8, 2, 32, 512, 1000
SPEC = (f"hf:llama?num_hidden_layers={LAYERS}&hidden_size={HIDDEN}&intermediate_size={FFN}"
        f"&num_attention_heads={HEADS}&num_key_value_heads={KV_HEADS}&head_dim={HEAD_DIM}&vocab_size={VOCAB}")
BATCH, PROMPT, GEN = 2, 16, 4

PROFILE = HardwareProfile(
    name="synthetic", kind="gpu", vendor="test", source="datasheet", reference="written in the test",
    peak_flops_per_s={"fp16": 1e14, "fp32": 2e13}, memory_levels=(MemoryLevel("HBM", 8e9, 1e12),), overhead_s=1e-6,
)


def layer_macs(tokens, context):
    """One decoder layer with grouped-query attention over `context` cached + `tokens` new tokens."""
    projections = BATCH * tokens * HIDDEN * (HEADS * HEAD_DIM + 2 * KV_HEADS * HEAD_DIM + HEADS * HEAD_DIM)
    mlp = 3 * BATCH * tokens * HIDDEN * FFN
    attention = 2 * BATCH * HEADS * tokens * (context + tokens) * HEAD_DIM  # Q K^T and P V
    return projections + mlp + attention


LM_HEAD = BATCH * 1 * HIDDEN * VOCAB  # logits for the last position only


@pytest.fixture(scope="module")
def report():
    return llm.llm(SPEC, PROFILE, precision="fp16", prompt_len=PROMPT, gen_len=GEN, batch=BATCH, progress=False)


def test_prefill_and_decode_macs(report):
    phases = report.phases.set_index("phase")
    assert phases.loc["prefill", "macs"] == LAYERS * layer_macs(PROMPT, 0) + LM_HEAD
    for phase in report.decode:
        assert phases.loc[phase.name, "macs"] == LAYERS * layer_macs(1, phase.context) + LM_HEAD


def test_kv_cache_bytes(report):
    per_token = LAYERS * 2 * KV_HEADS * HEAD_DIM  # keys and values, all layers
    assert report.kv_elements_per_token == per_token
    phases = report.phases.set_index("phase")
    # Prefill fills the cache: B x N tokens written at fp16.
    assert phases.loc["prefill", "kv_bytes"] == 2 * BATCH * PROMPT * per_token
    c = report.decode[0].context
    # DynamicCache.update concatenates: reads c cached tokens, writes c + 1; attention reads c + 1.
    per_layer_elements = 2 * BATCH * KV_HEADS * HEAD_DIM * (c + (c + 1) + (c + 1))
    assert phases.loc[report.decode[0].name, "kv_bytes"] == 2 * LAYERS * per_layer_elements


def test_decode_is_weight_dominated_at_batch_1_and_grows_with_context():
    single = llm.llm(SPEC, PROFILE, precision="fp16", prompt_len=PROMPT, gen_len=64, batch=1, progress=False)
    phases = single.phases.set_index("phase")
    first, last = single.decode[0].name, single.decode[-1].name
    assert phases.loc[first, "weight_bytes"] > 0.5 * phases.loc[first, "bytes"]
    assert phases.loc[last, "kv_bytes"] > phases.loc[first, "kv_bytes"]
    assert phases.loc[last, "bytes"] > phases.loc[first, "bytes"]
    # the integrated time per token lies between the first and last decode steps
    tpot = single.metrics["time_per_output_token_s"]
    low, high = single.decode_step_s(single.decode[0].context), single.decode_step_s(single.decode[-1].context)
    assert low * (1 - 1e-9) <= tpot <= high * (1 + 1e-9)


def test_w4a16_weight_bytes_are_a_quarter_of_fp16(report):
    w4 = llm.llm(SPEC, PROFILE, precision="w4a16", prompt_len=PROMPT, gen_len=GEN, batch=BATCH, progress=False)
    fp16, quarter = report.phases.set_index("phase"), w4.phases.set_index("phase")
    for phase in ("prefill", report.decode[0].name):
        assert quarter.loc[phase, "weight_bytes"] == fp16.loc[phase, "weight_bytes"] / 4
    assert w4.metrics["weights_bytes"] == report.metrics["weights_bytes"] / 4


def test_kv_precision_and_memory_footprint(report):
    fp8_kv = llm.llm(SPEC, PROFILE, precision="fp16", kv_precision="fp8", prompt_len=PROMPT, gen_len=GEN,
                     batch=BATCH, progress=False)
    assert fp8_kv.metrics["kv_cache_bytes"] == report.metrics["kv_cache_bytes"] / 2
    expected_kv = BATCH * (PROMPT + GEN) * report.kv_elements_per_token * 2
    assert report.metrics["kv_cache_bytes"] == expected_kv
    m = report.metrics
    assert m["memory_footprint_bytes"] == pytest.approx(m["weights_bytes"] + m["kv_cache_bytes"] + m["peak_activation_bytes"])
    assert m["decode_tokens_per_s"] == pytest.approx(BATCH / m["time_per_output_token_s"])


def test_eager_attention_moves_more_bytes_than_fused(report):
    eager = llm.llm(SPEC, PROFILE, precision="fp16", prompt_len=PROMPT, gen_len=GEN, batch=BATCH,
                    attention="eager", progress=False)
    assert eager.phases["macs"].iloc[0] == report.phases["macs"].iloc[0]
    assert eager.phases["bytes"].iloc[0] > report.phases["bytes"].iloc[0]  # the score matrix reaches memory


def test_batch_sweep_throughput_grows(report):
    sweep = report.batch_sweep
    assert list(sweep["batch"])[:3] == [1, 2, 4]
    assert sweep["tokens_per_s"].is_monotonic_increasing


def test_measured_on_cpu():
    small = llm.llm(SPEC, PROFILE, precision="fp32", prompt_len=8, gen_len=2, batch=1, progress=False,
                    measure_device="cpu")
    measured = small.measured
    assert measured["prefill_s"] > 0 and measured["decode_step_s"] > 0
    assert measured["predicted_prefill_s"] > 0


def test_bad_lengths_are_errors():
    with pytest.raises(llm.RooflineError, match="prompt-len must be a positive integer"):
        llm.llm(SPEC, PROFILE, prompt_len=0)

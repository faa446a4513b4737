"""Tensor and pipeline parallelism: the collective formulas, the split of a traced model, and what fits."""
from __future__ import annotations

import dataclasses
import subprocess
import sys

import pytest

from roofline import llm, models, serving
from roofline.analysis import analyze
from roofline.errors import RooflineError
from roofline.hardware import load_profile
from roofline.parallel import (
    bubble_fraction,
    pipeline_factor,
    plan_for,
    ring_allgather_s,
    ring_allreduce_s,
    shard,
)
from roofline.precision import get_precision
from roofline.predict import predict

SMALL = ("hf:llama?num_hidden_layers=2&hidden_size=128&intermediate_size=256&num_attention_heads=8"
         "&num_key_value_heads=4&vocab_size=512")
LLAMA_70B = ("hf:llama?hidden_size=8192&intermediate_size=28672&num_hidden_layers=80&num_attention_heads=64"
             "&num_key_value_heads=8&vocab_size=128256")


def test_ring_all_reduce_against_a_hand_computed_value():
    # 4 devices, 1 MB on NVLink 4 (450 GB/s per direction, 3 us per step):
    # 2 x 3/4 x 1e6 / 450e9 = 3.333 us of transfer + 3 x 3 us of latency = 12.333 us.
    assert ring_allreduce_s(1e6, 4, 450e9, 3e-6) == pytest.approx(3.3333e-6 + 9e-6, rel=1e-4)
    assert ring_allgather_s(1e6, 4, 450e9, 3e-6) == pytest.approx(1.6667e-6 + 9e-6, rel=1e-4)
    assert ring_allreduce_s(1e6, 1, 450e9, 3e-6) == 0.0
    assert bubble_fraction(4, 4) == pytest.approx(3 / 7)
    assert pipeline_factor(4, 4) == pytest.approx(7 / 4)


@pytest.fixture(scope="module")
def small():
    loaded = models.load(SMALL, batch=2, seq_len=16)
    return loaded, analyze(loaded, precision="bf16", warn_unsupported=False)


def test_shard_divides_the_split_blocks_and_attaches_one_collective_per_block(small):
    loaded, analysis = small
    plan = plan_for(loaded.module)
    assert plan.decoder_layers == ("model.layers.0", "model.layers.1")
    assert plan.split_params + plan.replicated_params == analysis.totals["params"]
    # Replicated: the 2 x 2 decoder norms and the final norm, 128 each.
    assert plan.replicated_params == 5 * 128
    two = shard(analysis, plan, tp=2)
    records, base = two.records, analysis.records
    q = records["layer"] == "model.layers.0.self_attn.q_proj"
    assert records.loc[q, "flops"].sum() == base.loc[q, "flops"].sum() // 2
    norm = records["layer"] == "model.layers.0.input_layernorm"
    assert records.loc[norm, "flops"].sum() == base.loc[norm, "flops"].sum()  # replicated
    tokens_hidden = 2 * 16 * 128
    reduces = records[records["allreduce_elements"] > 0]
    # embedding + attention and MLP of each layer
    assert list(reduces["layer"]) == ["model.embed_tokens", "model.layers.0.self_attn.o_proj",
                                      "model.layers.0.mlp.down_proj", "model.layers.1.self_attn.o_proj",
                                      "model.layers.1.mlp.down_proj"]
    assert set(reduces["allreduce_elements"]) == {tokens_hidden}
    gathers = records[records["allgather_elements"] > 0]
    assert list(gathers["layer"]) == ["lm_head"] and gathers["allgather_elements"].iloc[0] == 2 * 16 * 512


def test_collective_time_is_a_term_and_the_terms_still_add_up(small):
    loaded, analysis = small
    h100 = load_profile("h100-sxm")
    link = h100.interconnect
    prediction = predict(shard(analysis, plan_for(loaded.module), tp=4, pp=2), h100)
    bytes_ar = 2 * 16 * 128 * 2  # tokens x hidden x bf16
    expected = 5 * ring_allreduce_s(bytes_ar, 4, link.bandwidth_bytes_per_s, link.latency_s)
    expected += ring_allgather_s(2 * 16 * 512 * 2, 4, link.bandwidth_bytes_per_s, link.latency_s)
    expected += bytes_ar / link.bandwidth_bytes_per_s + link.latency_s  # one pipeline boundary
    totals = prediction.totals
    assert totals["collective_s"] == pytest.approx(expected)
    for rows in (prediction.ops, prediction.layers):
        recombined = (rows["roofline_s"] + rows["efficiency_s"] + rows["exposed_overhead_s"] + rows["module_call_s"]
                      + rows["collective_s"])
        assert recombined.to_numpy() == pytest.approx(rows["predicted_s"].to_numpy(), rel=1e-9, abs=1e-18)
        assert (rows["exposed_overhead_s"] >= -1e-18).all()
    terms = sum(totals[k] for k in ("roofline_compute_s", "roofline_memory_s", "efficiency_s", "exposed_overhead_s",
                                    "module_call_s", "collective_s", "pass_penalty_s"))
    assert terms == pytest.approx(totals["predicted_latency_s"])


def test_a_profile_without_an_interconnect_and_impossible_splits_are_refused(small):
    loaded, analysis = small
    plan = plan_for(loaded.module)
    bare = dataclasses.replace(load_profile("h100-sxm"), interconnect=None)
    with pytest.raises(RooflineError, match="no 'interconnect' entry"):
        predict(shard(analysis, plan, tp=2), bare).totals  # noqa: B018
    with pytest.raises(RooflineError, match="must divide the model's 8 attention heads"):
        shard(analysis, plan, tp=3)
    with pytest.raises(RooflineError, match="must divide the model's 2 decoder layers"):
        shard(analysis, plan, pp=4)


def test_llm_memory_per_device_and_what_fits():
    traces = llm.trace_llm(SMALL, prompt_len=32, gen_len=8, batch=4, progress=False)
    h100, fp16 = load_profile("h100-sxm"), get_precision("fp16")
    one = llm.report_for(traces, h100, fp16)
    four = llm.report_for(traces, h100, fp16, tp=4)
    plan = traces.plan
    assert plan is not None
    assert four.metrics["weights_bytes"] == pytest.approx((plan.split_params / 4 + plan.replicated_params) * 2)
    # 4 KV heads over 4 devices: a quarter of the cache each.
    assert four.metrics["kv_cache_bytes"] == pytest.approx(one.metrics["kv_cache_bytes"] / 4)
    piped = llm.report_for(traces, h100, fp16, pp=2, microbatches=2)
    assert piped.metrics["weights_bytes"] == pytest.approx(one.metrics["weights_bytes"] / 2)
    micro = piped.prefill.prediction.totals["predicted_latency_s"]
    assert piped.metrics["time_to_first_token_s"] == pytest.approx(micro * 3 / 2)  # (m + M - 1) / M
    # What fits: a device whose memory holds the model only split four ways.
    needed = one.metrics["memory_footprint_bytes"]
    level = h100.memory_levels[-1]
    tight = dataclasses.replace(h100, memory_levels=(dataclasses.replace(level, capacity_bytes=needed / 3),))
    fit = serving.smallest_fit(traces, tight, fp16)
    assert fit is not None and (fit.tp, fit.pp) == (4, 1)
    table = serving.compare_devices(traces, [h100, tight], fp16)
    assert list(table["devices"]) == [1, 4]


def test_continuous_batching_merges_prefill_and_decode_in_one_step():
    traces = llm.trace_llm(SMALL, prompt_len=32, gen_len=8, batch=1, progress=False)
    h100, fp16 = load_profile("h100-sxm"), get_precision("fp16")
    table = serving.continuous_batching(traces, h100, fp16, batches=(1, 8), contexts=(36, 64))
    assert list(table["prefill_tokens_per_step"][:2]) == [1 * 32 / 8, 8 * 32 / 8]
    assert (table["tokens_per_s"] == table["batch"] / table["time_per_output_token_s"]).all()
    # A decode step at a traced context comes back exactly.
    step = serving.decode_at(traces, traces.decode[-1][0])
    assert [r.flops for r in step.records] == [r.flops for r in traces.decode[-1][1].records]
    assert "context 36" in serving.turn_sentence(table)


@pytest.mark.slow
def test_llama_70b_bf16_is_refused_on_one_h100_and_predicted_at_tp2_and_tp4():
    def run(tp: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run([sys.executable, "-m", "roofline", "llm", LLAMA_70B, "--hw", "h100-sxm", "--precision",
                               "bf16", "--tp", tp, "--gen-len", "16"], capture_output=True, text=True, timeout=300,
                              check=False)

    refused = run("1")
    assert refused.returncode == 2
    error = refused.stderr.strip().splitlines()[-1]  # after the tracing progress bar: one line, no traceback
    assert error.startswith("roofline: error:") and "Traceback" not in refused.stderr
    assert "does not fit on NVIDIA H100 SXM 80GB at TP=1 x PP=1" in error and "needs 132 GiB per device" in error
    for tp in ("2", "4"):
        done = run(tp)
        assert done.returncode == 0, done.stderr
        assert f"TP={tp} x PP=1" in done.stdout and "tokens/s" in done.stdout

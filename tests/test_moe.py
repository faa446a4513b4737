"""Mixture-of-experts: parameter counts, routed-expert FLOPs and the bytes of the experts a batch touches."""
from __future__ import annotations

import itertools
import math

import pytest

from roofline import models
from roofline.analysis import analyze
from roofline.errors import RooflineError
from roofline.moe import Routing, expected_experts, moe_params, parse_skew, routing

# A small Mixtral: 4 experts, top-2, hidden 64, expert FFN 96.
SMALL = ("hf:mixtral?num_hidden_layers=1&hidden_size=64&intermediate_size=96&num_attention_heads=4"
         "&num_key_value_heads=2&num_local_experts=4&num_experts_per_tok=2&vocab_size=128")


def test_mixtral_8x7b_total_and_active_parameters_match_the_published_figures():
    # Jiang et al., "Mixtral of Experts" (arXiv:2401.04088): 46.7B parameters, 12.9B active per token.
    # MixtralConfig's defaults are Mixtral-8x7B's (hidden 4096, FFN 14336, 32 layers, 8 experts, top-2).
    loaded = models.load("hf:mixtral", batch=1, seq_len=8)
    counts = moe_params(loaded.module)
    assert counts is not None
    assert counts.total == pytest.approx(46.7e9, rel=0.002)
    assert counts.active == pytest.approx(12.9e9, rel=0.002)
    # The same from the configuration by hand: experts 32 x 8 x 3 x 4096 x 14336; attention 32 x (2 x 4096^2 +
    # 2 x 4096 x 1024); embeddings and head 2 x 32000 x 4096; router 32 x 8 x 4096; norms 65 x 4096.
    experts = 32 * 8 * 3 * 4096 * 14336
    rest = 32 * (2 * 4096**2 + 2 * 4096 * 1024) + 2 * 32000 * 4096 + 32 * 8 * 4096 + 65 * 4096
    assert counts.total == experts + rest
    assert counts.active == rest + experts * 2 // 8


def _enumerated_distinct(experts: int, top_k: int, tokens: int) -> float:
    """Mean number of distinct experts over every routing: each token picks a k-subset, all equally likely."""
    subsets = list(itertools.combinations(range(experts), top_k))
    counts = [len(set().union(*choice)) for choice in itertools.product(subsets, repeat=tokens)]
    return sum(counts) / len(counts)


@pytest.mark.parametrize(("experts", "top_k", "tokens"), [(4, 2, 3), (5, 1, 4), (6, 3, 2), (4, 4, 2)])
def test_expected_experts_matches_enumeration_under_uniform_routing(experts, top_k, tokens):
    assert expected_experts(experts, tokens, top_k) == pytest.approx(_enumerated_distinct(experts, top_k, tokens))


def test_expected_experts_with_measured_shares_matches_enumeration_for_top_1():
    shares = [0.5, 0.3, 0.15, 0.05]
    tokens = 3
    expected = 0.0
    for choice in itertools.product(range(4), repeat=tokens):
        expected += math.prod(shares[i] for i in choice) * len(set(choice))
    assert expected_experts(4, tokens, 1, shares) == pytest.approx(expected)
    assert expected < expected_experts(4, tokens, 1)  # skew touches fewer experts than uniform routing


def test_decode_step_reads_the_weights_of_the_experts_the_batch_touches():
    batch = 3
    loaded = models.load(SMALL, batch=batch, seq_len=1)
    analysis = analyze(loaded, precision="bf16", warn_unsupported=False)
    experts_module = loaded.module.model.layers[0].mlp.experts
    per_expert_gate_up = experts_module.gate_up_proj.numel() // 4  # direct count: one expert's slice
    per_expert_down = experts_module.down_proj.numel() // 4
    grouped = analysis.records[analysis.records["op"] == "aten._grouped_mm"]
    assert len(grouped) == 2
    touched = 4 * (1 - (1 - 2 / 4) ** batch)  # E (1 - (1 - k/E)^B) = 3.5 of 4 experts
    assert grouped["weight_read"].tolist() == [round(touched * per_expert_gate_up), round(touched * per_expert_down)]
    # FLOPs: only the k = 2 routed experts per token run: 2 x tokens x k x (64 x 192 + 96 x 64).
    assert grouped["flops"].sum() == 2 * batch * 2 * (64 * 192 + 96 * 64)
    # Memory still holds every expert.
    assert analysis.totals["params"] == sum(p.numel() for p in loaded.module.parameters())
    assert not analysis.unsupported_ops


def test_a_measured_skew_reduces_the_expert_bytes_of_a_decode_step():
    loaded = models.load(SMALL, batch=3, seq_len=1)
    uniform = analyze(loaded, precision="bf16", warn_unsupported=False)
    with routing(parse_skew("0.7,0.1,0.1,0.1")):
        skewed = analyze(loaded, precision="bf16", warn_unsupported=False)
    grouped = [a.records.loc[a.records["op"] == "aten._grouped_mm", "weight_read"].sum() for a in (uniform, skewed)]
    per_expert = (loaded.module.model.layers[0].mlp.experts.gate_up_proj.numel()
                  + loaded.module.model.layers[0].mlp.experts.down_proj.numel()) // 4
    shares = [0.7, 0.1, 0.1, 0.1]
    assert grouped[1] == pytest.approx(expected_experts(4, 3, 2, shares) * per_expert, abs=1)  # rounded per op
    assert grouped[1] < grouped[0]


def test_qwen2_moe_traces_on_meta_with_its_shared_expert_always_active():
    spec = ("hf:qwen2_moe?num_hidden_layers=1&hidden_size=64&moe_intermediate_size=32&intermediate_size=128"
            "&shared_expert_intermediate_size=128&num_experts=8&num_experts_per_tok=2&num_attention_heads=4"
            "&num_key_value_heads=2&vocab_size=128")
    loaded = models.load(spec, batch=1, seq_len=4)
    analysis = analyze(loaded, precision="bf16", warn_unsupported=False)
    assert not analysis.unsupported_ops
    counts = moe_params(loaded.module)
    assert counts is not None and counts.experts == 8 and counts.top_k == 2
    routed = 8 * 3 * 64 * 32
    assert counts.routed == routed
    assert counts.active == counts.total - routed * 6 // 8  # shared expert and router stay active


def test_dense_models_have_no_moe_counts_and_bad_skews_are_refused():
    assert moe_params(models.load("hf:llama?num_hidden_layers=1&hidden_size=64&intermediate_size=96"
                                  "&num_attention_heads=4&num_key_value_heads=2&vocab_size=128").module) is None
    assert parse_skew("1.2") == Routing(zipf=1.2)
    for bad in ("x", "-1", "0,0"):
        with pytest.raises(RooflineError):
            parse_skew(bad)
    with pytest.raises(RooflineError, match="3 expert shares; the model has 4"):
        Routing(shares=(1.0, 1.0, 1.0)).loads(4)

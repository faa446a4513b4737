"""Training-step counts against independent references (issue 17); the tests run the same functions.

1. FLOPs: torch.utils.flop_counter.FlopCounterMode around forward + backward of the same model on meta.
   It counts matrix-like ops only (mm, addmm, bmm, convolution and its backward, SDPA and its
   backward) as 2 x MACs, so it is compared with 2 x our MACs of the forward and backward rows.
2. Memory: torch.distributed._tools.mem_tracker.MemTracker on real CPU tensors, two steps (the second
   is the steady state: optimizer state allocated, grads set to None by zero_grad), its peak and the
   breakdown at its peak against ours from the meta trace.
3. The dense-transformer rule: train FLOPs per token = 6 N + 12 L d s, with N the parameters that
   take part in matrix multiplies (every linear layer, the LM head included; not the embedding
   lookups) and the attention term for the full (non-causal) score matrix, which is what we and
   FlopCounterMode count: a causal kernel that skips the masked half would do 6 L d s.

    .venv/bin/python benchmarks/train_references.py [--quick]
"""
from __future__ import annotations

import argparse
import sys
import warnings
from typing import Any

import torch
from torch import nn

import roofline
from roofline.train import analyze_train, default_loss, make_optimizer

FLOP_MODELS = ["torchvision:resnet18", "torchvision:vit_b_16", "hf:gpt2"]
MEMORY_MODELS = ["zoo:mlp", "zoo:convnet", "zoo:tiny-transformer"]
FORMULA_MODELS = ["hf:llama?num_hidden_layers=4", "hf:gpt2"]

# MemTracker's categories and ours.
MEMTRACKER_CATEGORIES = {"Parameter": "parameters", "Buffer": "parameters", "Gradient": "gradients",
                         "Optstate": "optimizer_state", "Activation": "activations", "Temp": "temporaries"}


def _call(module: nn.Module, inputs: Any) -> Any:
    return module(**inputs) if isinstance(inputs, dict) else module(*inputs)


def flop_reference(spec: str, **load: Any) -> dict[str, Any]:
    """Our forward+backward FLOPs of matrix-like ops (2 x MACs) against FlopCounterMode's, both on meta."""
    from torch.utils.flop_counter import FlopCounterMode

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        ours = analyze_train(spec, warn_unsupported=False, **load)
        loaded = roofline.load(spec, **load)
    loaded.module.train()
    with FlopCounterMode(display=False) as counter:
        out = _call(loaded.module, loaded.inputs)
        default_loss(out).backward()
    theirs = counter.get_total_flops()
    totals = ours.totals
    counted = 2 * (totals["forward_macs"] + totals["backward_macs"])
    return {"model": spec, "ours_flops": counted, "flop_counter_flops": theirs,
            "backward_over_forward": totals["backward_macs"] / totals["forward_macs"],
            "difference": counted / theirs - 1}


def memory_reference(spec: str, optimizer: str = "adamw", **load: Any) -> dict[str, Any]:
    """Our steady-state peak and breakdown at the peak (meta) against MemTracker's (real CPU tensors)."""
    from torch.distributed._tools.mem_tracker import MemTracker

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        ours = analyze_train(spec, optimizer=optimizer, warn_unsupported=False, **load)
        loaded = roofline.load(spec, device="cpu", **load)
    model = loaded.module
    model.train()
    optim = make_optimizer(optimizer, [p for p in model.parameters() if p.requires_grad])
    default_loss(_call(model, loaded.inputs)).backward()  # the first step allocates the optimizer state
    optim.step()
    optim.zero_grad()
    tracker = MemTracker()
    tracker.track_external(model, optim)
    with tracker:  # the steady-state step
        default_loss(_call(model, loaded.inputs)).backward()
        optim.step()
        optim.zero_grad()
    snapshot = tracker.get_tracker_snapshot("peak")[torch.device("cpu")]
    theirs: dict[str, float] = {}
    for key, value in snapshot.items():
        name = MEMTRACKER_CATEGORIES.get(getattr(key, "value", str(key)))
        if name is not None:
            theirs[name] = theirs.get(name, 0.0) + value
    theirs["total"] = float(snapshot[next(k for k in snapshot if str(k) == "Total")])
    totals = ours.totals
    mine = {name: totals[f"peak_{name}_bytes"] for name in ("parameters", "gradients", "optimizer_state",
                                                              "activations", "temporaries")}
    # MemTracker files everything step() allocates under Optstate, and does not see the input batch
    # (made before tracking began): compare like with like.
    mine["optimizer_state"] += totals["peak_optimizer_temporaries_bytes"]
    mine["total"] = totals["peak_memory_bytes"] - totals["peak_inputs_bytes"]
    return {"model": spec, "ours": mine, "memtracker": theirs, "peak_layer": totals["peak_layer"]}


def formula_reference(spec: str, **load: Any) -> dict[str, Any]:
    """Our train FLOPs per token (2 x MACs) against 6 N + 12 L d s, N from the config."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        ours = analyze_train(spec, warn_unsupported=False, **load)
        loaded = roofline.load(spec, **load)
    config = loaded.meta["config"]
    layers = config.num_hidden_layers
    d = config.hidden_size
    vocab = config.vocab_size
    tokens = ours.totals["tokens"]
    seq = tokens // ours.totals["samples"]
    if config.model_type == "gpt2":
        ffn = config.n_inner or 4 * d
        per_layer = d * 3 * d + d * d + 2 * d * ffn  # c_attn (q, k, v), c_proj, the MLP's two
    else:  # llama-style: q and o square, k and v at the key-value width, gated MLP of three
        heads = config.num_attention_heads
        kv_width = getattr(config, "num_key_value_heads", heads) * (d // heads)
        per_layer = 2 * d * d + 2 * d * kv_width + 3 * d * config.intermediate_size
    n = layers * per_layer + d * vocab  # + the LM head
    formula = 6 * n + 12 * layers * d * seq
    counted = 2 * (ours.totals["forward_macs"] + ours.totals["backward_macs"]) / tokens
    return {"model": spec, "seq_len": seq, "n_matmul_params": n, "formula_per_token": formula,
            "ours_per_token": counted, "difference": counted / formula - 1}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="skip vit_b_16")
    quick = parser.parse_args().quick
    print("1. FLOPs of forward + backward against FlopCounterMode (meta, batch 1)")
    print(f"{'model':26} {'ours (2 x MACs)':>16} {'FlopCounterMode':>16} {'diff':>8} {'bwd/fwd':>8}")
    for spec in FLOP_MODELS:
        if quick and "vit" in spec:
            continue
        row = flop_reference(spec)
        print(f"{spec:26} {row['ours_flops']:16.4e} {row['flop_counter_flops']:16.4e} {row['difference']:8.2%}"
              f" {row['backward_over_forward']:8.3f}")
    print("\n2. Peak memory of a steady-state step (AdamW) against MemTracker (real CPU tensors), MiB")
    for spec in MEMORY_MODELS:
        row = memory_reference(spec)
        print(f"{spec} (our peak at {row['peak_layer']})")
        for name in ("total", "parameters", "gradients", "optimizer_state", "activations", "temporaries"):
            ours, theirs = row["ours"].get(name, 0.0), row["memtracker"].get(name, 0.0)
            diff = f"{ours / theirs - 1:8.2%}" if theirs else "       -"
            print(f"  {name:18} {ours / 2**20:10.2f} {theirs / 2**20:10.2f} {diff}")
    print("\n3. Train FLOPs per token against 6 N + 12 L d s (full score matrix, non-causal convention)")
    for spec in FORMULA_MODELS:
        row = formula_reference(spec)
        print(f"{spec:30} s={row['seq_len']:<5} N={row['n_matmul_params'] / 1e6:8.1f} M  formula "
              f"{row['formula_per_token']:.4e}  ours {row['ours_per_token']:.4e}  {row['difference']:+.2%}")
    sys.stdout.flush()


if __name__ == "__main__":
    main()

"""Counting speed: roofline.analyze against torch.utils.flop_counter.FlopCounterMode, same run.

Both count the same model built once on the meta device; analyze also produces per-layer bytes,
fused bytes and peak activations. Prints a table; the target is a ratio of at most 1.5.
Also analyses hf:llama at its config defaults (~6.7B parameters, 1x128 tokens) in a fresh
subprocess and reports its wall time and peak RSS (targets: < 10 s, < 1.5 GiB), and one training
step of it at 1x2048 tokens (forward, backward, AdamW; issue 17; targets: < 30 s, < 2 GiB), with its
train FLOPs per token against 6 N + 12 L d s.

    .venv/bin/python benchmarks/count_speed.py [--repeats 3]
"""
from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import time

import torch
from torch.utils.flop_counter import FlopCounterMode

import roofline
from roofline.trace import trace

MODELS = ["torchvision:resnet50", "torchvision:vit_b_16", "hf:gpt2"]


def _time(fn, repeats: int) -> float:
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def compare(spec: str, repeats: int) -> dict[str, object]:
    loaded = roofline.load(spec)
    args, kwargs = ((), loaded.inputs) if isinstance(loaded.inputs, dict) else (loaded.inputs, {})

    def ours() -> None:
        result = roofline.Analysis(trace(loaded.module, loaded.inputs, model_name=spec), roofline.get_precision("fp32"))
        result.layers  # build the per-layer table too  # noqa: B018
        result.totals  # noqa: B018

    def theirs() -> None:
        with torch.no_grad(), FlopCounterMode(display=False):
            loaded.module(*args, **kwargs)

    ours()
    theirs()  # warm-up both
    t_ours, t_theirs = _time(ours, repeats), _time(theirs, repeats)
    return {"model": spec, "analyze_s": t_ours, "flop_counter_s": t_theirs, "ratio": t_ours / t_theirs}


LLAMA_CHILD = """
import json, resource, time
start = time.perf_counter()
import roofline
result = roofline.analyze("hf:llama", seq_len=128, warn_unsupported=False)
totals = result.totals
elapsed = time.perf_counter() - start
print(json.dumps({"wall_s": elapsed, "peak_rss_mib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
                  "params": totals["params"], "macs": totals["macs"], "layers": len(result.layers)}))
"""


LLAMA_TRAIN_CHILD = """
import json, resource, sys, time
start = time.perf_counter()
from roofline.train import analyze_train
result = analyze_train("hf:llama", seq_len=2048, precision="bf16", warn_unsupported=False)
totals = result.totals
elapsed = time.perf_counter() - start
sys.path.insert(0, "benchmarks")
print(json.dumps({"wall_s": elapsed, "peak_rss_mib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
                  "params": totals["params"], "flops": totals["flops"], "layers": len(result.layers),
                  "peak_memory_bytes": totals["peak_memory_bytes"], "unsupported": result.unsupported_ops}))
"""


def llama(child: str = LLAMA_CHILD) -> dict[str, float]:
    done = subprocess.run([sys.executable, "-c", child], capture_output=True, text=True, check=True)
    return json.loads(done.stdout.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=3)
    repeats = parser.parse_args().repeats
    print(f"{'model':24} {'analyze':>10} {'FlopCounterMode':>16} {'ratio':>7}")
    for spec in MODELS:
        row = compare(spec, repeats)
        print(f"{row['model']:24} {row['analyze_s']:9.3f}s {row['flop_counter_s']:15.3f}s {row['ratio']:7.2f}")
    info = llama()
    print(f"\nhf:llama defaults, 1x128 tokens, meta: {info['params'] / 1e9:.2f} B params, "
          f"{info['macs'] / 1e9:.0f} GMACs, {info['layers']} rows; wall {info['wall_s']:.2f} s "
          f"(incl. imports), peak RSS {info['peak_rss_mib']:.0f} MiB")
    train = llama(LLAMA_TRAIN_CHILD)
    print(f"hf:llama defaults, one training step (bf16 mixed, AdamW) at 1x2048 tokens, meta: "
          f"{train['flops'] / 1e12:.1f} TFLOP, {train['layers']} rows, peak memory "
          f"{train['peak_memory_bytes'] / 2**30:.1f} GiB; wall {train['wall_s']:.2f} s (incl. imports), "
          f"peak RSS {train['peak_rss_mib']:.0f} MiB (targets: < 30 s, < 2048 MiB); unsupported {train['unsupported']}")


if __name__ == "__main__":
    main()

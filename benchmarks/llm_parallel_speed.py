"""Speed of the 70B LLM analysis with tensor parallelism, on meta (issue 18: under 30 s in all).

Traces Llama-3-70B's shape (hidden 8192, FFN 28672, 80 layers, 64 heads, 8 KV heads, vocab 128256) once
(prefill + 3 decode steps), then predicts it on h100-sxm at TP = 1, 2, 4, 8 and searches the smallest
split that fits on four GPUs, re-predicting without re-tracing. The trace is kept in a trace cache in a
temporary directory (issue 19) and read back as a second run would. Prints a table of wall times and the
figures each step gave; exits 1 if the whole run takes 30 s or more.

    .venv/bin/python benchmarks/llm_parallel_speed.py
"""
from __future__ import annotations

import os
import sys
import tempfile
import time

from roofline import llm, serving
from roofline.formatting import format_bytes, format_table, format_time
from roofline.hardware import load_profile
from roofline.precision import get_precision

LLAMA_70B = ("hf:llama?hidden_size=8192&intermediate_size=28672&num_hidden_layers=80&num_attention_heads=64"
             "&num_key_value_heads=8&vocab_size=128256")
TARGET_S = 30.0


def main() -> int:
    import pandas as pd

    cache = tempfile.TemporaryDirectory(prefix="roofline-bench-cache-")
    os.environ["ROOFLINE_TRACE_DIR"] = cache.name
    options = {"prompt_len": 1024, "gen_len": 256, "batch": 1, "progress": False, "cache": True}
    start = time.perf_counter()
    traces = llm.trace_llm(LLAMA_70B, **options)
    rows = [{"step": "trace prefill + 3 decode steps (and keep them)", "wall_s": time.perf_counter() - start,
             "result": ""}]
    h100, bf16 = load_profile("h100-sxm"), get_precision("bf16")
    for tp in (1, 2, 4, 8):
        began = time.perf_counter()
        report = llm.report_for(traces, h100, bf16, tp=tp)
        m = report.metrics
        result = (f"{format_bytes(m['memory_footprint_bytes'])}/device, fits {m['fits']}, "
                  f"TPOT {format_time(m['time_per_output_token_s'])}, {m['decode_tokens_per_s']:.1f} tokens/s")
        rows.append({"step": f"predict h100-sxm TP={tp}", "wall_s": time.perf_counter() - began, "result": result})
    began = time.perf_counter()
    profiles = [load_profile(n) for n in ("h100-sxm", "a100-80gb-sxm", "l40s", "h200-sxm")]
    table = serving.compare_devices(traces, profiles, bf16)
    splits = ", ".join(f"{r.device.split()[1]} x{r.devices}" for r in table.itertuples())
    rows.append({"step": "smallest fit on 4 GPUs", "wall_s": time.perf_counter() - began, "result": splits})
    total = time.perf_counter() - start
    rows.append({"step": "total", "wall_s": total, "result": f"target < {TARGET_S:.0f} s"})
    began = time.perf_counter()
    again = llm.trace_llm(LLAMA_70B, **options)
    same = again.prefill.records == traces.prefill.records and len(again.decode) == len(traces.decode)
    rows.append({"step": "a second run's trace, from the cache", "wall_s": time.perf_counter() - began,
                 "result": f"records identical: {same}"})
    cache.cleanup()
    print(format_table(pd.DataFrame(rows), {"wall_s": lambda v: f"{v:.2f} s"}))
    return 0 if total < TARGET_S else 1


if __name__ == "__main__":
    sys.exit(main())

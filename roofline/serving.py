"""LLM serving questions answered from one set of traces: which split of which device fits, how fast each
device list is, and tokens/s under continuous batching. Re-predicts; never re-traces.

- What fits: for a device, the smallest TP x PP (fewest devices, then tensor before pipeline
  parallelism: a pipeline adds its bubble to each step) whose memory per device holds the weight
  shard, the KV-cache shard and the activations at the traced batch and context.
- Continuous batching (Orca, Yu et al. OSDI 2022; chunked prefill as in Sarathi-Serve): in steady state a
  batch of B sequences, each with a prompt of N tokens that generates M, replaces B / M finished
  sequences per step, so each step runs the B decode tokens and B x N / M prompt tokens in one pass.
  The two share each weight read: matching ops (same layer, op and order) are merged into one whose
  FLOPs and activation bytes add and whose weights are read once. The time per output token is that
  average step; the time to first token is one step that carries a whole new prompt (N tokens) with the
  batch's decode tokens (a waiting prompt is prefilled at once, unchunked, as vLLM schedules by default).
- A decode step at any context comes from two traced steps, each op's counts being affine in the
  context (attention reads the cache; the cache copy grows with it): exact for the affine parts.
"""
from __future__ import annotations

import dataclasses
from collections import Counter
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import pandas as pd

from roofline.analysis import Analysis
from roofline.errors import RooflineError
from roofline.hardware.profile import HardwareProfile
from roofline.llm import DEFAULT_BATCH_SWEEP, LLMReport, LLMTraces, report_for
from roofline.parallel import shard
from roofline.precision import Precision
from roofline.predict import predict
from roofline.trace import OpRecord, Trace

__all__ = ["compare_devices", "continuous_batching", "decode_at", "render_devices", "render_serving", "smallest_fit",
           "turn_sentence", "write_devices"]

SPLITS = (1, 2, 4, 8)  # TP and PP degrees tried: one node of up to 8 devices
_COUNTS = ("macs", "flops", "weight_read", "act_read", "kv_read", "fixed_read_bytes", "act_written", "kv_written",
           "fixed_written_bytes", "allreduce_elements", "allgather_elements", "p2p_elements")


def smallest_fit(traces: LLMTraces, profile: HardwareProfile, precision: Precision, *, max_devices: int = 8,
                 calibrated: bool = False) -> LLMReport | None:
    """The first split that fits, trying fewer devices first and TP before PP at a count; None if none does."""
    if traces.plan is None:
        report = report_for(traces, profile, precision, calibrated=calibrated)
        return report if report.memory["fits"] else None
    splits = sorted(((tp, pp) for tp in SPLITS for pp in SPLITS if tp * pp <= max_devices),
                    key=lambda split: (split[0] * split[1], split[1]))
    for tp, pp in splits:
        try:
            traces.plan.check(tp, pp)
        except RooflineError:
            continue
        report = report_for(traces, profile, precision, tp=tp, pp=pp, calibrated=calibrated)
        if report.memory["fits"]:  # memory from counts alone: a split that does not fit is never timed
            return report
    return None


def compare_devices(traces: LLMTraces, profiles: Sequence[HardwareProfile], precision: Precision, *,
                    tp: int | None = None, pp: int | None = None, max_devices: int = 8,
                    calibrated: bool = False) -> pd.DataFrame:
    """One row per device: the split (the smallest that fits when tp is None), memory per device, time to first
    token, time per output token, tokens/s for the whole group and per device."""
    rows: list[dict[str, Any]] = []
    for profile in profiles:
        if tp is None:
            report = smallest_fit(traces, profile, precision, max_devices=max_devices, calibrated=calibrated)
        else:
            report = report_for(traces, profile, precision, tp=tp, pp=pp or 1, calibrated=calibrated)
        if report is None:
            rows.append({"device": profile.name, "fits": False,
                         "note": f"no split of up to {max_devices} devices fits"})
            continue
        m = report.metrics
        step = report.decode[len(report.decode) // 2].prediction.totals
        rows.append({
            "device": profile.name, "tp": report.tp, "pp": report.pp, "devices": report.devices,
            "interconnect": profile.interconnect.name if profile.interconnect else "",
            "memory_per_device_bytes": m["memory_footprint_bytes"], "device_memory_bytes": m["device_memory_bytes"],
            "fits": bool(m["fits"]),
            "time_to_first_token_s": m["time_to_first_token_s"],
            "time_per_output_token_s": m["time_per_output_token_s"],
            "tokens_per_s": m["decode_tokens_per_s"],
            "tokens_per_s_per_device": m["decode_tokens_per_s"] / report.devices,
            "collective_fraction": step["collective_s"] / step["predicted_latency_s"],
            "max_batch_that_fits": m["max_batch_that_fits"],
            "note": "" if m["fits"] else "does not fit",
        })
    return pd.DataFrame(rows)


def _counts(values: dict[str, int]) -> dict[str, Any]:
    """Count fields for dataclasses.replace (typed loosely: OpRecord's other fields are not ints)."""
    return dict(values)


def decode_at(traces: LLMTraces, context: int) -> Trace:
    """A decode step at `context` tokens of cache, each op's counts affine between the first and last traced steps."""
    (c0, first), (c1, last) = traces.decode[0], traces.decode[-1]
    if context == c0 or c1 == c0:
        if context != c0:
            raise RooflineError("a decode step at another context needs two traced steps (gen-len > 1)")
        return first
    aligned = len(first.records) == len(last.records) and all(
        a.layer == b.layer and a.op == b.op for a, b in zip(first.records, last.records, strict=True))
    if not aligned:
        raise RooflineError(f"{traces.model}: decode steps at {c0} and {c1} run different ops; trace at {context}")
    t = (context - c0) / (c1 - c0)

    def between(a: int, b: int) -> int:
        return max(0, round(a + (b - a) * t))

    records = [dataclasses.replace(a, **_counts({f: between(getattr(a, f), getattr(b, f)) for f in _COUNTS}))
               for a, b in zip(first.records, last.records, strict=True)]
    return dataclasses.replace(
        first, records=records, model_name=f"{traces.model} decode@{context}", outputs=None,
        peak_activation_elements=between(first.peak_activation_elements, last.peak_activation_elements),
        peak_fixed_bytes=between(first.peak_fixed_bytes, last.peak_fixed_bytes),
    )


def _merged(decode: Analysis, prefill: Analysis) -> Analysis:
    """One step running both passes' tokens: matching ops merged (counts added, weights read once), the rest added."""
    index: dict[tuple[str, str, int], int] = {}
    seen: Counter[tuple[str, str]] = Counter()
    records: list[OpRecord] = list(decode.trace.records)
    for i, record in enumerate(records):
        key = (record.layer, record.op)
        index[(*key, seen[key])] = i
        seen[key] += 1
    seen.clear()
    for record in prefill.trace.records:
        key = (record.layer, record.op)
        match = index.get((*key, seen[key]))
        seen[key] += 1
        if match is None:
            records.append(record)
            continue
        base = records[match]
        records[match] = dataclasses.replace(
            base, **_counts({f: getattr(base, f) + getattr(record, f) for f in _COUNTS if f != "weight_read"}),
            weight_read=max(base.weight_read, record.weight_read))
    trace = dataclasses.replace(
        decode.trace, records=records, model_name=decode.trace.model_name + " + prefill chunk",
        peak_activation_elements=decode.trace.peak_activation_elements + prefill.trace.peak_activation_elements,
        peak_fixed_bytes=decode.trace.peak_fixed_bytes + prefill.trace.peak_fixed_bytes,
    )
    return Analysis(trace, decode.precision)


def continuous_batching(traces: LLMTraces, profile: HardwareProfile, precision: Precision, *, tp: int = 1,
                        pp: int = 1, batches: Sequence[int] = DEFAULT_BATCH_SWEEP,
                        contexts: Sequence[int] | None = None, calibrated: bool = False) -> pd.DataFrame:
    """Tokens/s, time per output token and time to first token against batch and context (module docstring),
    with what bounds each step and whether it fits in memory; rows stop at the first batch that does not fit."""
    if pp > 1:
        raise RooflineError("the continuous-batching sweep models one pipeline stage group; use --pp 1 with it")
    base = report_for(traces, profile, precision, tp=tp, pp=pp, calibrated=calibrated)
    contexts = list(contexts or [traces.prompt_len + traces.gen_len // 2])
    prompt, gen, traced = traces.prompt_len, traces.gen_len, traces.batch
    capacity = base.metrics["device_memory_bytes"]
    weights = base.metrics["weights_bytes"]
    kv_per_token = traces.kv_elements_per_token * precision.kv_bytes * base.kv_share
    rows: list[dict[str, Any]] = []

    def split(analysis: Analysis) -> Analysis:
        return shard(analysis, traces.plan, tp, pp) if traces.plan is not None and tp > 1 else analysis

    prefill_all = split(Analysis(traces.prefill, precision))
    for context in contexts:
        decode_step = split(Analysis(decode_at(traces, context), precision))
        for batch in batches:
            chunk = batch * prompt / gen  # prompt tokens per step: B / M new sequences of N tokens each
            step = _merged(decode_step.scaled_batch(batch / traced),
                           prefill_all.scaled_batch(chunk / (traced * prompt)))
            prediction = predict(step, profile, calibrated=calibrated)
            first = _merged(decode_step.scaled_batch(batch / traced), prefill_all.scaled_batch(1 / traced))
            first_s = float(predict(first, profile, calibrated=calibrated).totals["predicted_latency_s"])
            totals = prediction.totals
            step_s = float(totals["predicted_latency_s"])
            activations = step.totals["peak_activation_bytes"]
            footprint = weights + batch * context * kv_per_token + activations
            fractions = {kind: totals[f"{kind}_bound_time_fraction"]
                         for kind in ("memory", "compute", "efficiency", "overhead", "interconnect")}
            rows.append({
                "context": context, "batch": batch, "prefill_tokens_per_step": chunk, "step_s": step_s,
                "time_per_output_token_s": step_s,
                "time_to_first_token_s": first_s,
                "tokens_per_s": batch / step_s,
                "memory_bound_fraction": fractions["memory"], "compute_bound_fraction": fractions["compute"],
                "bound": max(fractions, key=lambda kind: fractions[kind]),
                "arithmetic_intensity": step.totals["arithmetic_intensity"],
                "memory_per_device_bytes": footprint, "fits": footprint <= capacity,
            })
            if footprint > capacity:
                break
    return pd.DataFrame(rows)


def turn_sentence(table: pd.DataFrame) -> str:
    """Where the serving step turns compute-bound, per context, or up to which batch it stays memory-bound."""
    sentences = []
    for context, rows in table.groupby("context", sort=False):
        fitting = rows[rows["fits"]]
        turned = fitting[fitting["bound"] == "compute"]
        if len(turned):
            sentences.append(f"at context {context} the step turns compute-bound at batch {int(turned['batch'].iloc[0])}")
        elif len(fitting):
            last = fitting.iloc[-1]
            limit = "the memory limit" if len(fitting) < len(rows) else "the largest batch tried"
            sentences.append(f"at context {context} it stays {last['bound']}-bound up to batch {int(last['batch'])} "
                             f"({limit})")
        else:
            sentences.append(f"at context {context} no batch tried fits")
    return "; ".join(sentences)


_DEVICE_COLUMNS = ["device", "tp", "pp", "devices", "interconnect", "memory_per_device_bytes", "device_memory_bytes",
                   "time_to_first_token_s", "time_per_output_token_s", "tokens_per_s", "tokens_per_s_per_device",
                   "collective_fraction", "max_batch_that_fits", "note"]
_SERVING_COLUMNS = ["context", "batch", "prefill_tokens_per_step", "time_per_output_token_s", "time_to_first_token_s",
                    "tokens_per_s", "memory_bound_fraction", "compute_bound_fraction", "bound", "arithmetic_intensity",
                    "memory_per_device_bytes", "fits"]
_MARKER = "<!-- written by roofline compare --tp -->"


def _tokens(value: Any) -> str:
    return "-" if pd.isna(value) else f"{value:,.1f}"


def devices_notes(table: pd.DataFrame, traces: LLMTraces, precision: Precision) -> list[str]:
    """What the device table assumes, in sentences."""
    notes = [
        (f"{traces.model} @ {precision.name}: batch {traces.batch}, prompt {traces.prompt_len}, generate "
         f"{traces.gen_len}; decode tokens/s at the middle of the generation (roofline terms, not measured)."),
        ("Split: the smallest TP x PP of up to 8 devices whose memory per device (weight shard + KV-cache shard "
         "+ activations) fits, fewer devices first, TP before PP; collectives on the profile's interconnect "
         "(ring all-reduce 2(N-1)/N x bytes / bandwidth + (N-1) x latency), not overlapped with compute."),
    ]
    fitting = table[table["fits"]] if "fits" in table else table
    if len(fitting) > 1:
        best = fitting.loc[fitting["tokens_per_s"].idxmax()]
        per = fitting.loc[fitting["tokens_per_s_per_device"].idxmax()]
        notes.append(f"Fastest group: {best['device']} x{int(best['devices'])} at {best['tokens_per_s']:,.1f} tokens/s; "
                     f"most tokens/s per device: {per['device']} ({per['tokens_per_s_per_device']:,.1f}).")
    return notes


def render_devices(table: pd.DataFrame, traces: LLMTraces, precision: Precision, fmt: str = "table") -> str:
    """The device comparison as a table (or CSV, JSON, Markdown) with its notes."""
    from roofline.formatting import format_markdown, format_table

    if fmt == "csv":
        return str(table.to_csv(index=False)).rstrip("\n")
    if fmt == "json":
        return str(table.to_json(orient="records", indent=2))
    shown = table[[c for c in _DEVICE_COLUMNS if c in table]]
    formatters = {"tokens_per_s": _tokens, "tokens_per_s_per_device": _tokens}
    body = format_markdown(shown, formatters) if fmt == "markdown" else format_table(shown, formatters)
    return body + "\n\n" + "\n".join(devices_notes(table, traces, precision))


def render_serving(table: pd.DataFrame, fmt: str = "table") -> str:
    """The continuous-batching sweep with the sentence on where it turns compute-bound."""
    from roofline.formatting import format_table

    if fmt == "csv":
        return str(table.to_csv(index=False)).rstrip("\n")
    if fmt == "json":
        return str(table.to_json(orient="records", indent=2))
    return (format_table(table[_SERVING_COLUMNS], {"tokens_per_s": _tokens, "prefill_tokens_per_step": _tokens})
            + "\n\ncontinuous batching: " + turn_sentence(table))


DEVICE_FILES = frozenset({"llm_devices.csv", "llm_devices.md", "llm_devices.png", "llm_devices.svg"})


def write_devices(table: pd.DataFrame, traces: LLMTraces, precision: Precision, out: Path, *,
                  model: str, command: str = "", force: bool = False) -> list[Path]:
    """Write the comparison (CSV, Markdown) and its chart into `out`, by roofline.outdir's rule: only a
    directory roofline wrote is replaced (`force` keeps foreign files and replaces these names only)."""
    from roofline import plots
    from roofline.outdir import write_atomically

    chart = plots.llm_devices_chart(table, model=model, batch=traces.batch)
    command = command or f"roofline compare {model} --tp auto --precision {precision.name}"

    def write(directory: Path) -> None:
        (directory / "llm_devices.csv").write_text(str(table.to_csv(index=False)))
        (directory / "llm_devices.md").write_text(
            f"{_MARKER}\n# LLM serving across devices\n\n`{command}`\n\n"
            + render_devices(table, traces, precision, fmt="markdown")
            + f"\n\n![tokens/s per device](llm_devices.png)\n\n{chart.caption}\n")
        plots.save_chart(chart, directory)

    written = write_atomically(out.expanduser(), write, force=force, names=DEVICE_FILES)
    return [written / name for name in sorted(DEVICE_FILES)]

"""LLM inference on the roofline: prefill and decode traced from the model's own code, on meta.

- Prefill: one forward pass over B x N prompt tokens that fills the model's KV cache.
- Decode: one forward pass over B x 1 tokens with a cache of c tokens, passed through the model's own
  cache object; cache tensors are costed at the KV-cache precision. A decode step's cost grows with
  c (attention reads the whole cache), so the generation is integrated over c = N .. N+M-1 from steps
  traced at a few context lengths (each op's compute and memory time is affine in c; the trapezoid
  rule over the traced points is exact for the affine parts).
- Hugging Face's DynamicCache concatenates each step (a copy of the whole cache); its bytes are
  counted as the model's code does them. A paged-attention server avoids that copy.
- Tokens/s against batch size re-costs the traced decode step with `Analysis.scaled_batch`.
- Several devices (tp, pp): each phase is one device's share of the traced pass (roofline.parallel.shard,
  with its collectives), for one microbatch; a pass over the batch takes pipeline_factor of it, and the
  memory per device is the weight shard, the KV-cache shard and the activations. `llm` refuses a split
  that does not fit in one line naming the memory needed; roofline.serving searches for one that does.
"""
from __future__ import annotations

import dataclasses
import inspect
import json
import math
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from functools import cached_property
from typing import Any

import numpy as np
import pandas as pd
import torch
from torch import nn
from tqdm import tqdm

from roofline.analysis import Analysis
from roofline.errors import RooflineError
from roofline.formatting import (
    format_bytes,
    format_number,
    format_si,
    format_table,
    format_time,
    json_records,
    json_value,
)
from roofline.hardware.profile import HardwareProfile
from roofline.models import LoadedModel, _quiet_transformers, load
from roofline.moe import MoEParams, moe_params
from roofline.parallel import ParallelPlan, bubble_fraction, pipeline_factor, plan_for, shard
from roofline.precision import Precision, get_precision
from roofline.predict import LATENCY_TERMS, Prediction, overhead_sentence, predict
from roofline.trace import MetaStandIns, Trace, trace
from roofline.tracecache import Codec, decode_trace, encode_trace, key_for, traced

__all__ = ["LLMReport", "RooflineError", "llm", "render"]

DEFAULT_BATCH_SWEEP = (1, 2, 4, 8, 16, 32, 64, 128, 256, 512)
_BOUND_KINDS = ("memory", "compute", "efficiency", "overhead")


def _forward_kwargs(module: nn.Module, ids: torch.Tensor, cache: Any) -> dict[str, Any]:
    """Keyword arguments for a cached forward; transformers renamed past_key_values to cache."""
    parameters = inspect.signature(module.forward).parameters
    kwargs: dict[str, Any] = {"input_ids": ids, "use_cache": True}
    if cache is not None:
        kwargs["cache" if "cache" in parameters else "past_key_values"] = cache
    if "logits_to_keep" in parameters:
        kwargs["logits_to_keep"] = 1  # serving computes logits for the last position only
    return kwargs


def cache_tensors(cache: Any) -> Iterator[torch.Tensor]:
    """The key and value tensors held by a transformers cache object."""
    layers = getattr(cache, "layers", None)
    if layers is not None:
        for layer in layers:
            for name in ("keys", "values"):
                tensor = getattr(layer, name, None)
                if isinstance(tensor, torch.Tensor):
                    yield tensor
        return
    for tensor in list(getattr(cache, "key_cache", [])) + list(getattr(cache, "value_cache", [])):
        if isinstance(tensor, torch.Tensor):
            yield tensor


def _output_cache(out: Any) -> Any:
    cache = getattr(out, "past_key_values", None)
    if cache is None and isinstance(out, tuple) and len(out) > 1:
        cache = out[1]
    if cache is None:
        raise RooflineError("the model returned no KV cache: roofline llm needs a causal LM with use_cache")
    return cache


def _vocab(loaded: LoadedModel) -> int:
    config = loaded.meta.get("config")
    return int(getattr(config, "vocab_size", 32000) or 32000)


@dataclass(frozen=True)
class Phase:
    """One traced forward pass: the prefill, or a decode step at a context length."""

    name: str
    context: int  # tokens already in the cache when the pass starts
    tokens: int  # new tokens per sequence
    prediction: Prediction


@dataclass(frozen=True)
class LLMReport:
    """Prefill and decode on one device: per-phase tables, time to first token, tokens/s, memory."""

    model: str
    profile: HardwareProfile
    precision: Precision
    batch: int
    prompt_len: int
    gen_len: int
    attention: str
    prefill: Phase
    decode: tuple[Phase, ...]
    kv_elements_per_token: int  # per sequence, all layers, keys and values
    measured: dict[str, float] | None = None
    tp: int = 1  # tensor-parallel devices
    pp: int = 1  # pipeline stages
    microbatches: int = 1  # a phase's prediction is one microbatch of batch / microbatches sequences
    plan: ParallelPlan | None = None  # how the model splits (None on one device)
    traces: LLMTraces | None = dataclasses.field(default=None, repr=False, compare=False)  # for re-predicting

    @property
    def devices(self) -> int:
        return self.tp * self.pp

    def pass_s(self, prediction: Prediction) -> float:
        """A pass over the whole batch: the predicted microbatch pass, times the pipeline's factor."""
        return float(prediction.totals["predicted_latency_s"]) * pipeline_factor(self.pp, self.microbatches)

    @property
    def bubble(self) -> float:
        """The pipeline's idle share, (M - 1) / (M - 1 + microbatches)."""
        return bubble_fraction(self.pp, self.microbatches)

    @property
    def weight_params_per_device(self) -> float:
        if self.plan is None:
            return float(self.prefill.prediction.analysis.totals["params"])
        return self.plan.device_params(self.tp, self.pp)

    @property
    def kv_share(self) -> float:
        """The share of each sequence's KV cache one device holds (1 on one device)."""
        return (self.plan.kv_fraction(self.tp) if self.plan else 1.0) / self.pp

    @cached_property
    def phases(self) -> pd.DataFrame:
        """One row per traced pass: MACs, FLOPs, bytes by role, intensity, bound, predicted time."""
        rows = []
        for phase in (self.prefill, *self.decode):
            records, totals = phase.prediction.analysis.records, phase.prediction.totals
            rows.append({
                "phase": phase.name, "context": phase.context, "tokens": phase.tokens,
                "macs": int(records["macs"].sum()), "flops": int(records["flops"].sum()),
                "weight_bytes": float(records["weight_bytes"].sum()), "kv_bytes": float(records["kv_bytes"].sum()),
                "activation_bytes": float(records["bytes"].sum() - records["weight_bytes"].sum() - records["kv_bytes"].sum()),
                "bytes": float(records["bytes"].sum()),
                "arithmetic_intensity": phase.prediction.analysis.totals["arithmetic_intensity"],
                "memory_bound_fraction": totals["memory_bound_time_fraction"],
                "overhead_bound_fraction": totals["overhead_bound_time_fraction"],
                **{term: totals[term] for term in LATENCY_TERMS},
                "predicted_s": totals["predicted_latency_s"],
            })
        return pd.DataFrame(rows)

    def decode_step_s(self, context: float) -> float:
        """Predicted decode-step time at a context length, interpolated between traced steps."""
        contexts = [p.context for p in self.decode]
        times = [self.pass_s(p.prediction) for p in self.decode]
        return float(np.interp(context, contexts, times)) if len(contexts) > 1 else times[0]

    @cached_property
    def metrics(self) -> dict[str, float]:
        """Time to first token, time per output token, tokens/s, memory footprint, largest batch."""
        ttft = self.pass_s(self.prefill.prediction)
        contexts = np.arange(self.prompt_len, self.prompt_len + self.gen_len)
        step_times = np.array([self.decode_step_s(float(c)) for c in contexts])
        decode_total = float(step_times.sum())
        tpot = decode_total / self.gen_len
        return {
            "time_to_first_token_s": ttft,
            "time_per_output_token_s": tpot,
            "decode_tokens_per_s": self.batch / tpot,
            "end_to_end_s": ttft + decode_total,
            "end_to_end_tokens_per_s": self.batch * self.gen_len / (ttft + decode_total),
            **self.memory,
        }

    @cached_property
    def memory(self) -> dict[str, Any]:
        """Memory per device (the weight shard, the KV-cache shard, the activations of one microbatch), whether it
        fits and the largest batch that would: from the counts alone, no times (what-fits searches read only this)."""
        weights = self.weight_params_per_device * self.precision.weight_bytes
        kv_per_sequence = (self.kv_elements_per_token * (self.prompt_len + self.gen_len) * self.precision.kv_bytes
                           * self.kv_share)
        # The prefill's peak includes the cache it fills (held as activations until it returns); the
        # cache is counted on its own above, so take it out at the activation precision.
        prefill_cache = (self.batch / self.microbatches * self.kv_elements_per_token * self.prompt_len
                         * self.precision.activation_bytes * self.kv_share * self.pp)
        activations = max(
            self.prefill.prediction.analysis.totals["peak_activation_bytes"] - prefill_cache,
            *(p.prediction.analysis.totals["peak_activation_bytes"] for p in self.decode),
        )
        footprint = weights + self.batch * kv_per_sequence + activations
        capacity = self.profile.memory_levels[-1].capacity_bytes or math.inf
        per_sequence = kv_per_sequence + activations / self.batch
        max_batch = math.floor((capacity - weights) / per_sequence) if capacity > weights else 0
        return {
            "weights_bytes": weights,
            "kv_cache_bytes": self.batch * kv_per_sequence,
            "peak_activation_bytes": activations,
            "memory_footprint_bytes": footprint,
            "device_memory_bytes": capacity,
            "fits": footprint <= capacity,
            "max_batch_that_fits": max_batch,
        }

    @cached_property
    def batch_sweep(self) -> pd.DataFrame:
        """Decode tokens/s against batch size at the middle of the generation."""
        middle = min(self.decode, key=lambda p: abs(p.context - (self.prompt_len + self.gen_len // 2)))
        rows = []
        for batch in DEFAULT_BATCH_SWEEP:
            scaled = middle.prediction.analysis.scaled_batch(batch / self.batch)
            prediction = Prediction(scaled, self.profile, middle.prediction.calibrated)
            totals = prediction.totals
            fractions = {kind: totals[f"{kind}_bound_time_fraction"] for kind in _BOUND_KINDS}
            step = self.pass_s(prediction)
            rows.append({
                "batch": batch, "decode_step_s": step,
                "tokens_per_s": batch / step,
                **{f"{kind}_bound_fraction": share for kind, share in fractions.items()},
                "bound": max(fractions, key=lambda kind: fractions[kind]),
                **{term: totals[term] for term in LATENCY_TERMS},
                "arithmetic_intensity": scaled.totals["arithmetic_intensity"],
                "fits": batch <= self.metrics["max_batch_that_fits"],
            })
        return pd.DataFrame(rows)

    def compute_bound_batch(self) -> int | None:
        """The smallest swept batch at which compute bounds more of the decode step than anything else."""
        sweep = self.batch_sweep
        turned = sweep[sweep["bound"] == "compute"]
        return int(turned["batch"].iloc[0]) if len(turned) else None

    def decode_bound_sentence(self) -> str:
        """Where decode turns compute-bound, only if a tried batch is; else up to which batch it stays bound by what."""
        turn = self.compute_bound_batch()
        if turn is not None:
            return f"decode turns compute-bound at batch {turn} (of {', '.join(map(str, DEFAULT_BATCH_SWEEP))})"
        sweep = self.batch_sweep
        fitting = sweep[sweep["fits"]]
        last = (fitting if len(fitting) else sweep).iloc[-1]
        limit = "the largest that fits" if len(fitting) and len(fitting) < len(sweep) else "the largest tried"
        kinds = " then ".join(dict.fromkeys(sweep.loc[sweep["batch"] <= last["batch"], "bound"]))
        return (f"decode stays {kinds}-bound up to batch {int(last['batch'])} ({limit}); no batch tried is "
                "compute-bound")

    def to_dict(self) -> dict[str, Any]:
        return {
            "model": self.model, "hardware": self.profile.name, "precision": self.precision.name,
            "batch": self.batch, "prompt_len": self.prompt_len, "gen_len": self.gen_len,
            "attention": self.attention, "kv_elements_per_token": self.kv_elements_per_token,
            "tp": self.tp, "pp": self.pp, "microbatches": self.microbatches, "devices": self.devices,
            "metrics": {k: json_value(v) for k, v in self.metrics.items()},
            "phases": json_records(self.phases),
            "batch_sweep": json_records(self.batch_sweep),
            "measured": self.measured,
        }

    def summary(self) -> str:
        m = self.metrics
        lines = [
            (f"{self.model} on {self.profile.name} @ {self.precision.name}, attention {self.attention}: "
             f"batch {self.batch}, prompt {self.prompt_len}, generate {self.gen_len}"),
            (f"  time to first token {format_time(m['time_to_first_token_s'])}; per output token "
             f"{format_time(m['time_per_output_token_s'])}; decode {format_number(m['decode_tokens_per_s'])} tokens/s; "
             f"end to end {format_time(m['end_to_end_s'])}"),
            f"  memory: weights {format_bytes(m['weights_bytes'])} + KV cache {format_bytes(m['kv_cache_bytes'])} + "
            f"activations {format_bytes(m['peak_activation_bytes'])} = {format_bytes(m['memory_footprint_bytes'])} "
            f"of {format_bytes(m['device_memory_bytes'])}"
            + ("" if m["fits"] else "  (DOES NOT FIT)")
            + f"; largest batch that fits: {m['max_batch_that_fits']}",
            f"  {self.decode_bound_sentence()}",
        ]
        if self.devices > 1:
            lines.insert(1, self.parallel_sentence())
        if self.traces is not None and self.traces.moe is not None:
            moe = self.traces.moe
            lines.insert(1, f"  mixture of experts: top-{moe.top_k} of {moe.experts}; parameters {format_si(moe.total)} "
                            f"total (all held in memory), {format_si(moe.active)} active per token")
        regime = overhead_sentence(self.decode[0].prediction, DEFAULT_BATCH_SWEEP)
        if regime:
            lines.append(f"  decode step: {regime}")
        if self.measured:
            lines.append(
                "  measured on this machine: prefill " + format_time(self.measured["prefill_s"])
                + f" (predicted {format_time(self.measured['predicted_prefill_s'])}), decode step "
                + format_time(self.measured["decode_step_s"])
                + f" (predicted {format_time(self.measured['predicted_decode_step_s'])})"
            )
        return "\n".join(lines)

    def parallel_sentence(self) -> str:
        """The split, the memory per device and the collectives' share of a decode step."""
        step = self.decode[len(self.decode) // 2].prediction.totals
        collective = step["collective_s"] / step["predicted_latency_s"] if step["predicted_latency_s"] else 0.0
        link = self.profile.interconnect
        text = (f"  split over {self.devices} devices (TP={self.tp} x PP={self.pp}"
                + (f", {self.microbatches} microbatches, pipeline bubble {self.bubble:.0%}" if self.pp > 1 else "")
                + f"); memory per device; collectives {collective:.0%} of a decode step on "
                + (f"{link.name} ({format_si(link.bandwidth_bytes_per_s, 'B/s')} per direction)" if link else "?"))
        return text

    def __repr__(self) -> str:
        return self.summary()



def _decode_contexts(prompt_len: int, gen_len: int, points: int) -> list[int]:
    last = prompt_len + gen_len - 1
    if gen_len <= 1 or points <= 1:
        return [prompt_len]
    return sorted({round(prompt_len + (last - prompt_len) * i / (points - 1)) for i in range(points)})


@dataclass(frozen=True)
class LLMTraces:
    """The traced passes of one model at one batch, prompt and generation length: predicted on any profile,
    precision and split without re-tracing."""

    model: str
    batch: int
    prompt_len: int
    gen_len: int
    attention: str
    prefill: Trace
    decode: tuple[tuple[int, Trace], ...]  # (context, trace) per traced decode step
    kv_elements_per_token: int
    plan: ParallelPlan | None  # None when the model has no list of decoder layers to split
    moe: MoEParams | None = None  # total and active parameters of a mixture-of-experts model


def trace_llm(model: str, *, prompt_len: int = 1024, gen_len: int = 256, batch: int = 1, attention: str = "fused",
              points: int = 3, progress: bool = True, routing_skew: str | None = None,
              cache: bool = False) -> LLMTraces:
    """Trace the prefill and a few decode steps of a causal LM on meta (see the module docstring).

    routing_skew: for an MoE model, a measured skew of the experts' loads (roofline.moe.parse_skew); uniform
    routing when None. cache: reuse or keep the traced passes on disk (roofline.tracecache)."""
    from roofline import moe

    def build() -> LLMTraces:
        with moe.routing(moe.parse_skew(routing_skew)):
            return _trace_llm(model, prompt_len, gen_len, batch, attention, points, progress)

    options = {"prompt_len": prompt_len, "gen_len": gen_len, "batch": batch, "attention": attention, "points": points,
               "routing_skew": routing_skew}
    key = key_for(model, None, "llm", options) if cache else None
    return traced(key, build, LLM_CODEC)


def _encode_traces(traces: LLMTraces) -> dict[str, Any]:
    return {"model": traces.model, "batch": traces.batch, "prompt_len": traces.prompt_len, "gen_len": traces.gen_len,
            "attention": traces.attention, "prefill": encode_trace(traces.prefill),
            "decode": [[context, encode_trace(t)] for context, t in traces.decode],
            "kv_elements_per_token": traces.kv_elements_per_token,
            "plan": dataclasses.asdict(traces.plan) if traces.plan is not None else None,
            "moe": dataclasses.asdict(traces.moe) if traces.moe is not None else None}


def _decode_traces(data: dict[str, Any]) -> LLMTraces:
    plan = None
    if data["plan"] is not None:  # JSON lists back to the plan's tuples
        fields: dict[str, Any] = {k: tuple(v) if isinstance(v, list) else v for k, v in data["plan"].items()}
        plan = ParallelPlan(**fields)
    return LLMTraces(data["model"], data["batch"], data["prompt_len"], data["gen_len"], data["attention"],
                     decode_trace(data["prefill"]),
                     tuple((int(context), decode_trace(t)) for context, t in data["decode"]),
                     data["kv_elements_per_token"], plan,
                     MoEParams(**data["moe"]) if data["moe"] is not None else None)


LLM_CODEC: Codec[LLMTraces] = Codec(_encode_traces, _decode_traces)


def _trace_llm(model: str, prompt_len: int, gen_len: int, batch: int, attention: str, points: int,
               progress: bool) -> LLMTraces:
    for name, value in (("prompt-len", prompt_len), ("gen-len", gen_len), ("batch", batch)):
        if value < 1:
            raise RooflineError(f"{name} must be a positive integer, got {value}")
    if attention not in ("fused", "eager"):
        raise RooflineError(f"unknown attention {attention!r}; choose fused or eager")
    hf_attention = "sdpa" if attention == "fused" else "eager"
    loaded = load(model, batch=batch, seq_len=prompt_len, attention=hf_attention)
    module, vocab = loaded.module, _vocab(loaded)
    trace_attention = "fused" if attention == "fused" else "eager"
    contexts = _decode_contexts(prompt_len, gen_len, points)
    passes = 1 + len(contexts)
    with _quiet_transformers(), tqdm(total=passes, desc="tracing prefill and decode", disable=not progress,
                                     leave=False, unit="module") as bar:

        def run_trace(ids: torch.Tensor, cache: Any, name: str) -> Trace:
            kv = list(cache_tensors(cache)) if cache is not None else []
            index = 0 if name == "prefill" else 1 + len(decode)

            def advance(done: int, leaves: int) -> None:  # the bar runs over every traced pass's leaf modules
                if bar.total != passes * leaves:
                    bar.total = passes * leaves
                bar.update(index * leaves + done - bar.n)

            try:
                return trace(module, _forward_kwargs(module, ids, cache), model_name=f"{model} {name}",
                             attention=trace_attention, kv_tensors=kv,
                             kv_outputs=lambda out: cache_tensors(_output_cache(out)), progress=advance)
            except TypeError as error:  # pragma: no cover - models without a cache API
                raise RooflineError(f"{model} does not take a KV cache: {error}") from error

        decode: list[tuple[int, Trace]] = []
        prompt = torch.randint(0, vocab, (batch, prompt_len), device="meta")
        prefill_trace = run_trace(prompt, None, "prefill")
        cache_elements = sum(t.numel() for t in cache_tensors(_output_cache(prefill_trace.outputs)))
        kv_per_token = cache_elements // (batch * prompt_len)
        for context in contexts:
            with torch.no_grad(), MetaStandIns():
                context_ids = torch.randint(0, vocab, (batch, context), device="meta")
                cache = _output_cache(module(**_forward_kwargs(module, context_ids, None)))
            decode.append((context, run_trace(torch.randint(0, vocab, (batch, 1), device="meta"), cache,
                                              f"decode@{context}")))
    try:
        plan: ParallelPlan | None = plan_for(module, loaded.meta.get("config"))
    except RooflineError:
        plan = None
    return LLMTraces(model, batch, prompt_len, gen_len, attention, dataclasses.replace(prefill_trace, outputs=None),
                     tuple(decode), kv_per_token, plan, moe_params(module, loaded.meta.get("config")))


def report_for(traces: LLMTraces, profile: HardwareProfile, precision: Precision, *, tp: int = 1, pp: int = 1,
               microbatches: int | None = None, calibrated: bool = False) -> LLMReport:
    """Predict traced passes on `profile` split TP=tp x PP=pp (microbatches must divide the batch; by default the
    largest divisor of it up to pp: one microbatch per stage where the batch allows)."""
    micro = microbatches or max(d for d in range(1, min(pp, traces.batch) + 1) if traces.batch % d == 0)
    if micro < 1 or traces.batch % micro:
        raise RooflineError(f"--microbatches {micro} must be a positive divisor of the batch ({traces.batch})")
    if tp * pp > 1 and traces.plan is None:
        raise RooflineError(f"{traces.model}: --tp/--pp need a transformer with a list of decoder layers")

    def phase_prediction(step: Trace) -> Prediction:
        analysis = Analysis(step, precision)
        if traces.plan is not None:
            analysis = shard(analysis, traces.plan, tp, pp)
        if micro > 1:
            analysis = analysis.scaled_batch(1 / micro)
        return predict(analysis, profile, calibrated=calibrated)

    prefill = Phase("prefill", 0, traces.prompt_len, phase_prediction(traces.prefill))
    decode = tuple(Phase(f"decode@{context}", context, 1, phase_prediction(step)) for context, step in traces.decode)
    return LLMReport(traces.model, profile, precision, traces.batch, traces.prompt_len, traces.gen_len,
                     traces.attention, prefill, decode, traces.kv_elements_per_token, tp=tp, pp=pp,
                     microbatches=micro, plan=traces.plan if tp * pp > 1 else None, traces=traces)


def fit_error(report: LLMReport) -> RooflineError:
    """The one-line refusal of a split that does not fit, with the memory it needs per device."""
    m = report.metrics
    return RooflineError(
        f"{report.model} does not fit on {report.profile.name} at TP={report.tp} x PP={report.pp} "
        f"({report.precision.name}, batch {report.batch}, context {report.prompt_len + report.gen_len}): needs "
        f"{format_bytes(m['memory_footprint_bytes'])} per device (weights {format_bytes(m['weights_bytes'])} + KV "
        f"cache {format_bytes(m['kv_cache_bytes'])} + activations {format_bytes(m['peak_activation_bytes'])}) of "
        f"{format_bytes(m['device_memory_bytes'])}; split it further (--tp N, --pp M, or --tp auto)")


def llm(model: str, profile: HardwareProfile | str, *, precision: str | Precision = "fp16",
        kv_precision: str | None = None, prompt_len: int = 1024, gen_len: int = 256, batch: int = 1,
        attention: str = "fused", calibrated: bool = False, points: int = 3, measure_device: str | None = None,
        progress: bool = True, tp: int = 1, pp: int = 1, microbatches: int | None = None,
        check_fit: bool = True, routing_skew: str | None = None, cache: bool = False) -> LLMReport:
    """Trace prefill and decode of a causal LM on meta and predict them on `profile`, split TP=tp x PP=pp.

    attention: "fused" (FlashAttention-style, the score matrix never reaches memory) or "eager"
    (the model's eager attention, which materialises it). measure_device: also time a real
    prefill and decode step on this device (use a small config; random weights). check_fit: refuse
    (RooflineError) a split whose memory per device exceeds the device's. cache: reuse or keep the traced
    passes on disk (roofline.tracecache).
    """
    if isinstance(profile, str):
        from roofline.hardware import load_profile

        profile = load_profile(profile)
    chosen = get_precision(precision).with_kv(kv_precision)
    traces = trace_llm(model, prompt_len=prompt_len, gen_len=gen_len, batch=batch, attention=attention,
                       points=points, progress=progress, routing_skew=routing_skew, cache=cache)
    if traces.plan is not None:
        traces.plan.check(tp, pp)
    report = report_for(traces, profile, chosen, tp=tp, pp=pp, microbatches=microbatches, calibrated=calibrated)
    if check_fit and not report.memory["fits"]:
        raise fit_error(report)
    if measure_device is not None:
        hf_attention = "sdpa" if attention == "fused" else "eager"
        report = dataclasses.replace(report, measured=_measure(model, report, measure_device, hf_attention))
    return report


def _measure(model: str, report: LLMReport, device: str, hf_attention: str) -> dict[str, float]:
    """Time a real prefill and one decode step (at the prompt length) with random weights."""
    from roofline.measure.device import check_device, float_dtype
    from roofline.timing import time_callable

    device = check_device(device)  # the one device/precision check every measurer shares
    dtype = float_dtype(report.precision.name, device, "llm --measure")
    loaded = load(model, batch=report.batch, seq_len=report.prompt_len, device=device, attention=hf_attention)
    module = loaded.module.to(dtype)
    vocab = _vocab(loaded)
    prompt = torch.randint(0, vocab, (report.batch, report.prompt_len), device=device)
    token = torch.randint(0, vocab, (report.batch, 1), device=device)

    def prefill() -> None:
        with torch.inference_mode():
            module(**_forward_kwargs(module, prompt, None))

    with torch.inference_mode():
        cache = _output_cache(module(**_forward_kwargs(module, prompt, None)))

    def decode_step() -> None:
        with torch.inference_mode():
            module(**_forward_kwargs(module, token, cache))
        cache.crop(-(cache.get_seq_length() - report.prompt_len))  # keep the context fixed across repeats

    prefill_time = time_callable(prefill, device=device)
    decode_time = time_callable(decode_step, device=device)
    return {
        "device": device,
        "prefill_s": prefill_time.median_s,
        "prefill_iqr_s": prefill_time.iqr_s,
        "decode_step_s": decode_time.median_s,
        "decode_step_iqr_s": decode_time.iqr_s,
        "predicted_prefill_s": report.prefill.prediction.totals["predicted_latency_s"],
        "predicted_decode_step_s": report.decode_step_s(report.prompt_len),
    }


def render(report: LLMReport, fmt: str = "table") -> str:
    if fmt == "json":
        return json.dumps(report.to_dict(), indent=2, default=str)
    phases = report.phases
    if fmt == "csv":
        return str(phases.to_csv(index=False)).rstrip("\n")
    formatters: dict[str, Callable[[Any], str]] = {
        "macs": format_si, "flops": format_si, "weight_bytes": format_bytes, "kv_bytes": format_bytes,
        "activation_bytes": format_bytes, "bytes": format_bytes, "predicted_s": format_time,
    }
    percent = {column: (lambda v: f"{v:.0%}") for column in (*(f"{k}_bound_fraction" for k in _BOUND_KINDS),)}
    kept = ("exposed_overhead_s", "collective_s") if report.devices > 1 else ("exposed_overhead_s",)
    shown_phases = phases.drop(columns=[c for c in LATENCY_TERMS if c not in kept])
    sweep = report.batch_sweep[["batch", "decode_step_s", "tokens_per_s", *percent, "exposed_overhead_s", "bound",
                                "arithmetic_intensity", "fits"]]
    if not report.prefill.prediction.calibrated:
        sweep = sweep.drop(columns="efficiency_bound_fraction")
    sweep_text = format_table(sweep, {"decode_step_s": format_time, "exposed_overhead_s": format_time,
                                      "tokens_per_s": lambda v: f"{v:,.0f}", **percent})
    return (
        format_table(shown_phases, {**formatters, "exposed_overhead_s": format_time, "collective_s": format_time,
                                    **percent})
        + "\n\n" + sweep_text + "\n\n" + report.summary()
    )

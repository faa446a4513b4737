"""Trace -> Analysis: per-op, per-layer and per-type DataFrames and totals, at one Precision.

Every table is a group-by of one flat per-op DataFrame, so rows always add up to the totals. Bytes are
element counts times the Precision's element size for each tensor role; `with_precision` re-costs
without re-tracing.
"""
from __future__ import annotations

import dataclasses
import json
import warnings
from collections.abc import Callable
from dataclasses import dataclass
from functools import cached_property
from typing import TYPE_CHECKING, Any

import pandas as pd

from roofline.formatting import format_bytes, format_markdown, format_si, format_table, json_records
from roofline.precision import Precision, get_precision, training_precision
from roofline.records import PEAK_CATEGORIES, STEP_CATEGORIES, Trace, TrainingInfo

if TYPE_CHECKING:
    from roofline.trace import TraceProgress

__all__ = ["PEAK_CATEGORIES", "STEP_CATEGORIES", "Analysis", "TrainingInfo", "analyze", "render"]

JSON_FORMAT_VERSION = 1

# The layer columns of the JSON contract (DESIGN.md), in order.
LAYER_COLUMNS = [
    "name", "type", "macs", "flops", "params", "weight_bytes", "bytes_read", "bytes_written",
    "fused_bytes", "arithmetic_intensity",
]


def _intensity(flops: pd.Series | float, moved: pd.Series | float) -> Any:
    """FLOPs per byte moved; 0 where nothing moves (a view-only layer)."""
    if isinstance(moved, pd.Series):
        return (flops / moved.where(moved > 0)).fillna(0.0)
    return float(flops) / moved if moved else 0.0


@dataclass(frozen=True)
class Analysis:
    """Counts for one model and inputs at one precision. Tables are pandas DataFrames."""

    trace: Trace
    precision: Precision

    def __post_init__(self) -> None:
        if self.trace.mode == "train" and self.precision.master_bits is None:
            # A training step keeps fp32 master weights, grads and optimizer state (precision.training_precision).
            object.__setattr__(self, "precision", training_precision(self.precision))

    def with_precision(self, precision: str | Precision) -> Analysis:
        """The same counts re-costed at another precision (bytes and model size change, FLOPs do not)."""
        return Analysis(self.trace, get_precision(precision))

    @property
    def mode(self) -> str:
        return self.trace.mode

    def scaled_batch(self, factor: float) -> Analysis:
        """The same model at `factor` x the traced batch, without re-tracing.

        FLOPs and activation, KV and integer bytes grow in proportion to the batch; weight bytes do
        not, except rows selected by an index (an embedding lookup). Exact for models whose ops treat
        samples independently (transformer layers, an LLM decode step), except for outputs without a
        batch dimension (batch norm's per-channel statistics), which it over-counts slightly.
        """
        from roofline.opclass import SELECTIVE_READ_OPS

        t = self.trace

        def scale(value: int) -> int:
            return round(value * factor)

        records = [
            dataclasses.replace(
                r, macs=scale(r.macs), flops=scale(r.flops), act_read=scale(r.act_read), kv_read=scale(r.kv_read),
                weight_read=scale(r.weight_read) if r.op in SELECTIVE_READ_OPS else r.weight_read,
                fixed_read_bytes=scale(r.fixed_read_bytes), act_written=scale(r.act_written),
                kv_written=scale(r.kv_written), fixed_written_bytes=scale(r.fixed_written_bytes),
                allreduce_elements=scale(r.allreduce_elements), allgather_elements=scale(r.allgather_elements),
                p2p_elements=scale(r.p2p_elements),
            )
            for r in t.records
        ]
        fused = {
            name: dataclasses.replace(f, act=scale(f.act), kv=scale(f.kv), fixed_bytes=scale(f.fixed_bytes))
            for name, f in t.fused.items()
        }
        inputs = [[scale(dims[0]), *dims[1:]] if dims else dims for dims in t.inputs]
        scaled = dataclasses.replace(
            t, records=records, fused=fused, inputs=inputs, outputs=None,
            peak_activation_elements=scale(t.peak_activation_elements), peak_fixed_bytes=scale(t.peak_fixed_bytes),
        )
        return Analysis(scaled, self.precision)

    @property
    def model_name(self) -> str:
        return self.trace.model_name

    # -- tables -----------------------------------------------------------------------------------
    @cached_property
    def records(self) -> pd.DataFrame:
        """One row per aten op call, with bytes at this precision."""
        p = self.precision
        df = pd.DataFrame([r.__dict__ for r in self.trace.records])
        if df.empty:
            df = pd.DataFrame(columns=[f for f in _RECORD_FIELDS])
        # The optimizer updates the master weights, and its own temporaries are at the state's precision;
        # forward and backward read the weights (autocast's copies under mixed precision) at weight precision.
        optimizer = df["phase"] == "optimizer"
        weight_size = optimizer.map({True: p.master_bytes, False: p.weight_bytes}).astype(float)
        act_size = optimizer.map({True: p.state_bytes, False: p.activation_bytes}).astype(float)
        df["weight_bytes"] = df["weight_read"] * weight_size
        df["bytes_read"] = (
            df["weight_bytes"] + df["act_read"] * act_size + df["kv_read"] * p.kv_bytes
            + df["fixed_read_bytes"] + df["grad_read"] * p.grad_bytes + df["state_read"] * p.state_bytes
        )
        df["bytes_written"] = (
            df["act_written"] * act_size + df["kv_written"] * p.kv_bytes + df["fixed_written_bytes"]
            + df["weight_written"] * weight_size + df["grad_written"] * p.grad_bytes
            + df["state_written"] * p.state_bytes
        )
        df["kv_bytes"] = (df["kv_read"] + df["kv_written"]) * p.kv_bytes
        df["bytes"] = df["bytes_read"] + df["bytes_written"]
        df["arithmetic_intensity"] = _intensity(df["flops"], df["bytes"])
        return df

    @cached_property
    def layers(self) -> pd.DataFrame:
        """One row per module call (DESIGN.md's layer), in execution order."""
        p = self.precision
        sums = ["macs", "flops", "weight_bytes", "bytes_read", "bytes_written", "kv_bytes", "bytes"]
        by_layer = self.records.groupby("layer", sort=False)
        grouped = by_layer[sums].sum() if len(self.records) else pd.DataFrame(columns=sums)
        counts = by_layer.size().to_dict() if len(self.records) else {}
        # Plain dicts, not one DataFrame lookup per cell: a third of a trace-and-tabulate's time (issue 19's profile).
        per_layer: dict[str, dict[str, Any]] = grouped.to_dict(orient="index")
        rows = []
        for call in self.trace.layers:
            summed = per_layer.get(call.name)
            has_ops = summed is not None
            row: dict[str, Any] = {"name": call.name, "type": call.module_type, "phase": call.phase}
            for column in sums:
                row[column] = float(summed[column]) if summed is not None else 0.0
            row["macs"] = int(row["macs"])
            row["flops"] = int(row["flops"])
            row["params"] = int(self.trace.layer_params.get(call.name, 0))
            fused = self.trace.fused.get(call.name)
            weight_size = p.master_bytes if call.phase == "optimizer" else p.weight_bytes
            act_size = p.state_bytes if call.phase == "optimizer" else p.activation_bytes
            row["fused_bytes"] = (
                fused.weight * weight_size + fused.act * act_size + fused.kv * p.kv_bytes
                + fused.fixed_bytes + fused.grad * p.grad_bytes + fused.state * p.state_bytes
                if fused else 0.0
            )
            row["ops"] = int(counts[call.name]) if has_ops else 0
            row["path"] = call.path
            row["call_index"] = call.call_index
            row["is_leaf"] = call.is_leaf
            rows.append(row)
        df = pd.DataFrame(rows)
        df["arithmetic_intensity"] = _intensity(df["flops"], df["bytes"])
        df["fused_arithmetic_intensity"] = _intensity(df["flops"], df["fused_bytes"])
        ordered = LAYER_COLUMNS + [c for c in df.columns if c not in LAYER_COLUMNS]
        return df[ordered]

    @cached_property
    def ops(self) -> pd.DataFrame:
        """One row per aten op type, most FLOPs first."""
        df = self.records.groupby("op", sort=False).agg(
            count=("seq", "size"), op_class=("op_class", "first"), macs=("macs", "sum"), flops=("flops", "sum"),
            bytes_read=("bytes_read", "sum"), bytes_written=("bytes_written", "sum"), bytes=("bytes", "sum"),
        ).reset_index()
        df["arithmetic_intensity"] = _intensity(df["flops"], df["bytes"])
        return df.sort_values(["flops", "bytes"], ascending=False, ignore_index=True)

    @cached_property
    def by_type(self) -> pd.DataFrame:
        """One row per module type, most FLOPs first."""
        df = self.layers.groupby("type", sort=False).agg(
            calls=("name", "size"), macs=("macs", "sum"), flops=("flops", "sum"), params=("params", "sum"),
            weight_bytes=("weight_bytes", "sum"), bytes_read=("bytes_read", "sum"),
            bytes_written=("bytes_written", "sum"), fused_bytes=("fused_bytes", "sum"), bytes=("bytes", "sum"),
        ).reset_index()
        df["arithmetic_intensity"] = _intensity(df["flops"], df["bytes"])
        return df.sort_values(["flops", "bytes"], ascending=False, ignore_index=True)

    @cached_property
    def totals(self) -> dict[str, Any]:
        """Whole-model figures; per-layer rows add up to these exactly."""
        p = self.precision
        layers = self.layers
        bytes_read = float(layers["bytes_read"].sum())
        bytes_written = float(layers["bytes_written"].sum())
        flops = int(layers["flops"].sum())
        totals: dict[str, Any] = {
            "macs": int(layers["macs"].sum()),
            "flops": flops,
            "params": int(self.trace.total_params),
            "model_size_bytes": self.trace.total_params * p.weight_bytes,
            "bytes_read": bytes_read,
            "bytes_written": bytes_written,
            "peak_activation_bytes": self.trace.peak_activation_elements * p.activation_bytes
            + self.trace.peak_fixed_bytes,
            "arithmetic_intensity": _intensity(flops, bytes_read + bytes_written),
        }
        info = self.training
        if info is not None:
            memory = info.memory(p)
            by_phase = layers.groupby("phase")[["macs", "flops", "bytes"]].sum()
            for phase in ("forward", "backward", "optimizer"):
                for column in ("macs", "flops", "bytes"):
                    value = by_phase.at[phase, column] if phase in by_phase.index else 0
                    totals[f"{phase}_{column}"] = int(value) if column != "bytes" else float(value)
            totals["model_size_bytes"] = info.model_size(p)["weights_bytes"]
            totals.update(info.model_size(p))
            # The activation peak of a step is the training peak's activations (saved for backward).
            totals["peak_activation_bytes"] = memory["by_category"]["activations"]
            totals["peak_memory_bytes"] = memory["peak_bytes"]
            totals.update({f"peak_{name}_bytes": value for name, value in memory["by_category"].items()})
            totals["peak_layer"] = memory["peak_layer"]
            totals["samples"] = info.samples
            totals["tokens"] = info.tokens
        return totals

    @property
    def training(self) -> TrainingInfo | None:
        """The training step's extra figures (mode "train"), else None."""
        info = self.trace.training
        return info if isinstance(info, TrainingInfo) else None

    @property
    def unsupported_ops(self) -> list[dict[str, Any]]:
        return [{"op": op, "count": count} for op, count in sorted(self.trace.unsupported.items())]

    def model_size_bytes(self) -> dict[str, float]:
        """Model size at every known precision."""
        from roofline.precision import PRECISIONS

        return {name: self.trace.total_params * p.weight_bytes for name, p in PRECISIONS.items()}

    # -- export -----------------------------------------------------------------------------------
    def to_dict(self) -> dict[str, Any]:
        """The `analyze --format json` object of DESIGN.md."""
        result: dict[str, Any] = {
            "model": self.model_name,
            "precision": self.precision.name,
            "inputs": self.trace.inputs,
            "totals": self.totals,
            "layers": json_records(self.layers[LAYER_COLUMNS]),
            "unsupported_ops": self.unsupported_ops,
        }
        if self.training is not None:  # a training step: its rows carry their phase, and the step's memory
            result["mode"] = "train"
            result["layers"] = json_records(self.layers[[*LAYER_COLUMNS, "phase"]])
            result["training"] = {"optimizer": self.training.optimizer, "loss": self.training.loss,
                                  **self.training.memory(self.precision)}
        return result

    def summary(self) -> str:
        t = self.totals
        lines = [
            f"{self.model_name} @ {self.precision.name}, inputs {self.trace.inputs}",
            (f"  MACs {format_si(t['macs'])}  FLOPs {format_si(t['flops'])}  params {format_si(t['params'])}"
             f"  model size {format_bytes(t['model_size_bytes'])}"),
            (f"  bytes read {format_bytes(t['bytes_read'])}  written {format_bytes(t['bytes_written'])}"
             f"  peak activations {format_bytes(t['peak_activation_bytes'])}"
             f"  intensity {t['arithmetic_intensity']:.3g} FLOP/B"),
        ]
        if self.training is not None:
            info = self.training
            lines.append(
                f"  training step ({info.optimizer}, loss = {info.loss}): FLOPs forward {format_si(t['forward_flops'])}"
                f"  backward {format_si(t['backward_flops'])}  optimizer {format_si(t['optimizer_flops'])}")
            lines.append(
                f"  model size: weights {format_bytes(t['weights_bytes'])}"
                + (f" (+ 16-bit copies {format_bytes(t['weight_copies_bytes'])})" if t["weight_copies_bytes"] else "")
                + f"  grads {format_bytes(t['grads_bytes'])}  optimizer state {format_bytes(t['optimizer_state_bytes'])}")
            parts = "  ".join(f"{name.replace('_', ' ')} {format_bytes(t[f'peak_{name}_bytes'])}"
                              for name in PEAK_CATEGORIES if t[f"peak_{name}_bytes"])
            lines.append(f"  peak memory {format_bytes(t['peak_memory_bytes'])} at {t['peak_layer']}: {parts}")
        if self.unsupported_ops:
            listed = ", ".join(f"{u['op']} x{u['count']}" for u in self.unsupported_ops)
            lines.append(f"  unsupported ops (FLOPs not counted, bytes counted): {listed}")
        return "\n".join(lines)

    def __repr__(self) -> str:
        return self.summary()

    def _repr_html_(self) -> str:
        table = self.layers[LAYER_COLUMNS].to_html(index=False, float_format=lambda v: f"{v:.4g}")
        return f"<pre>{self.summary()}</pre>{table}"


_RECORD_FIELDS = [
    "seq", "layer", "op", "op_class", "macs", "flops", "weight_read", "act_read", "kv_read", "fixed_read_bytes",
    "act_written", "kv_written", "fixed_written_bytes", "supported", "input_shapes", "output_shapes",
    "allreduce_elements", "allgather_elements", "p2p_elements",
    "weight_written", "grad_read", "grad_written", "state_read", "state_written", "phase",
]



def analyze(model: Any, inputs: Any = None, precision: str | Precision = "fp32", *, attention: str = "fused",
            warn_unsupported: bool = True, cache: bool = False, progress: TraceProgress | None = None,
            **load_options: Any) -> Analysis:
    """Count a model: a MODEL spec string, a LoadedModel, or an nn.Module with `inputs`.

    cache: reuse a trace kept on disk, or keep this one (roofline.tracecache; spec strings of library and zoo
    models only, anything else is traced). progress: called as the trace runs (trace.TraceProgress).
    """
    from roofline import tracecache

    chosen = get_precision(precision)  # a bad precision fails before the model is built

    def build() -> Trace:
        from roofline import models
        from roofline.trace import trace

        loaded = model if isinstance(model, models.LoadedModel) else models.load(model, inputs=inputs, **load_options)
        return trace(loaded.module, loaded.inputs, model_name=loaded.name, attention=attention, progress=progress)

    key = tracecache.key_for(model, inputs, "inference", {"attention": attention, **load_options}) if cache else None
    counted = tracecache.traced(key, build)
    result = Analysis(counted, chosen)
    if warn_unsupported and counted.unsupported:
        warn_unsupported_ops(counted.unsupported)
    return result


def warn_unsupported_ops(unsupported: dict[str, int]) -> None:
    """The one warning for ops that have no cost rule, with each op's count."""
    listed = ", ".join(f"{op} x{count}" for op, count in sorted(unsupported.items()))
    warnings.warn(f"ops with no cost rule (FLOPs not counted, bytes counted): {listed}", stacklevel=3)


_LAYER_FORMATTERS: dict[str, Callable[[Any], str]] = {
    "macs": format_si, "flops": format_si, "params": format_si, "weight_bytes": format_bytes,
    "bytes_read": format_bytes, "bytes_written": format_bytes, "fused_bytes": format_bytes, "bytes": format_bytes,
}


def render(result: Analysis, by: str = "layer", fmt: str = "table") -> str:
    """The analyze command's output in one of the formats: table, csv, json, markdown."""
    if fmt == "json":
        return json.dumps(result.to_dict(), indent=2)
    table = {"layer": result.layers[LAYER_COLUMNS], "op": result.ops, "type": result.by_type}[by]
    if fmt == "csv":
        return str(table.to_csv(index=False)).rstrip("\n")
    if fmt == "markdown":
        return format_markdown(table) + "\n\n" + "\n".join(f"    {line}" for line in result.summary().splitlines())
    return format_table(table, _LAYER_FORMATTERS) + "\n\n" + result.summary()

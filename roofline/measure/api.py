"""Per-layer and end-to-end latency on a real device, in rows named exactly as the trace names them.

Measurement never estimates: a precision the device cannot run raises NotMeasurable, never a number.

How a model is measured:
1. It is built with random weights on the device (`models.load(spec, device=...)`) and cast to the
   precision (bf16/fp16: weights and float inputs; int8: torch's dynamic quantisation, see below).
2. One forward pass runs under the trace's `ModuleCallTracker`, so every row gets the trace's name
   (`path`, `path#1` for a second call, "(model)" for the root's own ops), and under a dispatch mode
   that captures each row's real inputs:
   - a leaf module call (Conv2d, Linear, LayerNorm, Identity) keeps its arguments and is later timed
     as `module(*args, **kwargs)`, hooks and dispatch included;
   - a non-leaf module's own ops (a residual add, SDPA in a custom attention block) cannot be called
     alone, so the aten ops that ran directly in that call are kept with their arguments and timed
     as a replay of exactly those ops.
   Captured activations are copied (weights are not), so in-place ops later in the pass cannot
   change them. A non-leaf call whose own ops are only views gets no row, as in the trace.
3. Each row is timed alone through `timing.time_callable` (warm-up, blocks of >= 1 ms, repeats until
   `min_run_time_s`, median and IQR; CUDA events after synchronisation on a GPU, perf_counter on the
   CPU), in `rounds` interleaved passes over all rows and batch sizes (`timing.time_interleaved`). A leaf that runs no op (Identity, eval-mode Dropout) is timed too: its time is the cost of
   calling a module, which the model pays as well.
4. The whole forward pass is timed at several batch sizes for latency and throughput.
5. Every row is also timed inside the real pass (`in_pass_s`), on CPU and CUDA alike: a few passes
   run under torch.profiler and each aten op (CUDA: each kernel) is given the layer the tracer gives
   it (roofline.measure.passes; `in_pass_ops_s` and `in_pass_gap_s` are the op time and the time
   between ops). The profiled pass is stated against the plain one. Alone, a layer repeats with its
   code, weights and output buffer warm in cache; in the pass the layers before it have evicted
   them, so the two differ, and the in-pass times add up to the pass.
6. `measure(model, trace=FILE)` times nothing: it reads the in-pass times from a trace torch.profiler
   wrote in the user's own run, on any device (`measure_trace`).

All timing runs inside `timing.retained_heap`: freed buffers of up to 32 MiB stay in the process,
so neither the layers nor the whole pass pay page faults that depend on what the process ran before
(larger buffers are mapped afresh and fault on every call, alone and in the pass alike) (recorded
in metadata as "allocator"; benchmarks/alloc_effect.py measures what those faults cost).

nn.MultiheadAttention's fused CPU fast path is switched off throughout, as the trace does, so its
out_proj is a row of its own here as in the analysis.
"""
from __future__ import annotations

import contextlib
import copy
import dataclasses
import datetime
import json
import os
import statistics
import sys
import warnings
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pandas as pd
import torch
from torch import nn
from torch.utils._pytree import tree_leaves, tree_map

from roofline.errors import RooflineError
from roofline.formatting import format_markdown, format_number, format_table, format_time, json_records
from roofline.machine import collect, num_threads
from roofline.measure.capture import Capture, Row, forward_callable, layer_callable
from roofline.measure.device import (
    NotMeasurable,
    check_device,
    check_precision,
    math_mode,
    precision_notes,
)
from roofline.measure.passes import PassTimes, attribute_trace, module_records, profile_pass_times, read_trace
from roofline.models import LoadedModel
from roofline.precision import MEASURABLE_DTYPES, get_precision
from roofline.timing import (
    NOISY_IQR_FRACTION,
    Measurement,
    check_budget,
    reference_matmul,
    retained_heap,
    time_interleaved,
)

__all__ = ["ModelMeasurement", "NotMeasurable", "measure", "measure_trace", "render"]

JSON_FORMAT_VERSION = 1
LAYER_COLUMNS = ["name", "type", "measured_s", "iqr_s", "repeats", "noisy", "in_pass_s", "in_pass_ops_s", "in_pass_gap_s",
                 "timed_as", "ran_as"]
END_TO_END_COLUMNS = ["batch", "latency_s", "iqr_s", "repeats", "noisy", "throughput_samples_per_s"]

# Module types torch's dynamic quantisation turns into int8 kernels (its default qconfig_spec).
_DYNAMIC_INT8_TYPES = (nn.Linear, nn.LSTM, nn.GRU, nn.LSTMCell, nn.RNNCell, nn.GRUCell)
_FLOAT_DTYPES = {**MEASURABLE_DTYPES, "int8": torch.float32}  # int8: captured in fp32, then quantised


@dataclass(frozen=True, eq=False)
class ModelMeasurement:
    """Measured per-layer and end-to-end latency of one model on one device at one precision.

    layers: one row per layer, named as analyze and predict name them (join on `name`).
    end_to_end: one row per batch size: latency of the whole forward pass and throughput.
    """

    model: str
    device: str
    precision: str
    layers: pd.DataFrame
    end_to_end: pd.DataFrame
    metadata: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        absent = {c: float("nan") for c in ("in_pass_s", "in_pass_ops_s", "in_pass_gap_s") if c not in self.layers}
        if absent:  # not timed inside the pass (older results, int8)
            object.__setattr__(self, "layers", self.layers.assign(**absent))
        missing = [c for c in LAYER_COLUMNS if c not in self.layers.columns]
        if missing:
            raise ValueError(f"layers table lacks columns {missing}")
        if (self.layers["measured_s"] < 0).any() or (self.end_to_end["latency_s"] <= 0).any():
            raise ValueError("measured times must be positive")

    @property
    def sum_of_layers_s(self) -> float:
        """The layers' medians added up; differs from end-to-end by what isolation changes (caches, overlap)."""
        return float(self.layers["measured_s"].sum())

    @property
    def noisy_layers(self) -> list[str]:
        return [str(name) for name in self.layers.loc[self.layers["noisy"], "name"]]

    def to_dict(self) -> dict[str, Any]:
        """The `measure --format json` object; layer rows carry `name` to join analyze/predict rows."""
        return {
            "model": self.model,
            "device": self.device,
            "precision": self.precision,
            "metadata": self.metadata,
            "layers": json_records(self.layers[LAYER_COLUMNS]),
            "end_to_end": json_records(self.end_to_end[END_TO_END_COLUMNS]),
        }

    def summary(self) -> str:
        meta = self.metadata
        lines = [
            (f"{self.model} on {self.device} ({meta.get('device_name', '?')}) @ {self.precision}, "
             f"threads {meta.get('num_threads', '?')}, torch {meta.get('torch_version', '?')}, {meta.get('date', '')}"),
            f"  sum of {len(self.layers)} layers {format_time(self.sum_of_layers_s)} at batch {meta.get('batch', '?')}",
        ]
        if self.layers["in_pass_s"].notna().any():
            lines.append(_in_pass_line(meta, float(self.layers["in_pass_s"].sum())))
        from_speed = set(meta.get("noisy_from_machine_speed", []))
        for row in json_records(self.end_to_end):
            flag = "  (! noisy)" if row["noisy"] else ""
            if f"batch {row['batch']}" in from_speed:
                flag = "  (! noisy: the machine's own speed varied more than its IQR)"
            lines.append(
                f"  end-to-end batch {row['batch']}: {format_time(row['latency_s'])} "
                f"(IQR {format_time(row['iqr_s'])}), {format_number(row['throughput_samples_per_s'])} samples/s{flag}"
            )
        if self.noisy_layers:
            lines.append(f"  {len(self.noisy_layers)} of {len(self.layers)} layers noisy (IQR > 10% of median, or the "
                         "machine's own speed varied more than their IQR)")
        lines.extend(f"  note: {note}" for note in meta.get("notes", []))
        return "\n".join(lines)

    def __repr__(self) -> str:
        return self.summary()

    def _repr_html_(self) -> str:
        def table(df: pd.DataFrame) -> str:
            return str(df.to_html(index=False, float_format=lambda v: f"{v:.4g}"))

        return f"<pre>{self.summary()}</pre>{table(self.layers[LAYER_COLUMNS])}{table(self.end_to_end)}"




def _cast_inputs(inputs: Any, dtype: torch.dtype, device: str) -> Any:
    """Move tensors to `device` and cast floating-point ones to `dtype` (token ids and masks keep theirs)."""
    def cast(value: Any) -> Any:
        if not isinstance(value, torch.Tensor):
            return value
        value = value.to(device)
        return value.to(dtype) if value.is_floating_point() else value

    return tree_map(cast, inputs)


def _prepare(model: Any, inputs: Any, device: str, precision: str, load_options: dict[str, Any]) -> LoadedModel:
    """A LoadedModel on `device` in the precision's float dtype; a caller's module is copied before any cast or move."""
    from roofline import models

    if isinstance(model, str):
        loaded = models.load(model, inputs=inputs, device=device, **load_options)
    else:
        if not isinstance(model, LoadedModel):
            model = models.load(model, inputs=inputs, device=device, **load_options)
        if any(t.is_meta for t in [*model.module.parameters(), *_tensors(model.inputs)]):
            raise RooflineError(
                f"{model.name} is on the meta device (no data to run); load it with device={device!r} or pass the spec"
            )
        module = model.module
        if module.training or any(_differs(t, device, _FLOAT_DTYPES[precision])
                                  for t in [*module.parameters(), *module.buffers()]):
            module = copy.deepcopy(module)  # casting, moving or eval() would change the caller's module
        loaded = LoadedModel(model.name, module, model.inputs, device, model.meta)
    dtype = _FLOAT_DTYPES[precision]
    loaded.module.to(device=device, dtype=dtype).eval()
    loaded.inputs = _cast_inputs(loaded.inputs, dtype, device)
    return loaded


def _differs(tensor: torch.Tensor, device: str, dtype: torch.dtype) -> bool:
    """Whether module.to(device, dtype) would change this tensor."""
    return tensor.device != torch.device(device) or (tensor.is_floating_point() and tensor.dtype != dtype)


def _tensors(tree: Any) -> list[torch.Tensor]:
    return [leaf for leaf in tree_leaves(tree) if isinstance(leaf, torch.Tensor)]


def _quantize_int8(module: nn.Module) -> tuple[nn.Module, set[str]]:
    """torch's dynamic int8 quantisation (int8 weights, activations quantised on the fly) and the paths it changed."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # torch.ao.quantization's deprecation notes
        quantized = torch.ao.quantization.quantize_dynamic(module, dtype=torch.qint8)  # type: ignore[no-untyped-call]
    changed = {path for path, sub in quantized.named_modules()
               if type(sub).__module__.startswith("torch.ao.nn.quantized.dynamic")}
    return quantized, changed


def _in_pass_line(meta: Mapping[str, Any], total_s: float) -> str:
    """The in-pass sum against the profiled pass, what no layer holds, and the profiler's own cost."""
    if "profiled_pass_s" not in meta:
        return f"  the same layers inside the pass: {format_time(total_s)}"
    pass_s = float(meta["profiled_pass_s"])
    cost = (f"; the profiler adds {meta['profiler_overhead_fraction']:+.1%} to the plain pass of "
            f"{format_time(float(meta['plain_pass_s']))}") if "plain_pass_s" in meta else ""
    return (f"  the same layers inside the pass ({meta['in_pass']}): {format_time(total_s)}, "
            f"{total_s / pass_s:.1%} of the profiled pass of {format_time(pass_s)} (mean of "
            f"{meta['profiled_passes']}); {format_time(float(meta['outside_ops_s']))} before the first op and after "
            f"the last is no layer's{cost}")


# ---- end to end ------------------------------------------------------------------------------------

def batch_of(inputs: list[Any] | dict[str, Any]) -> int:
    """The batch: the leading dimension of the first tensor input (1 for scalars or no tensors)."""
    first = next((t for t in _tensors(inputs) if t.dim() > 0), None)
    return int(first.shape[0]) if first is not None else 1


def _at_batch(inputs: list[Any] | dict[str, Any], base: int, batch: int) -> Any:
    """Inputs at another batch size: tensors whose first dimension is the batch are tiled along it and cut."""
    def resize(value: Any) -> Any:
        if not isinstance(value, torch.Tensor) or value.dim() == 0 or value.shape[0] != base or batch == base:
            return value
        repeats = -(-batch // base)
        return value.repeat(repeats, *[1] * (value.dim() - 1))[:batch].contiguous()

    return tree_map(resize, inputs)


def parse_batch_sizes(text: str) -> list[int]:
    """'1,8,32' -> [1, 8, 32]; a clear error otherwise."""
    parts = [p.strip() for p in text.split(",") if p.strip()]
    if not parts or not all(p.isdigit() and int(p) > 0 for p in parts):
        raise RooflineError(
            f"malformed batch sizes {text!r}: expected positive integers separated by commas, e.g. 1,8,32"
        )
    return [int(p) for p in parts]


@dataclass(frozen=True)
class _Settings:
    """What one measurement run was asked for."""

    device: str
    precision: str
    timer: dict[str, Any]  # time_callable's options
    rounds: int  # interleaved passes over all items (timing.time_interleaved)
    load_before: float | None  # 1-minute load average when measuring began
    allocator: str = ""  # how freed host memory was kept while timing (timing.retained_heap)


# ---- the API ---------------------------------------------------------------------------------------

def measure(model: Any, inputs: Any = None, device: str = "cpu", precision: str = "fp32",
            batch_sizes: Sequence[int] | None = None, progress: bool = True, *, min_run_time_s: float = 0.05,
            warmup: int = 2, max_repeats: int = 1000, num_threads: int | None = None, rounds: int = 3,
            trace: str | Path | None = None, **load_options: Any) -> ModelMeasurement:
    """Time every layer alone and the whole forward pass on a real device (on a CPU, every layer
    inside the pass as well: the `in_pass_s` column).

    model: a MODEL spec string (built with random weights on `device`), a LoadedModel, or an nn.Module
    with `inputs`. batch_sizes: end-to-end batch sizes (default: the inputs' batch, 2x and 4x).
    min_run_time_s: timing per layer and per batch size, split over `rounds` interleaved passes over
    all layers and batch sizes, so a change in the machine's speed during the run touches every row
    alike; max_repeats caps the timed blocks per pass.
    num_threads: torch's CPU thread count for the run (recorded either way). load_options go to
    models.load (input_shape, batch, seq_len). Raises NotMeasurable for a precision the device
    cannot run, RooflineError for a missing device or a failing model.
    trace: a Chrome trace (.json or .json.gz) torch.profiler wrote in the user's own run: nothing is
    timed here, the per-layer times come from it (measure_trace).
    """
    if trace is not None:
        return measure_trace(model, trace, precision=precision, inputs=inputs, **load_options)
    device = check_device(device)
    precision = check_precision(precision, device)
    load_before = os.getloadavg()[0] if hasattr(os, "getloadavg") else None
    if batch_sizes is not None and (not batch_sizes or any(int(b) < 1 for b in batch_sizes)):
        raise RooflineError(f"batch sizes must be positive integers, got {list(batch_sizes)}")
    if rounds < 1:
        raise RooflineError(f"rounds must be a positive integer, got {rounds}")
    check_budget(min_run_time_s, warmup, max_repeats)
    settings = _Settings(device, precision, {"min_run_time_s": min_run_time_s, "warmup": warmup,
                                             "max_repeats": max_repeats}, rounds, load_before)
    previous_threads = torch.get_num_threads()
    if num_threads is not None:
        if num_threads < 1:
            raise RooflineError(f"num_threads must be a positive integer, got {num_threads}")
        torch.set_num_threads(num_threads)
    try:
        # The model's own prints go to stderr, so `--format json` on stdout stays parseable.
        with math_mode(precision, device), torch.no_grad(), retained_heap() as allocator, \
                contextlib.redirect_stdout(sys.stderr):
            loaded = _prepare(model, inputs, device, precision, load_options)
            return _measure(loaded, dataclasses.replace(settings, allocator=allocator), batch_sizes, progress)
    finally:
        torch.set_num_threads(previous_threads)


def _measure(loaded: LoadedModel, settings: _Settings, batch_sizes: Sequence[int] | None,
             progress: bool) -> ModelMeasurement:
    from tqdm import tqdm

    device, precision = settings.device, settings.precision
    module = loaded.module
    if precision == "int8" and not any(isinstance(m, _DYNAMIC_INT8_TYPES) for m in module.modules()):
        raise NotMeasurable(
            f"int8 is not measurable for {loaded.name} on cpu: torch's dynamic int8 quantisation covers nn.Linear,"
            " LSTM and GRU only, and this model has none"
        )
    try:
        rows = Capture(module).run(loaded.inputs)
    except RooflineError as error:
        if precision in ("bf16", "fp16"):  # an op with no kernel for this dtype on this device
            raise NotMeasurable(f"{precision} is not measurable on {device} for {loaded.name}: {error}") from error
        raise
    int8_paths: set[str] = set()
    if precision == "int8":  # captured on the float model, so names and inputs are the fp32 ones
        module, int8_paths = _quantize_int8(module)
    modules = dict(module.named_modules())
    base = batch_of(loaded.inputs)
    sizes = [int(b) for b in batch_sizes] if batch_sizes is not None else [base, 2 * base, 4 * base]

    # Layers, then batch sizes, each set interleaved over the rounds with a reference matmul (the
    # machine's speed meanwhile). Two sets, so the captured inputs are freed before the largest batch.
    reference, reference_flops = reference_matmul(device)
    reference_item = ("(reference matmul)", "the reference matmul", reference)
    layer_items = [(row.call.name, f"timing layer '{row.call.name}'", layer_callable(row, modules)) for row in rows]
    batch_items = [(f"batch {size}", f"the end-to-end forward pass at batch {size} (choose others with batch_sizes)",
                    forward_callable(module, _at_batch(loaded.inputs, base, size))) for size in sizes]
    plain = [] if base in sizes else [("(plain pass)", "the end-to-end forward pass", forward_callable(module, loaded.inputs))]
    batch_items += plain  # a plain pass at the measured batch, against which the profiler's cost is stated
    bar = tqdm(total=(len(rows) + len(batch_items) + 2) * settings.rounds, desc=f"measure {loaded.name}", unit="step",
               file=sys.stderr, disable=not progress, leave=False)
    try:
        *layer_times, layer_reference = _time_items([*layer_items, reference_item], settings, bar)
        layer_rows = [_layer_row(row, m, precision, int8_paths) for row, m in zip(rows, layer_times, strict=True)]
        del rows, layer_items  # the captured activations
        *batch_times, batch_reference = _time_items([*batch_items, reference_item], settings, bar)
    finally:
        bar.close()
    batch_times, extra = batch_times[:len(sizes)], batch_times[len(sizes):]
    plain_s = (batch_times[sizes.index(base)] if base in sizes else extra[0]).median_s
    in_pass, pass_metadata = _profiled_in_pass(module, loaded, precision, plain_s, settings)
    for row in layer_rows:  # a leaf that runs no op has none in the profile: 0 s, its call in the next op's gap
        for column, values in in_pass.items():
            row[column] = values.get(row["name"], 0.0)
    e2e_rows = [_end_to_end_row(size, m) for size, m in zip(sizes, batch_times, strict=True)]
    reference_times_s = layer_reference.raw_times_s + batch_reference.raw_times_s
    reference_flops_per_s = reference_flops / statistics.median(reference_times_s)
    slow, fast = speed_range(reference_times_s, reference_flops)
    # Each set against the machine's speed while that set was timed (its own reference blocks).
    layer_spread = speed_spread(layer_reference.raw_times_s, reference_flops)
    batch_spread = speed_spread(batch_reference.raw_times_s, reference_flops)
    unsteady = [*(row["name"] for row in _mark_unsteady(layer_rows, "measured_s", layer_spread)),
                *(f"batch {row['batch']}" for row in _mark_unsteady(e2e_rows, "latency_s", batch_spread))]
    metadata = {**_metadata(loaded, settings, base, sorted(int8_paths)),
                "reference_flops_per_s": reference_flops_per_s,
                "reference_flops_per_s_range": [slow, fast],
                "machine_speed_spread": {"layers": layer_spread, "end_to_end": batch_spread},
                "noisy_from_machine_speed": unsteady,
                # The profiled passes behind in_pass_s against the plain one: what the profiler costs.
                **pass_metadata}
    metadata["notes"] += [note for note in [unsteady_note(slow, fast)] if note]
    if unsteady:
        metadata["notes"].append(_unsteady_rows_note(unsteady, layer_spread, batch_spread))

    layers = pd.DataFrame(layer_rows, columns=LAYER_COLUMNS + ["calls_per_block", "replayed_ops"])
    result = ModelMeasurement(model=loaded.name, device=device, precision=precision, layers=layers,
                              end_to_end=pd.DataFrame(e2e_rows, columns=END_TO_END_COLUMNS), metadata=metadata)
    noisy = [*result.noisy_layers, *(f"batch {b}" for b in result.end_to_end.loc[result.end_to_end["noisy"], "batch"])]
    if noisy:
        shown = ", ".join(noisy[:5]) + (", ..." if len(noisy) > 5 else "")
        reasons = ["IQR > 10% of the median"] if len(noisy) > len(unsteady) else []
        if unsteady:
            reasons.append(f"{len(unsteady)} as the machine's own speed varied by {max(layer_spread, batch_spread):.0%} "
                           "while timing (reference matmul), more than their IQR")
        warnings.warn(f"{len(noisy)} of {len(layers) + len(e2e_rows)} figures measured noisy ({'; '.join(reasons)}): "
                      f"{shown}; close other programs or raise --min-run-time (min_run_time_s= in Python)", stacklevel=3)
    return result


def measure_trace(model: Any, trace: str | Path, precision: str = "fp32", inputs: Any = None,
                  **load_options: Any) -> ModelMeasurement:
    """Per-layer in-pass times from a Chrome trace torch.profiler wrote in the user's own run.

    The model is traced on the meta device (nothing runs here) and the trace's ops are matched to its
    ops by name and input shapes in order (roofline.measure.passes); a trace of another model, batch
    or shape is a one-line error naming the first op that does not match. No layer was timed alone,
    so `measured_s` holds the in-pass time too (`timed_as` says "trace").
    """
    from roofline import models

    get_precision(precision)  # the user's run chose its precision; the name must still be one we know
    loaded = model if isinstance(model, LoadedModel) else models.load(model, inputs=inputs, **load_options)
    with contextlib.redirect_stdout(sys.stderr):
        records, calls = module_records(loaded.module, loaded.inputs)
    times = attribute_trace(read_trace(trace), records, loaded.name)
    # A leaf that runs no op (Identity, eval Dropout) has no op in the trace: 0 s, its call's cost
    # lies in the gap before the next op.
    rows = [{"name": name, "type": kind, "measured_s": times.in_pass_s.get(name, 0.0), "iqr_s": 0.0,
             "repeats": times.passes, "noisy": False, "in_pass_s": times.in_pass_s.get(name, 0.0),
             "in_pass_ops_s": times.ops_s.get(name, 0.0), "in_pass_gap_s": times.gap_s.get(name, 0.0),
             "timed_as": "trace", "ran_as": precision} for name, kind in calls]
    batch = batch_of(loaded.inputs)
    e2e = [{"batch": batch, "latency_s": times.pass_s, "iqr_s": 0.0, "repeats": times.passes, "noisy": False,
            "throughput_samples_per_s": batch / times.pass_s}]
    import roofline

    metadata: dict[str, Any] = {
        "format_version": JSON_FORMAT_VERSION, "roofline_version": roofline.__version__,
        "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        # Not this machine's record: the trace's machine is unknown here; the trace's own file says.
        "device": times.timeline, "device_name": f"from the trace {trace}", "trace": str(trace),
        "inputs": loaded.input_shapes(), "batch": batch, **_pass_metadata(times, None),
        "notes": [(f"Times from the trace {Path(trace).name} ({times.passes} pass(es), {times.timeline} timeline), "
                   "written by torch.profiler in the user's run: the measured column is the in-pass time, since no "
                   "layer was timed alone. The trace's own device is what it measured; its profile is the one to "
                   "compare with.")],
    }
    return ModelMeasurement(model=loaded.name, device=times.timeline, precision=precision,
                            layers=pd.DataFrame(rows, columns=LAYER_COLUMNS), end_to_end=pd.DataFrame(e2e, columns=END_TO_END_COLUMNS),
                            metadata=metadata)


IN_PASS_COLUMNS = ["in_pass_s", "in_pass_ops_s", "in_pass_gap_s"]
PROFILED_PASSES = 5


def _profiled_in_pass(module: nn.Module, loaded: LoadedModel, precision: str, plain_s: float,
                      settings: _Settings) -> tuple[dict[str, dict[str, float]], dict[str, Any]]:
    """Per-layer in-pass columns from torch.profiler over real passes, and what the profiler cost."""
    if precision == "int8":  # torch.ao's quantised modules run ops the tracer has no records for
        return {}, {"in_pass": "not profiled: int8 (dynamic quantisation) runs quantized:: ops, not aten ops"}
    records, _ = module_records(module, loaded.inputs)
    times = profile_pass_times(forward_callable(module, loaded.inputs), settings.device, records, loaded.name,
                               passes=PROFILED_PASSES)
    matching = ("ops matched by name and input shapes on one profiled pass; the timed passes profiled without "
                "shapes (record_shapes keeps every op's inputs alive until the profiler stops) and matched by name")
    return _in_pass_columns(times), {**_pass_metadata(times, plain_s), "in_pass_matching": matching}


def _in_pass_columns(times: PassTimes) -> dict[str, dict[str, float]]:
    return {"in_pass_s": times.in_pass_s, "in_pass_ops_s": times.ops_s, "in_pass_gap_s": times.gap_s}


def _pass_metadata(times: PassTimes, plain_s: float | None) -> dict[str, Any]:
    """The profiled pass against the plain one, and what no layer holds: stated, never hidden."""
    meta: dict[str, Any] = {
        "in_pass": f"torch.profiler, {times.timeline} timeline: "
                   + ("op self times plus the host time between ops" if times.timeline == "cpu"
                      else "kernel durations (via correlation ids) plus GPU idle time before them (launch gaps)"),
        "profiled_passes": times.passes,
        "profiled_pass_s": times.pass_s,
        "in_pass_sum_s": times.sum_s,
        "outside_ops_s": times.outside_ops_s,  # the pass beyond its first op to its last: no layer's
        "in_pass_gap_sum_s": float(sum(times.gap_s.values())),
    }
    if times.kernels:
        meta["kernels_per_pass"] = times.kernels
    if plain_s is not None:
        meta["plain_pass_s"] = plain_s
        meta["profiler_overhead_fraction"] = times.pass_s / plain_s - 1
    return meta


def _mark_unsteady(rows: list[dict[str, Any]], column: str, spread: float) -> list[dict[str, Any]]:
    """Mark as noisy each row whose own IQR understates how much the machine's speed varied while it
    was timed: its IQR is a spread within the blocks of one run, while a change of the machine's
    speed moves every block of a round alike, so another run can differ by the speed's spread
    (a batch 23% slower than two other runs once showed an IQR of 8.5% and a reference range of 87%).
    Only a spread above the IQR threshold counts, so a steady machine marks nothing. Returns the rows
    marked."""
    if spread <= NOISY_IQR_FRACTION:
        return []
    marked = [row for row in rows if not row["noisy"] and row[column] > 0 and row["iqr_s"] / row[column] < spread]
    for row in marked:
        row["noisy"] = True
    return marked


def _unsteady_rows_note(marked: list[str], layer_spread: float, batch_spread: float) -> str:
    shown = ", ".join(marked[:5]) + (", ..." if len(marked) > 5 else "")
    return (f"{len(marked)} figures are marked noisy though their own IQR is small ({shown}): the machine's own speed "
            f"varied by {layer_spread:.0%} while the layers were timed and {batch_spread:.0%} while the batch sizes "
            "were (reference matmul, 10th to 90th percentile), so another run may differ by about that much")


def _time_items(items: list[tuple[str, str, Callable[[], object]]], settings: _Settings, bar: Any) -> list[Measurement]:
    """Time (label, what, fn) items interleaved over settings.rounds; a failure names its item in one line."""
    labels = [label for label, _, _ in items]
    for _, what, fn in items:
        _named_failure(fn, what, settings.device)  # an untimed call each: a failing layer is named at once
    upcoming = [0]

    def step(index: int) -> None:
        upcoming[0] = (index + 1) % len(items)
        bar.set_postfix_str(labels[upcoming[0]][-40:], refresh=False)
        bar.update()

    try:
        return time_interleaved([fn for _, _, fn in items], settings.rounds, labels=labels, step=step,
                                device=settings.device, **settings.timer)
    except RooflineError:
        raise
    except Exception as error:  # one that fails only when repeated (state, memory): still one line
        raise _failure(items[upcoming[0]][1], error) from error


def _failure(what: str, error: Exception) -> RooflineError:
    message = (str(error).strip().splitlines() or [""])[0]
    return RooflineError(f"{what} failed: {type(error).__name__}: {message}")


# A reference-matmul rate this far from the profile's, or varying this much within one measurement,
# means the machine ran at another speed: a note says so.
SPEED_CHANGE_NOTED = 0.10


def speed_ratio(profile_metadata: Mapping[str, Any], measurement_metadata: Mapping[str, Any]) -> float | None:
    """The machine's speed while measuring over its speed while its profile was measured (both from
    the reference matmul timed among the items); None when either lacks it, or when they ran on
    another device kind or thread count (the reference then runs at another rate by design)."""
    try:
        ratio = float(measurement_metadata["reference_flops_per_s"]) / float(profile_metadata["reference_flops_per_s"])
    except (KeyError, TypeError, ValueError, ZeroDivisionError):
        return None
    # Another thread count or device runs the reference at another rate: not a change of speed.
    threads = num_threads(profile_metadata), num_threads(measurement_metadata)
    if None not in threads and threads[0] != threads[1]:
        return None
    devices = profile_metadata.get("device"), measurement_metadata.get("device")
    if None not in devices and str(devices[0]).split(":")[0] != str(devices[1]).split(":")[0]:
        return None
    return ratio


def speed_range(times_s: Sequence[float], flops: float) -> tuple[float, float]:
    """(slow, fast) FLOP/s of the reference matmul over a run: at its 90th and 10th percentile block
    times, so one stray block does not set the range."""
    if len(times_s) < 2:
        return flops / times_s[0], flops / times_s[0]
    deciles = statistics.quantiles(times_s, n=10, method="inclusive")
    return flops / deciles[-1], flops / deciles[0]


def speed_spread(times_s: Sequence[float], flops: float) -> float:
    """How much faster the machine ran at its fastest than at its slowest (speed_range), as a fraction."""
    slow, fast = speed_range(times_s, flops)
    return fast / slow - 1


def unsteady_note(slow: float, fast: float) -> str | None:
    """A sentence when the machine's own speed varied while measuring (10th to 90th percentile of the
    reference matmul's blocks): on a shared VM it can by tens of percent within seconds, and then a
    prediction or a second measurement is unlikely to agree with this one more closely than that
    (benchmarks/noise_floor.py shows it model by model)."""
    if fast <= slow * (1 + SPEED_CHANGE_NOTED):
        return None
    return (f"the machine's own speed varied by {fast / slow - 1:.0%} while measuring (the reference matmul ran at "
            f"{slow / 1e9:.3g}-{fast / 1e9:.3g} GFLOP/s, 10th to 90th percentile of its timed blocks): a gap of that "
            "size between predicted and measured, or between two measurements, may be the machine's noise alone")


def speed_note(profile_metadata: Mapping[str, Any], measurement_metadata: Mapping[str, Any]) -> str | None:
    """A sentence when the machine ran at a different speed than when its profile was measured."""
    ratio = speed_ratio(profile_metadata, measurement_metadata)
    if ratio is None or abs(ratio - 1) <= SPEED_CHANGE_NOTED:
        return None
    return (f"The machine ran at {ratio:.0%} of the speed it had when the profile was measured (reference matmul "
            f"timed among both): predictions from that profile read about {abs(1 / ratio - 1):.0%} "
            f"{'fast' if ratio < 1 else 'slow'} for that reason alone. Other work on the machine, or a "
            "shared VM, changes its speed.")


def _named_failure(fn: Callable[[], object], what: str, device: str) -> None:
    """Call `fn` once; a failure becomes one line naming what failed (which layer, which batch)."""
    try:
        fn()
        if device.startswith("cuda"):
            torch.cuda.synchronize(device)
    except RooflineError:
        raise
    except Exception as error:
        raise _failure(what, error) from error


def _layer_row(row: Row, timed: Measurement, precision: str, int8_paths: set[str]) -> dict[str, Any]:
    if precision == "int8":
        ran_as = "int8" if row.call.is_leaf and row.call.path in int8_paths else "fp32"
    else:
        ran_as = precision
    return {
        "name": row.call.name, "type": row.call.module_type, "measured_s": timed.median_s, "iqr_s": timed.iqr_s,
        "repeats": timed.repeats, "noisy": timed.noisy, "timed_as": "module" if row.call.is_leaf else "own ops",
        "ran_as": ran_as, "calls_per_block": timed.number, "replayed_ops": 0 if row.call.is_leaf else len(row.ops),
    }


def _end_to_end_row(batch: int, timed: Measurement) -> dict[str, Any]:
    return {"batch": batch, "latency_s": timed.median_s, "iqr_s": timed.iqr_s, "repeats": timed.repeats,
            "noisy": timed.noisy, "throughput_samples_per_s": batch / timed.median_s}


def _metadata(loaded: LoadedModel, settings: _Settings, batch: int, int8_layers: list[str]) -> dict[str, Any]:
    """The machine and settings behind the numbers (pyperf records these with every run)."""

    device, precision, load_before = settings.device, settings.precision, settings.load_before

    meta: dict[str, Any] = {
        "format_version": JSON_FORMAT_VERSION,
        **collect(device, settings.allocator, load_before).to_dict(),  # the one machine record (roofline.machine)
        "inputs": loaded.input_shapes(),
        "batch": batch,
        "timer": {**settings.timer, "rounds": settings.rounds},
        "mha_fastpath": False,
        "notes": precision_notes(precision, device),
    }
    cpus = os.cpu_count() or 1
    if load_before is not None and load_before >= cpus:
        meta["notes"].append(f"the machine was busy when measuring began (load {load_before:.1f} on {cpus} CPUs):"
                             " other programs compete for the cores, so times may be inflated and noisy")
    if device.startswith("cuda"):
        meta["tf32"] = precision == "tf32"
    if precision == "int8":
        meta["int8_layers"] = int8_layers
        meta["notes"].append("int8 is torch's dynamic quantisation: int8 weights and math for nn.Linear/LSTM/GRU"
                             " (see ran_as); every other layer runs fp32")
    return meta


# ---- output ----------------------------------------------------------------------------------------

_FORMATTERS: dict[str, Callable[[Any], str]] = {
    "measured_s": format_time, "iqr_s": format_time, "in_pass_s": format_time, "latency_s": format_time,
    "in_pass_ops_s": format_time, "in_pass_gap_s": format_time,
    "noisy": lambda v: "!" if v else "", "throughput_samples_per_s": format_number,
}


def render(result: ModelMeasurement, fmt: str = "table") -> str:
    """The measure command's output: table, csv, json or markdown."""
    if fmt == "json":
        return json.dumps(result.to_dict(), indent=2)
    layers = result.layers[LAYER_COLUMNS]
    if fmt == "csv":
        return str(layers.to_csv(index=False)).rstrip("\n")
    if fmt == "markdown":
        return "\n\n".join([format_markdown(layers), format_markdown(result.end_to_end),
                            "\n".join(f"    {line}" for line in result.summary().splitlines())])
    return "\n\n".join([format_table(layers, _FORMATTERS), format_table(result.end_to_end, _FORMATTERS),
                        result.summary()])

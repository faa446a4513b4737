"""In-pass per-layer times from torch.profiler: run live here, or read from a user's own Chrome trace.

One matcher serves both. The tracer gives each aten op of one forward pass its layer (module path and
call index) and its input shapes; the profiler's trace gives the ops that really ran, nested (an
`aten::conv2d` calls `aten::convolution`, which calls a kernel's op). The two are matched in order:

- A profiler op that has the next traced op's name (`aten::addmm` for `aten.addmm`) and the same
  tensor input shapes (0-d tensors and non-tensor arguments left out on both sides) is that op; its
  whole subtree is its layer's. A user's trace must carry shapes (record_shapes=True); the passes
  roofline profiles itself do not (profile_passes says why) and are matched by names, after one pass
  with shapes has checked that the model's ops match.
- Otherwise its children are matched in turn (the profiler shows composites such as `aten::linear`
  that the tracer, below autograd, sees only as what they call).
- A profiler op with no match anywhere below it is tolerated when it does none of the model's own work:
  a view or alias (`aten::t`, `aten::view`, `aten::as_strided`), an allocation (`aten::empty`,
  `aten::resize_`), a query (`aten::_nnpack_available`), or a copy into another memory layout
  (`aten::contiguous`, `aten::clone`, `aten::copy_`: a real device's kernels may choose layouts the
  meta trace did not). Its time goes to the layer of the next matched op in the pass
  (it prepares that op's call), or to the previous one at the end of the pass.
- Any other op with nothing matched in its subtree is a mismatch: one line naming that (outermost)
  op and what the model runs there.
  A trace may hold several passes back to back (profiler steps, or passes in one window); each is
  matched from the first op of the model again, and the per-layer time is the mean over passes
  (so the rows add up to the mean pass exactly).

Times, per pass, on the timeline that does the work:
- CPU: each layer gets its ops' self times (an outermost op's duration is the sum of the self times
  in its subtree) and the host time between the previous op's end and each of its ops' start
  (Python, module calls, dispatch above aten), given to the op that follows. `in_pass_s` is their
  sum; `in_pass_ops_s` and `in_pass_gap_s` are the two parts.
- CUDA: each kernel (cat "kernel", and "gpu_memcpy"/"gpu_memset") is joined to the op that launched
  it through its "External id" (or its "correlation" id through the "cuda_runtime" launch event),
  and that op to its layer. A layer gets its kernels' durations and the GPU's idle time before each
  of them (launch gaps: the GPU waiting for the host).
- The rows add up to the span from the pass's first op (or kernel) to its last. What the pass took
  beyond that span (its profiler step or `roofline.pass` annotation when there is one: entering and
  leaving the forward, and on a GPU the launch of the first kernel and the wait for the last) is
  attributed to no layer and reported as `outside_ops_s`.

The CUDA half is written against the Chrome trace format torch.profiler (Kineto) writes; it is
checked only on a GPU (README), never against a hand-written trace.
"""
from __future__ import annotations

import gzip
import json
import statistics
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn

from roofline import costs
from roofline.errors import RooflineError
from roofline.trace import OpRecord

__all__ = ["PassTimes", "attribute_trace", "profile_pass_times", "profile_passes", "read_trace"]

PASS_ANNOTATION = "roofline.pass"
SHAPES_KEY = "roofline_record_shapes"  # False in a trace profile_passes wrote without input shapes
_KERNEL_CATS = frozenset({"kernel", "gpu_memcpy", "gpu_memset"})
# Leaf ops that move no data and that the tracer does not record (it skips views and allocations).
_QUERY_OPS = frozenset({"resize_", "_nnpack_available", "resolve_conj", "resolve_neg", "detach", "detach_", "lift_fresh",
                        "set_", "_local_scalar_dense", "is_nonzero", "result_type", "_has_compatible_shallow_copy_type",
                        # identities in eval mode (in training they call the ops the tracer records)
                        "dropout", "feature_dropout", "alpha_dropout", "feature_alpha_dropout", "contiguous",
                        # composites that only reshape (their children are views or copies the tracer records)
                        "reshape", "reshape_as", "flatten", "unflatten", "view_as", "expand_as", "chunk", "split",
                        "tensor_split", "type_as", "to"})


@dataclass
class _Op:
    """One cpu_op event and the ops it called."""

    name: str
    shapes: tuple[tuple[int, ...], ...] | None  # None: the trace recorded none (profile_passes)
    start_us: float
    dur_us: float
    ext_id: int | None
    children: list[_Op] = field(default_factory=list)
    layer: str | None = None  # set when matched (on the matched op only)

    @property
    def end_us(self) -> float:
        return self.start_us + self.dur_us

    def walk(self) -> Iterator[_Op]:
        yield self
        for child in self.children:
            yield from child.walk()


@dataclass(frozen=True)
class PassTimes:
    """Per-layer in-pass times (means over the passes found) and what the pass took outside them."""

    in_pass_s: dict[str, float]  # ops (or kernels) plus the gaps before them, per layer name
    ops_s: dict[str, float]  # the ops' self times (CPU) or kernel durations (CUDA)
    gap_s: dict[str, float]  # host time between ops (CPU) or GPU idle time before kernels (CUDA)
    pass_s: float  # the whole profiled pass: its annotation or step when present, else the ops' span
    outside_ops_s: float  # pass_s less the rows' sum: attributed to no layer
    passes: int
    timeline: str  # "cpu" or "cuda"
    kernels: int = 0  # kernel events joined to layers, per pass (CUDA)

    @property
    def sum_s(self) -> float:
        return float(sum(self.in_pass_s.values()))


# ---- reading ---------------------------------------------------------------------------------------

def read_trace(path: str | Path) -> dict[str, Any]:
    """A Chrome trace (`.json` or `.json.gz`) as torch.profiler's export_chrome_trace writes it."""
    path = Path(path)
    try:
        raw = path.read_bytes()
        if raw[:2] == b"\x1f\x8b":  # gzip magic, whatever the name says
            raw = gzip.decompress(raw)
        data = json.loads(raw)
    except FileNotFoundError:
        raise RooflineError(f"trace {path}: no such file") from None
    except (OSError, EOFError, gzip.BadGzipFile, UnicodeDecodeError, json.JSONDecodeError) as error:
        raise RooflineError(f"trace {path} is not a readable Chrome trace (JSON or gzipped JSON): {error}") from error
    events = data.get("traceEvents") if isinstance(data, dict) else data
    if not isinstance(events, list):
        raise RooflineError(f"trace {path} has no traceEvents list: is it a torch.profiler Chrome trace?")
    return {"traceEvents": events, "source": str(path)}


def _dims(value: Any) -> list[tuple[int, ...]]:
    """Non-empty tensor shapes from one "Input Dims" entry (a TensorList is a list of shapes)."""
    if not isinstance(value, list) or not value:
        return []
    if all(isinstance(v, int) for v in value):
        return [tuple(value)]
    return [shape for v in value for shape in _dims(v)]


def _record_shapes(record: OpRecord) -> tuple[tuple[int, ...], ...]:
    """The traced op's tensor input shapes, 0-d tensors left out (the profiler shows them as [])."""
    return tuple(tuple(int(d) for d in token.split("x")) for token in record.input_shapes.split() if token != "scalar")


def _op_events(events: list[Any], source: str, shapes: bool = True) -> tuple[list[_Op], dict[int, _Op], list[dict[str, Any]]]:
    """(outermost ops on the thread that ran the forward, ops by External id, pass windows); `shapes`
    False: the trace was written without input shapes on purpose and ops are matched by name."""
    ops: dict[Any, list[dict[str, Any]]] = {}
    windows: list[dict[str, Any]] = []
    for event in events:
        if not isinstance(event, dict) or event.get("ph") != "X":
            continue
        name = str(event.get("name", ""))
        if event.get("cat") == "cpu_op":
            ops.setdefault(event.get("tid"), []).append(event)
        elif event.get("cat") == "user_annotation" and (name.startswith("ProfilerStep#") or name == PASS_ANNOTATION):
            windows.append(event)
    if not ops:
        raise RooflineError(f"trace {source} holds no CPU op events: write it with torch.profiler and "
                            "ProfilerActivity.CPU among the activities")
    main = max(ops.values(), key=len)  # the forward pass's thread; autograd's own threads hold fewer
    if shapes and not any("Input Dims" in e.get("args", {}) for e in main):
        raise RooflineError(f"trace {source} has no input shapes: profile with record_shapes=True")
    main.sort(key=lambda e: (float(e["ts"]), -float(e.get("dur", 0))))
    roots: list[_Op] = []
    stack: list[_Op] = []
    by_id: dict[int, _Op] = {}
    for event in main:
        args = event.get("args", {})
        dims = tuple(s for v in args.get("Input Dims", []) for s in _dims(v)) if shapes else None
        op = _Op(str(event["name"]), dims,
                 float(event["ts"]), float(event.get("dur", 0)), args.get("External id"))
        if op.ext_id is not None:
            by_id[int(op.ext_id)] = op
        while stack and op.start_us >= stack[-1].end_us - 1e-3:
            stack.pop()
        (stack[-1].children if stack else roots).append(op)
        stack.append(op)
    if len(windows) > 1 or any(w["name"].startswith("ProfilerStep#") for w in windows):
        windows = [w for w in windows if str(w["name"]).startswith("ProfilerStep#") or w["name"] == PASS_ANNOTATION]
    windows.sort(key=lambda e: float(e["ts"]))
    return roots, by_id, windows


# Copies into another memory layout. A real device's kernels may pick other layouts than the meta trace's
# (the README's note on meta and CPU bytes): shufflenet_v2 on a CPU makes a channel shuffle contiguous that
# meta never copies. Such a copy is the preparation of the op that follows, like an allocation.
_LAYOUT_COPIES = frozenset({"contiguous", "clone", "copy_", "_to_copy", "to", "empty_like"})


def _tolerated(name: str) -> bool:
    """An op that does none of the model's own work: a view or alias, an allocation, a metadata query, or
    a copy into another memory layout."""
    short = name.removeprefix("aten::")
    if short in _LAYOUT_COPIES:
        return True
    packet = getattr(torch.ops.aten, short, None)
    if packet is not None:
        overloads = [getattr(packet, o) for o in packet.overloads()]
        if any(getattr(o, "is_view", False) for o in overloads) or packet in costs.ALIAS_OPS or packet in costs.FREE_OPS:
            return True
    return short in _QUERY_OPS or short.startswith("empty")


def _shape_text(shapes: Sequence[Sequence[int]]) -> str:
    return " ".join("x".join(map(str, s)) for s in shapes) or "no tensors"


# ---- matching --------------------------------------------------------------------------------------

class _Matcher:
    """Walks the outermost ops in time order and pairs them with the traced records, pass after pass."""

    def __init__(self, records: Sequence[OpRecord], source: str, model: str) -> None:
        self.records = list(records)
        self.wanted = [(r.op.replace("aten.", "aten::", 1), _record_shapes(r)) for r in self.records]
        self.source, self.model = source, model
        self.next = 0
        self.seen = 0  # profiler ops visited, for the error message

    def visit(self, op: _Op) -> _Op | None:
        """Match `op` or its subtree; the outermost op with no match that is not tolerated, or None."""
        self.seen += 1
        if self.next < len(self.records) and self._is_next(op):
            op.layer = self.records[self.next].layer
            self.next += 1
            return None
        if not op.children:
            return None if _tolerated(op.name) else op
        before = self.next
        for child in op.children:
            failed = self.visit(child)
            if failed is not None:
                return op if self.next == before else failed
        # A composite that matched nothing below it did work the model does not: a mismatch, unless
        # it only reshapes (`aten::flatten` calling `aten::view`).
        return op if self.next == before and not _tolerated(op.name) else None

    def _is_next(self, op: _Op) -> bool:
        """Whether `op` is the next traced op: its name, and its input shapes where the trace has them."""
        name, shapes = self.wanted[self.next]
        return op.name == name and (op.shapes is None or op.shapes == shapes)

    def error(self, op: _Op | None, passes: int) -> RooflineError:
        where = f"pass {passes + 1}, after {self.next} of the model's {len(self.records)} ops"
        if self.next < len(self.records):
            name, shapes = self.wanted[self.next]
            expected = f"{name} ({_shape_text(shapes)}) in layer '{self.records[self.next].layer}'"
        else:
            expected = "nothing more (the model's pass is complete)"
        found = (f"{op.name} ({'shapes not recorded' if op.shapes is None else _shape_text(op.shapes)})"
                 if op is not None else "the end of the trace")
        return RooflineError(f"trace {self.source} does not match {self.model}: {where}, it has {found} where the "
                             f"model runs {expected}; was it written for this model, batch and input shape?")


def _passes(roots: list[_Op], records: Sequence[OpRecord], windows: list[dict[str, Any]], source: str,
            model: str) -> list[tuple[list[_Op], float | None]]:
    """The outermost ops of each complete pass, with its window's duration (µs) when one pass fills a window."""
    if not records:
        raise RooflineError(f"{model} runs no aten op to match a trace against")
    spans = [(float(w["ts"]), float(w["ts"]) + float(w.get("dur", 0))) for w in windows] or [(-float("inf"), float("inf"))]
    found: list[tuple[list[_Op], float | None]] = []
    for begin, end in spans:
        inside = [op for op in roots if begin - 1e-3 <= op.start_us and op.end_us <= end + 1e-3]
        matcher = _Matcher(records, source, model)
        current: list[_Op] = []
        done: list[list[_Op]] = []
        for op in inside:
            failed = matcher.visit(op)
            if failed is not None:
                raise matcher.error(failed, len(found) + len(done))
            current.append(op)
            if matcher.next == len(records):
                done.append(current)
                current, matcher.next = [], 0
        if matcher.next:  # a pass begun and not finished in this window
            raise matcher.error(None, len(found) + len(done))
        if done and current:  # tolerated ops after the last pass: the last pass's
            done[-1].extend(current)
        window_us = end - begin if len(done) == 1 and end != float("inf") else None
        found.extend((ops, window_us) for ops in done)
    if not found:
        raise RooflineError(f"trace {source} does not match {model}: it holds no complete forward pass of its "
                            f"{len(records)} ops")
    return found


def _cpu_times(ops: list[_Op]) -> tuple[dict[str, float], dict[str, float], float]:
    """Per layer (self times, gaps before its ops) in µs, and the span of the pass's ops."""
    busy: dict[str, float] = {}
    gaps: dict[str, float] = {}
    layers = [next((o.layer for o in op.walk() if o.layer is not None), None) for op in ops]
    following = _fill(layers)
    previous_end = ops[0].start_us
    for op, own in zip(ops, following, strict=True):
        matched = [o for o in op.walk() if o.layer is not None]
        for o in matched:
            busy[str(o.layer)] = busy.get(str(o.layer), 0.0) + o.dur_us
        busy[own] = busy.get(own, 0.0) + op.dur_us - sum(o.dur_us for o in matched)  # the composite's own time
        gaps[own] = gaps.get(own, 0.0) + max(op.start_us - previous_end, 0.0)
        previous_end = max(previous_end, op.end_us)
    return busy, gaps, previous_end - ops[0].start_us


def _fill(layers: list[str | None]) -> list[str]:
    """Each unmatched entry takes the next matched layer, or the previous one at the end."""
    out: list[str | None] = list(layers)
    upcoming: str | None = None
    for index in range(len(out) - 1, -1, -1):
        upcoming = out[index] = out[index] or upcoming
    last = next((x for x in out if x is not None), None)
    filled = []
    for value in out:
        last = value or last
        filled.append(str(last))
    return filled


def _kernels(events: list[Any], by_id: dict[int, _Op]) -> list[tuple[float, float, _Op]]:
    """(start µs, duration µs, launching op) of every kernel, memcpy and memset joined to a CPU op."""
    runtime: dict[Any, Any] = {}
    for event in events:
        if isinstance(event, dict) and event.get("cat") in ("cuda_runtime", "cuda_driver"):
            args = event.get("args", {})
            if "correlation" in args and "External id" in args:
                runtime[args["correlation"]] = args["External id"]
    found = []
    for event in events:
        if not isinstance(event, dict) or event.get("cat") not in _KERNEL_CATS or event.get("ph") != "X":
            continue
        args = event.get("args", {})
        ext = args.get("External id", runtime.get(args.get("correlation")))
        op = by_id.get(int(ext)) if ext is not None else None
        if op is not None:
            found.append((float(event["ts"]), float(event.get("dur", 0)), op))
    return sorted(found, key=lambda k: k[0])


def _cuda_times(ops: list[_Op], kernels: list[tuple[float, float, _Op]]) -> tuple[dict[str, float], dict[str, float],
                                                                                  float, float, int]:
    """Per layer (kernel time, GPU idle before its kernels) in µs, the kernels' span, its end, their count."""
    layers = _fill([next((o.layer for o in op.walk() if o.layer is not None), None) for op in ops])
    owner: dict[int, str] = {}
    for op, own in zip(ops, layers, strict=True):
        def mark(node: _Op, layer: str) -> None:
            layer = node.layer or layer
            owner[id(node)] = layer
            for child in node.children:
                mark(child, layer)
        mark(op, own)
    mine = [(start, dur, owner[id(op)]) for start, dur, op in kernels if id(op) in owner]
    if not mine:
        return {}, {}, 0.0, 0.0, 0
    busy: dict[str, float] = {}
    gaps: dict[str, float] = {}
    covered_to = mine[0][0]
    for start, dur, layer in mine:
        end = start + dur
        # Kernels on several streams overlap: each layer gets only the time not already covered.
        busy[layer] = busy.get(layer, 0.0) + max(end - max(start, covered_to), 0.0)
        gaps[layer] = gaps.get(layer, 0.0) + max(start - covered_to, 0.0)
        covered_to = max(covered_to, end)
    return busy, gaps, covered_to - mine[0][0], covered_to, len(mine)


def attribute_trace(trace: dict[str, Any], records: Sequence[OpRecord], model: str) -> PassTimes:
    """Per-layer in-pass times from a Chrome trace, matched to the traced records (module docstring)."""
    source = str(trace.get("source", "trace"))
    events = trace["traceEvents"]
    roots, by_id, windows = _op_events(events, source, shapes=trace.get(SHAPES_KEY, True) is not False)
    passes = _passes(roots, records, windows, source, model)
    kernels = _kernels(events, by_id)
    timeline = "cuda" if kernels else "cpu"
    per_pass: list[tuple[dict[str, float], dict[str, float], float, float, int]] = []
    for ops, window_us in passes:
        if timeline == "cuda":
            busy, gaps, span, end, count = _cuda_times(ops, kernels)
            # The pass: from its first op to the later of its last op's end and its last kernel's (the
            # window's length when longer: the host's time around the ops).
            whole = max(max(end, ops[-1].end_us) - ops[0].start_us, window_us or 0.0)
        else:
            busy, gaps, span = _cpu_times(ops)
            count = 0
            whole = window_us if window_us is not None else span
        per_pass.append((busy, gaps, span, max(whole, span), count))
    names = list(dict.fromkeys(r.layer for r in records))

    # Means over passes, not medians: a mean of sums is the sum of means, so the rows and what lies
    # outside the ops add up to the (mean) profiled pass exactly.
    def mean(index: int) -> dict[str, float]:
        return {name: statistics.fmean(p[index].get(name, 0.0) for p in per_pass) / 1e6 for name in names}  # type: ignore[union-attr]

    ops_s, gap_s = mean(0), mean(1)
    in_pass = {name: ops_s[name] + gap_s[name] for name in names}
    pass_s = statistics.fmean(p[3] for p in per_pass) / 1e6
    outside_s = statistics.fmean(p[3] - p[2] for p in per_pass) / 1e6
    return PassTimes(in_pass_s=in_pass, ops_s=ops_s, gap_s=gap_s, pass_s=pass_s, outside_ops_s=outside_s,
                     passes=len(per_pass),
                     timeline=timeline, kernels=int(statistics.median(p[4] for p in per_pass)))


# ---- the live profiler -----------------------------------------------------------------------------

def profile_pass_times(forward: Callable[[], object], device: str, records: Sequence[OpRecord], model: str,
                       passes: int = 5, warmup: int = 2) -> PassTimes:
    """Per-layer times of `passes` forward passes profiled here, matched to the model's traced `records`.

    One pass profiled with input shapes checks that its ops match the records (a mismatch raises); the
    timed passes are profiled without shapes and matched by name. With record_shapes=True the profiler
    keeps every op's input tensors alive until it stops (pytorch/pytorch#133444), so no freed buffer is
    reused and every op writes fresh memory: on this project's VM zoo:mobile-block's profiled pass took
    6,000 page faults (24 MB) per pass and ran 4-15x its plain pass, where the plain pass took 0-10."""
    attribute_trace(profile_passes(forward, device, passes=1, warmup=warmup, record_shapes=True), records, model)
    return attribute_trace(profile_passes(forward, device, passes=passes, warmup=1, record_shapes=False), records, model)


def profile_passes(forward: Callable[[], object], device: str, passes: int = 5, warmup: int = 2,
                   record_shapes: bool = True) -> dict[str, Any]:
    """Run `passes` forward passes under torch.profiler (after `warmup` unprofiled ones), each in a
    `roofline.pass` annotation and synchronised on a GPU, and return the trace as export_chrome_trace
    writes it (read back from a temporary file: the one format user traces come in too). Without
    `record_shapes` the trace says so (SHAPES_KEY) and is matched by name (profile_pass_times says why)."""
    import os
    import tempfile

    from torch.profiler import ProfilerActivity, profile, record_function

    # Kineto's own log lines (USDT profiler_start/stop, and on a machine without a GPU an error that it found
    # none) would mix into roofline's output; a level the user set is kept. Read when the profiler first starts.
    os.environ.setdefault("KINETO_LOG_LEVEL", "6")
    on_gpu = device.startswith("cuda")
    for _ in range(warmup):
        forward()
    if on_gpu:
        torch.cuda.synchronize(device)
    activities = [ProfilerActivity.CPU, *([ProfilerActivity.CUDA] if on_gpu else [])]
    with profile(activities=activities, record_shapes=record_shapes) as prof:
        for _ in range(passes):
            with record_function(PASS_ANNOTATION):
                forward()
                if on_gpu:
                    torch.cuda.synchronize(device)
    handle, name = tempfile.mkstemp(suffix=".json", prefix="roofline-profile-")
    os.close(handle)
    try:
        prof.export_chrome_trace(name)
        trace = read_trace(name)
    finally:
        os.unlink(name)
    trace["source"] = "the profiled pass"
    trace[SHAPES_KEY] = record_shapes
    return trace


def module_records(module: nn.Module, inputs: Any, attention: str = "fused") -> tuple[list[OpRecord], list[tuple[str, str]]]:
    """The tracer's records for this module and inputs (one pass, on whatever device they are on), and
    every row's (name, module type), op-less leaves (Identity, eval Dropout) included."""
    from roofline.trace import trace

    traced = trace(module, inputs, attention=attention)
    return traced.records, [(call.name, call.module_type) for call in traced.layers]

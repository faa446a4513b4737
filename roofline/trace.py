"""One forward pass under a dispatch mode: model -> OpRecords, attributed to module calls. Never times.

Every aten op lands in exactly one row: the innermost module call running when it executes (a leaf
module, or a non-leaf module's own ops such as a residual add). Two calls of one module are two rows
(`path`, `path#1`, ...). Tensors are tracked from creation to release, which gives each op's reads and
writes by role (weights, activations, KV cache, integer "fixed" tensors), each layer's fused traffic
(only tensors crossing the layer boundary) and the peak of live activation memory.
"""
from __future__ import annotations

import contextlib
import dataclasses
import itertools
import sys
import weakref
from collections import Counter
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import TreeSpec, tree_flatten, tree_leaves, tree_unflatten
from torch.utils.weak import WeakIdKeyDictionary

from roofline import costs
from roofline.costs import Cost, OpClass
from roofline.costs.matmul import attention_cost
from roofline.errors import RooflineError
from roofline.moe import moe_params
from roofline.records import ROOT_NAME, UNUSED_NAME, LayerCall, OpRecord, Role, Trace, Traffic, call_name

__all__ = ["LayerCall", "MetaStandIns", "ModuleCallTracker", "OpRecord", "Role", "Trace", "TraceProgress", "trace"]


@dataclass
class _TensorInfo:
    uid: int
    role: Role
    producer: str | None  # layer name, or None for tensors from outside the traced forward


class ModuleCallTracker:
    """A stack of running module calls, kept by global forward hooks on one model's modules.

    Also used by measurement to name layers exactly as the trace does.
    """

    def __init__(self, model: nn.Module, on_enter: Callable[[LayerCall, nn.Module, tuple[Any, ...]], None] | None = None,
                 on_exit: Callable[[LayerCall, nn.Module, Any], None] | None = None) -> None:
        self.paths: dict[int, str] = {}
        for path, module in model.named_modules(remove_duplicate=True):
            self.paths.setdefault(id(module), path)
        self.stack: list[LayerCall] = []
        self.calls: list[LayerCall] = []
        self._call_counts: Counter[int] = Counter()
        self._on_enter = on_enter
        self._on_exit = on_exit

    def current(self) -> LayerCall | None:
        return self.stack[-1] if self.stack else None

    def _pre_hook(self, module: nn.Module, args: tuple[Any, ...]) -> None:
        key = id(module)
        if key not in self.paths:
            return
        index = self._call_counts[key]
        self._call_counts[key] += 1
        path = self.paths[key]
        call = LayerCall(
            name=call_name(path, index),
            path=path,
            call_index=index,
            module_type=type(module).__name__,
            is_leaf=next(module.children(), None) is None,
        )
        self.stack.append(call)
        self.calls.append(call)
        if self._on_enter is not None:
            self._on_enter(call, module, args)

    def _post_hook(self, module: nn.Module, args: tuple[Any, ...], output: Any) -> None:
        if id(module) not in self.paths or not self.stack:
            return
        call = self.stack.pop()
        if self._on_exit is not None:
            self._on_exit(call, module, output)

    @contextlib.contextmanager
    def active(self) -> Iterator[ModuleCallTracker]:
        pre = nn.modules.module.register_module_forward_pre_hook(self._pre_hook)
        post = nn.modules.module.register_module_forward_hook(self._post_hook)
        try:
            yield self
        finally:
            pre.remove()
            post.remove()


class _Tracer:
    """The bookkeeping behind the dispatch mode: tensor roles, lifetimes, records."""

    def __init__(self, model: nn.Module, progress: TraceProgress | None = None) -> None:
        self.tracker = ModuleCallTracker(model, on_enter=self._on_enter, on_exit=self._on_exit)
        self._progress = progress
        # Progress is counted in leaf-module calls against the model's leaf modules: each runs about once
        # per forward pass, and a 70B decoder's time is spread evenly over them.
        self._leaves = sum(1 for m in model.modules() if next(m.children(), None) is None) if progress else 0
        self._leaves_done = 0
        self.call_start: dict[str, int] = {}  # the seq of the next op when each call began
        self.records: list[OpRecord] = []
        self.unsupported: Counter[str] = Counter()
        self.suspended = 0
        self.phase = "forward"  # the training step's phase the next ops belong to
        self._info: WeakIdKeyDictionary = WeakIdKeyDictionary()
        self._uids = itertools.count()
        self._next_seq = 0
        # uid -> (elements or bytes, role) for fused traffic; (producer, uid) pairs that cross layers.
        self._uid_size: dict[int, tuple[int, Role]] = {}
        self._escapes: set[tuple[str, int]] = set()
        self._writer: dict[int, int] = {}  # uid -> index of the record that wrote it
        self._external_reads: dict[str, dict[int, int]] = {}
        # Live activation storages: key -> [tensor refs, float elements, fixed bytes].
        self._live: dict[int, list[int]] = {}
        self._live_elements = 0
        self._live_fixed = 0
        self.peak_elements = 0
        self.peak_fixed = 0
        for tensor in itertools.chain(model.parameters(), model.buffers()):
            self._register(tensor, Role.WEIGHT if tensor.is_floating_point() else Role.FIXED, None, live=False)

    def _on_enter(self, call: LayerCall, module: nn.Module, args: tuple[Any, ...]) -> None:
        self.call_start[call.name] = self._next_seq

    def _on_exit(self, call: LayerCall, module: nn.Module, output: Any) -> None:
        if self._progress is not None and call.is_leaf:
            self._leaves_done += 1
            # A leaf called more than once (a shared block) would run past the total: hold at total - 1
            # until the pass ends, when trace() reports the total.
            self._progress(min(self._leaves_done, self._leaves - 1), self._leaves)

    # -- tensors ------------------------------------------------------------------------------
    def layer_name(self) -> str:
        call = self.tracker.current()
        return call.name if call is not None else ROOT_NAME

    def _register(self, tensor: torch.Tensor, role: Role, producer: str | None, live: bool) -> _TensorInfo:
        info = _TensorInfo(next(self._uids), role, producer)
        self._info[tensor] = info
        size = tensor.numel() * (tensor.element_size() if role is Role.FIXED else 1)
        self._uid_size[info.uid] = (size, role)
        if live:
            self._track_live(tensor, role)
        return info

    def register_input(self, tensor: torch.Tensor, role: Role = Role.ACT) -> None:
        if tensor in self._info:
            return
        if not tensor.is_floating_point():
            role = Role.FIXED
        self._register(tensor, role, None, live=role is not Role.WEIGHT)

    def info(self, tensor: torch.Tensor) -> _TensorInfo:
        found: _TensorInfo | None = self._info.get(tensor)
        if found is None:  # made outside the forward (a constant, a cache tensor): external input
            role = Role.ACT if tensor.is_floating_point() else Role.FIXED
            found = self._register(tensor, role, None, live=True)
        return found

    def _track_live(self, tensor: torch.Tensor, role: Role) -> None:
        if role in (Role.WEIGHT, Role.KV):  # the KV cache is reported on its own, not as activations
            return
        storage = tensor.untyped_storage()
        key = storage._cdata
        entry = self._live.get(key)
        if entry is None:
            nbytes = storage.nbytes()
            elements = nbytes // tensor.element_size() if role is not Role.FIXED else 0
            fixed = nbytes if role is Role.FIXED else 0
            entry = [0, elements, fixed]
            self._live[key] = entry
            self._live_elements += elements
            self._live_fixed += fixed
            if self._live_elements > self.peak_elements:
                self.peak_elements = self._live_elements
                self.peak_fixed = self._live_fixed
        entry[0] += 1
        weakref.finalize(tensor, self._release, key)

    def _release(self, key: int) -> None:
        entry = self._live.get(key)
        if entry is None:
            return
        entry[0] -= 1
        if entry[0] == 0:
            del self._live[key]
            self._live_elements -= entry[1]
            self._live_fixed -= entry[2]

    # -- ops ----------------------------------------------------------------------------------
    def alias(self, args: tuple[Any, ...], kwargs: dict[str, Any], out: Any) -> None:
        """A view: outputs share the first input's identity, role and producer."""
        inputs = costs.tensor_inputs(args, kwargs)
        if not inputs:
            return
        source = self.info(inputs[0])
        for output in _tensors(out):
            if output not in self._info:
                self._info[output] = source
                self._track_live(output, source.role)

    def record(self, op: str, args: tuple[Any, ...], kwargs: dict[str, Any], out: Any, cost: Cost,
               supported: bool = True) -> None:
        layer = self.layer_name()
        inputs = costs.tensor_inputs(args, kwargs)
        reads = cost.reads if cost.reads is not None else tuple(t.numel() for t in inputs)
        read = dict.fromkeys(Role, 0)
        any_kv = False
        external = self._external_reads.setdefault(layer, {})
        for tensor, count in zip(inputs, reads, strict=True):  # a rule must cover every tensor input
            info = self.info(tensor)
            amount = count * tensor.element_size() if info.role is Role.FIXED else count
            read[info.role] += amount
            any_kv = any_kv or info.role is Role.KV
            if info.producer != layer and amount:
                external[info.uid] = max(external.get(info.uid, 0), amount)
                if info.producer is not None:
                    self._escapes.add((info.producer, info.uid))
        written = dict.fromkeys(Role, 0)
        for output in _tensors(out):
            info = self._info.get(output)
            if info is None:
                if not output.is_floating_point():
                    role = Role.FIXED
                elif any_kv and cost.op_class is OpClass.MEMORY:
                    role = Role.KV  # the cache grows by concatenation or copy
                else:
                    role = Role.ACT
                info = self._register(output, role, layer, live=True)
            else:  # written in place: this layer now produces it
                info.producer = layer
            self._writer[info.uid] = len(self.records)
            size = output.numel() * (output.element_size() if info.role is Role.FIXED else 1)
            written[info.role] += size
        self.records.append(
            OpRecord(
                seq=self._next_seq,
                layer=layer,
                op=op,
                op_class=cost.op_class.value if supported else OpClass.UNSUPPORTED.value,
                macs=cost.macs,
                flops=cost.flops,
                weight_read=read[Role.WEIGHT],
                act_read=read[Role.ACT],
                kv_read=read[Role.KV],
                fixed_read_bytes=read[Role.FIXED],
                act_written=written[Role.ACT],
                kv_written=written[Role.KV],
                fixed_written_bytes=written[Role.FIXED],
                supported=supported,
                input_shapes=_shapes(inputs),
                output_shapes=_shapes(_tensors(out)),
                weight_written=written[Role.WEIGHT],
                grad_read=read[Role.GRAD],
                grad_written=written[Role.GRAD],
                state_read=read[Role.STATE],
                state_written=written[Role.STATE],
                phase=self.phase,
                channels_per_group=cost.channels_per_group,
            )
        )
        self._next_seq += 1
        if not supported:
            self.unsupported[op] += 1

    def reclassify_as_kv(self, tensors: Iterable[torch.Tensor]) -> None:
        """Count the writes of tensors that ended up in a KV cache as KV-cache writes (a prefill)."""
        for tensor in tensors:
            info = self._info.get(tensor)
            if info is None or info.role is not Role.ACT or info.uid not in self._writer:
                continue
            index = self._writer[info.uid]
            record = self.records[index]
            moved = min(tensor.numel(), record.act_written)
            self.records[index] = dataclasses.replace(
                record, act_written=record.act_written - moved, kv_written=record.kv_written + moved
            )
            info.role = Role.KV

    def mark_outputs(self, out: Any) -> None:
        for output in _tensors(out):
            info = self._info.get(output)
            if info is not None and info.producer is not None:
                self._escapes.add((info.producer, info.uid))

    def fused_traffic(self) -> dict[str, Traffic]:
        totals: dict[str, dict[Role, int]] = {}

        def add(layer: str, uid: int, amount: int | None = None) -> None:
            size, role = self._uid_size[uid]
            bucket = totals.setdefault(layer, {r: 0 for r in Role})
            bucket[role] += size if amount is None else amount

        for layer, reads in self._external_reads.items():
            for uid, amount in reads.items():
                add(layer, uid, amount)
        for layer, uid in self._escapes:
            add(layer, uid)
        return {
            layer: Traffic(weight=t[Role.WEIGHT], act=t[Role.ACT], kv=t[Role.KV], fixed_bytes=t[Role.FIXED],
                           grad=t[Role.GRAD], state=t[Role.STATE])
            for layer, t in totals.items()
        }


def _tensors(out: Any) -> list[torch.Tensor]:
    return [leaf for leaf in tree_leaves(out) if isinstance(leaf, torch.Tensor)]


def _shapes(tensors: Sequence[torch.Tensor]) -> str:
    return " ".join("x".join(str(d) for d in t.shape) or "scalar" for t in tensors)


def _op_name(func: Any) -> str:
    return f"aten.{func._overloadpacket.__name__}"


_PLAIN = (int, float, bool, str, type(None), torch.dtype, torch.device, torch.layout, torch.memory_format)
_PLAIN_TENSORS = (torch.Tensor, nn.Parameter)
_Template = tuple[TreeSpec, list[Any]]  # the output's structure, and its leaves with tensors as (shape, stride, dtype)


class _MetaMemo:
    """The outputs of functional ops on meta tensors, keyed by their arguments' metadata (issue 19).

    On meta, torch computes each output's shape in Python meta kernels (prims' elementwise meta, the
    batch-norm and linear decompositions): about two thirds of a trace's time in the profile
    (benchmarks/results/count_speed_profile.md). A network repeats the same op on the same shapes in
    every block, so from the second call of a signature on, this builds empty meta outputs of the
    recorded shapes and strides instead. Only for ops whose schema neither mutates nor aliases, with
    every tensor argument and output a plain meta tensor; anything else runs the op as usual.
    """

    def __init__(self) -> None:
        self._functional: dict[Any, bool] = {}
        self._outputs: dict[tuple[Any, ...], _Template | None] = {}

    def _is_functional(self, func: Any) -> bool:
        known = self._functional.get(func)
        if known is None:
            schema = func._schema
            known = not schema.is_mutable and all(ret.alias_info is None for ret in schema.returns)
            self._functional[func] = known
        return known

    def run(self, func: Any, args: tuple[Any, ...], kwargs: dict[str, Any]) -> Any:
        key = _meta_key(func, args, kwargs) if self._is_functional(func) else None
        if key is None:
            return _run(func, args, kwargs)
        if key not in self._outputs:
            out = _run(func, args, kwargs)
            self._outputs[key] = _template(out)
            return out
        template = self._outputs[key]
        if template is None:  # seen, and not reproducible from metadata
            return _run(func, args, kwargs)
        spec, leaves = template
        return tree_unflatten([torch.empty_strided(leaf[0], leaf[1], dtype=leaf[2], device="meta")
                               if isinstance(leaf, _Meta) else leaf for leaf in leaves], spec)


class _Meta(tuple[Any, ...]):
    """(shape, stride, dtype) of a meta output tensor in a template."""


def _meta_key(func: Any, args: tuple[Any, ...], kwargs: dict[str, Any]) -> tuple[Any, ...] | None:
    """A hashable signature of the call, or None when an argument is not a meta tensor or plain value."""
    parts: list[Any] = [func]
    pending: list[Any] = [args, tuple(sorted(kwargs.items()))] if kwargs else [args]
    while pending:
        value = pending.pop()
        if isinstance(value, torch.Tensor):
            if type(value) not in _PLAIN_TENSORS or value.device.type != "meta":
                return None
            parts.append((tuple(value.shape), value.stride(), value.dtype, value.storage_offset()))
        elif isinstance(value, (tuple, list)):
            parts.append((type(value), len(value)))
            pending.extend(value)
        elif isinstance(value, _PLAIN):
            parts.append((type(value), value))
        else:
            return None
    return tuple(parts)


def _template(out: Any) -> _Template | None:
    """How to rebuild `out` from metadata: fresh, plain, dense meta tensors only."""
    leaves, spec = tree_flatten(out)
    rebuilt: list[Any] = []
    for leaf in leaves:
        if isinstance(leaf, torch.Tensor):
            if type(leaf) is not torch.Tensor or leaf.device.type != "meta" or leaf.storage_offset() != 0:
                return None
            meta = _Meta((tuple(leaf.shape), leaf.stride(), leaf.dtype))
            fresh = torch.empty_strided(meta[0], meta[1], dtype=meta[2], device="meta")
            if fresh.untyped_storage().nbytes() != leaf.untyped_storage().nbytes():
                return None  # the op made a larger buffer than its view shows: keep running it
            rebuilt.append(meta)
        elif isinstance(leaf, _PLAIN):
            rebuilt.append(leaf)
        else:
            return None
    return spec, rebuilt


class _CountingMode(TorchDispatchMode):
    """Observes every aten op below autograd and hands it to the tracer with its cost."""

    def __init__(self, tracer: _Tracer) -> None:
        super().__init__()  # type: ignore[no-untyped-call]  # torch's TorchDispatchMode is untyped
        self.tracer = tracer
        self.memo = _MetaMemo()

    def __torch_dispatch__(self, func: Any, types: Any, args: tuple[Any, ...] = (), kwargs: Any = None) -> Any:
        kwargs = kwargs or {}
        if self.tracer.suspended:
            return func(*args, **kwargs)
        if costs.is_alias(func):
            out = func(*args, **kwargs)
            self.tracer.alias(args, kwargs, out)
            return out
        if costs.is_free(func):
            out = func(*args, **kwargs)
            for output in _tensors(out):
                self.tracer.register_input(output)
            return out
        rule = costs.lookup(func)
        if rule is None:
            # No rule: count what the op decomposes into, as torch.utils.flop_counter does.
            with self:
                decomposed = func.decompose(*args, **kwargs)
            if decomposed is not NotImplemented:
                return decomposed
            out = _run(func, args, kwargs)
        else:
            out = self.memo.run(func, args, kwargs)
        if rule is None:
            self.tracer.record(_op_name(func), args, kwargs, out, Cost(op_class=OpClass.UNSUPPORTED), supported=False)
        else:
            self.tracer.record(_op_name(func), args, kwargs, out, rule(args, kwargs, out))
        return out


class MetaStandIns(TorchDispatchMode):
    """Runs a model on meta outside a trace with the tracer's stand-ins (_run): a forward that only builds state,
    such as the KV cache a decode step is traced against, must get through the ops a trace gets through."""

    def __init__(self) -> None:
        super().__init__()  # type: ignore[no-untyped-call]  # torch's TorchDispatchMode is untyped

    def __torch_dispatch__(self, func: Any, types: Any, args: tuple[Any, ...] = (), kwargs: Any = None) -> Any:
        return _run(func, args, kwargs or {})


def _moe_routing(model: nn.Module) -> contextlib.AbstractContextManager[None]:
    """The routing the grouped-matmul rule costs experts under: top-k from the model's config where the routing in
    force (roofline.moe.routing, a user's measured skew) does not give it."""
    from roofline import moe

    current = moe.current_routing()
    top_k = current.top_k or moe.top_k_of(getattr(model, "config", None))
    return moe.routing(dataclasses.replace(current, top_k=top_k)) if top_k != current.top_k else contextlib.nullcontext()


def _run(func: Any, args: tuple[Any, ...], kwargs: dict[str, Any]) -> Any:
    """Run an op for its outputs. On meta, a grouped matmul (MoE experts) whose kernel takes only bf16
    runs on bf16 stand-ins and returns outputs in the caller's dtype: shapes are all a meta pass needs."""
    if func._overloadpacket is torch.ops.aten._grouped_mm:
        tensors = [t for t in tree_leaves((args, kwargs)) if isinstance(t, torch.Tensor)]
        low = (torch.bfloat16, torch.float16)
        if tensors and all(t.is_meta for t in tensors) and any(t.is_floating_point() and t.dtype not in low
                                                                 for t in tensors):
            dtype = next(t.dtype for t in tensors if t.is_floating_point())

            def cast(value: Any) -> Any:
                return value.to(torch.bfloat16) if isinstance(value, torch.Tensor) and value.is_floating_point() else value

            stand_in = torch.utils._pytree.tree_map(cast, (args, kwargs))
            return func(*stand_in[0], **stand_in[1]).to(dtype)
    return func(*args, **kwargs)


@contextlib.contextmanager
def _fused_attention(tracer: _Tracer) -> Iterator[None]:
    """Count F.scaled_dot_product_attention as one fused kernel on every device.

    On meta PyTorch would run the math path (materialising the score matrix); on CPU and GPU it runs
    a fused kernel. Wrapping the function (callers, nn.MultiheadAttention included, look it up in
    torch.nn.functional at call time) gives the same counts on both: q, k, v read, output written.
    """
    original = F.scaled_dot_product_attention

    def counted(query: torch.Tensor, key: torch.Tensor, value: torch.Tensor, *args: Any, **kwargs: Any) -> Any:
        if tracer.suspended:
            return original(query, key, value, *args, **kwargs)
        tracer.suspended += 1
        try:
            out = original(query, key, value, *args, **kwargs)
        finally:
            tracer.suspended -= 1
        mask = args[0] if args else kwargs.get("attn_mask")
        cost = attention_cost(query.shape, key.shape, value.shape, has_mask=isinstance(mask, torch.Tensor))
        tracer.record("aten.scaled_dot_product_attention", (query, key, value, mask), {}, out, cost)
        return out

    F.scaled_dot_product_attention = counted
    try:
        yield
    finally:
        F.scaled_dot_product_attention = original


ATTENTION_MODES = ("fused", "eager")

TraceProgress = Callable[[int, int], None]
"""Called as a trace runs with (leaf-module calls done, leaf modules in the model); the CLI draws it as a bar."""


def trace(model: nn.Module, inputs: Sequence[Any] | dict[str, Any], *, model_name: str = "model",
          attention: str = "fused", kv_tensors: Iterable[torch.Tensor] = (),
          kv_outputs: Callable[[Any], Iterable[torch.Tensor]] | None = None,
          progress: TraceProgress | None = None) -> Trace:
    """Run one inference forward pass of `model` on `inputs` and count every aten op.

    inputs: positional arguments, or a dict of keyword arguments. attention: "fused" counts SDPA as
    one kernel (the default, what PyTorch runs on CPU and GPU); "eager" counts the math path, whose
    score matrix reaches memory. kv_tensors: tensors to cost at the KV-cache precision.
    kv_outputs: given the model's output, the tensors it left in a KV cache; their writes are
    counted as KV-cache writes (the cache a prefill fills). progress: see TraceProgress.
    """
    if attention not in ATTENTION_MODES:
        raise RooflineError(f"unknown attention mode {attention!r}; choose one of: {', '.join(ATTENTION_MODES)}")
    tracer = _Tracer(model, progress)
    args, kwargs = ((), dict(inputs)) if isinstance(inputs, dict) else (tuple(inputs), {})
    for tensor in _tensors((args, kwargs)):
        tracer.register_input(tensor)
    for tensor in kv_tensors:
        tracer.register_input(tensor, Role.KV)
    fastpath = torch.backends.mha.get_fastpath_enabled()
    # nn.MultiheadAttention's CPU fast path is one opaque op; the general path is counted op by op.
    torch.backends.mha.set_fastpath_enabled(False)
    attention_ctx: contextlib.AbstractContextManager[Any] = (
        _fused_attention(tracer) if attention == "fused" else _math_attention()
    )
    try:
        # The model's own prints go to stderr, so `--format json` on stdout stays parseable.
        with torch.no_grad(), tracer.tracker.active(), attention_ctx, _moe_routing(model), _CountingMode(tracer), \
                contextlib.redirect_stdout(sys.stderr):
            try:
                out = model(*args, **kwargs)
            except RooflineError:
                raise
            except SystemExit as error:
                raise RooflineError(f"the model's forward called sys.exit({error.code!r})") from error
            except Exception as error:
                where = tracer.tracker.current()
                place = f"module '{where.name}' ({where.module_type})" if where else "the model's forward"
                message = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
                raise RooflineError(f"forward pass failed in {place}: {type(error).__name__}: {message}") from error
        tracer.mark_outputs(out)
        if kv_outputs is not None:
            tracer.reclassify_as_kv(kv_outputs(out))
    finally:
        torch.backends.mha.set_fastpath_enabled(fastpath)
    if progress is not None:
        progress(tracer._leaves, tracer._leaves)
    return _finish(model, model_name, args, kwargs, tracer, attention, out)


@contextlib.contextmanager
def _math_attention() -> Iterator[None]:
    from torch.nn.attention import SDPBackend, sdpa_kernel

    with sdpa_kernel(SDPBackend.MATH):
        yield


def _finish(model: nn.Module, model_name: str, args: tuple[Any, ...], kwargs: dict[str, Any], tracer: _Tracer,
            attention: str, out: Any) -> Trace:
    layers_with_ops = {record.layer for record in tracer.records}
    rows = [call for call in tracer.tracker.calls if call.is_leaf or call.name in layers_with_ops]
    if ROOT_NAME in layers_with_ops and all(call.name != ROOT_NAME for call in rows):
        rows.insert(0, LayerCall(ROOT_NAME, "", 0, type(model).__name__, False))
    # Order rows by their first op so tables read in execution order; an op-less leaf (Identity,
    # Dropout) sits where it was called.
    first_op: dict[str, int] = {}
    for record in tracer.records:
        first_op.setdefault(record.layer, record.seq)
    call_order = {call.name: i for i, call in enumerate(tracer.tracker.calls)}
    rows.sort(key=lambda row: (first_op.get(row.name, tracer.call_start.get(row.name, -1)),
                               row.name in first_op, call_order.get(row.name, -1)))

    # Parameters: each counted once, on the first row of the module that owns it.
    counted: set[int] = set()
    layer_params: dict[str, int] = {}
    modules = dict(model.named_modules(remove_duplicate=True))
    row_names = {row.name for row in rows}
    for row in rows:
        if row.call_index != 0:
            continue
        module = modules.get(row.path)
        if module is None:
            continue
        owned = 0
        for parameter in module.parameters(recurse=False):
            if id(parameter) not in counted:
                counted.add(id(parameter))
                owned += parameter.numel()
        layer_params[row.name] = owned
    unique = {id(p): p.numel() for p in model.parameters()}
    total_params = sum(unique.values())
    unused = total_params - sum(layer_params.values())
    if unused:
        rows.append(LayerCall(UNUSED_NAME, "", 0, "not executed", False))
        layer_params[UNUSED_NAME] = unused
    assert row_names | {UNUSED_NAME} >= set(layer_params), "parameters attributed to a missing row"
    return Trace(
        model_name=model_name,
        inputs=[list(t.shape) for t in _tensors((args, kwargs))],
        records=tracer.records,
        layers=rows,
        fused=tracer.fused_traffic(),
        layer_params=layer_params,
        total_params=total_params,
        peak_activation_elements=tracer.peak_elements,
        peak_fixed_bytes=tracer.peak_fixed,
        unsupported=dict(tracer.unsupported),
        attention=attention,
        outputs=out,
        moe=moe_params(model),
    )

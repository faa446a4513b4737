"""One training step on the meta device: forward, backward from a loss, optimizer step. Never times.

The same dispatch mode and cost rules as inference (trace.py) see every aten op of the step. Each op
lands in one row, and a layer has one row per phase:
- `conv1`: its forward ops (the same name as in inference, so rows join with inference tables);
- `conv1 (backward)`: the grad-of-input and grad-of-weight ops autograd ran for that call. Autograd
  numbers every node it creates (its sequence number); the nodes made while a module call ran belong
  to it (innermost call first), so the node running an op names the call whose forward made it. A
  parameter's gradient accumulation belongs to the module that owns the parameter;
- `conv1 (optimizer)`: the optimizer's update of that module's own parameters (torch.optim, single-
  tensor path, one optimizer per module: the same per-parameter math as one optimizer over all);
- `(loss)` and `(loss) (backward)`: the loss and the seed of backward.
Rows, not columns: every table stays a group-by of one flat record list, and predict() gives each
row its own terms and bound (a layer's backward is often bound differently from its forward).

Memory: every tensor is tracked from creation to release, by category (parameters, gradients,
optimizer state, activations made in the forward, temporaries made in backward or the optimizer), in
a timeline with one entry per op; the peak is taken in the steady state (optimizer state already
allocated, gradients set to None before the forward, as zero_grad() does by default).
"""
from __future__ import annotations

import contextlib
import dataclasses
import functools
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from functools import cached_property
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from roofline.analysis import PEAK_CATEGORIES, STEP_CATEGORIES, Analysis, TrainingInfo, warn_unsupported_ops
from roofline.costs import Cost
from roofline.costs.matmul import attention_backward_cost, attention_cost
from roofline.errors import RooflineError
from roofline.formatting import format_bytes, format_si, format_time
from roofline.hardware.profile import HardwareProfile
from roofline.models import LoadedModel
from roofline.precision import Precision, training_precision
from roofline.predict import Prediction, predict
from roofline.records import ROOT_NAME
from roofline.trace import (
    LayerCall,
    ModuleCallTracker,
    Role,
    Trace,
    TraceProgress,
    _CountingMode,
    _finish,
    _tensors,
    _Tracer,
)

__all__ = ["BACKWARD_SUFFIX", "LOSS_ROW", "OPTIMIZERS", "OPTIMIZER_SUFFIX", "CheckpointWhatIf", "StepAttribution",
           "StepPrediction", "analyze_train", "checkpoint_blocks", "checkpoint_whatif", "make_optimizer",
           "predict_step", "step_lines", "trace_train"]

OPTIMIZERS = ("adamw", "sgd")
LOSS_ROW = "(loss)"
BACKWARD_SUFFIX = " (backward)"
OPTIMIZER_SUFFIX = " (optimizer)"
_ACCUMULATE_GRAD = 2**64 - 1  # the sequence number autograd gives AccumulateGrad nodes

LossFn = Callable[[Any], torch.Tensor]


def make_optimizer(name: str, parameters: Sequence[nn.Parameter]) -> torch.optim.Optimizer:
    """torch.optim's AdamW or SGD (momentum 0.9) on the single-tensor path, which runs on any device."""
    if name == "adamw":
        return torch.optim.AdamW(parameters, lr=1e-3, foreach=False)
    if name == "sgd":
        return torch.optim.SGD(parameters, lr=1e-3, momentum=0.9, foreach=False)
    raise RooflineError(f"unknown optimizer {name!r}; choose one of: {', '.join(OPTIMIZERS)}")


def default_loss(out: Any) -> torch.Tensor:
    """The sum of every floating-point output (a model's logits, or its last hidden state)."""
    tensors = [t for t in _tensors(_model_outputs(out)) if t.is_floating_point() and t.requires_grad]
    if not tensors:
        raise RooflineError("the model's output cannot be reduced to a scalar loss: it has no floating-point "
                            "tensor that depends on the parameters (give a loss callable in the model file)")
    total = tensors[0].sum()
    for tensor in tensors[1:]:
        total = total + tensor.sum()
    return total


def _model_outputs(out: Any) -> Any:
    """A Hugging Face ModelOutput's tensors (a dict), or the output itself."""
    if hasattr(out, "to_tuple"):
        return out.to_tuple()
    return out


def trainable_parameters(model: nn.Module) -> list[nn.Parameter]:
    found = [p for p in model.parameters() if p.requires_grad]
    if not found:
        raise RooflineError(f"{type(model).__name__} has no trainable parameters (every parameter has "
                            "requires_grad=False): there is nothing to train")
    return found


class StepAttribution:
    """Which row of a training step an op belongs to: shared by the meta trace and the real measurement."""

    def __init__(self, model: nn.Module, tracker: ModuleCallTracker) -> None:
        self.tracker = tracker
        self.phase = "forward"
        self.override: LayerCall | None = None  # the loss row, or an optimizer row
        self.rows: dict[str, LayerCall] = {}  # backward and optimizer rows, in order of first use
        self._start: dict[str, int] = {}
        self._owner: dict[int, LayerCall] = {}  # autograd node sequence number -> forward call
        self._first_call: dict[str, LayerCall] = {}  # module path -> its first call
        self._param_path: dict[int, str] = {}
        for path, module in model.named_modules(remove_duplicate=True):
            for parameter in module.parameters(recurse=False):
                self._param_path.setdefault(id(parameter), path)
        self.loss_call = LayerCall(LOSS_ROW, "", 0, "loss", False)

    def enter(self, call: LayerCall) -> None:
        self._start[call.name] = torch._C._autograd._get_sequence_nr()
        self._first_call.setdefault(call.path, call)

    def exit(self, call: LayerCall) -> None:
        # Inner calls exit first, so setdefault leaves each node with its innermost call.
        for seq in range(self._start.pop(call.name, 0), torch._C._autograd._get_sequence_nr()):
            self._owner.setdefault(seq, call)

    @contextlib.contextmanager
    def loss(self) -> Iterator[None]:
        self.enter(self.loss_call)
        self.override = self.loss_call
        try:
            yield
        finally:
            self.override = None
            self.exit(self.loss_call)

    def derived(self, call: LayerCall, phase: str) -> LayerCall:
        suffix = BACKWARD_SUFFIX if phase == "backward" else OPTIMIZER_SUFFIX
        name = call.name + suffix
        row = self.rows.get(name)
        if row is None:
            row = LayerCall(name, call.path, call.call_index, call.module_type, call.is_leaf, phase=phase)
            self.rows[name] = row
        return row

    def optimizer_row(self, path: str) -> LayerCall:
        call = self._first_call.get(path) or LayerCall(path or ROOT_NAME, path, 0, "parameters", False)
        return self.derived(call, "optimizer")

    def current(self) -> LayerCall | None:
        """The row the next op belongs to (None: the forward's module stack decides)."""
        if self.override is not None:
            return self.override
        if self.phase != "backward":
            return None
        node = torch._C._current_autograd_node()
        if node is None:  # the seed of backward (ones_like of the loss)
            return self.derived(self.loss_call, "backward")
        seq = node._sequence_nr()
        if seq == _ACCUMULATE_GRAD:
            variable = getattr(node, "variable", None)
            path = self._param_path.get(id(variable)) if variable is not None else None
            call = self._first_call.get(path) if path is not None else None
        else:
            call = self._owner.get(seq)
        return self.derived(call if call is not None else self.loss_call, "backward")


class _TrainTracer(_Tracer):
    """The trace bookkeeping plus step attribution and memory by category."""

    def __init__(self, model: nn.Module, progress: TraceProgress | None = None) -> None:
        self._producer: dict[int, str] = {}  # live storage key -> the row that made it
        super().__init__(model, progress)
        self.step = StepAttribution(model, self.tracker)
        self._category: dict[int, str] = {}  # live storage key -> category
        self.live = dict.fromkeys(STEP_CATEGORIES, 0)  # elements
        self.live_fixed = dict.fromkeys(STEP_CATEGORIES, 0)  # bytes of integer tensors (indices, masks)
        self.registering_inputs = False
        self.timeline: list[tuple[int, ...]] = []
        self.end_of_forward: dict[str, int] = {}  # layer -> live activation elements it made, after the loss

    def _on_exit(self, call: LayerCall, module: nn.Module, output: Any) -> None:
        super()._on_exit(call, module, output)
        self.step.exit(call)

    def _on_enter(self, call: LayerCall, module: nn.Module, args: tuple[Any, ...]) -> None:
        super()._on_enter(call, module, args)
        self.step.enter(call)

    def layer_name(self) -> str:
        row = self.step.current()
        return row.name if row is not None else super().layer_name()

    def _track_live(self, tensor: torch.Tensor, role: Role) -> None:
        if role in (Role.WEIGHT, Role.KV):
            return
        key = tensor.untyped_storage()._cdata
        new = key not in self._live
        super()._track_live(tensor, role)
        if new:
            if role is Role.STATE:
                category = "optimizer_state"
            elif role is Role.GRAD:
                category = "gradients"
            elif self.registering_inputs:
                category = "inputs"
            else:
                category = {"forward": "activations", "backward": "temporaries"}.get(self.phase,
                                                                                     "optimizer_temporaries")
            self._category[key] = category
            _, elements, fixed = self._live[key]
            self.live[category] += elements
            self.live_fixed[category] += fixed
            self._producer[key] = self.layer_name()

    def _release(self, key: int) -> None:
        entry = self._live.get(key)
        if entry is not None and entry[0] == 1 and key in self._category:
            category = self._category.pop(key)
            self.live[category] -= entry[1]
            self.live_fixed[category] -= entry[2]
            self._producer.pop(key, None)
        super()._release(key)

    def record(self, op: str, args: tuple[Any, ...], kwargs: dict[str, Any], out: Any, cost: Cost,
               supported: bool = True) -> None:
        super().record(op, args, kwargs, out, cost, supported)
        self.timeline.append((*self.live.values(), *self.live_fixed.values()))

    def became_grad(self, parameter: torch.Tensor) -> None:
        """A parameter's .grad was set: its tensor is a gradient (memory and bytes), no longer a temporary."""
        grad = parameter.grad
        if grad is None:
            return
        key = grad.untyped_storage()._cdata
        category = self._category.get(key)
        if category is not None and category != "gradients":
            elements = self._live[key][1]
            self.live[category] -= elements
            self.live["gradients"] += elements
            self._category[key] = "gradients"
        info = self._info.get(grad)
        if info is not None and info.role is Role.ACT:
            info.role = Role.GRAD
            index = self._writer.get(info.uid)
            if index is not None:
                record = self.records[index]
                moved = min(grad.numel(), record.act_written)
                self.records[index] = dataclasses.replace(record, act_written=record.act_written - moved,
                                                          grad_written=record.grad_written + moved)
            self._uid_size[info.uid] = (self._uid_size[info.uid][0], Role.GRAD)

    def snapshot_forward(self) -> None:
        """Live activation elements per producing layer, after the loss: what backward will consume."""
        totals: dict[str, int] = {}
        for key, category in self._category.items():
            if category == "activations":
                layer = self._producer.get(key, ROOT_NAME)
                totals[layer] = totals.get(layer, 0) + self._live[key][1]
        self.end_of_forward = totals


@contextlib.contextmanager
def _fused_attention_train(tracer: _TrainTracer) -> Iterator[None]:
    """F.scaled_dot_product_attention as one fused kernel forward and one backward, as on CPU and GPU.

    On meta PyTorch runs the math path; an autograd Function counts the fused forward (trace.py's rule)
    and the fused backward (attention_backward_cost) as one op each.
    """
    original = F.scaled_dot_product_attention

    class _Fused(torch.autograd.Function):
        @staticmethod
        def forward(ctx: Any, query: torch.Tensor, key: torch.Tensor, value: torch.Tensor, mask: Any,
                    kwargs: dict[str, Any]) -> torch.Tensor:
            tracer.suspended += 1
            try:
                out = original(query, key, value, mask, **kwargs)
            finally:
                tracer.suspended -= 1
            has_mask = isinstance(mask, torch.Tensor)
            cost = attention_cost(query.shape, key.shape, value.shape, has_mask=has_mask)
            tracer.record("aten.scaled_dot_product_attention", (query, key, value, mask), {}, out, cost)
            ctx.save_for_backward(query, key, value, out)
            return out

        @staticmethod
        def backward(ctx: Any, grad: torch.Tensor) -> Any:
            query, key, value, out = ctx.saved_tensors
            tracer.suspended += 1
            try:
                grads = (torch.empty_like(query), torch.empty_like(key), torch.empty_like(value))
            finally:
                tracer.suspended -= 1
            cost = attention_backward_cost(query.shape, key.shape, value.shape)
            tracer.record("aten.scaled_dot_product_attention_backward", (grad, query, key, value, out), {},
                          grads, cost)
            return (*grads, None, None)

    def counted(query: torch.Tensor, key: torch.Tensor, value: torch.Tensor, *args: Any, **kwargs: Any) -> Any:
        if tracer.suspended:
            return original(query, key, value, *args, **kwargs)
        mask = args[0] if args else kwargs.pop("attn_mask", None)
        names = ("dropout_p", "is_causal", "scale", "enable_gqa")
        extra = dict(zip(names, args[1:], strict=False)) | kwargs
        return _Fused.apply(query, key, value, mask, extra)

    F.scaled_dot_product_attention = counted
    try:
        yield
    finally:
        F.scaled_dot_product_attention = original


def checkpoint_blocks(model: nn.Module) -> list[str]:
    """The blocks a checkpointing what-if wraps: the outermost repeated non-leaf children of a container.

    A transformer's layers (ModuleList) or a ResNet stage's blocks (Sequential); found by shape, not
    by name, so any model with a stack of repeated blocks has them.
    """
    found: list[str] = []
    for path, module in model.named_modules():
        if any(path.startswith(block + ".") for block in found):
            continue
        if not isinstance(module, (nn.ModuleList, nn.Sequential)):
            continue
        children = [(f"{path}.{name}" if path else name, child) for name, child in module.named_children()]
        blocks = [(p, c) for p, c in children if next(c.children(), None) is not None]
        if len(blocks) >= 2 and len(blocks) == len(children):
            found.extend(p for p, _ in blocks)
    return found


def trace_train(model: nn.Module, inputs: Sequence[Any] | dict[str, Any], *, model_name: str = "model",
                optimizer: str = "adamw", loss: LossFn | None = None, attention: str = "fused",
                progress: TraceProgress | None = None) -> Trace:
    """Trace one training step of `model` (on the meta device): forward, loss, backward, optimizer step.

    progress: called over the forward's leaf-module calls (trace.TraceProgress); the total is reported when the
    whole step is traced."""
    if optimizer not in OPTIMIZERS:
        raise RooflineError(f"unknown optimizer {optimizer!r}; choose one of: {', '.join(OPTIMIZERS)}")
    if attention not in ("fused", "eager"):
        raise RooflineError(f"unknown attention mode {attention!r}; choose one of: fused, eager")
    params = trainable_parameters(model)
    model.train()
    loss_fn = loss or default_loss
    tracer = _TrainTracer(model, progress)
    args, kwargs = ((), dict(inputs)) if isinstance(inputs, dict) else (tuple(inputs), {})
    tracer.registering_inputs = True
    for tensor in _tensors((args, kwargs)):
        tracer.register_input(tensor)
    tracer.registering_inputs = False
    hooks = [p.register_post_accumulate_grad_hook(tracer.became_grad)  # type: ignore[no-untyped-call]  # torch: untyped
             for p in params]
    owners = _owning_paths(model, params)
    fastpath = torch.backends.mha.get_fastpath_enabled()
    torch.backends.mha.set_fastpath_enabled(False)
    attention_ctx: contextlib.AbstractContextManager[Any] = (
        _fused_attention_train(tracer) if attention == "fused" else contextlib.nullcontext()
    )
    step = tracer.step
    try:
        with torch.enable_grad(), tracer.tracker.active(), attention_ctx, _CountingMode(tracer):
            out = _run_phase(tracer, "the model's forward", lambda: model(*args, **kwargs))
            with step.loss():
                value = _run_phase(tracer, "the loss", functools.partial(loss_fn, out))
                if not isinstance(value, torch.Tensor) or value.numel() != 1 or not value.requires_grad:
                    raise RooflineError("the loss must be a scalar tensor that depends on the parameters; got "
                                        + (f"a tensor of shape {list(value.shape)}" if isinstance(value, torch.Tensor)
                                           else type(value).__name__)
                                        + (" that does not require grad" if isinstance(value, torch.Tensor)
                                           and value.numel() == 1 else ""))
            tracer.mark_outputs(out)
            tracer.snapshot_forward()
            forward_records = len(tracer.records)
            tracer.phase = step.phase = "backward"
            _run_phase(tracer, "backward", value.backward)
            del value, out
            tracer.phase = step.phase = "optimizer"
            state_elements = _optimizer_step(tracer, optimizer, owners)
    finally:
        torch.backends.mha.set_fastpath_enabled(fastpath)
        for hook in hooks:
            hook.remove()
    if progress is not None:
        progress(tracer._leaves, tracer._leaves)
    tracer.tracker.calls.extend(step.rows.values())
    tracer.tracker.calls.insert(0, step.loss_call)
    result = _finish(model, model_name, args, kwargs, tracer, attention, None)
    blocks = _block_figures(model, result, tracer, forward_records)
    tokens = _tokens(args, kwargs)
    info = TrainingInfo(
        optimizer=optimizer,
        loss="sum of outputs" if loss is None else getattr(loss, "__name__", "user loss"),
        trainable_params=sum(p.numel() for p in params),
        frozen_params=sum(p.numel() for p in model.parameters() if not p.requires_grad),
        buffer_elements=sum(b.numel() for b in model.buffers() if b.is_floating_point()),
        state_elements=state_elements,
        timeline=tuple(tracer.timeline),
        timeline_layers=tuple(r.layer for r in tracer.records),
        blocks=blocks,
        samples=int(result.inputs[0][0]) if result.inputs and result.inputs[0] else 1,
        tokens=tokens,
    )
    return dataclasses.replace(result, mode="train", training=info)


def _run_phase(tracer: _TrainTracer, what: str, fn: Callable[[], Any]) -> Any:
    try:
        return fn()
    except RooflineError:
        raise
    except Exception as error:
        where = tracer.tracker.current() if what == "the model's forward" else tracer.step.current()
        place = f"module '{where.name}' ({where.module_type})" if where else what
        message = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
        raise RooflineError(f"{what} failed in {place}: {type(error).__name__}: {message}") from error


def _owning_paths(model: nn.Module, params: Sequence[nn.Parameter]) -> dict[str, list[nn.Parameter]]:
    """Trainable parameters grouped by the module that owns them (first owner of a shared parameter)."""
    wanted = {id(p) for p in params}
    seen: set[int] = set()
    groups: dict[str, list[nn.Parameter]] = {}
    for path, module in model.named_modules(remove_duplicate=True):
        for parameter in module.parameters(recurse=False):
            if id(parameter) in wanted and id(parameter) not in seen:
                seen.add(id(parameter))
                groups.setdefault(path, []).append(parameter)
    return groups


def _optimizer_step(tracer: _TrainTracer, name: str, groups: dict[str, list[nn.Parameter]]) -> int:
    """One optimizer per module: a first step, not counted, allocates the state; the second is the one traced."""
    optimizers = {path: make_optimizer(name, params) for path, params in groups.items()}
    tracer.suspended += 1
    try:
        for optim in optimizers.values():
            optim.step()
    finally:
        tracer.suspended -= 1
    state_elements = 0
    for optim in optimizers.values():
        for state in optim.state.values():
            for tensor in state.values():
                if isinstance(tensor, torch.Tensor) and tensor.is_floating_point() and tensor.device.type == "meta":
                    tracer.register_input(tensor, Role.STATE)
                    state_elements += tensor.numel()
    for path, optim in optimizers.items():
        tracer.step.override = tracer.step.optimizer_row(path)
        try:
            _run_phase(tracer, "the optimizer step", optim.step)
        finally:
            tracer.step.override = None
    return state_elements


def _block_figures(model: nn.Module, result: Trace, tracer: _TrainTracer,
                   forward_records: int) -> tuple[tuple[str, int, int], ...]:
    """Per checkpointable block: (path, live activation elements it made at the end of forward, its output's)."""
    blocks = checkpoint_blocks(model)
    if not blocks:
        return ()
    path_of = {call.name: call.path for call in result.layers}
    saved = dict.fromkeys(blocks, 0)
    for layer, elements in tracer.end_of_forward.items():
        block = _block_of(path_of.get(layer, ""), blocks)
        if block is not None:
            saved[block] += elements
    # A block's output stays saved under checkpointing (the next block's input): the largest tensor
    # its last forward op wrote.
    last_output: dict[str, int] = {}
    for record in tracer.records[:forward_records]:
        block = _block_of(path_of.get(record.layer, ""), blocks)
        if block is not None:
            last_output[block] = record.act_written
    return tuple((block, saved[block], last_output.get(block, 0)) for block in blocks)


def _block_of(path: str, blocks: Sequence[str]) -> str | None:
    for block in blocks:
        if path == block or path.startswith(block + "."):
            return block
    return None


def _tokens(args: tuple[Any, ...], kwargs: dict[str, Any]) -> int | None:
    """Tokens per step for a language model (the input_ids' elements), else None."""
    ids = kwargs.get("input_ids")
    if isinstance(ids, torch.Tensor):
        return int(ids.numel())
    return None


def analyze_train(model: Any, inputs: Any = None, precision: str | Precision = "fp32", *, optimizer: str = "adamw",
                  loss: LossFn | None = None, attention: str = "fused", warn_unsupported: bool = True,
                  cache: bool = False, progress: TraceProgress | None = None, **load_options: Any) -> Analysis:
    """Count one training step: a MODEL spec, a LoadedModel, or an nn.Module with `inputs`.

    cache and progress as for analysis.analyze; a step with a loss function of the caller's is never cached.
    """
    from roofline import models, tracecache

    train_precision = training_precision(precision)  # fail on a bad precision before the model build
    if optimizer not in OPTIMIZERS:
        raise RooflineError(f"unknown optimizer {optimizer!r}; choose one of: {', '.join(OPTIMIZERS)}")

    def build() -> Trace:
        loaded = model if isinstance(model, LoadedModel) else models.load(model, inputs=inputs, **load_options)
        return trace_train(loaded.module, loaded.inputs, model_name=loaded.name, optimizer=optimizer,
                           loss=loss or loaded.meta.get("loss"), attention=attention, progress=progress)

    options = {"attention": attention, "optimizer": optimizer, **load_options}
    key = tracecache.key_for(model, inputs, "train", options) if cache and loss is None else None
    counted = tracecache.traced(key, build)
    if warn_unsupported and counted.unsupported:
        warn_unsupported_ops(counted.unsupported)
    return Analysis(counted, train_precision)


@dataclass(frozen=True)
class StepPrediction:
    """A training step's predicted time, throughput and MFU: predict()'s terms, summed by phase.

    MFU = model FLOPs per step / (step time x the device's peak for the precision the matrix ops run at;
    TF32's for fp32 convolutions on a GPU, as predict costs them). Model FLOPs are
    2 x the MACs of the forward and backward rows: the matrix-like ops (linear, matmul, convolution,
    attention's two products) and their gradients, which for a dense transformer is 6 N D plus the
    attention term 12 L d s per token (full score matrix). Elementwise work, the optimizer and any
    recomputation are excluded, as MFU conventions do (PaLM, appendix B).
    """

    prediction: Prediction

    @property
    def analysis(self) -> Analysis:
        return self.prediction.analysis

    @cached_property
    def phases(self) -> dict[str, float]:
        """Predicted seconds of each phase (forward includes the loss)."""
        layers = self.prediction.layers.merge(self.analysis.layers[["name", "phase"]], on="name", how="left")
        by_phase = layers.groupby("phase")["in_pass_s"].sum()
        return {phase: float(by_phase.get(phase, 0.0)) for phase in ("forward", "backward", "optimizer", "recompute")
                if phase in by_phase.index or phase != "recompute"}

    @property
    def step_s(self) -> float:
        return float(self.prediction.totals["predicted_latency_s"])

    @property
    def model_flops(self) -> int:
        totals = self.analysis.totals
        return 2 * int(totals["forward_macs"] + totals["backward_macs"])

    @cached_property
    def peak_flops_per_s(self) -> float:
        """The peak the model's matrix FLOPs run at, as predict costs them: the precision's, or TF32's for
        fp32 convolutions on a GPU with TF32 (the peak carrying the largest share of those FLOPs)."""
        ops = self.prediction.ops
        matrix = ops[ops["macs"] > 0]
        if not len(matrix):
            return float(self.prediction.peak_flops_per_s)
        return float(matrix.groupby("peak_flops_per_s")["flops"].sum().idxmax())

    @property
    def mfu(self) -> float:
        peak = self.peak_flops_per_s
        return self.model_flops / (self.step_s * peak) if self.step_s and peak else 0.0

    @property
    def samples_per_s(self) -> float:
        info = self.analysis.training
        return (info.samples if info else 1) / self.step_s if self.step_s else float("inf")

    @property
    def tokens_per_s(self) -> float | None:
        info = self.analysis.training
        if info is None or info.tokens is None:
            return None
        return info.tokens / self.step_s if self.step_s else float("inf")

    def to_dict(self) -> dict[str, Any]:
        return {"step_s": self.step_s, "phases_s": self.phases, "samples_per_s": self.samples_per_s,
                "tokens_per_s": self.tokens_per_s, "model_flops": self.model_flops, "mfu": self.mfu,
                "peak_flops_per_s": self.peak_flops_per_s}


def predict_step(analysis: Analysis, profile: HardwareProfile | str, calibrated: bool = False) -> StepPrediction:
    """The training step's time from predict() on the training analysis (its rows are ops like any others)."""
    if analysis.training is None:
        raise RooflineError("predict_step needs a training analysis (roofline.train.analyze_train, --mode train)")
    return StepPrediction(predict(analysis, profile, calibrated=calibrated))


@dataclass(frozen=True)
class CheckpointWhatIf:
    """Checkpointing every block: the forward of each block runs again in backward, its activations are not kept."""

    blocks: int
    recompute_flops: int
    step_s: float
    step_s_with: float
    peak_bytes: float
    peak_bytes_with: float

    @property
    def extra_s(self) -> float:
        return self.step_s_with - self.step_s

    @property
    def memory_saved_bytes(self) -> float:
        return self.peak_bytes - self.peak_bytes_with

    def to_dict(self) -> dict[str, Any]:
        return {"blocks": self.blocks, "recompute_flops": self.recompute_flops, "step_s": self.step_s,
                "step_s_with_checkpointing": self.step_s_with, "extra_s": self.extra_s,
                "peak_bytes": self.peak_bytes, "peak_bytes_with_checkpointing": self.peak_bytes_with,
                "memory_saved_bytes": self.memory_saved_bytes}


def checkpoint_whatif(analysis: Analysis, profile: HardwareProfile | str, calibrated: bool = False
                      ) -> CheckpointWhatIf | None:
    """Recompute FLOPs and time (predict() again, with each block's forward ops repeated as recompute rows)
    against the memory saved; None when the model has no stack of repeated blocks.

    Memory: a checkpointed block keeps only its input; in backward it rematerialises its own
    activations, one block at a time. So the saved activations drop by the sum over blocks of
    (activations kept - output kept) and gain back the largest single block's. Applied at every point
    of the step where that many activations are live (an approximation after backward has begun
    freeing them; exact at the usual peak, the start of backward).
    """
    info = analysis.training
    if info is None:
        raise RooflineError("checkpoint_whatif needs a training analysis (--mode train)")
    if not info.blocks:
        return None
    trace = analysis.trace
    blocks = [path for path, _, _ in info.blocks]
    path_of = {call.name: call for call in trace.layers}
    recompute_rows: dict[str, LayerCall] = {}
    extra = []
    seq = max((r.seq for r in trace.records), default=0) + 1
    for record in trace.records:
        call = path_of.get(record.layer)
        if record.phase != "forward" or call is None or _block_of(call.path, blocks) is None:
            continue
        name = f"{record.layer} (recompute)"
        recompute_rows.setdefault(name, dataclasses.replace(call, name=name, phase="recompute"))
        extra.append(dataclasses.replace(record, layer=name, phase="recompute", seq=seq))
        seq += 1
    with_recompute = dataclasses.replace(trace, records=[*trace.records, *extra],
                                         layers=[*trace.layers, *recompute_rows.values()])
    base = predict(analysis, profile, calibrated=calibrated)
    checkpointed = predict(Analysis(with_recompute, analysis.precision), profile, calibrated=calibrated)
    p = analysis.precision
    dropped = [max(0, saved - output) for _, saved, output in info.blocks]
    reduction = (sum(dropped) - max(dropped)) * p.activation_bytes
    live = info.live_bytes(p)
    static = info.memory(p)["by_category"]
    fixed_part = static["parameters"] + static["weight_copies"]
    peak_with = max((sum(row.values()) - min(row["activations"], reduction) for row in live), default=0.0) + fixed_part
    return CheckpointWhatIf(
        blocks=len(blocks), recompute_flops=int(sum(r.flops for r in extra)),
        step_s=float(base.totals["predicted_latency_s"]), step_s_with=float(checkpointed.totals["predicted_latency_s"]),
        peak_bytes=float(analysis.totals["peak_memory_bytes"]), peak_bytes_with=float(peak_with),
    )


def step_lines(step: StepPrediction, whatif: CheckpointWhatIf | None) -> list[str]:
    """Sentences for a report or the terminal: the step's time, throughput, MFU, memory and the what-if."""
    totals = step.analysis.totals
    info = step.analysis.training
    phases = ", ".join(f"{phase} {format_time(seconds)}" for phase, seconds in step.phases.items())
    rate = (f"{format_si(step.tokens_per_s)} tokens/s" if step.tokens_per_s is not None
            else f"{format_si(step.samples_per_s)} samples/s")
    lines = [
        (f"Training step ({info.optimizer if info else '?'}, loss = {info.loss if info else '?'}, "
        f"{step.analysis.precision.name}): predicted {format_time(step.step_s)} ({phases}); {rate}; "
        f"MFU {step.mfu:.1%} (model FLOPs {format_si(step.model_flops)} = 2 x MACs of forward and backward, "
        f"peak {format_si(step.peak_flops_per_s)}FLOP/s)."),
        f"Model size by role: weights {format_bytes(totals['weights_bytes'])}"
        + (f" (fp32 master) + 16-bit compute copies {format_bytes(totals['weight_copies_bytes'])}"
           if totals["weight_copies_bytes"] else "")
        + f", grads {format_bytes(totals['grads_bytes'])}, optimizer state {format_bytes(totals['optimizer_state_bytes'])}.",
        f"Peak training memory {format_bytes(totals['peak_memory_bytes'])} at {totals['peak_layer']}: "
        + ", ".join(f"{name.replace('_', ' ')} {format_bytes(totals[f'peak_{name}_bytes'])}"
                    for name in PEAK_CATEGORIES if totals[f"peak_{name}_bytes"]) + ".",
    ]
    if whatif is not None:
        lines.append(
            f"What-if, activation checkpointing of every block ({whatif.blocks} blocks): recompute "
            f"{format_si(whatif.recompute_flops)}FLOP, step {format_time(whatif.step_s)} -> {format_time(whatif.step_s_with)}"
            f" (+{format_time(whatif.extra_s)}); peak memory {format_bytes(whatif.peak_bytes)} -> "
            f"{format_bytes(whatif.peak_bytes_with)} (saves {format_bytes(whatif.memory_saved_bytes)}).")
    return lines

"""Each layer's real inputs from one forward pass, so a layer can be timed alone (public: benchmarks use it)."""
from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_map

from roofline import costs
from roofline.errors import RooflineError
from roofline.trace import LayerCall, ModuleCallTracker

__all__ = ["Capture", "Row", "forward_callable", "layer_callable"]

Op = tuple[Any, tuple[Any, ...], dict[str, Any]]


@dataclass
class Row:
    """One layer during capture: a leaf's arguments, or a non-leaf's own aten ops."""

    call: LayerCall
    order: int  # dispatch sequence number of the row's first op, for execution order
    args: tuple[Any, ...] = ()
    kwargs: dict[str, Any] = field(default_factory=dict)
    ops: list[Op] = field(default_factory=list)
    counted_ops: int = 0  # ops the trace records (not views, not allocations): a non-leaf row exists iff > 0


class Capture(TorchDispatchMode):
    """One forward pass: names calls with the trace's tracker and keeps what each row needs to run alone."""

    def __init__(self, model: nn.Module) -> None:
        super().__init__()  # type: ignore[no-untyped-call]
        self.model = model
        self.tracker = ModuleCallTracker(model, on_enter=self._on_enter)
        self.rows: dict[str, Row] = {}
        self._weights = {t.untyped_storage().data_ptr() for t in [*model.parameters(), *model.buffers()]
                         if t.layout == torch.strided}
        self._seq = 0
        self._copying = False

    def _on_enter(self, call: LayerCall, module: nn.Module, args: tuple[Any, ...]) -> None:
        self.rows[call.name] = Row(call, self._seq)

    def _keep_inputs(self, module: nn.Module, args: tuple[Any, ...], kwargs: dict[str, Any]) -> None:
        """Forward pre-hook on leaves (runs after the tracker's global hook has pushed this call)."""
        call = self.tracker.current()
        if call is not None and call.is_leaf:
            self.rows[call.name].args, self.rows[call.name].kwargs = self._copy(args), self._copy(kwargs)

    def _copy(self, tree: Any) -> Any:
        self._copying = True
        try:
            return tree_map(self._copy_tensor, tree)
        finally:
            self._copying = False

    def _copy_tensor(self, value: Any) -> Any:
        """A copy with the same sizes and strides (so replay reads memory as the model did); weights shared."""
        if not isinstance(value, torch.Tensor):
            return value
        plain = type(value) in (torch.Tensor, nn.Parameter) and value.layout == torch.strided
        if plain and value.untyped_storage().data_ptr() in self._weights:
            return value
        if not plain or value.is_quantized or value.is_conj() or value.is_neg() or value.numel() == 0:
            return value.clone()
        # Copy the span of memory the view covers, then view it the same way (works for slices, transposes
        # and expanded stride-0 dimensions alike).
        span = 1 + sum((size - 1) * stride for size, stride in zip(value.shape, value.stride()))
        region = value.detach().as_strided((span,), (1,)).clone()
        return region.as_strided(value.shape, value.stride(), 0)

    def __torch_dispatch__(self, func: Any, types: Any, args: tuple[Any, ...] = (), kwargs: Any = None) -> Any:
        kwargs = kwargs or {}
        call = None if self._copying else self.tracker.current()
        if call is not None and not call.is_leaf:
            row = self.rows[call.name]
            counted = not (costs.is_alias(func) or costs.is_free(func))
            if counted and row.counted_ops == 0:
                row.order = self._seq
            row.counted_ops += counted
            row.ops.append((func, self._copy(args), self._copy(kwargs)))  # before the op: in-place ops change args
        if not self._copying:
            self._seq += 1
        return func(*args, **kwargs)

    def run(self, inputs: list[Any] | dict[str, Any]) -> list[Row]:
        """Run the forward pass; the rows the trace would have, in execution order."""
        args, kwargs = ((), dict(inputs)) if isinstance(inputs, dict) else (tuple(inputs), {})
        leaves = [m for m in {id(m): m for m in self.model.modules()}.values() if next(m.children(), None) is None]
        handles = [m.register_forward_pre_hook(self._keep_inputs, with_kwargs=True, prepend=True) for m in leaves]
        try:
            with self.tracker.active(), self:
                self.model(*args, **kwargs)
        except RooflineError:
            raise
        except Exception as error:
            where = self.tracker.current()
            place = f"module '{where.name}' ({where.module_type})" if where else "the model's forward"
            message = (str(error).strip().splitlines() or [type(error).__name__])[0]
            raise RooflineError(f"forward pass failed in {place}: {type(error).__name__}: {message}") from error
        finally:
            for handle in handles:
                handle.remove()
        kept = [row for row in self.rows.values() if row.call.is_leaf or row.counted_ops]
        return sorted(kept, key=lambda row: row.order)


def layer_callable(row: Row, modules: dict[str, nn.Module]) -> Callable[[], object]:
    """What timing a row calls: the leaf module on its inputs, or a replay of the non-leaf's own ops."""
    if row.call.is_leaf:
        module, args, kwargs = modules[row.call.path], row.args, row.kwargs
        return lambda: module(*args, **kwargs)
    ops = row.ops

    def replay() -> None:
        for func, op_args, op_kwargs in ops:
            func(*op_args, **op_kwargs)

    return replay


def forward_callable(module: nn.Module, inputs: list[Any] | dict[str, Any]) -> Callable[[], object]:
    """The whole forward pass on `inputs` (positional, or keyword when a dict), as a callable to time."""
    if isinstance(inputs, dict):
        return lambda: module(**inputs)
    return lambda: module(*inputs)

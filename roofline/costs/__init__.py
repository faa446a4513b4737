"""Cost rules: one table keyed by aten op, filled only through `@register`.

A rule is a small pure function of the op's arguments and outputs (it reads shapes and dtypes only,
so it works on meta tensors) returning a `Cost` counted in elements, never bytes: a Precision turns
elements into bytes later, so changing precision never re-traces.

Conventions (README "Cost conventions" repeats them):
- A MAC is one multiply and one add; matrix-like ops (matmul family, convolution, attention's two
  products, RNN gates' matmuls) have FLOPs = 2 x MACs plus any bias adds.
- Other ops have FLOPs and no MACs, from the per-element constants in `elementwise.py`/`norm.py`.
- Bytes (eager): every tensor input is read once and every output written once, unless a rule says
  an op touches only part of an input (embedding, gather, index_select), via `Cost.reads`.
"""
from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import torch

from roofline.opclass import OpClass  # re-exported: its home is torch-free

__all__ = [
    "ALIAS_OPS",
    "FREE_OPS",
    "RULES",
    "Cost",
    "OpClass",
    "is_alias",
    "is_free",
    "lookup",
    "numel",
    "register",
    "tensor_inputs",
]


@dataclass(frozen=True)
class Cost:
    """Work and traffic of one op call, in elements.

    `flops` includes the 2 x `macs` of matrix-like ops. `reads` overrides, per tensor input (in
    flattened argument order), how many elements are read; None means every input is read whole.
    """

    macs: int = 0
    flops: int = 0
    reads: tuple[int, ...] | None = None
    op_class: OpClass = OpClass.ELEMENTWISE
    # A grouped convolution's input channels per group (0 for every other op): how full its kernel's
    # vectors are, which a calibrated prediction reads (HardwareProfile.conv_group_rate).
    channels_per_group: int = 0

    def __post_init__(self) -> None:
        if self.macs < 0 or self.flops < 0:
            raise ValueError(f"negative cost: {self}")
        if self.flops < 2 * self.macs:
            raise ValueError(f"flops must include 2 x macs: {self}")


Rule = Callable[[tuple[Any, ...], dict[str, Any], Any], Cost]

RULES: dict[Any, Rule] = {}


def register(*ops: Any) -> Callable[[Rule], Rule]:
    """Register `rule` for aten op packets; rejects non-ops and duplicates at import time."""

    def decorator(rule: Rule) -> Rule:
        for op in ops:
            if not isinstance(op, torch._ops.OpOverloadPacket):
                raise TypeError(f"{op!r} is not an aten op packet (e.g. torch.ops.aten.mm)")
            if op in RULES:
                raise ValueError(f"duplicate cost rule for {op}")
            RULES[op] = rule
        return rule

    return decorator


aten = torch.ops.aten

# Ops that alias their input without moving data, though their schema does not say "view" (ops
# whose schema does are found through `OpOverload.is_view`). Zero FLOPs, zero bytes, no allocation.
ALIAS_OPS = frozenset(
    {
        aten.unsafe_split,
        aten.unsafe_split_with_sizes,
        aten.unsafe_chunk,
        aten._unsafe_view,
        aten.lift_fresh,
        # in-place metadata changes: the tensor is reinterpreted, no data moves
        aten.as_strided_,
        aten.transpose_,
        aten.t_,
        aten.squeeze_,
        aten.unsqueeze_,
        aten.detach_,
    }
)

# Ops that cost nothing but may allocate (an uninitialised buffer) or return a Python scalar.
FREE_OPS = frozenset(
    {
        aten.empty,
        aten.empty_like,
        aten.empty_strided,
        aten.new_empty,
        aten.new_empty_strided,
        aten._local_scalar_dense,
        aten.is_same_size,
        aten.sym_size,
        aten.sym_stride,
        aten.sym_numel,
        aten.sym_storage_offset,
        # the profiler's record_function markers (torch.optim wraps each step in one)
        torch.ops.profiler._record_function_enter_new,
        torch.ops.profiler._record_function_exit,
    }
)


def is_alias(func: Any) -> bool:
    """True for ops whose outputs are views of their first input (no data moved)."""
    return bool(getattr(func, "is_view", False)) or func._overloadpacket in ALIAS_OPS


def is_free(func: Any) -> bool:
    """True for ops with no cost: uninitialised allocations and metadata queries."""
    return func._overloadpacket in FREE_OPS


def lookup(func: Any) -> Rule | None:
    """The rule for an aten OpOverload, or None if the op has no rule."""
    return RULES.get(func._overloadpacket)


def numel(shape: Sequence[int] | torch.Size) -> int:
    return int(math.prod(shape))


def tensor_inputs(args: tuple[Any, ...], kwargs: dict[str, Any]) -> list[torch.Tensor]:
    """The op's tensor arguments in flattened order: the order `Cost.reads` follows."""
    leaves = torch.utils._pytree.tree_leaves((args, kwargs))
    return [leaf for leaf in leaves if isinstance(leaf, torch.Tensor)]


# Import the rule modules so their @register calls fill RULES.
from roofline.costs import conv, elementwise, matmul, memory, norm, reduce, rnn  # noqa: F401

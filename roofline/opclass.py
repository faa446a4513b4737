"""Op classes (the families of ops calibration fits separately) and other facts about op names that code
downstream of a trace needs, kept free of torch so that loading a hardware profile (`roofline hw list`) or
re-costing a cached trace does not import it. `roofline.costs` re-exports OpClass."""
from __future__ import annotations

from enum import Enum

__all__ = ["SELECTIVE_READ_OPS", "OpClass", "writes_in_place"]

# Ops that read rows selected by an index: what they read of a weight grows with the batch.
SELECTIVE_READ_OPS = frozenset(
    f"aten.{name}" for name in ("embedding", "index_select", "index", "_unsafe_index", "masked_select", "take", "gather")
)


def writes_in_place(op: str) -> bool:
    """Whether an aten op (as the tracer names it: 'aten.relu_', 'aten.add_.Tensor') writes into its first
    input, by aten's trailing-underscore convention: it fills no fresh buffer."""
    return op.removeprefix("aten.").split(".")[0].endswith("_")


class OpClass(str, Enum):
    """Families of ops that reach different fractions of the roofline (used by calibration)."""

    GEMM = "gemm"
    CONV = "conv"
    POINTWISE_CONV = "pointwise_conv"  # dense 1x1 convolution: a GEMM over pixels, less reuse per loaded input
    GROUPED_CONV = "grouped_conv"  # groups > 1 with fewer than 16 input channels per group, depthwise included
    ATTENTION = "attention"
    ELEMENTWISE = "elementwise"
    ACTIVATION = "activation"  # transcendental per-element math (gelu, silu, sigmoid, tanh, exp, erf)
    NORM = "norm"
    SOFTMAX = "softmax"
    POOL = "pool"
    REDUCTION = "reduction"
    MEMORY = "memory"
    RNN = "rnn"
    VIEW = "view"
    UNSUPPORTED = "unsupported"

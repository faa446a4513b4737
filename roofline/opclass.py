"""Op classes: the families of ops calibration fits separately, kept free of torch so that loading a
hardware profile (`roofline hw list`) does not import it. `roofline.costs` re-exports OpClass."""
from __future__ import annotations

from enum import Enum

__all__ = ["OpClass"]


class OpClass(str, Enum):
    """Families of ops that reach different fractions of the roofline (used by calibration)."""

    GEMM = "gemm"
    CONV = "conv"
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

"""Precisions: the element size of weights, activations and KV cache, and the compute type in force.

Counting happens once in elements; a Precision turns elements into bytes and picks the hardware peak,
so re-costing for another precision never re-traces the model.
"""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import TYPE_CHECKING

from roofline.errors import RooflineError, close_matches

if TYPE_CHECKING:
    import torch

__all__ = ["COMPUTE_TYPES", "MEASURABLE_DTYPES", "PRECISIONS", "TRAINING_PRECISIONS", "Precision", "get_precision",
           "training_precision"]

# Compute types a hardware profile can give a peak for (FLOP/s, or op/s for integer types).
COMPUTE_TYPES = ("fp64", "fp32", "tf32", "fp16", "bf16", "fp8", "int8")


@dataclass(frozen=True)
class Precision:
    """Element sizes per tensor role and the compute type whose peak bounds the math."""

    name: str
    weight_bits: float
    activation_bits: float
    compute_type: str
    kv_bits: float | None = None  # KV cache; None means "same as activations"
    description: str = ""
    # Training roles (roofline.train): the optimizer's master weights, the parameters' gradients and the
    # optimizer state. None means "same as the weights" (a plain, not mixed-precision, step).
    master_bits: float | None = None
    grad_bits: float | None = None
    state_bits: float | None = None

    def __post_init__(self) -> None:
        if self.compute_type not in COMPUTE_TYPES:
            raise ValueError(f"compute_type {self.compute_type!r} not in {COMPUTE_TYPES}")
        for field in ("weight_bits", "activation_bits"):
            if getattr(self, field) <= 0:
                raise ValueError(f"{field} must be positive")

    @property
    def weight_bytes(self) -> float:
        return self.weight_bits / 8

    @property
    def activation_bytes(self) -> float:
        return self.activation_bits / 8

    @property
    def kv_bytes(self) -> float:
        return (self.kv_bits if self.kv_bits is not None else self.activation_bits) / 8

    @property
    def master_bytes(self) -> float:
        return (self.master_bits if self.master_bits is not None else self.weight_bits) / 8

    @property
    def grad_bytes(self) -> float:
        return (self.grad_bits if self.grad_bits is not None else self.weight_bits) / 8

    @property
    def state_bytes(self) -> float:
        return (self.state_bits if self.state_bits is not None else self.weight_bits) / 8

    def with_kv(self, kv: str | None) -> Precision:
        """This precision with the KV cache stored as `kv` (a precision name such as fp8 or int8)."""
        if kv is None:
            return self
        kv_precision = get_precision(kv)
        return dataclasses.replace(
            self, name=f"{self.name}+kv-{kv_precision.name}", kv_bits=kv_precision.activation_bits
        )


PRECISIONS: dict[str, Precision] = {
    p.name: p
    for p in (
        Precision("fp32", 32, 32, "fp32", description="IEEE float32 weights and activations"),
        Precision("tf32", 32, 32, "tf32", description="float32 storage, TF32 tensor-core math"),
        Precision("fp16", 16, 16, "fp16", description="float16 weights and activations"),
        Precision("bf16", 16, 16, "bf16", description="bfloat16 weights and activations"),
        Precision("int8", 8, 8, "int8", description="w8a8: int8 weights and activations, int8 math"),
        Precision("fp8", 8, 8, "fp8", description="w8a8 float8 (e4m3) weights and activations"),
        Precision("w8a16", 8, 16, "fp16", description="int8 weights dequantised to fp16 math"),
        Precision("w4a16", 4, 16, "fp16", description="4-bit packed weights, fp16 math"),
    )
}


MEASURABLE_DTYPES: dict[str, torch.dtype]  # declared only: module __getattr__ fills it in on first use


def __getattr__(name: str) -> dict[str, torch.dtype]:
    """MEASURABLE_DTYPES, built on first use: the precisions a model can be run at by casting it (the
    storage dtype of weights and activations). Lazy so that precision lookups do not import torch."""
    if name != "MEASURABLE_DTYPES":
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    import torch

    dtypes = {"fp32": torch.float32, "tf32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}
    globals()[name] = dtypes  # later lookups are plain attribute reads
    return dtypes


# Precisions a training step can run at; fp16 and bf16 are mixed precision as torch.autocast runs it.
TRAINING_PRECISIONS = ("fp32", "tf32", "bf16", "fp16")


def training_precision(name: str | Precision) -> Precision:
    """The precision of a training step: fp32 master weights, gradients and optimizer state throughout.

    fp16/bf16 mean autocast: the math and the activations (and their gradients) at 16 bits, the
    weights read by the math as 16-bit copies, while the optimizer keeps fp32 master weights, the
    parameters' gradients are fp32 (autocast's cast back accumulates them into the fp32 parameters'
    .grad) and the optimizer state is fp32.
    """
    base = get_precision(name)
    if base.name not in TRAINING_PRECISIONS:
        raise RooflineError(f"precision {base.name!r} is not a training precision; "
                            f"choose one of: {', '.join(TRAINING_PRECISIONS)}")
    if base.master_bits is not None:
        return base
    mixed = base.weight_bits < 32
    name_ = f"{base.name}-mixed" if mixed else base.name
    return dataclasses.replace(base, name=name_, master_bits=32, grad_bits=32, state_bits=32,
                               description=base.description + ("; fp32 master weights, grads and optimizer state"
                                                               if mixed else ""))


def get_precision(name: str | Precision) -> Precision:
    """Look up a precision by name; the error lists the accepted names."""
    if isinstance(name, Precision):
        return name
    key = name.strip().lower()
    if key.endswith("-mixed"):  # the name training_precision gives a mixed-precision step
        return training_precision(key.removesuffix("-mixed"))
    if key not in PRECISIONS:
        raise RooflineError(
            f"unknown precision {name!r}{close_matches(key, PRECISIONS)}; "
            f"choose one of: {', '.join(PRECISIONS)}"
        )
    return PRECISIONS[key]

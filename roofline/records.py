"""The records a trace produces: op records, layer calls, tensor roles, the Trace itself. Torch-free.

Kept apart from the tracer (trace.py, which needs torch) so that everything downstream of a trace
(analysis, prediction, the trace cache) can run from records read back from disk without importing torch.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from enum import Enum
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from roofline.precision import Precision

__all__ = [
    "PEAK_CATEGORIES",
    "ROOT_NAME",
    "STEP_CATEGORIES",
    "UNUSED_NAME",
    "LayerCall",
    "MoEParams",
    "OpRecord",
    "Role",
    "Trace",
    "Traffic",
    "TrainingInfo",
    "call_name",
]

ROOT_NAME = "(model)"
UNUSED_NAME = "(unused parameters)"


class Role(str, Enum):
    """What a tensor is, which decides its element size under a Precision."""

    WEIGHT = "weight"  # parameters and buffers, and views of them
    ACT = "act"  # floating-point activations
    KV = "kv"  # a language model's KV cache
    FIXED = "fixed"  # integer and boolean tensors (indices, masks): bytes at their own dtype
    GRAD = "grad"  # a parameter's gradient (training)
    STATE = "state"  # optimizer state: momentum, Adam's moments (training)


@dataclass(frozen=True)
class LayerCall:
    """One call of one module: a row of the layer table."""

    name: str
    path: str
    call_index: int
    module_type: str
    is_leaf: bool
    phase: str = "forward"  # forward, backward or optimizer (a training step's rows)


@dataclass(frozen=True)
class OpRecord:
    """One aten op call: its cost in elements (bytes for FIXED tensors) and where it ran."""

    seq: int
    layer: str
    op: str
    op_class: str
    macs: int
    flops: int
    weight_read: int
    act_read: int
    kv_read: int
    fixed_read_bytes: int
    act_written: int
    kv_written: int
    fixed_written_bytes: int
    supported: bool
    input_shapes: str
    output_shapes: str
    # Elements this op's output sends over the interconnect when the model is split across devices
    # (roofline.parallel attaches them; a trace of one device has none).
    allreduce_elements: int = 0
    allgather_elements: int = 0
    p2p_elements: int = 0
    # Training roles (0 in inference): weights written in place (an optimizer update), gradients and
    # optimizer state read and written, and the phase of the step the op ran in.
    weight_written: int = 0
    grad_read: int = 0
    grad_written: int = 0
    state_read: int = 0
    state_written: int = 0
    phase: str = "forward"
    # A grouped (not depthwise) forward convolution's input channels per group; 0 for every other op.
    channels_per_group: int = 0


@dataclass(frozen=True)
class Traffic:
    """Elements moved by role (bytes for FIXED), for a layer's fused estimate."""

    weight: int = 0
    act: int = 0
    kv: int = 0
    fixed_bytes: int = 0
    grad: int = 0
    state: int = 0


@dataclass(frozen=True)
class Trace:
    """Everything counted in one forward pass; analysis turns it into tables."""

    model_name: str
    inputs: list[list[int]]
    records: list[OpRecord]
    layers: list[LayerCall]
    fused: dict[str, Traffic]
    layer_params: dict[str, int]
    total_params: int
    peak_activation_elements: int
    peak_fixed_bytes: int
    unsupported: dict[str, int]
    attention: str
    outputs: Any = field(default=None, repr=False, compare=False)
    tensor_parallel: int = 1  # devices each op is split across (roofline.parallel.shard); its collectives' group
    mode: str = "inference"  # or "train": forward, backward and optimizer step (roofline.train)
    training: Any = field(default=None, repr=False, compare=False)  # roofline.train.TrainingInfo
    moe: MoEParams | None = None  # a mixture-of-experts model's total and active parameters (roofline.moe)


def call_name(path: str, index: int) -> str:
    """A module call's row name: its path ('(model)' for the root), then '#k' from its second call on."""
    base = path or ROOT_NAME
    return base if index == 0 else f"{base}#{index}"


# Memory of a training step by category, tracked over each tensor's lifetime (roofline.train); the
# parameters are constant and not in the timeline.
STEP_CATEGORIES = ("inputs", "gradients", "optimizer_state", "activations", "temporaries", "optimizer_temporaries")
# Bytes of a step's peak by category, in the order reports show them.
PEAK_CATEGORIES = ("parameters", "weight_copies", "gradients", "optimizer_state", "activations", "temporaries",
                   "optimizer_temporaries", "inputs")


@dataclass(frozen=True)
class TrainingInfo:
    """What a training step's trace adds to the op records: roles' sizes and live memory over time.

    Element counts, not bytes, so a Precision re-costs them. `timeline` has one entry per op record,
    right after the op wrote its outputs: live floating-point elements of each of STEP_CATEGORIES,
    then live bytes of integer tensors (indices, masks) of each. `blocks`: per checkpointable block,
    its path, the activation elements it leaves saved for backward and its output's elements.
    """

    optimizer: str
    loss: str
    trainable_params: int
    frozen_params: int
    buffer_elements: int
    state_elements: int
    timeline: tuple[tuple[int, ...], ...]
    timeline_layers: tuple[str, ...]
    blocks: tuple[tuple[str, int, int], ...]
    samples: int
    tokens: int | None

    def category_bytes(self, precision: Precision) -> dict[str, float]:
        """Bytes per element of each timeline category at `precision` (a training precision)."""
        return {"inputs": precision.activation_bytes, "gradients": precision.grad_bytes,
                "optimizer_state": precision.state_bytes, "activations": precision.activation_bytes,
                "temporaries": precision.activation_bytes, "optimizer_temporaries": precision.state_bytes}

    def live_bytes(self, precision: Precision) -> list[dict[str, float]]:
        """Bytes by category after each op (the optimizer state at its steady-state size throughout)."""
        sizes = self.category_bytes(precision)
        count = len(STEP_CATEGORIES)
        rows = []
        for entry in self.timeline:
            row = {c: entry[i] * sizes[c] + entry[count + i] for i, c in enumerate(STEP_CATEGORIES)}
            row["optimizer_state"] = self.state_elements * precision.state_bytes
            rows.append(row)
        return rows

    def memory(self, precision: Precision) -> dict[str, Any]:
        """The step's steady-state peak: bytes by category at the peak, the op and layer where it occurs.

        Steady state: the optimizer state exists from the previous step, and gradients are None when
        the forward starts (zero_grad's default). Under mixed precision, autocast's 16-bit copies of
        the weights live from the forward into the backward that uses them: a category of their own,
        counted as live for the whole step (an upper bound).
        """
        mixed = precision.master_bytes != precision.weight_bytes
        static = {"parameters": (self.trainable_params + self.frozen_params + self.buffer_elements)
                  * precision.master_bytes,
                  "weight_copies": self.trainable_params * precision.weight_bytes if mixed else 0.0}
        live = self.live_bytes(precision)
        best_index = max(range(len(live)), key=lambda i: sum(live[i].values()), default=-1)
        at_peak = dict.fromkeys(PEAK_CATEGORIES, 0.0) | static
        if best_index >= 0:
            at_peak.update(live[best_index])
        return {
            "peak_bytes": float(sum(at_peak.values())),
            "by_category": at_peak,
            "peak_layer": self.timeline_layers[best_index] if best_index >= 0 else ROOT_NAME,
            "peak_op_index": best_index,
        }

    def model_size(self, precision: Precision) -> dict[str, float]:
        """Model size per role: weights (master and, under mixed precision, the compute copies), grads, state."""
        mixed = precision.master_bytes != precision.weight_bytes
        return {
            "weights_bytes": (self.trainable_params + self.frozen_params) * precision.master_bytes,
            "weight_copies_bytes": self.trainable_params * precision.weight_bytes if mixed else 0.0,
            "grads_bytes": self.trainable_params * precision.grad_bytes,
            "optimizer_state_bytes": self.state_elements * precision.state_bytes,
        }


@dataclass(frozen=True)
class MoEParams:
    """Parameter counts of a mixture-of-experts model."""

    total: int  # all parameters: what memory holds
    routed: int  # parameters of the routed experts (all E of every MoE layer)
    experts: int
    top_k: int

    @property
    def active(self) -> int:
        """Parameters one token uses: everything but the experts it is not routed to, total - routed x (1 - k/E)."""
        return round(self.total - self.routed * (1 - self.top_k / self.experts))

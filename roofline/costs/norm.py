"""Normalisation and softmax: FLOPs per element from one documented constant each.

Counts follow the arithmetic of an inference kernel per element (statistics are amortised):
- softmax: max, subtract, exp, sum, divide = 5; log_softmax likewise 5.
- layer/group norm: mean (1), variance (subtract, square, add = 3), normalise (subtract, multiply
  = 2), affine (multiply, add = 2) = 8.
- RMS norm: square, add, multiply by rsqrt, multiply by weight = 4.
- batch norm at inference: subtract mean, multiply by inverse std, multiply weight, add bias = 4.

Backward (training), per element of the input:
- softmax: grad_in = y * (g - sum(g * y)): multiply, sum, subtract, multiply = 4 (log_softmax likewise:
  exp of the output, sum, multiply, subtract = 4).
- batch/layer/group norm: x-hat (subtract, multiply = 2), the two reductions sum(g) and sum(g * x-hat)
  (multiply, two adds = 3), grad_in = w * invstd * (g - mean(g) - x-hat * mean(g * x-hat)) (multiply,
  two subtracts, two multiplies = 5), and the weight and bias grads (multiply, two adds = 3) = 13.
- RMS norm: x * rsqrt (1), sum(g * w * x) (3), grad_in (3), weight grad (2) = 9.
"""
from __future__ import annotations

from typing import Any

from roofline.costs import Cost, OpClass, aten, register

SOFTMAX_FLOPS_PER_ELEMENT = 5
LAYER_NORM_FLOPS_PER_ELEMENT = 8
RMS_NORM_FLOPS_PER_ELEMENT = 4
BATCH_NORM_FLOPS_PER_ELEMENT = 4
SOFTMAX_BACKWARD_FLOPS_PER_ELEMENT = 4
NORM_BACKWARD_FLOPS_PER_ELEMENT = 13
RMS_NORM_BACKWARD_FLOPS_PER_ELEMENT = 9


@register(aten._softmax, aten._log_softmax, aten._safe_softmax, aten.softmax, aten.log_softmax)
def softmax_flop(args: tuple[Any, ...], kwargs: dict[str, Any], out: Any) -> Cost:
    """Softmax along one dimension."""
    return Cost(flops=SOFTMAX_FLOPS_PER_ELEMENT * args[0].numel(), op_class=OpClass.SOFTMAX)


@register(aten.native_layer_norm, aten.native_group_norm)
def layer_norm_flop(args: tuple[Any, ...], kwargs: dict[str, Any], out: Any) -> Cost:
    """Layer and group norm (mean and variance are written as extra outputs and counted as bytes)."""
    return Cost(flops=LAYER_NORM_FLOPS_PER_ELEMENT * args[0].numel(), op_class=OpClass.NORM)


@register(aten._fused_rms_norm, aten.rms_norm)
def rms_norm_flop(args: tuple[Any, ...], kwargs: dict[str, Any], out: Any) -> Cost:
    """RMS norm as one kernel (nn.RMSNorm); HF models often spell it out as pow/mean/rsqrt/mul."""
    return Cost(flops=RMS_NORM_FLOPS_PER_ELEMENT * args[0].numel(), op_class=OpClass.NORM)


@register(
    aten._native_batch_norm_legit_no_training,
    aten._native_batch_norm_legit,
    aten.native_batch_norm,
    aten._batch_norm_with_update,
    aten._batch_norm_no_update,
)
def batch_norm_flop(args: tuple[Any, ...], kwargs: dict[str, Any], out: Any) -> Cost:
    """Batch norm with running statistics."""
    return Cost(flops=BATCH_NORM_FLOPS_PER_ELEMENT * args[0].numel(), op_class=OpClass.NORM)


@register(aten._softmax_backward_data, aten._log_softmax_backward_data)
def softmax_backward_flop(args: tuple[Any, ...], kwargs: dict[str, Any], out: Any) -> Cost:
    """Softmax backward from the saved output: (grad_output, output, dim, dtype)."""
    return Cost(flops=SOFTMAX_BACKWARD_FLOPS_PER_ELEMENT * args[0].numel(), op_class=OpClass.SOFTMAX)


@register(aten.native_batch_norm_backward, aten.native_layer_norm_backward, aten.native_group_norm_backward,
          aten.batch_norm_backward, aten.cudnn_batch_norm_backward, aten.miopen_batch_norm_backward)
def norm_backward_flop(args: tuple[Any, ...], kwargs: dict[str, Any], out: Any) -> Cost:
    """Batch, layer and group norm backward: grads of input, weight and bias from (grad_output, input, ...)."""
    return Cost(flops=NORM_BACKWARD_FLOPS_PER_ELEMENT * args[0].numel(), op_class=OpClass.NORM)


@register(aten._fused_rms_norm_backward)
def rms_norm_backward_flop(args: tuple[Any, ...], kwargs: dict[str, Any], out: Any) -> Cost:
    """RMS norm backward as one kernel."""
    return Cost(flops=RMS_NORM_BACKWARD_FLOPS_PER_ELEMENT * args[0].numel(), op_class=OpClass.NORM)

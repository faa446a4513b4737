"""Elementwise arithmetic and activations: one FLOP per output element, from one factory.

One FLOP per element is the convention for every op here, however many instructions its kernel
issues (gelu's tanh, sigmoid's exp and divide): the bytes, not the FLOPs, bound these ops on every
device we model, so a finer count would not move a prediction. relu and clamp count too: a compare
and select per element is work, not a free view.
"""
from __future__ import annotations

from typing import Any

from roofline.costs import Cost, OpClass, aten, register


def elementwise_flop(flops_per_element: int, op_class: OpClass = OpClass.ELEMENTWISE) -> Any:
    """A rule charging `flops_per_element` per output element."""

    def rule(args: tuple[Any, ...], kwargs: dict[str, Any], out: Any) -> Cost:
        first = out[0] if isinstance(out, (tuple, list)) else out
        return Cost(flops=flops_per_element * first.numel(), op_class=op_class)

    return rule


_ONE_FLOP_OPS = [
    # arithmetic
    "add", "add_", "sub", "sub_", "mul", "mul_", "div", "div_", "neg", "neg_", "abs", "abs_",
    "pow", "pow_", "sqrt", "sqrt_", "rsqrt", "rsqrt_", "square", "reciprocal", "reciprocal_",
    "exp", "exp_", "exp2", "expm1", "log", "log_", "log2", "log10", "log1p", "sin", "cos", "tan",
    "sinh", "cosh", "asin", "acos", "atan", "atan2", "erf", "erfc", "erfinv", "floor", "ceil",
    "round", "trunc", "frac", "sign", "sgn", "fmod", "remainder", "floor_divide", "lerp", "lerp_",
    "addcmul", "addcmul_", "addcdiv", "addcdiv_", "hypot", "xlogy", "nan_to_num", "rsub",
    # comparison, selection and logic
    "eq", "ne", "lt", "le", "gt", "ge", "maximum", "minimum", "fmax", "fmin", "where", "clamp",
    "clamp_", "clamp_min", "clamp_min_", "clamp_max", "clamp_max_", "masked_fill", "masked_fill_",
    "logical_not", "logical_and", "logical_or", "logical_xor", "bitwise_not", "bitwise_and",
    "bitwise_or", "bitwise_xor", "isnan", "isinf", "isfinite", "threshold", "threshold_",
    # activations
    "relu", "relu_", "gelu", "gelu_", "silu", "silu_", "sigmoid", "sigmoid_", "tanh", "tanh_",
    "hardswish", "hardswish_", "hardsigmoid", "hardsigmoid_", "hardtanh", "hardtanh_",
    "leaky_relu", "leaky_relu_", "elu", "elu_", "selu", "celu", "softplus", "mish", "mish_",
    "log_sigmoid_forward", "_prelu_kernel", "glu", "logit",
    # activation gradients (training): grad_output times the activation's derivative, one FLOP per
    # element by the same convention; dropout's backward multiplies by the saved mask and scale.
    "threshold_backward", "gelu_backward", "silu_backward", "tanh_backward", "sigmoid_backward",
    "hardswish_backward", "hardsigmoid_backward", "hardtanh_backward", "leaky_relu_backward", "elu_backward",
    "softplus_backward", "mish_backward", "log_sigmoid_backward", "native_dropout_backward", "glu_backward",
    "_prelu_kernel_backward",
]

# Transcendental functions cost one FLOP by the convention above, but their kernels run many
# instructions per element: a class of their own, so calibration can tell them from an add.
_TRANSCENDENTAL_OPS = {
    "gelu", "gelu_", "silu", "silu_", "sigmoid", "sigmoid_", "tanh", "tanh_", "exp", "exp_", "exp2", "expm1",
    "log", "log_", "log2", "log10", "log1p", "sin", "cos", "tan", "sinh", "cosh", "asin", "acos", "atan", "atan2",
    "erf", "erfc", "erfinv", "pow", "pow_", "elu", "elu_", "selu", "celu", "softplus", "mish", "mish_",
    "log_sigmoid_forward", "logit", "rsqrt", "rsqrt_", "sqrt", "sqrt_",
    "gelu_backward", "silu_backward", "tanh_backward", "sigmoid_backward", "elu_backward", "softplus_backward",
    "mish_backward", "log_sigmoid_backward",
}

register(*[getattr(aten, name) for name in _ONE_FLOP_OPS if name not in _TRANSCENDENTAL_OPS])(elementwise_flop(1))
register(*[getattr(aten, name) for name in _ONE_FLOP_OPS if name in _TRANSCENDENTAL_OPS])(
    elementwise_flop(1, OpClass.ACTIVATION)
)

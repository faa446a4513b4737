"""Convolution 1-D/2-D/3-D: grouped, depthwise, dilated, strided and transposed.

The shapes carry every case: the weight holds C_in/groups (or C_out/groups when transposed), so
grouped and depthwise convolution need no branch, and stride/dilation/padding show up only through
the output's spatial size.
"""
from __future__ import annotations

from typing import Any

from roofline.costs import Cost, OpClass, aten, numel, register

GROUPED_CHANNELS_PER_GROUP = 16


@register(aten.convolution, aten._convolution)
def conv_flop(args: tuple[Any, ...], kwargs: dict[str, Any], out: Any) -> Cost:
    """MACs = N x C_out x prod(out spatial) x (C_in/groups) x prod(kernel); bias adds are FLOPs."""
    x, weight, bias = args[0], args[1], args[2]
    transposed = bool(args[6]) if len(args) > 6 else bool(kwargs.get("transposed", False))
    groups = int(args[8]) if len(args) > 8 else int(kwargs.get("groups", 1))
    batch = x.shape[0]
    if transposed:
        # weight [C_in, C_out/groups, *k]: every input pixel scatters C_out/groups x k MACs.
        macs = batch * numel(x.shape[2:]) * weight.numel()
    else:
        # weight [C_out, C_in/groups, *k]: every output pixel gathers C_in/groups x k MACs.
        macs = batch * numel(out.shape[2:]) * weight.numel()
    bias_flops = out.numel() if bias is not None else 0
    # Few input channels per group (depthwise and near-depthwise) run on different library kernels
    # than dense convolution, at a different fraction of the roofline: their own calibration class.
    # A dense stem (3 RGB channels, groups=1) runs the dense kernels and stays in the conv class.
    channels_per_group = x.shape[1] // groups
    grouped = groups > 1 and channels_per_group < GROUPED_CHANNELS_PER_GROUP
    # A dense 1x1 convolution is a GEMM over pixels with no window to reuse each loaded input across: on the
    # EPYC VM it ran at 0.72-0.84 of its roof where 3x3 ones ran at 0.96-1.0. Its own line.
    pointwise = groups == 1 and not transposed and numel(weight.shape[2:]) == 1
    op_class = OpClass.GROUPED_CONV if grouped else OpClass.POINTWISE_CONV if pointwise else OpClass.CONV
    # How full a grouped convolution's vectors are depends on its channels per group, which a profile may
    # have measured a rate for (HardwareProfile.conv_group_rate); recorded for groups > 1, not transposed.
    recorded = channels_per_group if groups > 1 and not transposed else 0
    return Cost(macs=macs, flops=2 * macs + bias_flops, op_class=op_class, channels_per_group=recorded)


@register(aten.convolution_backward)
def conv_backward_flop(args: tuple[Any, ...], kwargs: dict[str, Any], out: Any) -> Cost:
    """Grad of input and grad of weight: each the forward's MACs; grad of bias one FLOP per grad_output element."""
    # convolution_backward(grad_output, input, weight, bias_sizes, stride, padding, dilation, transposed,
    # output_padding, groups, output_mask): output_mask says which of (input, weight, bias) grads are made.
    grad_output, x, weight = args[0], args[1], args[2]
    transposed = bool(args[7])
    groups = int(args[9])
    mask = list(args[10])
    # The forward's MACs (conv_flop): its output is grad_output, or its input when transposed.
    spatial = numel(x.shape[2:]) if transposed else numel(grad_output.shape[2:])
    forward_macs = x.shape[0] * spatial * weight.numel()
    macs = forward_macs * (int(bool(mask[0])) + int(bool(mask[1])))
    bias_flops = grad_output.numel() if mask[2] else 0
    grouped = groups > 1 and x.shape[1] // groups < GROUPED_CHANNELS_PER_GROUP
    return Cost(macs=macs, flops=2 * macs + bias_flops, op_class=OpClass.GROUPED_CONV if grouped else OpClass.CONV)

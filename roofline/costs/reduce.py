"""Reductions, pooling and resampling: FLOPs from the input elements or the window each output reads.

- reductions (sum, mean, max, norm, histogram counts, ...): one FLOP per input element; variance and standard
  deviation three (subtract the mean, square, accumulate).
- pooling: one FLOP per element of each output's window (a compare for max, an add for average).
  Adaptive pooling's window is ceil(in / out) per spatial dimension.
- interpolation: nearest moves data only (0 FLOPs); linear 4, bilinear 8, trilinear 16 and
  bicubic 32 FLOPs per output element (a multiply and an add per tap).
- sort and top-k: ceil(log2(n)) compares per element of the sorted dimension.
"""
from __future__ import annotations

import math
from typing import Any

from roofline.costs import Cost, OpClass, aten, numel, register


def _first(out: Any) -> Any:
    return out[0] if isinstance(out, (tuple, list)) else out


def _reduction(flops_per_input: int) -> Any:
    def rule(args: tuple[Any, ...], kwargs: dict[str, Any], out: Any) -> Cost:
        return Cost(flops=flops_per_input * args[0].numel(), op_class=OpClass.REDUCTION)

    return rule


register(
    aten.sum, aten.mean, aten.amax, aten.amin, aten.max, aten.min, aten.argmax, aten.argmin,
    aten.prod, aten.norm, aten.linalg_vector_norm, aten.any, aten.all, aten.cumsum, aten.cumprod,
    aten.logsumexp, aten.count_nonzero, aten.aminmax, aten.histc, aten.bincount,
)(_reduction(1))
register(aten.var, aten.std, aten.var_mean, aten.std_mean)(_reduction(3))


def _as_tuple(value: Any, dims: int) -> tuple[int, ...]:
    if isinstance(value, int):
        return (value,) * dims
    values = tuple(int(v) for v in value)
    return values * dims if len(values) == 1 else values


@register(
    aten.max_pool1d, aten.max_pool2d, aten.max_pool3d, aten.max_pool2d_with_indices,
    aten.max_pool3d_with_indices, aten.avg_pool1d, aten.avg_pool2d, aten.avg_pool3d,
    aten.max_pool1d_with_indices,
)
def pool_flop(args: tuple[Any, ...], kwargs: dict[str, Any], out: Any) -> Cost:
    """Fixed-window pooling: output elements x window size."""
    output = _first(out)
    spatial_dims = output.dim() - 2
    kernel = _as_tuple(args[1] if len(args) > 1 else kwargs["kernel_size"], spatial_dims)
    return Cost(flops=output.numel() * numel(kernel), op_class=OpClass.POOL)


@register(
    aten._adaptive_avg_pool2d, aten._adaptive_avg_pool3d, aten.adaptive_max_pool2d,
    aten.adaptive_max_pool3d, aten.adaptive_avg_pool1d, aten.adaptive_max_pool1d,
)
def adaptive_pool_flop(args: tuple[Any, ...], kwargs: dict[str, Any], out: Any) -> Cost:
    """Adaptive pooling: each output reads a window of ceil(in / out) per spatial dimension."""
    x, output = args[0], _first(out)
    spatial_dims = output.dim() - 2
    window = [
        math.ceil(x.shape[-spatial_dims + i] / output.shape[-spatial_dims + i])
        for i in range(spatial_dims)
    ]
    return Cost(flops=output.numel() * numel(window), op_class=OpClass.POOL)


def _interpolation(flops_per_output: int) -> Any:
    def rule(args: tuple[Any, ...], kwargs: dict[str, Any], out: Any) -> Cost:
        op_class = OpClass.MEMORY if flops_per_output == 0 else OpClass.ELEMENTWISE
        return Cost(flops=flops_per_output * _first(out).numel(), op_class=op_class)

    return rule


register(
    aten.upsample_nearest1d, aten.upsample_nearest2d, aten.upsample_nearest3d,
    aten._upsample_nearest_exact1d, aten._upsample_nearest_exact2d, aten._upsample_nearest_exact3d,
)(_interpolation(0))
register(aten.upsample_linear1d)(_interpolation(4))
register(aten.upsample_bilinear2d, aten._upsample_bilinear2d_aa)(_interpolation(8))
register(aten.upsample_trilinear3d)(_interpolation(16))
register(aten.upsample_bicubic2d, aten._upsample_bicubic2d_aa)(_interpolation(32))


def _sort_cost(x: Any, dim: int) -> Cost:
    size = x.shape[dim] if x.dim() > 0 else 1
    compares = max(1, math.ceil(math.log2(max(size, 2))))
    return Cost(flops=x.numel() * compares, op_class=OpClass.REDUCTION)


@register(aten.sort, aten.argsort)
def sort_flop(args: tuple[Any, ...], kwargs: dict[str, Any], out: Any) -> Cost:
    """Comparison sort along one dimension: ceil(log2(n)) compares per element."""
    dim = args[1] if len(args) > 1 and not isinstance(args[1], bool) else kwargs.get("dim", -1)
    return _sort_cost(args[0], dim)


@register(aten.topk)
def topk_flop(args: tuple[Any, ...], kwargs: dict[str, Any], out: Any) -> Cost:
    """Top-k, costed as the sort it at most needs."""
    dim = args[2] if len(args) > 2 else kwargs.get("dim", -1)
    return _sort_cost(args[0], dim)


@register(
    aten.max_pool2d_with_indices_backward, aten.max_pool3d_with_indices_backward, aten.adaptive_max_pool2d_backward,
    aten.adaptive_max_pool3d_backward,
)
def max_pool_backward_flop(args: tuple[Any, ...], kwargs: dict[str, Any], out: Any) -> Cost:
    """Max pooling backward: each grad_output element is added to the input position its index names."""
    return Cost(flops=args[0].numel(), op_class=OpClass.POOL)


@register(aten.avg_pool2d_backward, aten.avg_pool3d_backward, aten._adaptive_avg_pool2d_backward,
          aten._adaptive_avg_pool3d_backward)
def avg_pool_backward_flop(args: tuple[Any, ...], kwargs: dict[str, Any], out: Any) -> Cost:
    """Average pooling backward: one add (and share of the divide) per input element of each window."""
    return Cost(flops=_first(out).numel(), op_class=OpClass.POOL)

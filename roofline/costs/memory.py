"""Data movement: copies, concatenation, padding, creation and indexing. Bytes, no FLOPs.

Indexing ops read only what they select: an embedding lookup reads its indices and the selected
rows, not the whole table (an LLM decode step would otherwise be costed at the full vocabulary).
"""
from __future__ import annotations

from typing import Any

import torch

from roofline.costs import Cost, OpClass, aten, register, tensor_inputs


def _first(out: Any) -> Any:
    return out[0] if isinstance(out, (tuple, list)) else out


@register(
    aten.cat, aten.stack, aten.constant_pad_nd, aten.reflection_pad1d, aten.reflection_pad2d,
    aten.reflection_pad3d, aten.replication_pad1d, aten.replication_pad2d, aten.replication_pad3d,
    aten.clone, aten._to_copy, aten.lift_fresh_copy, aten.repeat, aten.roll, aten.flip, aten.tril,
    aten.triu, aten.tril_, aten.triu_, aten.slice_scatter, aten.select_scatter, aten.narrow_copy,
    aten.index_copy, aten.index_copy_, aten.index_put, aten.index_put_, aten.scatter, aten.scatter_,
    aten.masked_scatter, aten.pixel_shuffle, aten.pixel_unshuffle, aten.channel_shuffle,
    aten.native_channel_shuffle, aten._pad_circular, aten.diagonal_copy, aten.expand_copy,
    aten.permute_copy, aten.view_copy, aten.transpose_copy, aten.t_copy, aten.unfold_copy,
    aten.im2col, aten.col2im, aten.repeat_interleave,
)
def copy_cost(args: tuple[Any, ...], kwargs: dict[str, Any], out: Any) -> Cost:
    """Read every input once, write every output once."""
    return Cost(op_class=OpClass.MEMORY)


@register(aten.copy_)
def copy_into_cost(args: tuple[Any, ...], kwargs: dict[str, Any], out: Any) -> Cost:
    """dst.copy_(src): src is read, dst only written."""
    return Cost(reads=(0, args[1].numel()), op_class=OpClass.MEMORY)


@register(
    aten.zeros, aten.ones, aten.full, aten.zeros_like, aten.ones_like, aten.full_like, aten.arange,
    aten.new_zeros, aten.new_ones, aten.new_full, aten.scalar_tensor, aten.linspace, aten.fill_,
    aten.fill, aten.zero_, aten.randn, aten.rand, aten.randint, aten.randn_like, aten.rand_like,
    aten.normal_, aten.uniform_, aten.bernoulli, aten.bernoulli_, aten.eye,
)
def create_cost(args: tuple[Any, ...], kwargs: dict[str, Any], out: Any) -> Cost:
    """Creation and fill: the output is written, nothing is read (a fill value is a scalar)."""
    return Cost(reads=tuple(0 for _ in tensor_inputs(args, kwargs)), op_class=OpClass.MEMORY)


def _select_reads(args: tuple[Any, ...], kwargs: dict[str, Any], source_elements: int) -> tuple[int, ...]:
    # The first tensor input is the source; every other tensor input (indices) is read whole.
    tensors = tensor_inputs(args, kwargs)
    return (source_elements, *(t.numel() for t in tensors[1:]))




@register(aten.embedding)
def embedding_cost(args: tuple[Any, ...], kwargs: dict[str, Any], out: Any) -> Cost:
    """weight[indices]: reads len(indices) rows of the table."""
    return Cost(reads=_select_reads(args, kwargs, out.numel()), op_class=OpClass.MEMORY)


@register(aten.index_select, aten.index, aten._unsafe_index, aten.masked_select, aten.take, aten.gather)
def index_cost(args: tuple[Any, ...], kwargs: dict[str, Any], out: Any) -> Cost:
    """Gather-like indexing: reads as many source elements as it writes."""
    return Cost(reads=_select_reads(args, kwargs, _first(out).numel()), op_class=OpClass.MEMORY)



@register(aten.slice_backward, aten.select_backward, aten.diagonal_backward, aten.unfold_backward,
          aten.as_strided_scatter)
def scatter_into_zeros_cost(args: tuple[Any, ...], kwargs: dict[str, Any], out: Any) -> Cost:
    """Backward of a view (training): the gradient is written into a zeroed tensor of the input's shape."""
    return Cost(op_class=OpClass.MEMORY)


@register(aten.embedding_dense_backward)
def embedding_backward_cost(args: tuple[Any, ...], kwargs: dict[str, Any], out: Any) -> Cost:
    """An embedding's weight grad: grad_output rows added into a zeroed table; one add per grad element."""
    return Cost(flops=args[0].numel(), op_class=OpClass.MEMORY)


@register(aten.index_add, aten.index_add_, aten.scatter_add, aten.scatter_add_)
def scatter_add_cost(args: tuple[Any, ...], kwargs: dict[str, Any], out: Any) -> Cost:
    """self.index_add(dim, index, source) and scatter_add(dim, index, src): one add per source element."""
    source = args[3] if len(args) > 3 else kwargs.get("source", kwargs.get("src"))
    return Cost(flops=source.numel() if isinstance(source, torch.Tensor) else 0, op_class=OpClass.MEMORY)

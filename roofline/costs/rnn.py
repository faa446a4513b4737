"""LSTM and GRU kernels that reach the tracer as one op.

On the meta device (and for GRU on CPU) PyTorch spells RNNs out as addmm and elementwise ops, which
the other rules count. The CPU LSTM runs as one `mkldnn_rnn_layer` op per layer and direction; this
rule charges what the spelled-out version does, so meta and CPU traces agree:
- MACs per time step and batch entry: gates x hidden x (input + hidden) = w_ih.numel() + w_hh.numel();
- other FLOPs per step and batch entry: the two bias adds and the gate sum (3 x gates x hidden when
  biased, else 1 x), then 3 sigmoids, 2 tanh, 3 multiplies and 1 add on the hidden size (9 x hidden).
"""
from __future__ import annotations

from typing import Any

from roofline.costs import Cost, OpClass, aten, register

_LSTM_CELL_FLOPS_PER_HIDDEN = 9


@register(aten.mkldnn_rnn_layer)
def lstm_layer_flop(args: tuple[Any, ...], kwargs: dict[str, Any], out: Any) -> Cost:
    """One LSTM layer, one direction: input [T, B, I] (or [B, T, I] when batch_first)."""
    x, w_ih, w_hh = args[0], args[1], args[2]
    has_biases = bool(args[12]) if len(args) > 12 else True
    steps_times_batch = x.shape[0] * x.shape[1]  # T x B either way round
    gates_times_hidden = w_ih.shape[0]
    hidden = w_hh.shape[1]
    macs = steps_times_batch * (w_ih.numel() + w_hh.numel())
    gate_adds = (3 if has_biases else 1) * gates_times_hidden
    other = steps_times_batch * (gate_adds + _LSTM_CELL_FLOPS_PER_HIDDEN * hidden)
    return Cost(macs=macs, flops=2 * macs + other, op_class=OpClass.RNN)

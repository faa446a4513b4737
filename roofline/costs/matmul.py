"""Matrix-like ops: mm, addmm, bmm, baddbmm, int/scaled mm, and attention (SDPA and fused kernels).

`linear`, `matmul` and `einsum` are composite in PyTorch: they reach the tracer as views plus
mm/addmm/bmm, so these rules cover them.
"""
from __future__ import annotations

from typing import Any

from roofline.costs import Cost, OpClass, aten, numel, register, tensor_inputs
from roofline.costs.norm import SOFTMAX_FLOPS_PER_ELEMENT


def _mm_cost(a_shape: Any, b_shape: Any, bias_elements: int = 0) -> Cost:
    # [..., M, K] @ [..., K, N]: M x N x K MACs per batch entry.
    batch = numel(a_shape[:-2])
    m, k = a_shape[-2], a_shape[-1]
    n = b_shape[-1]
    macs = batch * m * n * k
    return Cost(macs=macs, flops=2 * macs + bias_elements, op_class=OpClass.GEMM)


@register(aten.mm, aten._int_mm)
def mm_flop(args: tuple[Any, ...], kwargs: dict[str, Any], out: Any) -> Cost:
    """a[M,K] @ b[K,N]."""
    return _mm_cost(args[0].shape, args[1].shape)


@register(aten.bmm)
def bmm_flop(args: tuple[Any, ...], kwargs: dict[str, Any], out: Any) -> Cost:
    """a[B,M,K] @ b[B,K,N]."""
    return _mm_cost(args[0].shape, args[1].shape)


@register(aten.addmm, aten.baddbmm)
def addmm_flop(args: tuple[Any, ...], kwargs: dict[str, Any], out: Any) -> Cost:
    """bias + a @ b: the bias add is one FLOP per output element, not a MAC."""
    return _mm_cost(args[1].shape, args[2].shape, bias_elements=out.numel())


@register(aten._scaled_mm)
def scaled_mm_flop(args: tuple[Any, ...], kwargs: dict[str, Any], out: Any) -> Cost:
    """fp8 a @ b with per-tensor scales; the scaling is one FLOP per output element."""
    return _mm_cost(args[0].shape, args[1].shape, bias_elements=out.numel())


def attention_cost(q_shape: Any, k_shape: Any, v_shape: Any, has_mask: bool = False) -> Cost:
    """Fused attention: the scores never reach memory, so only q, k, v (and mask) are read.

    q[..., L, E], k[..., S, E], v[..., S, Ev]; batch dims taken from q (grouped-query attention
    shares k/v heads, which changes bytes but not MACs). Causal masking is not accounted for: the
    full L x S score matrix is counted, as torch.utils.flop_counter does.
    """
    batch = numel(q_shape[:-2])
    length, embed = q_shape[-2], q_shape[-1]
    source = k_shape[-2]
    value_embed = v_shape[-1]
    scores = batch * length * source
    macs = scores * embed + scores * value_embed  # Q K^T, then P V
    # Per score: one scale multiply, softmax, and one mask add when a mask is given.
    other = scores * (1 + SOFTMAX_FLOPS_PER_ELEMENT + (1 if has_mask else 0))
    return Cost(macs=macs, flops=2 * macs + other, op_class=OpClass.ATTENTION)


@register(
    aten._scaled_dot_product_flash_attention_for_cpu,
    aten._scaled_dot_product_flash_attention,
    aten._scaled_dot_product_efficient_attention,
    aten._scaled_dot_product_cudnn_attention,
    aten._scaled_dot_product_fused_attention_overrideable,
)
def sdpa_flop(args: tuple[Any, ...], kwargs: dict[str, Any], out: Any) -> Cost:
    """Fused SDPA kernels, layout [B, H, L, E]."""
    mask = kwargs.get("attn_mask")
    if mask is None and len(args) > 3 and hasattr(args[3], "shape"):
        mask = args[3]
    return attention_cost(args[0].shape, args[1].shape, args[2].shape, has_mask=mask is not None)


@register(aten._flash_attention_forward, aten._efficient_attention_forward)
def flash_forward_flop(args: tuple[Any, ...], kwargs: dict[str, Any], out: Any) -> Cost:
    """Lower-level fused kernels, layout [B, L, H, E]: move heads before length."""

    def bhle(shape: Any) -> tuple[int, ...]:
        return (shape[0], shape[2], shape[1], shape[3])

    return attention_cost(bhle(args[0].shape), bhle(args[1].shape), bhle(args[2].shape))


@register(aten._grouped_mm)
def grouped_mm_flop(args: tuple[Any, ...], kwargs: dict[str, Any], out: Any) -> Cost:
    """Grouped matmul (MoE experts): each row meets only its group's matrix; weights of the groups touched read.

    a[S,K] @ b[E,K,N] with offs (the routed case): S x K x N MACs, the k x tokens rows routed, not E x
    that. The S rows are tokens x top-k, so the E matrices' bytes are read for the expected number of
    distinct experts those tokens touch (roofline.moe.expected_experts, under the routing in force:
    uniform unless a measured skew is given). Other layouts: a[E,M,K] @ b[E,K,N] is a batch of E
    products; a[M,K] @ b[K,N] with offs over K sums E partial products of M x N (the weight gradient).
    """
    from roofline import moe

    a, b = args[0], args[1]
    reads = [t.numel() for t in tensor_inputs(args, kwargs)]
    if a.dim() == 2 and b.dim() == 3:
        rows, inner = a.shape
        experts, _, columns = b.shape
        macs = rows * inner * columns
        routing = moe.current_routing()
        top_k = min(routing.top_k or 1, experts)
        loads = routing.loads(experts) if (routing.shares is not None or routing.zipf) else None
        touched = moe.expected_experts(experts, rows / top_k, top_k, loads)
        reads[1] = round(touched * inner * columns)
    elif a.dim() == 3 and b.dim() == 3:
        macs = a.shape[0] * a.shape[1] * a.shape[2] * b.shape[2]
    else:
        macs = out.numel() // max(1, out.shape[0] if out.dim() == 3 else 1) * a.shape[-1]
    return Cost(macs=macs, flops=2 * macs, reads=tuple(reads), op_class=OpClass.GEMM)


def attention_backward_cost(q_shape: Any, k_shape: Any, v_shape: Any) -> Cost:
    """Fused attention's backward: grads of q, k and v, from the saved output and softmax statistics.

    MACs = 2 x the forward's (dV = P^T dO, dP = dO V^T, dQ = dS K, dK = dS^T Q), as
    torch.utils.flop_counter counts it; the recomputation of P that flash kernels do is not counted.
    Per score: the softmax backward (multiply, subtract, multiply = 3) and the scale (1).
    """
    forward = attention_cost(q_shape, k_shape, v_shape)
    scores = numel(q_shape[:-2]) * q_shape[-2] * k_shape[-2]
    macs = 2 * forward.macs
    return Cost(macs=macs, flops=2 * macs + 4 * scores, op_class=OpClass.ATTENTION)


@register(
    aten._scaled_dot_product_flash_attention_for_cpu_backward,
    aten._scaled_dot_product_flash_attention_backward,
    aten._scaled_dot_product_efficient_attention_backward,
    aten._scaled_dot_product_cudnn_attention_backward,
)
def sdpa_backward_flop(args: tuple[Any, ...], kwargs: dict[str, Any], out: Any) -> Cost:
    """Fused SDPA backward kernels, layout [B, H, L, E]: (grad_out, q, k, v, ...)."""
    return attention_backward_cost(args[1].shape, args[2].shape, args[3].shape)

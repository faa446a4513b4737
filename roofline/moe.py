"""Mixture-of-experts: total and active parameters, and which experts a batch touches.

A token runs through the top-k of a layer's E experts (plus any shared expert), so FLOPs count the
routed experts only (the grouped-matmul rule in costs/matmul.py sees the k x tokens rows it runs) and
the router. A decode step reads the weights of the experts its batch touches, not all of them. With T
tokens routed independently, expert i escapes one token with probability 1 - k p_i, where p_i is its
share of the routed slots, so the expected number of distinct experts touched per layer is

    sum_i 1 - (1 - k p_i)^T,   which under uniform routing (p_i = 1/E) is E (1 - (1 - k/E)^T).

Uniform routing is the default assumption; a measured skew replaces it: either the per-expert shares
themselves (E numbers, normalised) or a Zipf exponent s, p_i proportional to 1 / (i + 1)^s (s = 0 is
uniform). Memory still holds all E experts: model size counts every parameter.
"""
from __future__ import annotations

import contextlib
import contextvars
import math
from collections.abc import Iterator, Sequence
from dataclasses import dataclass

from torch import nn

from roofline.errors import RooflineError
from roofline.records import MoEParams

__all__ = ["MoEParams", "Routing", "expected_experts", "moe_params", "parse_skew", "routing", "top_k_of"]


@dataclass(frozen=True)
class Routing:
    """How tokens spread over experts while a model is traced: top-k, and the skew (None: uniform)."""

    top_k: int | None = None  # None: unknown (each routed row is taken as one independent choice)
    shares: tuple[float, ...] | None = None  # measured per-expert shares of the routed slots
    zipf: float = 0.0  # or a Zipf exponent: p_i proportional to 1 / (i + 1)^zipf

    def loads(self, experts: int) -> list[float]:
        """The share of routed slots each of `experts` experts gets (sums to 1)."""
        if self.shares is not None:
            if len(self.shares) != experts:
                raise RooflineError(f"--routing-skew gives {len(self.shares)} expert shares; the model has {experts}")
            total = sum(self.shares)
            return [share / total for share in self.shares]
        weights = [1.0 / (i + 1) ** self.zipf for i in range(experts)]
        total = sum(weights)
        return [w / total for w in weights]


_ROUTING: contextvars.ContextVar[Routing | None] = contextvars.ContextVar("roofline_routing", default=None)


def current_routing() -> Routing:
    """The routing in force for the trace running now (costs/matmul.py's grouped-matmul rule reads it)."""
    return _ROUTING.get() or Routing()


@contextlib.contextmanager
def routing(value: Routing) -> Iterator[None]:
    """Trace under `value`: the grouped-matmul rule counts the weight bytes of the experts it expects touched."""
    token = _ROUTING.set(value)
    try:
        yield
    finally:
        _ROUTING.reset(token)


def expected_experts(experts: int, tokens: float, top_k: int = 1, loads: Sequence[float] | None = None) -> float:
    """Expected distinct experts T tokens touch: sum_i 1 - (1 - k p_i)^T (E (1 - (1 - k/E)^T) when uniform)."""
    if experts < 1 or top_k < 1 or top_k > experts:
        raise RooflineError(f"top-k {top_k} of {experts} experts: need 1 <= k <= E")
    if tokens <= 0:
        return 0.0
    shares = list(loads) if loads is not None else [1.0 / experts] * experts
    return float(sum(1.0 - (1.0 - min(1.0, top_k * p)) ** tokens for p in shares))


def parse_skew(text: str | None) -> Routing:
    """--routing-skew: a Zipf exponent (0 = uniform) or comma-separated per-expert shares (measured loads)."""
    if text is None or not text.strip():
        return Routing()
    parts = [p.strip() for p in text.split(",")]
    try:
        values = [float(p) for p in parts]
    except ValueError as error:
        raise RooflineError(f"--routing-skew must be a Zipf exponent or comma-separated expert shares, got {text!r}") from error
    if any(not math.isfinite(v) or v < 0 for v in values) or (len(values) > 1 and not sum(values) > 0):
        raise RooflineError(f"--routing-skew values must be finite and non-negative (shares not all zero), got {text!r}")
    return Routing(zipf=values[0]) if len(values) == 1 else Routing(shares=tuple(values))


def top_k_of(config: object) -> int | None:
    """Experts per token from a transformers config (num_experts_per_tok, or moe_topk), None for a dense model."""
    for name in ("num_experts_per_tok", "moe_topk", "top_k"):
        value = getattr(config, name, None)
        if isinstance(value, int) and value > 0:
            return value
    return None


def _expert_modules(module: nn.Module) -> list[nn.Module]:
    """The routed-expert containers: modules named '...Experts' (stacked expert weights) or a ModuleList 'experts'."""
    found = []
    for name, child in module.named_modules():
        if type(child).__name__.endswith("Experts") or (isinstance(child, nn.ModuleList) and name.endswith("experts")):
            found.append(child)
    return found


def moe_params(module: nn.Module, config: object = None) -> MoEParams | None:
    """Total and routed-expert parameters of an MoE model (None for a dense one)."""
    config = config if config is not None else getattr(module, "config", None)
    top_k = top_k_of(config)
    experts = next((getattr(config, n) for n in ("num_local_experts", "num_experts", "n_routed_experts")
                    if isinstance(getattr(config, n, None), int) and getattr(config, n) > 0), None)
    containers = _expert_modules(module)
    if top_k is None or experts is None or not containers:
        return None
    routed = {id(p): p.numel() for c in containers for p in c.parameters()}
    total = sum({id(p): p.numel() for p in module.parameters()}.values())
    return MoEParams(total=total, routed=sum(routed.values()), experts=int(experts), top_k=top_k)

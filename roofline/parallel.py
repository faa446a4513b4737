"""Tensor and pipeline parallelism: how a traced model's ops split across devices, and the collectives
the split adds, costed on the profile's interconnect. Never re-traces.

Tensor parallelism over N devices (Megatron-LM's layout, Shoeybi et al. 2019):
- each decoder layer's attention and MLP blocks (the children of a decoder layer that hold matrices)
  split N ways: FLOPs, weight, activation and integer bytes of their ops / N; KV-cache bytes by the
  share of KV heads a device holds, ceil(kv_heads / N) / kv_heads (heads repeat when N > kv_heads);
- each such block ends with one all-reduce of its output (tokens x hidden), the embedding lookup
  (vocab-parallel) with one too, and the LM head (column-parallel over the vocabulary) with an
  all-gather of the logits;
- norms, residual adds and rotary tables run on every device whole (replicated).
Approximations, stated: a split block's replicated input (read whole by each device's first
projections) and its row-parallel output (whole partial sums) are counted / N with the rest; the
router of an MoE block splits with its experts.

Collectives, on the interconnect's per-direction bandwidth `bw` and per-step latency `lat`:
    ring all-reduce of B bytes over N devices: 2(N-1)/N x B / bw + (N-1) x lat
    ring all-gather of a B-byte result:          (N-1)/N x B / bw + (N-1) x lat
    point-to-point send of B bytes (pipeline):             B / bw +        lat
They do not overlap with compute (an upper bound where a framework overlaps them).

Pipeline parallelism over M stages: the decoder layers in M equal runs (the layer count must
divide), the embedding and head with the first and last. Each stage boundary sends the activations
(tokens x hidden) point to point. A batch runs as m microbatches; with balanced stages a pass takes
(m + M - 1) stage times of one microbatch, so the idle share (the bubble) is (M - 1) / (M - 1 + m).
"""
from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np

from roofline.analysis import Analysis
from roofline.errors import RooflineError
from roofline.hardware.profile import Interconnect

if TYPE_CHECKING:
    from torch import nn

__all__ = [
    "COLLECTIVE_COLUMNS",
    "ParallelPlan",
    "bubble_fraction",
    "collective_seconds",
    "p2p_s",
    "pipeline_factor",
    "plan_for",
    "ring_allgather_s",
    "ring_allreduce_s",
    "shard",
]

COLLECTIVE_COLUMNS = ("allreduce_elements", "allgather_elements", "p2p_elements")


def ring_allreduce_s(nbytes: Any, devices: int, bandwidth_bytes_per_s: float, latency_s: float) -> Any:
    """Ring all-reduce: 2(N-1)/N x bytes / bandwidth + (N-1) x latency; nothing on one device or for no bytes."""
    n = devices
    if n <= 1:
        return np.zeros_like(np.asarray(nbytes, dtype=float)) if np.ndim(nbytes) else 0.0
    time = 2 * (n - 1) / n * np.asarray(nbytes, dtype=float) / bandwidth_bytes_per_s + (n - 1) * latency_s
    return np.where(np.asarray(nbytes) > 0, time, 0.0) if np.ndim(nbytes) else float(time) if nbytes else 0.0


def ring_allgather_s(nbytes: Any, devices: int, bandwidth_bytes_per_s: float, latency_s: float) -> Any:
    """Ring all-gather of a `nbytes` result: (N-1)/N x bytes / bandwidth + (N-1) x latency."""
    n = devices
    if n <= 1:
        return np.zeros_like(np.asarray(nbytes, dtype=float)) if np.ndim(nbytes) else 0.0
    time = (n - 1) / n * np.asarray(nbytes, dtype=float) / bandwidth_bytes_per_s + (n - 1) * latency_s
    return np.where(np.asarray(nbytes) > 0, time, 0.0) if np.ndim(nbytes) else float(time) if nbytes else 0.0


def p2p_s(nbytes: Any, bandwidth_bytes_per_s: float, latency_s: float) -> Any:
    """One point-to-point send between pipeline stages: bytes / bandwidth + latency."""
    time = np.asarray(nbytes, dtype=float) / bandwidth_bytes_per_s + latency_s
    return np.where(np.asarray(nbytes) > 0, time, 0.0) if np.ndim(nbytes) else float(time) if nbytes else 0.0


def collective_seconds(allreduce_bytes: Any, allgather_bytes: Any, p2p_bytes: Any, devices: int,
                       link: Interconnect) -> Any:
    """The interconnect time of each op's collectives (the three kinds added)."""
    bw, lat = link.bandwidth_bytes_per_s, link.latency_s
    return (ring_allreduce_s(allreduce_bytes, devices, bw, lat) + ring_allgather_s(allgather_bytes, devices, bw, lat)
            + p2p_s(p2p_bytes, bw, lat))


def bubble_fraction(stages: int, microbatches: int) -> float:
    """The pipeline's idle share: (M - 1) / (M - 1 + m)."""
    return (stages - 1) / (stages - 1 + microbatches)


def pipeline_factor(stages: int, microbatches: int) -> float:
    """A pass over m microbatches in M balanced stages, in units of one microbatch's pass on one device:
    (m + M - 1) stage times, each 1/M of the microbatch's pass."""
    return (microbatches + stages - 1) / stages


@dataclass(frozen=True)
class ParallelPlan:
    """Which module subtrees split under tensor parallelism and where the collectives go (module docstring)."""

    decoder_layers: tuple[str, ...]  # paths, in order: pipeline stages cut between them
    split_blocks: tuple[str, ...]  # subtrees whose ops split N ways
    allreduce_blocks: tuple[str, ...]  # split subtrees that end with an all-reduce of their output
    allgather_blocks: tuple[str, ...]  # split subtrees whose output is all-gathered (the LM head)
    split_params: int  # parameters in split subtrees (each device holds 1/N)
    replicated_params: int  # parameters every device holds whole (norms)
    heads: int
    kv_heads: int

    def check(self, tp: int, pp: int) -> None:
        """Refuse splits the model's shapes do not allow, naming the number and what it must divide."""
        for name, value in (("tp", tp), ("pp", pp)):
            if value < 1:
                raise RooflineError(f"--{name} must be a positive integer, got {value}")
        if tp > 1 and self.heads % tp:
            raise RooflineError(f"--tp {tp} must divide the model's {self.heads} attention heads")
        if tp > 1 and self.kv_heads % tp and tp % self.kv_heads:
            raise RooflineError(f"--tp {tp} and the model's {self.kv_heads} KV heads: one must divide the other")
        if pp > 1 and len(self.decoder_layers) % pp:
            raise RooflineError(f"--pp {pp} must divide the model's {len(self.decoder_layers)} decoder layers")

    def kv_fraction(self, tp: int) -> float:
        """The share of the KV cache one device holds: ceil(kv_heads / N) / kv_heads."""
        return math.ceil(self.kv_heads / tp) / self.kv_heads

    def device_params(self, tp: int, pp: int) -> float:
        """Parameters one device holds: (split / N + replicated) / M, stages balanced."""
        return (self.split_params / tp + self.replicated_params) / pp


def plan_for(module: nn.Module, config: Any = None) -> ParallelPlan:
    """The tensor-parallel layout of a decoder-only transformer: its largest ModuleList holds the decoder
    layers; their children with matrices are the split blocks; embeddings and the LM head split by vocab."""
    from torch import nn

    lists = [(name, m) for name, m in module.named_modules() if isinstance(m, nn.ModuleList) and len(m)]
    if not lists:
        raise RooflineError("--tp/--pp need a transformer with a list of decoder layers (an nn.ModuleList)")
    list_name, layers = max(lists, key=lambda item: sum(p.numel() for p in item[1].parameters()))
    decoder = tuple(f"{list_name}.{i}" for i in range(len(layers)))
    blocks: list[str] = []
    for path, layer in zip(decoder, layers, strict=True):
        for child_name, child in layer.named_children():
            if any(p.dim() >= 2 for p in child.parameters()):
                blocks.append(f"{path}.{child_name}")
    inside = f"{list_name}."
    embeddings = [name for name, m in module.named_modules() if isinstance(m, nn.Embedding)
                  and not name.startswith(inside)]
    heads_out = [name for name, m in module.named_modules() if isinstance(m, nn.Linear) and not name.startswith(inside)
                 and not any(name.startswith(f"{b}.") for b in embeddings)]
    split = {id(p): p for name in [*blocks, *embeddings, *heads_out] for p in module.get_submodule(name).parameters()}
    every = {id(p): p for p in module.parameters()}
    config = config if config is not None else getattr(module, "config", None)
    heads = int(getattr(config, "num_attention_heads", 0) or getattr(config, "n_head", 0) or 1)
    kv_heads = int(getattr(config, "num_key_value_heads", 0) or heads)
    return ParallelPlan(
        decoder_layers=decoder, split_blocks=(*embeddings, *blocks, *heads_out),
        allreduce_blocks=(*embeddings, *blocks), allgather_blocks=tuple(heads_out),
        split_params=sum(p.numel() for p in split.values()),
        replicated_params=sum(p.numel() for k, p in every.items() if k not in split),
        heads=heads, kv_heads=kv_heads,
    )


def _owner(path: str, blocks: frozenset[str]) -> str | None:
    """The block whose subtree holds module `path` (the path itself or an ancestor), if any."""
    parts = path.split(".")
    for end in range(len(parts), 0, -1):
        prefix = ".".join(parts[:end])
        if prefix in blocks:
            return prefix
    return None


def shard(analysis: Analysis, plan: ParallelPlan, tp: int = 1, pp: int = 1) -> Analysis:
    """One device's share of `analysis` under TP=`tp` (ops of split blocks / tp, KV by its head share) with the
    collectives attached to the ops whose outputs they carry; with PP=`pp`, a point-to-point send at each stage
    boundary. The whole model's ops stay in the result: a pipeline stage runs 1/pp of them (pipeline_factor)."""
    plan.check(tp, pp)
    if tp == 1 and pp == 1:
        return analysis
    trace = analysis.trace
    paths = {call.name: call.path for call in trace.layers}
    split = frozenset(plan.split_blocks)
    reduce, gather = frozenset(plan.allreduce_blocks), frozenset(plan.allgather_blocks)
    boundaries = frozenset(plan.decoder_layers[k * len(plan.decoder_layers) // pp - 1] for k in range(1, pp))
    kv_share = plan.kv_fraction(tp)
    # The last op that writes an activation in each split block carries the block's collective (each block
    # runs once per pass), and the last in each stage's final decoder layer the send to the next stage.
    last_split: dict[str, int] = {}
    last_stage: dict[str, int] = {}
    owner_of: list[str | None] = []
    for index, record in enumerate(trace.records):
        path = paths.get(record.layer, record.layer)
        owner = _owner(path, split) if tp > 1 else None
        owner_of.append(owner)
        if record.act_written > 0:
            if owner is not None:
                last_split[owner] = index
            stage = _owner(path, boundaries) if pp > 1 else None
            if stage is not None:
                last_stage[stage] = index
    reduce_at = {index for owner, index in last_split.items() if owner in reduce}
    gather_at = {index for owner, index in last_split.items() if owner in gather}
    send_at = set(last_stage.values())

    def part(value: int, share: float) -> int:
        return round(value * share)

    records = []
    for index, (record, owner) in enumerate(zip(trace.records, owner_of, strict=True)):
        changes: dict[str, Any] = {}
        if owner is not None:
            share = 1 / tp
            changes = {
                "macs": part(record.macs, share), "flops": part(record.flops, share),
                "weight_read": part(record.weight_read, share), "act_read": part(record.act_read, share),
                "act_written": part(record.act_written, share), "kv_read": part(record.kv_read, kv_share),
                "kv_written": part(record.kv_written, kv_share),
                "fixed_read_bytes": part(record.fixed_read_bytes, share),
                "fixed_written_bytes": part(record.fixed_written_bytes, share),
            }
            changes["flops"] = max(changes["flops"], 2 * changes["macs"])
        if index in reduce_at:
            changes["allreduce_elements"] = record.act_written
        if index in gather_at:
            changes["allgather_elements"] = record.act_written
        if index in send_at:
            changes["p2p_elements"] = record.act_written
        records.append(dataclasses.replace(record, **changes) if changes else record)
    sharded = dataclasses.replace(
        trace, records=records, tensor_parallel=tp, outputs=None,
        peak_activation_elements=math.ceil(trace.peak_activation_elements / tp),
        model_name=trace.model_name + (f" TP={tp}" if tp > 1 else "") + (f" PP={pp}" if pp > 1 else ""),
    )
    return Analysis(sharded, analysis.precision)

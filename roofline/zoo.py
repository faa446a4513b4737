"""Built-in example models (`zoo:NAME`): small, dependency-free, each one teaching something. Only the
models and their table live here; roofline.models loads them like any other spec.

- convnet: a small CNN, the default model for a first report (fast to measure on a laptop CPU).
- mobile-block: MobileNetV2-style inverted residual blocks, whose depthwise convolutions are the
  classic "8x fewer FLOPs, not 8x faster" memory-bound layers.
- tiny-transformer: a 2-layer pre-norm transformer encoder with SDPA attention.
- mlp: three linear layers; at batch 1 they are weight-bandwidth bound.
- lstm: a 2-layer LSTM over a sequence.
"""
from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

__all__ = ["ZOO", "ZooEntry"]


class ConvNet(nn.Module):
    """Conv-BN-ReLU stages with pooling and a classifier."""

    def __init__(self, num_classes: int = 10) -> None:
        super().__init__()

        def stage(c_in: int, c_out: int) -> nn.Sequential:
            return nn.Sequential(nn.Conv2d(c_in, c_out, 3, padding=1, bias=False), nn.BatchNorm2d(c_out),
                                 nn.ReLU(inplace=True), nn.MaxPool2d(2))

        self.features = nn.Sequential(stage(3, 32), stage(32, 64), stage(64, 128), stage(128, 256))
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.classifier = nn.Linear(256, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.classifier(torch.flatten(self.pool(self.features(x)), 1))


class InvertedResidual(nn.Module):
    """Expand (1x1), depthwise (3x3, groups = channels), project (1x1), plus the skip connection."""

    def __init__(self, channels: int, expansion: int = 6) -> None:
        super().__init__()
        hidden = channels * expansion
        self.expand = nn.Sequential(nn.Conv2d(channels, hidden, 1, bias=False), nn.BatchNorm2d(hidden), nn.ReLU6())
        self.depthwise = nn.Sequential(
            nn.Conv2d(hidden, hidden, 3, padding=1, groups=hidden, bias=False), nn.BatchNorm2d(hidden), nn.ReLU6()
        )
        self.project = nn.Sequential(nn.Conv2d(hidden, channels, 1, bias=False), nn.BatchNorm2d(channels))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.project(self.depthwise(self.expand(x)))


class MobileBlocks(nn.Module):
    def __init__(self, channels: int = 32, blocks: int = 2) -> None:
        super().__init__()
        self.stem = nn.Conv2d(3, channels, 3, stride=2, padding=1, bias=False)
        self.blocks = nn.Sequential(*[InvertedResidual(channels) for _ in range(blocks)])

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.blocks(self.stem(x))


class Attention(nn.Module):
    """Multi-head self-attention with F.scaled_dot_product_attention."""

    def __init__(self, dim: int, heads: int) -> None:
        super().__init__()
        self.heads = heads
        self.qkv = nn.Linear(dim, 3 * dim)
        self.out = nn.Linear(dim, dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        batch, length, dim = x.shape
        q, k, v = self.qkv(x).view(batch, length, 3, self.heads, dim // self.heads).permute(2, 0, 3, 1, 4)
        y = F.scaled_dot_product_attention(q, k, v)
        return self.out(y.transpose(1, 2).reshape(batch, length, dim))


class Block(nn.Module):
    def __init__(self, dim: int, heads: int) -> None:
        super().__init__()
        self.norm1 = nn.LayerNorm(dim)
        self.attn = Attention(dim, heads)
        self.norm2 = nn.LayerNorm(dim)
        self.mlp = nn.Sequential(nn.Linear(dim, 4 * dim), nn.GELU(), nn.Linear(4 * dim, dim))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x + self.attn(self.norm1(x))
        return x + self.mlp(self.norm2(x))


class TinyTransformer(nn.Module):
    def __init__(self, vocab: int = 1000, dim: int = 128, heads: int = 4, layers: int = 2) -> None:
        super().__init__()
        self.embed = nn.Embedding(vocab, dim)
        self.blocks = nn.Sequential(*[Block(dim, heads) for _ in range(layers)])
        self.norm = nn.LayerNorm(dim)
        self.head = nn.Linear(dim, vocab, bias=False)

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        return self.head(self.norm(self.blocks(self.embed(tokens))))


class LSTMModel(nn.Module):
    def __init__(self, features: int = 64, hidden: int = 128, layers: int = 2) -> None:
        super().__init__()
        self.lstm = nn.LSTM(features, hidden, num_layers=layers, batch_first=True)
        self.head = nn.Linear(hidden, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        output, _ = self.lstm(x)
        return self.head(output[:, -1])


@dataclass(frozen=True)
class ZooEntry:
    build: Callable[[], nn.Module]
    make_inputs: Callable[[int, int, str], list[torch.Tensor]]  # (batch, seq_len, device)
    description: str
    sequences: bool = False  # whether make_inputs uses seq_len (so --seq-len on another one is ignored, said so)


ZOO: dict[str, ZooEntry] = {
    "convnet": ZooEntry(ConvNet, lambda b, s, d: [torch.randn(b, 3, 64, 64, device=d)],
                        "small CNN (conv-bn-relu-pool x4), 64x64 input"),
    "mobile-block": ZooEntry(MobileBlocks, lambda b, s, d: [torch.randn(b, 3, 112, 112, device=d)],
                             "MobileNetV2 inverted residual blocks with depthwise convolutions"),
    "tiny-transformer": ZooEntry(TinyTransformer, lambda b, s, d: [torch.randint(0, 1000, (b, s), device=d)],
                                 "2-layer transformer encoder with SDPA, dim 128", sequences=True),
    "mlp": ZooEntry(lambda: nn.Sequential(nn.Linear(1024, 4096), nn.ReLU(), nn.Linear(4096, 4096), nn.ReLU(),
                                          nn.Linear(4096, 1000)),
                    lambda b, s, d: [torch.randn(b, 1024, device=d)], "3-layer MLP, 1024-4096-4096-1000"),
    "lstm": ZooEntry(LSTMModel, lambda b, s, d: [torch.randn(b, s, 64, device=d)], "2-layer LSTM, hidden 128",
                     sequences=True),
}

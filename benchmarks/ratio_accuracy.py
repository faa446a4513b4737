"""Ratio accuracy: what a noisy machine can show (issue 16).

A shared VM's speed drifts 1.2-1.6x over minutes (benchmarks/noise_floor.py), so an absolute end-to-end
target of 10% cannot be shown on it. A ratio can: two callables timed A B, B A, ... in short blocks see the
same machine, and the median of the per-block ratios cancels most of the drift (roofline.timing.time_ratio).

Each pair below is predicted (calibrated on this machine's measured profile, and plain) and measured that
way: pairs of models of different kinds, the group counts of one convolution, batch sizes of one model (per
sample), and fp32 against bf16 where the CPU has a bf16 peak. The table gives each ratio with the quartiles
of its block ratios, the errors, and the share of pairs within 10%.

    .venv/bin/python benchmarks/ratio_accuracy.py [--hw PROFILE] [--recalibrate] [--blocks 10] [--threads N]

The pairs run at the thread count the profile was measured at (its num_threads), unless --threads says
otherwise: a profile's peaks and factors hold for its own thread count (on this 2-core VM a 1-thread
profile's fp32 peak is about half a 2-thread one's while DRAM bandwidth is not), so a ratio of a
compute-bound side to a memory-bound one predicted from one count and timed at another is off by that.

Writes benchmarks/results/ratio_accuracy.{txt,csv} (--out names another stem). --measured CSV takes the
measured ratios of an earlier run's CSV instead of timing them, and predicts them again: what a change to the
model or the profile does to the errors, against the same measurements.
"""
from __future__ import annotations

import argparse
import datetime
import sys
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import pandas as pd
import torch
from torch import nn

import roofline
from roofline.formatting import format_table
from roofline.hardware import HardwareProfile, load_profile
from roofline.machine import num_threads
from roofline.models import load
from roofline.predict import predict
from roofline.timing import retained_heap, time_ratio

RESULTS = Path(__file__).resolve().parent / "results"
WITHIN = 0.10


@dataclass(frozen=True)
class Side:
    """One side of a ratio: what to build, at which batch and precision, and how its time is read."""

    spec: str | Callable[[], tuple[nn.Module, list[torch.Tensor]]]
    batch: int = 1
    precision: str = "fp32"
    seq_len: int | None = None


@dataclass(frozen=True)
class Pair:
    name: str
    kind: str
    a: Side
    b: Side
    per_sample: bool = False  # compare time per sample (a batch against batch 1)


def _conv(groups: int, channels: int = 128, size: int = 28) -> Callable[[], tuple[nn.Module, list[torch.Tensor]]]:
    def build() -> tuple[nn.Module, list[torch.Tensor]]:
        conv = nn.Conv2d(channels, channels, 3, padding=1, groups=groups, bias=False).eval()
        return conv, [torch.randn(1, channels, size, size)]
    return build


def _linear() -> tuple[nn.Module, list[torch.Tensor]]:
    return nn.Linear(1024, 4096).eval(), [torch.randn(256, 1024)]


PAIRS = [
    Pair("resnet18 / mobilenet_v2", "models", Side("torchvision:resnet18"), Side("torchvision:mobilenet_v2")),
    Pair("convnet / mobile-block", "models", Side("zoo:convnet"), Side("zoo:mobile-block")),
    Pair("mlp / tiny-transformer", "models", Side("zoo:mlp"), Side("zoo:tiny-transformer")),
    Pair("gpt2 (2 layers) / resnet18", "models", Side("hf:gpt2?n_layer=2", seq_len=128), Side("torchvision:resnet18")),
    Pair("conv groups 1 / 4", "groups", Side(_conv(1)), Side(_conv(4))),
    Pair("conv groups 1 / 32", "groups", Side(_conv(1)), Side(_conv(32))),
    Pair("conv groups 1 / depthwise", "groups", Side(_conv(1)), Side(_conv(128))),
    Pair("conv groups 4 / depthwise", "groups", Side(_conv(4)), Side(_conv(128))),
    Pair("resnet18 batch 8 / 1 (per sample)", "batch", Side("torchvision:resnet18", batch=8),
         Side("torchvision:resnet18"), per_sample=True),
    Pair("mobile-block batch 4 / 1 (per sample)", "batch", Side("zoo:mobile-block", batch=4), Side("zoo:mobile-block"),
         per_sample=True),
    Pair("mlp batch 32 / 1 (per sample)", "batch", Side("zoo:mlp", batch=32), Side("zoo:mlp"), per_sample=True),
    Pair("linear fp32 / bf16", "precision", Side(_linear), Side(_linear, precision="bf16")),
    Pair("tiny-transformer fp32 / bf16", "precision", Side("zoo:tiny-transformer"),
         Side("zoo:tiny-transformer", precision="bf16")),
    Pair("resnet18 fp32 / bf16", "precision", Side("torchvision:resnet18"), Side("torchvision:resnet18", precision="bf16")),
]


def _build(side: Side, device: str) -> tuple[nn.Module, list[torch.Tensor] | dict[str, torch.Tensor]]:
    if callable(side.spec):
        module, inputs = side.spec()
        if side.batch != 1:
            inputs = [x.repeat(side.batch, *[1] * (x.dim() - 1)) for x in inputs]
        return module, inputs
    loaded = load(side.spec, batch=side.batch, seq_len=side.seq_len, device=device)
    return loaded.module, loaded.inputs


def _predicted(side: Side, profile: HardwareProfile, calibrated: bool) -> float:
    """The time the benchmark measures for this side: its whole forward pass, repeated."""
    if callable(side.spec):
        module, inputs = _build(side, "meta")
        analysis = roofline.analyze(module.to("meta"), inputs=[x.to("meta") for x in inputs], precision=side.precision,
                                    warn_unsupported=False)
    else:
        analysis = roofline.analyze(load(side.spec, batch=side.batch, seq_len=side.seq_len), precision=side.precision,
                                    warn_unsupported=False)
    totals = predict(analysis, profile, calibrated=calibrated).totals
    # One layer repeated is that layer alone, warm (as `measure` times a layer); a model's layers run once per
    # pass, after the others, so its pass latency is the sum of the layers in a pass.
    single = int((analysis.layers["ops"] > 0).sum()) <= 1
    return float(totals["sum_of_layers_s" if single else "predicted_latency_s"])


def _callable(side: Side, device: str) -> Callable[[], object]:
    module, inputs = _build(side, device)
    dtype = {"fp32": torch.float32, "bf16": torch.bfloat16}[side.precision]
    module = module.to(device, dtype)
    if isinstance(inputs, dict):
        kwargs = {k: v.to(device, dtype) if v.is_floating_point() else v.to(device) for k, v in inputs.items()}

        def run_kwargs() -> object:
            with torch.inference_mode():
                return module(**kwargs)
        return run_kwargs
    args = [x.to(device, dtype) if x.is_floating_point() else x.to(device) for x in inputs]

    def run() -> object:
        with torch.inference_mode():
            return module(*args)
    return run


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--hw", default="auto", help="a measured profile of this machine (default: auto)")
    parser.add_argument("--recalibrate", action="store_true", help="time the profile's efficiency ops again first")
    parser.add_argument("--blocks", type=int, default=10, help="alternating blocks per pair (default 10)")
    parser.add_argument("--block-s", type=float, default=0.1, help="seconds per side per block (default 0.1)")
    parser.add_argument("--threads", type=int, help="torch threads (default: the profile's num_threads)")
    parser.add_argument("--measured", type=Path, help="reuse the measured ratios of this earlier CSV (no timing)")
    parser.add_argument("--out", default="ratio_accuracy", help="result file stem in benchmarks/results/")
    args = parser.parse_args()
    outputs = [RESULTS / f"{args.out}.{suffix}" for suffix in ("txt", "csv")]
    if Path(args.out).name != args.out or not args.out:
        raise SystemExit(f"ratio_accuracy: --out is a file stem in {RESULTS}, not a path: {args.out!r}")
    torch.manual_seed(0)
    profile = load_profile(args.hw)
    profiled = num_threads(profile.metadata)
    threads = args.threads or profiled or torch.get_num_threads()
    if threads < 1:
        raise SystemExit(f"ratio_accuracy: --threads must be at least 1, got {threads}")
    torch.set_num_threads(threads)
    if args.recalibrate:
        from roofline.calibrate import recalibrate

        profile = recalibrate(profile, "cpu")
    bf16 = "bf16" in profile.peak_flops_per_s
    earlier = pd.read_csv(args.measured).set_index("pair") if args.measured else None
    rows = []
    with retained_heap():
        for pair in PAIRS:
            if pair.kind == "precision" and not bf16:
                print(f"skipping {pair.name}: no bf16 peak on {profile.name}", file=sys.stderr)
                continue
            scale = pair.a.batch / pair.b.batch if pair.per_sample else 1.0
            if earlier is not None:
                if pair.name not in earlier.index:
                    raise SystemExit(f"ratio_accuracy: {args.measured} has no pair {pair.name!r}")
                row = {"pair": pair.name, "kind": pair.kind,
                       **{c: float(earlier.loc[pair.name, c]) for c in ("measured", "measured_q1", "measured_q3")}}
            else:
                print(f"timing {pair.name} ...", file=sys.stderr, flush=True)
                measured = time_ratio(_callable(pair.a, "cpu"), _callable(pair.b, "cpu"), blocks=args.blocks,
                                      block_s=args.block_s, num_threads=threads)
                low, high = measured.quartiles
                row = {"pair": pair.name, "kind": pair.kind, "measured": measured.median / scale,
                       "measured_q1": low / scale, "measured_q3": high / scale}
            for mode, calibrated in (("calibrated", True), ("plain", False)):
                predicted = _predicted(pair.a, profile, calibrated) / _predicted(pair.b, profile, calibrated) / scale
                row[mode] = predicted
                row[f"{mode}_error"] = predicted / row["measured"] - 1
            rows.append(row)
    table = pd.DataFrame(rows)
    within = {mode: float((table[f"{mode}_error"].abs() <= WITHIN).mean()) for mode in ("calibrated", "plain")}
    percent = {c: (lambda v: f"{v:+.1%}") for c in ("calibrated_error", "plain_error")}
    ratio = {c: (lambda v: f"{v:.3g}") for c in ("measured", "measured_q1", "measured_q3", "calibrated", "plain")}
    whose = "(the profile's)" if threads == profiled else f"(THE PROFILE WAS MEASURED AT {profiled or 'an unrecorded count'})"
    source = (f"measured ratios from {args.measured}" if args.measured else
              f"{args.blocks} alternating blocks of {args.block_s:g} s per side")
    text = "\n".join([
        (f"ratio accuracy on {profile.name}, torch {torch.__version__}, {threads} thread(s) {whose}, {source}, "
         f"predicted {datetime.datetime.now(datetime.UTC):%Y-%m-%d %H:%M} UTC with {args.hw}"),
        "",
        format_table(table, {**percent, **ratio}),
        "",
        f"within {WITHIN:.0%}: calibrated {within['calibrated']:.0%} of {len(table)} pairs, plain {within['plain']:.0%}",
        (f"median |error|: calibrated {table['calibrated_error'].abs().median():.1%}, plain "
        f"{table['plain_error'].abs().median():.1%}; median block-ratio IQR "
        f"{((table['measured_q3'] - table['measured_q1']) / table['measured']).median():.1%} of the ratio"),
    ])
    print(text)
    RESULTS.mkdir(exist_ok=True)
    outputs[0].write_text(text + "\n")
    table.to_csv(outputs[1], index=False)
    return 0


if __name__ == "__main__":
    sys.exit(main())

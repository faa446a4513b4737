"""How well can any prediction do on this machine? Time the accuracy benchmark's models end to end,
again and again, and score each round's measurements as the "prediction" of every other round's.

A prediction made from a profile measured minutes earlier can be no closer to a measurement than a
measurement of the same model minutes earlier is. Per model this prints the spread of its forward-pass
latency over the rounds (batch 1, heap retained, the way `roofline measure` times it), then, over all
ordered pairs of rounds (A, B), how many models' round-A latency lies within 10% of their round-B
latency: the score a perfect predictor, fitted to round A, gets against round B. The same again with
each latency scaled by the reference matmul's rate timed right after it (a correction for the
machine's speed, as `speed` in benchmarks/accuracy.py reports it).

    .venv/bin/python benchmarks/noise_floor.py [--models A,B,...] [--rounds 8] [--gap 20] [--min-run-time 0.5]
                                               [--threads 1] [--out benchmarks/results/noise_floor.csv]
"""
from __future__ import annotations

import argparse
import collections
import itertools
import sys
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pandas as pd
import torch
from tqdm import tqdm

import roofline
from roofline.measure.capture import forward_callable as forward_pass
from roofline.timing import reference_matmul, retained_heap, time_callable

# The same models as benchmarks/accuracy.py, kept in step with it.
sys.path.insert(0, str(Path(__file__).parent))
from accuracy import MODELS

TOLERANCE = 0.10


def _forward(spec: str) -> Callable[[], object]:
    loaded = roofline.load(spec, device="cpu")
    return forward_pass(loaded.module.eval(), loaded.inputs)


def time_rounds(models: list[str], rounds: int, gap_s: float, min_run_time_s: float) -> pd.DataFrame:
    """One row per (round, model): latency_s and the reference matmul's FLOP/s timed right after it."""
    forwards = {spec: _forward(spec) for spec in models}
    reference, reference_flops = reference_matmul("cpu")
    rows = []
    with torch.inference_mode(), retained_heap(), tqdm(total=rounds * len(models), desc="noise floor",
                                                        unit="pass", file=sys.stderr) as bar:
        for index in range(rounds):
            if index:
                time.sleep(gap_s)  # spread the rounds over the minutes a profile and a measurement lie apart
            for spec, forward in forwards.items():
                latency = time_callable(forward, min_run_time_s=min_run_time_s).median_s
                rate = reference_flops / time_callable(reference, min_run_time_s=0.1).median_s
                rows.append({"round": index, "model": spec, "latency_s": latency, "reference_flops_per_s": rate,
                             "clock": time.strftime("%H:%M:%S")})
                bar.update()
    return pd.DataFrame(rows)


def pair_scores(latency: pd.DataFrame) -> list[int]:
    """Per ordered pair of rounds (rows of `latency`, a round x model table): models within 10%."""
    values = latency.to_numpy()
    return [int((np.abs(values[a] / values[b] - 1) <= TOLERANCE).sum())
            for a, b in itertools.permutations(range(len(values)), 2)]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", default=",".join(MODELS))
    parser.add_argument("--rounds", type=int, default=8)
    parser.add_argument("--gap", type=float, default=20.0, help="seconds between rounds")
    parser.add_argument("--min-run-time", type=float, default=0.5, help="seconds per model and round")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--out", default="benchmarks/results/noise_floor.csv")
    args = parser.parse_args()
    if args.rounds < 2:
        parser.error("--rounds must be at least 2: a round is scored against the others")
    torch.set_num_threads(args.threads)
    models = args.models.split(",")
    table = time_rounds(models, args.rounds, args.gap, args.min_run_time)
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    table.to_csv(args.out, index=False)

    latency = table.pivot(index="round", columns="model", values="latency_s")[models]
    rate = table.pivot(index="round", columns="model", values="reference_flops_per_s")[models]
    adjusted = latency * rate / rate.stack().median()  # each latency at the run's median machine speed
    print(f"torch threads: {torch.get_num_threads()}; {args.rounds} rounds {args.gap:.0f} s apart, "
          f"{table['clock'].iloc[0]} to {table['clock'].iloc[-1]}; reference matmul "
          f"{rate.min().min() / 1e9:.1f}-{rate.max().max() / 1e9:.1f} GFLOP/s")
    summary = pd.DataFrame({
        "median_ms": 1e3 * latency.median(),
        "min_ms": 1e3 * latency.min(),
        "max_ms": 1e3 * latency.max(),
        "max/min": latency.max() / latency.min(),
        "max/min speed-adjusted": adjusted.max() / adjusted.min(),
    })
    pd.set_option("display.width", 200)
    print(summary.to_string(float_format=lambda v: f"{v:.3f}"))
    print(f"\nround A's latency as the prediction of round B's, over {args.rounds * (args.rounds - 1)} ordered pairs:")
    for name, values in (("as measured", latency), ("speed-adjusted", adjusted)):
        scores = pair_scores(values)
        counts = ", ".join(f"{k}: {v}" for k, v in sorted(collections.Counter(scores).items()))
        print(f"  {name:15} models within {TOLERANCE:.0%}: median {np.median(scores):.1f} of {len(models)}; "
              f"pairs with all but one: {sum(s >= len(models) - 1 for s in scores)} of {len(scores)}   (score: pairs) {counts}")
    print(f"per round and model: {args.out}")


if __name__ == "__main__":
    main()

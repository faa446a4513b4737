"""Prediction accuracy on this machine: analyze, predict (plain and calibrated) and measure, per model.

For each model it prints the end-to-end error (predicted / measured - 1, batch 1) of the plain and the
calibrated roofline; over all layers, the median and 90th percentile of the absolute per-layer error,
also weighted by measured time; and the fraction of layers whose predicted bound matches where the
measured point sits. The measured point is compute-bound if it reaches at least 30% of the compute
peak, memory-bound if it reaches 30% of its memory level's bandwidth (the larger share wins), and
otherwise neither ("latency": overhead or an inefficient kernel); the plain roofline's "overhead"
bound counts as agreeing with "latency". The joined per-layer table is saved as CSV.

    .venv/bin/python benchmarks/accuracy.py [--hw auto|measure|PROFILE] [--threads N] [--rounds 3]
                                            [--min-run-time 0.15] [--out benchmarks/results/accuracy.csv]

Each model is measured in `--rounds` runs, each preceded (and the last followed) by a pass over the
profile's efficiency ops: besides the profile's own calibration (`calibrated`), the table shows one
refitted from those passes (`window`), made in the same minutes as the measurement. On a shared VM
whose speed drifts over minutes, the gap between the two is the drift. `speed` is the reference
matmul's rate while measuring over its rate while profiling; `machine_spread` how much that rate varied
within one measurement of the model (10th to 90th percentile, median over the runs): an error smaller
than it may be the machine's own noise (benchmarks/noise_floor.py measures that noise end to end).

End to end, the calibrated prediction is a full pass: each layer alone plus the pass model (roofline.predict:
fresh output buffers, cold weights, and a per-call cost the profile measured on a chain of small layers), since in a
pass a layer's code, weights and output buffer are cold. Per layer it is the layer alone, as measured: `layers_ms` is
the sum of the layers timed alone and `calibrated_vs_layers` the prediction of that sum against it
(benchmarks/pass_effects.py measures the pass against its layers). `in_pass_ms` is the sum of the
layers timed inside the real pass (torch.profiler, roofline.measure.passes), and the `in pass` rows of the per-layer
table compare those times with each layer's in-pass prediction.

--hw auto uses the measured profile of this machine saved by `roofline hw measure --save`, or
measures one first (about 30 s with --quick-profile). Targets (calibrated, this CPU): end-to-end error
within 10% for at least 7 of 8 models; time-weighted median per-layer error under 20%.
"""
from __future__ import annotations

import argparse
import dataclasses
import sys
import time
from pathlib import Path

import numpy as np
import pandas as pd
import torch

import roofline
from roofline.calibrate import (
    RepresentativeOp,
    efficiency_callables,
    fit_rounds,
    measure_profile,
    representative_ops,
)
from roofline.hardware import (
    HardwareProfile,
    load_profile,
    save_profile,
)
from roofline.hardware.microbench import FULL, QUICK, config_of
from roofline.measure import speed_ratio
from roofline.predict import INTERVAL_COLUMNS, INTERVAL_COVERAGE, batch_size, predict
from roofline.timing import retained_heap, time_interleaved

SATURATED = 0.3  # share of a roof a measured layer must reach to count as bound by it

MODELS = [
    "zoo:convnet",
    "zoo:mobile-block",
    "torchvision:resnet18",
    "torchvision:mobilenet_v2",
    "torchvision:shufflenet_v2_x1_0",
    "torchvision:vit_b_16",
    "hf:bert?num_hidden_layers=4",
    "hf:gpt2?n_layer=4",
]


def _profile(name: str, quick: bool, rounds: int) -> HardwareProfile:
    if name == "measure":
        config = dataclasses.replace(QUICK if quick else FULL, rounds=rounds)
        return measure_profile(device="cpu", progress=False, config=config)
    if name != "auto":
        return load_profile(name)
    profile = load_profile("auto")
    if profile.source == "measured" and profile.efficiency:
        return profile
    print("no measured profile of this machine saved: measuring one", file=sys.stderr)
    return measure_profile(device="cpu", quick=quick)


def _weighted_median(values: np.ndarray, weights: np.ndarray) -> float:
    order = np.argsort(values)
    cumulative = np.cumsum(weights[order])
    return float(values[order][np.searchsorted(cumulative, cumulative[-1] / 2)])


def _measure_in_window(spec: str, profile: HardwareProfile, batch: int, rounds: int, min_run_time_s: float,
                       ops: list[RepresentativeOp]) -> tuple[pd.DataFrame, float, dict[str, object], HardwareProfile]:
    """Measure the model in `rounds` runs, each preceded (and the last one followed) by a pass over
    the profile's efficiency ops; refit the efficiency from those passes: a calibration made in the
    same minutes as the measurement, beside the one made when the profile was.

    Returns per-layer medians over the runs (measured_s, iqr_s, in_pass_s), the end-to-end median, the
    metadata of the first run with the median reference rate, and the profile with the window's
    efficiency (its pass model kept)."""
    fns, _, reference_flops = efficiency_callables(ops, "cpu")
    config = config_of(profile)
    op_passes: list[list[float]] = []
    runs = []
    with torch.inference_mode(), retained_heap():  # the conditions measure_profile timed them in
        for index in range(rounds + 1):
            op_passes.append([m.median_s for m in time_interleaved(fns, 1, min_run_time_s=config.min_run_time_s)])
            if index < rounds:
                runs.append(roofline.measure(spec, device="cpu", progress=False, rounds=1, batch_sizes=[batch],
                                             min_run_time_s=min_run_time_s / rounds))
    fields, metadata = fit_rounds(profile, ops, op_passes, reference_flops)
    window = dataclasses.replace(profile, **fields, metadata={**profile.metadata, **metadata})
    layers = pd.concat([run.layers for run in runs]).groupby("name", sort=False)[["measured_s", "iqr_s", "in_pass_s"]].median()
    e2e = float(np.median([run.end_to_end["latency_s"].iloc[0] for run in runs]))
    reference = float(np.median([run.metadata["reference_flops_per_s"] for run in runs]))
    spread = float(np.median([fast / slow - 1 for slow, fast in (run.metadata["reference_flops_per_s_range"]
                                                                   for run in runs)]))
    return layers, e2e, {**runs[0].metadata, "reference_flops_per_s": reference, "machine_spread": spread}, window


def evaluate(spec: str, profile: HardwareProfile, rounds: int, min_run_time_s: float,
             ops: list[RepresentativeOp]) -> tuple[dict[str, object], pd.DataFrame]:
    analysis = roofline.analyze(spec, warn_unsupported=False)
    plain = predict(analysis, profile)
    calibrated = predict(analysis, profile, calibrated=True)
    measured, e2e, metadata, window_profile = _measure_in_window(spec, profile, batch_size(analysis), rounds,
                                                                 min_run_time_s, ops)
    window = predict(analysis, window_profile, calibrated=True)
    layers = plain.layers[["name", "type", "flops", "bytes", "arithmetic_intensity", "bound", "memory_level",
                           "predicted_s"]].rename(columns={"predicted_s": "plain_s", "bound": "plain_bound"})
    for mode, prediction in (("calibrated", calibrated), ("window", window)):
        columns = {"predicted_s": f"{mode}_s", "in_pass_s": f"{mode}_in_pass_s",
                   **{column: f"{mode}_{column}" for column in INTERVAL_COLUMNS}}
        layers = layers.join(prediction.layers.set_index("name")[list(columns)].rename(columns=columns), on="name")
    layers = layers.join(measured, on="name").dropna(subset=["measured_s"])
    layers.insert(0, "model", spec)
    speed = speed_ratio(profile.metadata, metadata) or float("nan")
    # Where the measured point sits: the resource it saturates (>= 30% used), else neither.
    bandwidth = layers["memory_level"].map({lvl.name: lvl.bandwidth_bytes_per_s for lvl in profile.memory_levels})
    compute_use = layers["flops"] / layers["measured_s"] / plain.peak_flops_per_s
    memory_use = layers["bytes"] / layers["measured_s"] / bandwidth
    layers["measured_bound"] = np.where(
        np.maximum(compute_use, memory_use) < SATURATED, "latency", np.where(compute_use >= memory_use, "compute", "memory")
    )
    predicted = layers["plain_bound"].str.split(":").str[0].replace({"overhead": "latency"})
    agree = float((predicted == layers["measured_bound"]).mean())
    row = {
        "model": spec,
        "layers": len(layers),
        "measured_ms": 1e3 * e2e,
        "layers_ms": 1e3 * float(layers["measured_s"].sum()),
        "in_pass_ms": 1e3 * float(layers["in_pass_s"].sum()),
        "plain_ms": 1e3 * plain.totals["predicted_latency_s"],
        "calibrated_ms": 1e3 * calibrated.totals["predicted_latency_s"],
        "window_ms": 1e3 * window.totals["predicted_latency_s"],
        "plain_error": plain.totals["predicted_latency_s"] / e2e - 1,
        "calibrated_error": calibrated.totals["predicted_latency_s"] / e2e - 1,
        "window_error": window.totals["predicted_latency_s"] / e2e - 1,
        "calibrated_vs_layers": calibrated.totals["sum_of_layers_s"] / float(layers["measured_s"].sum()) - 1,
        "window_vs_layers": window.totals["sum_of_layers_s"] / float(layers["measured_s"].sum()) - 1,
        "bound_agreement": agree,
        **{f"{mode}_inside": prediction.totals["predicted_latency_low_s"] <= e2e
           <= prediction.totals["predicted_latency_high_s"] for mode, prediction in (("calibrated", calibrated),
                                                                                    ("window", window))},
        "speed": speed,
        "machine_spread": metadata["machine_spread"],
    }
    return row, layers


def coverage_lines(joined: pd.DataFrame, summary: pd.DataFrame) -> list[str]:
    """How often the measurement falls inside the calibrated prediction's interval (issue 16: within 10 points of
    the stated coverage). Layers alone and models end to end are data the calibration never saw; 'window' is
    refitted in the measurement's minutes, so its coverage leaves out the machine's drift between the two."""
    lines = [f"\n{INTERVAL_COVERAGE:.0%} interval coverage (target: within 10 points of {INTERVAL_COVERAGE:.0%}):"]
    for mode in ("calibrated", "window"):
        alone = joined.dropna(subset=[f"{mode}_predicted_low_s"])
        hit = (alone[f"{mode}_predicted_low_s"] <= alone["measured_s"]) & (alone["measured_s"] <= alone[f"{mode}_predicted_high_s"])
        in_pass = alone[alone["in_pass_s"] > 0]
        hit_pass = (in_pass[f"{mode}_in_pass_low_s"] <= in_pass["in_pass_s"]) & (in_pass["in_pass_s"] <= in_pass[f"{mode}_in_pass_high_s"])
        models = int(summary[f"{mode}_inside"].sum())
        lines.append(f"  {mode:10} layers alone {hit.mean():.0%} of {len(alone)}; layers in the pass {hit_pass.mean():.0%} of "
                     f"{len(in_pass)}; models end to end {models} of {len(summary)} ({models / len(summary):.0%})")
    return lines


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--hw", default="auto", help="auto (saved measured profile), measure (fresh, in this "
                        "process and thread count), or a profile name/file")
    parser.add_argument("--threads", type=int, help="torch CPU threads for the profile and the models")
    parser.add_argument("--models", default=",".join(MODELS))
    parser.add_argument("--quick-profile", action="store_true", help="measure the profile with --quick")
    parser.add_argument("--rounds", type=int, default=3, help="interleaved timing passes (default 3)")
    parser.add_argument("--min-run-time", type=float, default=0.15, help="seconds per layer over all rounds")
    parser.add_argument("--out", default="benchmarks/results/accuracy.csv")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    profile = _profile(args.hw, args.quick_profile, args.rounds)
    print(f"torch threads: {torch.get_num_threads()}; profile: {profile.name} ({profile.source}); reference matmul "
          f"when profiling: {float(profile.metadata.get('reference_flops_per_s', 'nan')) / 1e9:.1f} GFLOP/s; efficiency: "
          + ", ".join(f"{k} {v:.2f}" for k, v in profile.efficiency.items()))
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    if args.hw == "measure":  # the profile behind these predictions, kept beside the table
        save_profile(profile, Path(args.out).with_suffix(".profile.yaml"))
    ops = representative_ops("cpu", config_of(profile).efficiency_scale)
    rows, tables = [], []
    for spec in args.models.split(","):
        start = time.perf_counter()
        row, layers = evaluate(spec, profile, args.rounds, args.min_run_time, ops)
        rows.append(row)
        tables.append(layers)
        print(f"  {spec}: {time.perf_counter() - start:.0f} s", file=sys.stderr)
    summary = pd.DataFrame(rows)
    joined = pd.concat(tables, ignore_index=True)
    joined.to_csv(args.out, index=False)
    pd.set_option("display.width", 200)
    print(summary.to_string(index=False, float_format=lambda v: f"{v:.3f}"))
    print()
    weights = joined["measured_s"].to_numpy()
    print(f"{'over all ' + str(len(joined)) + ' layers':28} {'median':>8} {'p90':>8} {'time-weighted median':>22}")
    for mode in ("plain", "calibrated", "window"):
        error = (joined[f"{mode}_s"] / joined["measured_s"] - 1).abs().to_numpy()
        print(f"{mode + ' |per-layer error|':28} {np.median(error):8.1%} {np.percentile(error, 90):8.1%} "
              f"{_weighted_median(error, weights):22.1%}")
    inside = joined[joined["in_pass_s"] > 0]  # each layer timed inside the pass against its in-pass prediction
    for mode in ("calibrated", "window") if len(inside) else ():
        error = (inside[f"{mode}_in_pass_s"] / inside["in_pass_s"] - 1).abs().to_numpy()
        print(f"{mode + ' in pass':28} {np.median(error):8.1%} {np.percentile(error, 90):8.1%} "
              f"{_weighted_median(error, inside['in_pass_s'].to_numpy()):22.1%}")
    within = (summary["calibrated_error"].abs() <= 0.10).sum()
    in_window = (summary["window_error"].abs() <= 0.10).sum()
    near_layers = (summary["calibrated_vs_layers"].abs() <= 0.10).sum()
    print(f"\ncalibrated end-to-end error within 10%: {within} of {len(summary)} models (target: 7 of 8); "
          f"calibrated in the measurement's window: {in_window}; calibrated against the sum of layers timed alone: "
          f"{near_layers}")
    print(f"bound agreement (layers not overhead-bound): {summary['bound_agreement'].mean():.0%}")
    for line in coverage_lines(joined, summary):
        print(line)
    print(f"joined table: {args.out}")


if __name__ == "__main__":
    main()

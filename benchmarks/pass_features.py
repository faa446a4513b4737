"""What makes a layer slower inside a pass than alone: models of the pass against saved runs (issue 16, part 4).

A layer timed alone (roofline.measure repeats it) finds its code, weights and output buffer warm; inside a real
pass (torch.profiler) it does not. Calibrated prediction once modelled that with a pass line per op class (the
class's ops timed once each per cycle over all of calibration's ops), which over-predicted some kinds of layer
and under-predicted others; the saved `benchmarks/accuracy.py` runs read here were predicted with it. This study
takes those runs (per-layer times alone and in the pass, and the profile they were predicted with) and sets models
of the pass penalty (in-pass time minus the time alone) against them, each applied to the layer's MEASURED alone
time, so that the alone line's own error is left out and only the pass model is compared:

- none: no penalty;
- the pass line: the layer's measured alone time x the run's calibrated in-pass / alone prediction;
- features: penalty = c_op x ops + c_fresh x fresh output bytes + c_cold x cold-weight time, where
  - ops: the layer's aten op calls (each runs its dispatch path cold in a pass);
  - fresh output bytes: bytes written by ops that do not write in place (aten names ending in '_' write into
    their input, which the op before just wrote; any other op writes a buffer nothing touched lately);
  - cold-weight time: weight bytes x (1 / bandwidth of the level that holds the pass's working set - 1 / bandwidth
    of the op's own level): between two calls of a layer the whole pass runs, so a weight's reuse distance is the
    pass's weights plus its peak activations, while alone it is the op's own bytes.
  Coefficients are fitted by least squares in relative error (non-negative), leave one model out: each model's
  layers are predicted with coefficients fitted on the other models' layers only.
- with --pass-call, the pass model prediction now uses (roofline.predict): fresh output bytes at the deepest
  level's bandwidth and cold weights at 1x (nothing fitted), and the per-call cost calibration measures on its
  chain of small layers (calibrate.measure_chain_pass_call), timed here, now, at --threads.

The figures are relative errors of the predicted in-pass time against the measured one, over the layers timed
in both ways: median, and time-weighted median (weights: measured in-pass time); and end to end, each model's
layers summed against its whole pass timed without the profiler (the summary table of the run's .txt). Per layer type, the median
in-pass / alone ratio measured and under each model shows where the pass line goes wrong.

    .venv/bin/python benchmarks/pass_features.py [--runs STEM ...] [--out pass_features] [--out-dir DIR]

Writes <out-dir>/<out>.{txt,csv} (default benchmarks/results). Reads only saved results: it times nothing but
calibration's chain of small layers, and that only with --pass-call.
"""
from __future__ import annotations

import argparse
import dataclasses
import sys
import warnings
from pathlib import Path

import numpy as np
import pandas as pd

import roofline
from roofline.calibrate import PassMeasurement
from roofline.formatting import format_table
from roofline.hardware import HardwareProfile, load_profile
from roofline.models import load
from roofline.opclass import writes_in_place
from roofline.predict import predict
from roofline.timing import retained_heap

RESULTS = Path(__file__).resolve().parent / "results"
DEFAULT_RUNS = ("accuracy-2threads-epyc", "accuracy-2threads-epyc-pass-evidence",
                "accuracy-2threads-epyc-before-pass-model")
FEATURES = ("ops", "fresh_mb", "cold_weight_us")


def layer_features(analysis: roofline.Analysis, profile: HardwareProfile) -> pd.DataFrame:
    """Per layer: its op calls, the bytes its ops write to fresh buffers (MB) and its cold-weight time (us), by
    the pass model's own rules (Prediction.pass_terms)."""
    prediction = predict(analysis, profile, calibrated=True)
    ops, terms = prediction.ops, prediction.pass_terms
    frame = pd.DataFrame({
        "layer": ops["layer"], "ops": 1.0,
        "fresh_mb": np.where(ops["op"].map(writes_in_place).astype(bool), 0.0, ops["bytes_written"]) / 1e6,
        "cold_weight_us": terms["pass_cold_weight_s"] * 1e6,
    })
    return frame.groupby("layer", sort=False)[list(FEATURES)].sum()


def _fit(features: np.ndarray, extra_us: np.ndarray, in_pass_us: np.ndarray) -> np.ndarray:
    """Non-negative least squares in relative error: each layer weighted by 1 / its measured in-pass time (active
    set by dropping negative coefficients one at a time, which is exact for three features)."""
    weight = 1.0 / np.maximum(in_pass_us, 1.0)
    active = list(range(features.shape[1]))
    while active:
        coef, *_ = np.linalg.lstsq(features[:, active] * weight[:, None], extra_us * weight, rcond=None)
        if (coef >= 0).all():
            out = np.zeros(features.shape[1])
            out[active] = coef
            return out
        active.pop(int(np.argmin(coef)))
    return np.zeros(features.shape[1])


def _weighted_median(values: np.ndarray, weights: np.ndarray) -> float:
    order = np.argsort(values)
    cumulative = np.cumsum(weights[order])
    return float(values[order][np.searchsorted(cumulative, cumulative[-1] / 2)])


def collect(runs: list[str], analyses: dict[str, roofline.Analysis]) -> pd.DataFrame:
    """Every layer timed alone and in the pass in the saved runs, with its features and the pass line's
    in-pass prediction applied to its measured alone time; `analyses` is filled with each model's."""
    frames = []
    for run in runs:
        profile = load_profile(RESULTS / f"{run}.profile.yaml")
        table = pd.read_csv(RESULTS / f"{run}.csv")
        table = table[(table["in_pass_s"] > 0) & (table["measured_s"] > 0)]
        for model, rows in table.groupby("model", sort=False):
            if model not in analyses:
                with warnings.catch_warnings():
                    warnings.simplefilter("ignore")
                    analyses[model] = roofline.analyze(load(model), warn_unsupported=False, cache=True)
            features = layer_features(analyses[model], profile)
            rows = rows[rows["name"].isin(features.index)].copy()
            rows[list(FEATURES)] = features.loc[rows["name"]].to_numpy()
            rows["run"] = run
            frames.append(rows)
    data = pd.concat(frames, ignore_index=True)
    data["extra_us"] = 1e6 * (data["in_pass_s"] - data["measured_s"])
    data["pass_line_s"] = data["measured_s"] * data["calibrated_in_pass_s"] / data["calibrated_s"]
    return data


def end_to_end(run: str) -> pd.Series:
    """A saved run's measured end-to-end latency per model (seconds), from the summary table accuracy.py prints
    first in its .txt (columns model, layers, measured_ms, ...)."""
    lines = (RESULTS / f"{run}.txt").read_text().splitlines()
    header = next(i for i, line in enumerate(lines) if line.split()[:3] == ["model", "layers", "measured_ms"])
    rows = {}
    for line in lines[header + 1:]:
        if not line.strip():
            break
        fields = line.split()
        rows[fields[0]] = float(fields[2]) / 1e3
    return pd.Series(rows, name="measured_e2e_s")


def leave_one_model_out(data: pd.DataFrame) -> tuple[pd.Series, pd.DataFrame]:
    """Each layer's in-pass time under the feature model fitted without its own model's layers, and the
    coefficients of each fold."""
    predicted = pd.Series(np.nan, index=data.index)
    folds = []
    x = data[list(FEATURES)].to_numpy(dtype=float)
    y = data["extra_us"].to_numpy(dtype=float)
    in_pass = 1e6 * data["in_pass_s"].to_numpy(dtype=float)
    for model in data["model"].unique():
        held = (data["model"] == model).to_numpy()
        coef = _fit(x[~held], y[~held], in_pass[~held])
        predicted[held] = data.loc[held, "measured_s"] + 1e-6 * (x[held] @ coef)
        folds.append({"held_out": model, **dict(zip(FEATURES, coef, strict=True))})
    return predicted, pd.DataFrame(folds)


def pass_call_now(profile: HardwareProfile, threads: int) -> PassMeasurement:
    """Calibration's pass measurement (calibrate.measure_chain_pass_call, FULL's blocks) on its chain of small layers,
    which no benchmark uses, timed now at `threads`."""
    import torch

    from roofline.calibrate import measure_chain_pass_call
    from roofline.hardware.microbench import FULL

    torch.set_num_threads(threads)
    with torch.no_grad(), retained_heap():
        return measure_chain_pass_call(profile, FULL)


def pass_model_s(data: pd.DataFrame, analyses: dict[str, roofline.Analysis], runs: list[str],
                 pass_call_s: float) -> pd.Series:
    """Each layer's measured alone time plus the pass model's terms (Prediction.pass_terms) with `pass_call_s`."""
    out = pd.Series(np.nan, index=data.index)
    for run in runs:
        profile = dataclasses.replace(load_profile(RESULTS / f"{run}.profile.yaml"), pass_call_s=pass_call_s)
        for model in data.loc[data["run"] == run, "model"].unique():
            prediction = predict(analyses[model], profile, calibrated=True)
            penalty = prediction.pass_terms.sum(axis=1).groupby(prediction.ops["layer"]).sum()
            rows = (data["run"] == run) & (data["model"] == model)
            out[rows] = data.loc[rows, "measured_s"] + penalty.reindex(data.loc[rows, "name"]).fillna(0.0).to_numpy()
    return out


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--runs", nargs="+", default=list(DEFAULT_RUNS), help="accuracy.py result stems")
    parser.add_argument("--out", default="pass_features", help="result file stem (default pass_features)")
    parser.add_argument("--pass-call", action="store_true",
                        help="also measure calibration's per-call pass cost now (its chain of small layers), for the "
                             "pass model prediction uses")
    parser.add_argument("--threads", type=int, default=2, help="torch threads for --pass-call (default 2, the runs')")
    parser.add_argument("--out-dir", type=Path, default=RESULTS, help="where to write it (default benchmarks/results)")
    args = parser.parse_args()
    missing = [run for run in args.runs for suffix in (".csv", ".profile.yaml") if not (RESULTS / f"{run}{suffix}").exists()]
    if missing:
        print(f"pass_features: no saved run {missing[0]} in {RESULTS} (run benchmarks/accuracy.py first)", file=sys.stderr)
        return 2
    analyses: dict[str, roofline.Analysis] = {}
    data = collect(args.runs, analyses)
    data["features_s"], folds = leave_one_model_out(data)
    data["none_s"] = data["measured_s"]
    models = {"none": "none_s", "pass line": "pass_line_s", "features (held out)": "features_s"}
    pass_call_line = ""
    if args.pass_call:
        measured = pass_call_now(load_profile(RESULTS / f"{args.runs[0]}.profile.yaml"), args.threads)
        data["pass_model_s"] = pass_model_s(data, analyses, args.runs, measured.pass_call_s)
        models["pass model (--pass-call)"] = "pass_model_s"
        pass_call_line = f"pass model: {measured.note()}: {measured.pass_call_s * 1e6:.2f} us per op call"
    weights = data["in_pass_s"].to_numpy()
    # End to end: the layers' predicted in-pass times summed per model and run, against the pass timed plain
    # (no profiler), the one figure of a pass no timer's own cost inflates.
    sums = data.groupby(["run", "model"], sort=False)[list(models.values())].sum()
    measured_e2e = pd.concat({run: end_to_end(run) for run in args.runs}).rename_axis(["run", "model"])
    e2e = sums.div(measured_e2e.reindex(sums.index), axis=0) - 1
    summary = []
    for label, column in models.items():
        error = (data[column] / data["in_pass_s"] - 1).abs().to_numpy()
        small = (data["measured_s"] < 2e-3).to_numpy()
        summary.append({"pass model": label, "median |error|": np.median(error),
                        "time-weighted median": _weighted_median(error, weights),
                        "median, layers < 2 ms alone": np.median(error[small]),
                        "end to end, median |error|": float(e2e[column].abs().median()),
                        "end to end within 10%": f"{int((e2e[column].abs() <= 0.10).sum())} of {len(e2e)}"})
    by_type = data.groupby("type").filter(lambda g: len(g) >= 12).groupby("type").agg(
        layers=("name", "size"),
        measured=("in_pass_s", lambda s: float(np.median(s / data.loc[s.index, "measured_s"]))),
        pass_line=("pass_line_s", lambda s: float(np.median(s / data.loc[s.index, "measured_s"]))),
        features=("features_s", lambda s: float(np.median(s / data.loc[s.index, "measured_s"]))),
        fresh_mb=("fresh_mb", "median"),
    ).reset_index()
    all_coef = _fit(data[list(FEATURES)].to_numpy(dtype=float), data["extra_us"].to_numpy(dtype=float),
                    1e6 * data["in_pass_s"].to_numpy(dtype=float))
    percent = {c: (lambda v: f"{v:.1%}") for c in ("median |error|", "time-weighted median", "median, layers < 2 ms alone",
                                                   "end to end, median |error|")}
    ratio = {c: (lambda v: f"{v:.2f}") for c in ("measured", "pass_line", "features", "fresh_mb")}
    text = "\n".join([
        (f"pass models against {len(data)} layers timed alone and in the pass, {data['model'].nunique()} models, "
        f"runs: {', '.join(args.runs)}"),
        ("each model applied to the layer's measured alone time; error = predicted in-pass / measured in-pass - 1 (per "
        "layer, in the pass under torch.profiler) and, end to end, the sum of a model's layers against its pass timed "
        "without the profiler"),
        "",
        format_table(pd.DataFrame(summary), percent),
        "",
        "median in-pass / alone time by layer type (types with at least 12 layers); fresh_mb: median fresh output MB",
        format_table(by_type, ratio),
        "",
        (f"features fitted on all layers: {all_coef[0]:.2f} us per op call + {all_coef[1]:.2f} us per fresh MB + "
         f"{all_coef[2]:.2f} x cold-weight time; over the held-out folds: "
         + ", ".join(f"{f} {folds[f].min():.2f}-{folds[f].max():.2f}" for f in FEATURES)),
        *([pass_call_line] if pass_call_line else []),
    ])
    print(text)
    args.out_dir.mkdir(parents=True, exist_ok=True)
    (args.out_dir / f"{args.out}.txt").write_text(text + "\n")
    data[["run", "model", "name", "type", "measured_s", "in_pass_s", *FEATURES, *models.values()]].to_csv(
        args.out_dir / f"{args.out}.csv", index=False)
    return 0


if __name__ == "__main__":
    sys.exit(main())

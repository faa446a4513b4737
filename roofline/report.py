"""Reports: one directory with index.html, report.md, layers.csv, report.json and the charts (PNG + SVG).

The analysis, the prediction and (when taken) the measurement are joined on the layer `name` into one
table; every file is written from that table and the totals. Writing is atomic: everything goes into a
hidden sibling directory first and is renamed into place only when complete, so an interrupted run
leaves either no report or the previous complete one. Only a directory roofline wrote is replaced
(roofline.outdir's rule, checked before any work). report.json carries REPORT_FORMAT_VERSION.
"""
from __future__ import annotations

import dataclasses
import datetime
import html
import json
import math
import re
import sys
import warnings
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from functools import cached_property
from pathlib import Path
from typing import Any, Protocol

import numpy as np
import pandas as pd

import roofline
from roofline.analysis import LAYER_COLUMNS, Analysis
from roofline.errors import RooflineError
from roofline.fidelity import faster_than_roof, roof_sentence
from roofline.formatting import format_bytes, format_markdown, format_number, format_si, format_time
from roofline.hardware.profile import HardwareProfile
from roofline.measure import speed_note
from roofline.outdir import check_out, write_atomically
from roofline.predict import INTERVAL_COLUMNS, Prediction, overhead_sentence

__all__ = ["REPORT_FILES", "REPORT_FORMAT_VERSION", "MeasurementLike", "ReportData", "check_out", "joined_layers",
           "report", "type_table", "write_report"]

# Version of report.json; bump on an incompatible change to its fields (pyperf's _JSON_VERSION habit).
REPORT_FORMAT_VERSION = 1

_PREDICTED_COLUMNS = ["compute_s", "memory_s", "roofline_s", "efficiency_s", "overhead_s", "exposed_overhead_s",
                      "module_call_s", "pass_penalty_s", "predicted_s", "in_pass_s", "bound", "roof", "bound_label",
                      "efficiency", "memory_level", "ridge_point", "attainable_flops_per_s", "predicted_flops_per_s",
                      "fraction_of_roof", "share", *INTERVAL_COLUMNS]
_MEASURED_COLUMNS = {"measured_s": "measured_s", "iqr_s": "measured_iqr_s", "repeats": "repeats", "noisy": "noisy",
                     "in_pass_s": "measured_in_pass_s", "timed_as": "timed_as", "ran_as": "ran_as"}
_CHART_TITLES = {
    "roofline": "Roofline",
    "predicted_vs_measured": "Predicted against measured",
    "time": "Where the time goes",
}
# Every file a report may hold (besides roofline.outdir's marker): with --force, only these are replaced.
REPORT_FILES = frozenset({"index.html", "report.md", "layers.csv", "report.json",
                          *(f"{chart}.{ext}" for chart in _CHART_TITLES for ext in ("png", "svg"))})


class MeasurementLike(Protocol):
    """What a report needs of a measurement (roofline.measure's result has these)."""

    @property
    def layers(self) -> pd.DataFrame: ...  # name, measured_s, iqr_s, repeats, noisy

    @property
    def end_to_end(self) -> pd.DataFrame: ...  # batch, latency_s, iqr_s, throughput_samples_per_s

    @property
    def metadata(self) -> Mapping[str, Any]: ...


@dataclass(frozen=True)
class ReportData:
    """Everything a report shows, already joined; the writers only format it."""

    prediction: Prediction
    layers: pd.DataFrame  # joined analysis + prediction + measurement, one row per layer
    types: pd.DataFrame  # the same per layer type
    measurement: MeasurementLike | None = None
    notes: tuple[str, ...] = ()
    created: str = field(default_factory=lambda: datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"))

    @property
    def analysis(self) -> Analysis:
        return self.prediction.analysis

    @property
    def profile(self) -> HardwareProfile:
        return self.prediction.profile

    @property
    def measured(self) -> bool:
        return bool(self.layers["measured_s"].notna().any())

    @cached_property
    def measured_totals(self) -> dict[str, Any] | None:
        """End-to-end latency and throughput at the analysed batch, and the sum of per-layer medians
        (alone and inside the pass); None when not measured."""
        if self.measurement is None:
            return None
        runs = self.measurement.end_to_end
        batch = self.prediction.totals["batch"]
        same = runs[runs["batch"] == batch] if "batch" in runs else runs
        row = (same if len(same) else runs).iloc[0] if len(runs) else None
        return {
            "batch": int(row["batch"]) if row is not None else batch,
            "latency_s": float(row["latency_s"]) if row is not None else None,
            "latency_iqr_s": float(row["iqr_s"]) if row is not None and "iqr_s" in row else None,
            "throughput_samples_per_s": float(row["throughput_samples_per_s"]) if row is not None else None,
            "sum_of_layers_s": float(self.layers["measured_s"].sum()),
            "sum_in_pass_s": float(self.layers["measured_in_pass_s"].sum(min_count=1)),  # NaN where not timed
        }


# ---- joining ---------------------------------------------------------------------------------------

def joined_layers(prediction: Prediction, measured: pd.DataFrame | None = None) -> pd.DataFrame:
    """Analysis, prediction and measurement side by side, one row per layer, joined on `name`."""
    analysis_layers = prediction.analysis.layers
    extra = [c for c in ("bytes", "ops", "path", "call_index") if c in analysis_layers]
    predicted = prediction.layers[["name", *_PREDICTED_COLUMNS]].rename(columns={"in_pass_s": "predicted_in_pass_s"})
    table = analysis_layers[LAYER_COLUMNS + extra].merge(predicted, on="name", how="left", validate="one_to_one")
    if measured is not None and len(measured):
        timed = measured[[c for c in ("name", *_MEASURED_COLUMNS) if c in measured]].rename(columns=_MEASURED_COLUMNS)
        table = table.merge(timed, on="name", how="left", validate="one_to_one")
    for column in _MEASURED_COLUMNS.values():
        if column not in table:
            table[column] = float("nan") if column.endswith("_s") else pd.NA
    table["measured_s"] = table["measured_s"].astype(float)
    table["measured_in_pass_s"] = table["measured_in_pass_s"].astype(float)
    table["measured_flops_per_s"] = table["flops"] / table["measured_s"].where(table["measured_s"] > 0)
    table["measured_over_predicted"] = table["measured_s"] / table["predicted_s"].where(table["predicted_s"] > 0)
    return table


def type_table(layers: pd.DataFrame) -> pd.DataFrame:
    """Per layer type: calls, work and time; its bound is the bound holding most of its predicted time."""
    grouped = layers.groupby("type", sort=False)
    types = grouped.agg(calls=("name", "size"), flops=("flops", "sum"), bytes=("bytes", "sum"),
                        predicted_s=("predicted_s", "sum"))
    types["measured_s"] = grouped["measured_s"].sum(min_count=1)
    by_bound = layers.groupby(["type", "bound"], sort=False)["predicted_s"].sum().reset_index()
    main = by_bound.sort_values("predicted_s", ascending=False, kind="stable").drop_duplicates("type").set_index("type")["bound"]
    types["bound"] = main
    total = types["predicted_s"].sum()
    types["share"] = types["predicted_s"] / total if total else 0.0
    return types.reset_index().sort_values("predicted_s", ascending=False, kind="stable", ignore_index=True)


# ---- the one-call entry point ----------------------------------------------------------------------

def report(model: Any, hw: str | HardwareProfile = "auto", *, out: str | Path = "roofline-report",
           precision: str = "fp32", measure: bool = True, calibrated: bool = False, progress: bool = True,
           min_run_time_s: float = 0.05, input_shape: str | None = None, batch: int | None = None,
           seq_len: int | None = None, recalibrate: bool = False, force: bool = False, mode: str = "inference",
           optimizer: str = "adamw", trace: str | Path | None = None, cache: bool = False) -> Path:
    """Analyse, predict on `hw`, measure on the matching local device (unless measure=False), write `out`.

    min_run_time_s is the timing budget per layer and per batch size (roofline.measure's).
    recalibrate (implies calibrated) times the measured profile's efficiency ops again first, on the
    device it describes, so prediction and measurement come from the same minutes of a machine whose
    speed drifts. mode="train" reports one training step (roofline.train): forward, backward and
    optimizer rows, the step's time, MFU, memory and the checkpointing what-if in the notes, and a
    measured real step. `out` is checked first (roofline.outdir's rule): a directory holding anything
    roofline did not write is refused unless `force`, which writes the report's files into it and keeps
    the rest. trace: a Chrome trace torch.profiler wrote in the user's own run (on the device `hw`
    describes): its per-layer times are shown beside the prediction and nothing is timed here. cache: reuse
    or keep the model's trace on disk (roofline.tracecache). Returns the report directory; open `out/index.html`.
    """
    from roofline import models
    from roofline.analysis import analyze
    from roofline.calibrate import recalibrate as recalibrated
    from roofline.calibrate import recalibration_device
    from roofline.hardware import load_profile
    from roofline.hardware.microbench import local_device
    from roofline.precision import get_precision
    from roofline.predict import predict

    check_out(out, force=force, names=REPORT_FILES)  # refuse a foreign --out before the slow steps, not after
    if mode not in ("inference", "train"):
        raise RooflineError(f"unknown mode {mode!r}; choose inference or train")
    if mode == "train":
        from roofline.precision import training_precision

        training_precision(precision)
    get_precision(precision)
    _say(progress, f"resolving hardware profile {hw if isinstance(hw, str) else hw.name}")
    profile = load_profile(hw) if isinstance(hw, str) else hw
    device, why_not = local_device(profile)
    if recalibrate:
        here = recalibration_device(profile)
        _say(progress, f"timing {profile.name}'s efficiency ops again on {here}")
        profile, calibrated = recalibrated(profile, here, progress), True
    _say(progress, f"counting {model}")
    load_options: dict[str, Any] = {"input_shape": input_shape, "batch": batch, "seq_len": seq_len}
    if mode == "train":
        from roofline import train

        counted = train.analyze_train(model, precision=precision, optimizer=optimizer, cache=cache, **load_options)
    else:
        counted = analyze(model, precision=precision, cache=cache, **load_options)
    _say(progress, f"predicting on {profile.name}")
    prediction = predict(counted, profile, calibrated=calibrated)

    notes: list[str] = []
    if mode == "train":
        notes += train.step_lines(train.StepPrediction(prediction),
                                  train.checkpoint_whatif(counted, profile, calibrated=calibrated))
    if recalibrate:
        notes.append(f"Calibrated with the profile's efficiency ops timed again just before measuring "
                     f"({profile.metadata['recalibrated']}); its roofs are from {profile.metadata.get('date', '?')}.")
    measurement: MeasurementLike | None = None
    if trace is not None:
        from roofline.measure import measure_trace

        _say(progress, f"reading the per-layer times of {trace}")
        measurement = measure_trace(models.load(model, **load_options), trace, precision=precision)
    elif not measure:
        notes.append("Not measured (--no-measure): the report shows predictions only.")
    elif device is None:
        skipped = f"{why_not}: measurement skipped, the report shows predictions only."
        warnings.warn(skipped, stacklevel=2)
        notes.append(skipped)
    else:
        if profile.source == "datasheet":
            notes.append(f"Measured on this machine's {device}; the profile holds datasheet figures for {profile.name}."
                         " The comparison is meaningful only if that is the device measured here.")
        _say(progress, f"measuring on {device} (real weights, real tensors)")
        options = {k: v for k, v in (("input_shape", input_shape), ("batch", batch), ("seq_len", seq_len)) if v}
        if mode == "train":
            from roofline.train_measure import measure_train

            measured = measure_train(model, device=device, precision=precision, optimizer=optimizer,
                                     min_run_time_s=max(min_run_time_s, 0.2), input_shape=input_shape, batch=batch,
                                     seq_len=seq_len)
            phases = ", ".join(f"{k} {format_time(v)}" for k, v in measured.phases.items())
            row = measured.end_to_end.iloc[0]
            notes.append(f"Measured training step on {device}: {format_time(row['latency_s'])}; rows by phase: {phases}"
                         + (f"; peak memory {format_bytes(measured.metadata['peak_memory_bytes'])}"
                            if measured.metadata.get("peak_memory_bytes") else "") + ".")
            measurement = measured
        else:
            measurement = _measure(model, device, precision, progress, min_run_time_s, options)
    _say(progress, "drawing charts and writing the report")
    return write_report(prediction, out, measurement=measurement, notes=notes, force=force)


def _measure(model: Any, device: str, precision: str, progress: bool, min_run_time_s: float,
             load_options: Mapping[str, Any]) -> MeasurementLike:
    from roofline.measure import measure

    result: MeasurementLike = measure(model, device=device, precision=precision, progress=progress,
                                      min_run_time_s=min_run_time_s, **load_options)
    return result


def _say(progress: bool, message: str) -> None:
    if progress:
        print(f"roofline: {message}...", file=sys.stderr, flush=True)


# ---- writing -----------------------------------------------------------------------------------------

def write_report(prediction: Prediction, out: str | Path, *, measurement: MeasurementLike | None = None,
                 notes: Sequence[str] = (), force: bool = False) -> Path:
    """Write the report directory `out` atomically; returns its path. `force` as in `report`."""
    layers = joined_layers(prediction, measurement.layers if measurement is not None else None)
    all_notes = list(notes)
    flagged = faster_than_roof(prediction, layers[["name", "measured_s"]])
    layers["faster_than_roof"] = layers["name"].isin(flagged["name"])
    if measurement is not None:
        all_notes += [f"Measurement: {note}" for note in measurement.metadata.get("notes", [])]
        roof = roof_sentence(flagged)
        if roof:
            all_notes.append(roof)
        speed = speed_note(prediction.profile.metadata, measurement.metadata)
        if speed:
            all_notes.append(speed)
        unmatched = set(measurement.layers["name"]) - set(layers["name"])
        if unmatched:
            all_notes.append(f"{len(unmatched)} measured layers have no analysed counterpart and are not shown: "
                             + ", ".join(sorted(unmatched)[:5]) + ("..." if len(unmatched) > 5 else ""))
        missing = int(layers["measured_s"].isna().sum())
        if missing:
            all_notes.append(f"{missing} analysed layers have no measured time (shown as '-').")
        noisy = layers.loc[layers["noisy"].fillna(False).astype(bool), "name"].tolist()
        if noisy:
            all_notes.append(f"{len(noisy)} of {len(layers)} layer timings are noisy (IQR over 10% of the median, or "
                             "the machine's own speed varied more than their IQR): "
                             + ", ".join(noisy[:5]) + ("..." if len(noisy) > 5 else ""))
    unsupported = prediction.analysis.unsupported_ops
    if unsupported:
        all_notes.append("Ops with no cost rule (FLOPs not counted, bytes counted): "
                         + ", ".join(f"{u['op']} x{u['count']}" for u in unsupported))
    data = ReportData(prediction, layers, type_table(layers), measurement, tuple(all_notes))
    pass_note = _pass_note(data.measured_totals, prediction)
    if pass_note:
        data = dataclasses.replace(data, notes=(*data.notes, pass_note))
    return write_atomically(out, lambda directory: _write_all(data, directory), force=force, names=REPORT_FILES)


def _write_all(data: ReportData, directory: Path) -> None:
    charts = _write_charts(data, directory)
    _write_csv(data, directory)
    _write_json(data, directory, charts)
    _write_markdown(data, directory, charts)
    _write_html(data, directory, charts)


def _write_charts(data: ReportData, directory: Path) -> dict[str, tuple[list[Path], str]]:
    """Draw and save each chart; returns name -> (files, caption)."""
    from roofline import plots

    p = data.prediction
    title = f"{data.analysis.model_name} on {data.profile.name} @ {p.precision.name}"
    charts = [plots.roofline_chart(data.layers, data.profile, compute_type=p.precision.compute_type,
                                   model=data.analysis.model_name, precision=p.precision.name)]
    if data.measured:
        metadata = data.measurement.metadata if data.measurement is not None else {}
        device = str(metadata.get("device_name") or metadata.get("device") or "this machine")
        charts.append(plots.predicted_vs_measured_chart(data.layers, model=data.analysis.model_name, device=device))
    charts.append(plots.time_chart(data.layers, data.types, level_names=[lv.name for lv in data.profile.memory_levels],
                                   title=f"Where the time goes: {title}"))
    return {chart.name: (plots.save_chart(chart, directory), chart.caption) for chart in charts}


def _write_csv(data: ReportData, directory: Path) -> None:
    data.layers.to_csv(directory / "layers.csv", index=False)


def _write_json(data: ReportData, directory: Path, charts: Mapping[str, tuple[list[Path], str]]) -> None:
    (directory / "report.json").write_text(json.dumps(_to_dict(data, charts), indent=1, allow_nan=False) + "\n")


def _to_dict(data: ReportData, charts: Mapping[str, tuple[list[Path], str]]) -> dict[str, Any]:
    p = data.prediction
    return {
        "format_version": REPORT_FORMAT_VERSION,
        "generator": f"roofline {roofline.__version__}",
        "created": data.created,
        "model": data.analysis.model_name,
        "inputs": data.analysis.trace.inputs,
        "precision": p.precision.name,
        "calibrated": p.calibrated,
        "hardware": data.profile.to_dict(),
        "summary": summary_lines(data),
        "notes": list(data.notes),
        "totals": {
            "analysis": _plain(data.analysis.totals),
            "model_size_bytes": _plain(data.analysis.model_size_bytes()),
            "prediction": _plain(p.totals),
            "measurement": _plain(data.measured_totals),
        },
        "measurement": None if data.measurement is None else {
            "metadata": _plain(dict(data.measurement.metadata)),
            "end_to_end": _records(data.measurement.end_to_end),
        },
        "charts": {name: [path.name for path in files] for name, (files, _) in charts.items()},
        "by_type": _records(data.types),
        "layers": _records(data.layers),
        "unsupported_ops": data.analysis.unsupported_ops,
    }


def _records(frame: pd.DataFrame) -> list[dict[str, Any]]:
    return [{str(k): _plain(v) for k, v in row.items()} for row in frame.to_dict(orient="records")]


def _plain(value: Any) -> Any:
    """numpy scalars to Python, NaN/NA/inf to None: report.json stays strict JSON."""
    if isinstance(value, Mapping):
        return {str(k): _plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    if value is None or value is pd.NA:
        return None
    if hasattr(value, "item"):
        value = value.item()
    if isinstance(value, float) and not math.isfinite(value):
        return None
    return value


# A whole pass this much slower than its layers timed alone gets a note on why.
PASS_GAP_NOTED = 1.2


def _pass_note(totals: dict[str, Any] | None, prediction: Prediction) -> str | None:
    """Why the whole pass took longer than the sum of its layers, when it took much longer."""
    if not totals or not totals["latency_s"] or not totals["sum_of_layers_s"]:
        return None
    ratio = totals["latency_s"] / totals["sum_of_layers_s"]
    if ratio < PASS_GAP_NOTED:
        return None
    why = (f"The whole pass took {ratio:.2g}x the sum of its layers timed alone ({format_time(totals['latency_s'])}"
           f" against {format_time(totals['sum_of_layers_s'])}). Each layer is timed repeated on its own inputs, "
           "with its data and code warm in cache; in a full pass each runs once and finds them colder.")
    t = prediction.totals
    if prediction.in_pass:
        return (f"{why} The prediction models this (the pass model: fresh output buffers, cold weights, cold "
                f"calls): {format_time(t['predicted_latency_s'])} for the pass against "
                f"{format_time(t['sum_of_layers_s'])} for its layers alone.")
    if prediction.profile.kind == "gpu":
        advice = "on a GPU the pass is not modelled apart (hw measure times its ops alone there)"
    elif prediction.calibrated:
        advice = ("this profile has no pass model: measure it again with `roofline hw measure` (or --recalibrate) "
                  "to model the pass")
    else:
        advice = "a calibrated prediction (--calibrated) on a profile from `roofline hw measure` models the pass"
    return f"{why} This prediction models layers as when repeated, so it reads low against the whole pass; {advice}."


# ---- words --------------------------------------------------------------------------------------------

def summary_lines(data: ReportData, top: int = 3) -> list[str]:
    """A few plain sentences: what bounds the model, which layers take the time, how measurement compares."""
    p = data.prediction
    layers = data.layers
    lines = [p.bound_summary()]
    overhead = overhead_sentence(p)
    if overhead:
        lines.append(overhead[0].upper() + overhead[1:])
    slowest = layers.sort_values("predicted_s", ascending=False, kind="stable").head(top)
    share = slowest["share"].sum()
    listed = "; ".join(f"{name} ({kind}, {format_time(seconds)}, {label}-bound)" if label == bound else
                       f"{name} ({kind}, {format_time(seconds)}, {label})" for name, kind, seconds, bound, label
                       in zip(slowest["name"], slowest["type"], slowest["predicted_s"], slowest["bound"],
                              slowest["bound_label"]))
    lines.append(f"The {len(slowest)} slowest layers by prediction take {share:.0%} of the time: {listed}.")
    measured = data.measured_totals
    if measured and measured["latency_s"]:
        predicted = p.totals["predicted_latency_s"]
        lines.append(f"Measured {format_time(measured['latency_s'])} per batch of {measured['batch']} against "
                     f"{format_time(predicted)} predicted ({measured['latency_s'] / predicted:.3g}x)"
                     + (f": {p.interval_text(measured['latency_s'])}." if p.calibrated else "."))
        excess = (layers["measured_s"] - layers["predicted_s"]).where(layers["measured_s"] > layers["predicted_s"])
        worst = layers.loc[excess.dropna().sort_values(ascending=False, kind="stable").index[:top]]
        if len(worst):
            lines.append("Most time lost against the prediction: " + "; ".join(
                f"{name} ({format_time(seconds)} measured, {ratio:.3g}x predicted)" for name, seconds, ratio
                in zip(worst["name"], worst["measured_s"], worst["measured_over_predicted"])) + ".")
        overhead = data.measurement.metadata.get("profiler_overhead_fraction") if data.measurement is not None else None
        lines.extend(_in_pass_lines(layers, measured, overhead, top))
    return lines


def _in_pass_lines(layers: pd.DataFrame, measured: dict[str, Any], profiler_overhead: float | None,
                   top: int) -> list[str]:
    """Which layers lose the most time inside the full pass against alone (both measured)."""
    if math.isnan(measured["sum_in_pass_s"]):  # not timed in the pass (a GPU, an older measurement)
        return []
    gain = (layers["measured_in_pass_s"] - layers["measured_s"]).dropna().sort_values(ascending=False, kind="stable")
    how = (f" (torch.profiler, which made the pass {profiler_overhead:+.1%} slower than unprofiled)"
           if isinstance(profiler_overhead, (int, float)) and not math.isnan(profiler_overhead) else "")
    lines = [(f"Inside the full pass the layers took {format_time(measured['sum_in_pass_s'])}{how} against "
              f"{format_time(measured['sum_of_layers_s'])} timed alone")]
    slower = layers.loc[gain.index[:top][gain.iloc[:top] > 0]]
    if len(slower):
        lines[0] += "; slowed most in the pass: " + "; ".join(
            f"{name} ({format_time(inside)} against {format_time(alone)})"
            for name, inside, alone in zip(slower["name"], slower["measured_in_pass_s"], slower["measured_s"]))
    lines[0] += "."
    return lines


def _key_figures(data: ReportData) -> list[tuple[str, str]]:
    """(label, value) rows of the totals table shared by the HTML and Markdown reports."""
    t = data.analysis.totals
    pt = data.prediction.totals
    rows = [
        ("inputs", " ".join("x".join(str(d) for d in dims) for dims in data.analysis.trace.inputs)),
        ("MACs", format_si(t["macs"])),
        ("FLOPs", format_si(t["flops"])),
        ("parameters", format_si(t["params"])),
        ("peak activations", format_bytes(t["peak_activation_bytes"])),
        ("bytes moved (eager)", format_bytes(t["bytes_read"] + t["bytes_written"])),
        ("arithmetic intensity", f"{t['arithmetic_intensity']:.3g} FLOP/B"),
        ("model size", ", ".join(f"{name} {format_bytes(size)}" for name, size in data.analysis.model_size_bytes().items())),
        ("predicted latency", f"{format_time(pt['predicted_latency_s'])} per batch of {pt['batch']}"
                              + (f" (calibrated; sum of layers alone {format_time(pt['sum_of_layers_s'])})"
                                 if data.prediction.in_pass else " (calibrated)" if data.prediction.calibrated else "")),
        ("predicted throughput", f"{format_number(pt['throughput_samples_per_s'])} samples/s"),
    ]
    measured = data.measured_totals
    if measured and measured["latency_s"] is not None:
        rows += [
            ("measured latency", (f"{format_time(measured['latency_s'])} per batch of {measured['batch']} "
                                  f"(sum of per-layer medians {format_time(measured['sum_of_layers_s'])})")),
            ("measured throughput", f"{format_number(measured['throughput_samples_per_s'])} samples/s"),
        ]
    else:
        rows.append(("measured", "not measured"))
    return rows


def _display_table(layers: pd.DataFrame) -> pd.DataFrame:
    """The per-layer table as people read it: units applied, one string per cell."""
    def each(column: str, format_value: Callable[[Any], str]) -> list[str]:
        return [format_value(v) if pd.notna(v) else "-" for v in layers[column]]

    return pd.DataFrame({
        "layer": layers["name"],
        "type": layers["type"],
        "MACs": each("macs", format_si),
        "FLOPs": each("flops", format_si),
        "params": each("params", format_si),
        "bytes": each("bytes", format_bytes),
        "FLOP/B": each("arithmetic_intensity", lambda v: f"{v:.3g}"),
        "predicted": each("predicted_s", format_time),
        **({"80% interval": [f"{format_time(lo)} - {format_time(hi)}" if pd.notna(lo) else "-"
                             for lo, hi in zip(layers["predicted_low_s"], layers["predicted_high_s"], strict=True)]}
           if bool(layers["predicted_low_s"].notna().any()) else {}),
        "bound": layers["bound_label"],
        "share": each("share", lambda v: f"{v:.1%}"),
        "measured": each("measured_s", format_time),
        "meas/pred": each("measured_over_predicted", lambda v: f"{v:.3g}x"),
        # Inside a full pass, where a layer's code and data are colder than when repeated alone.
        **({"predicted in pass": each("predicted_in_pass_s", format_time),
            "measured in pass": each("measured_in_pass_s", format_time)} if _has_in_pass(layers) else {}),
    })


def _has_in_pass(layers: pd.DataFrame) -> bool:
    """Whether the in-pass columns say anything the others do not (measured, or predicted apart)."""
    return bool(layers["measured_in_pass_s"].notna().any()
                or not np.allclose(layers["predicted_in_pass_s"], layers["predicted_s"]))


def _type_display(types: pd.DataFrame) -> pd.DataFrame:
    return pd.DataFrame({
        "type": types["type"],
        "calls": types["calls"].astype(str),
        "FLOPs": [format_si(v) for v in types["flops"]],
        "bytes": [format_bytes(v) for v in types["bytes"]],
        "predicted": [format_time(v) for v in types["predicted_s"]],
        "share": [f"{v:.1%}" for v in types["share"]],
        "bound": types["bound"],
        "measured": [format_time(v) if pd.notna(v) else "-" for v in types["measured_s"]],
    })


def _subtitle(data: ReportData) -> str:
    """The line under the title: which profile, precision and prediction, when and by what."""
    p = data.prediction
    profile = data.profile
    mode = "calibrated roofline" if p.calibrated else "roofline"
    # A measured profile is named "<machine> (measured)"; the source is said once, after the kind (issue 14).
    name = profile.name.removesuffix(f" ({profile.source})")
    return (f"{name}: {profile.kind} profile, {profile.source}. Precision {p.precision.name} "
            f"({p.precision.compute_type} math), {mode} prediction. Generated {data.created} by roofline "
            f"{roofline.__version__}.")


def _write_markdown(data: ReportData, directory: Path, charts: Mapping[str, tuple[list[Path], str]]) -> None:
    parts = [f"# Roofline report: {data.analysis.model_name}", "", _subtitle(data), ""]
    parts += ["## Summary", "", *[f"- {line}" for line in summary_lines(data)], ""]
    if data.notes:
        parts += ["## Notes", "", *[f"- {note}" for note in data.notes], ""]
    parts += ["## Key figures", "", format_markdown(pd.DataFrame(_key_figures(data), columns=["", "value"])), ""]
    for name, (files, caption) in charts.items():
        png = next(path.name for path in files if path.suffix == ".png")
        svg = next(path.name for path in files if path.suffix == ".svg")
        parts += [f"## {_CHART_TITLES[name]}", "", f"![{_CHART_TITLES[name]}]({png})", "", f"{caption} ([SVG]({svg}))", ""]
    parts += ["## By layer type", "", format_markdown(_type_display(data.types)), ""]
    parts += ["## Layers", "", format_markdown(_display_table(data.layers)), ""]
    (directory / "report.md").write_text("\n".join(parts))


_CSS = """
body{font:14px/1.45 system-ui,-apple-system,"Segoe UI",Helvetica,Arial,sans-serif;margin:2em auto;max-width:1250px;
padding:0 1.2em;color:#1d1d1f}
h1{font-size:1.6em;margin-bottom:.1em} h2{font-size:1.2em;margin-top:1.8em;border-bottom:1px solid #ddd;padding-bottom:.2em}
.sub{color:#555;margin-top:0} .notes{background:#fff8e1;border-left:4px solid #f0b400;padding:.5em 1em}
.summary li{margin:.3em 0} figure{margin:1em 0} svg.chart{max-width:100%;height:auto;border:1px solid #eee}
svg.chart a{cursor:pointer} svg.chart a:hover,svg.chart a:focus{filter:brightness(.8);outline:none}
figcaption{color:#555;font-size:.9em} table{border-collapse:collapse;font-size:12.5px}
th,td{padding:3px 8px;border-bottom:1px solid #eee;text-align:right;white-space:nowrap}
th{background:#f6f6f6;position:sticky;top:0;cursor:pointer;user-select:none} th:hover{background:#ececec}
th[aria-sort=ascending]::after{content:" \\25B2"} th[aria-sort=descending]::after{content:" \\25BC"}
td:first-child,th:first-child,td.text,th.text{text-align:left} tr:target td{background:#fff3b0}
.key td{text-align:left;white-space:normal} .key td:first-child{color:#555;padding-right:2em}
.scroll{max-height:70vh;overflow:auto;border:1px solid #eee} footer{color:#777;font-size:.85em;margin:2em 0}
#tip{position:fixed;z-index:10;pointer-events:none;background:#222;color:#fff;padding:5px 8px;border-radius:4px;
font-size:12px;line-height:1.4;white-space:pre;box-shadow:0 2px 6px rgba(0,0,0,.3)} #tip[hidden]{display:none}
"""
# The page's only script, inline so the report stays one self-contained file that loads nothing.
# Tooltips: each chart point is an SVG <a> with a <title>, which a browser shows natively on hover; the
# script moves that text into a styled box that appears at once and follows the pointer (and on keyboard
# focus). Sorting: a click on a header sorts by that column, numbers by their raw value (data-v).
_SCRIPT = """
(() => {
  const tip = document.getElementById("tip");
  for (const link of document.querySelectorAll("svg.chart a")) {
    const title = link.querySelector("title");
    if (title) { link.dataset.tip = title.textContent; title.remove(); }
  }
  const show = (link, x, y) => {
    tip.textContent = link.dataset.tip;
    tip.hidden = false;
    const box = tip.getBoundingClientRect();
    tip.style.left = Math.max(4, Math.min(x + 14, innerWidth - box.width - 4)) + "px";
    tip.style.top = Math.max(4, y + 14 + box.height > innerHeight ? y - box.height - 10 : y + 14) + "px";
  };
  const pointed = (event) => event.target.closest && event.target.closest("svg.chart a[data-tip]");
  document.addEventListener("mouseover", (event) => {
    const link = pointed(event);
    if (link) { show(link, event.clientX, event.clientY); } else { tip.hidden = true; }
  });
  document.addEventListener("mousemove", (event) => {
    const link = pointed(event);
    if (link) { show(link, event.clientX, event.clientY); }
  });
  document.addEventListener("focusin", (event) => {
    const link = pointed(event);
    if (link) { const r = link.getBoundingClientRect(); show(link, r.right, r.bottom); } else { tip.hidden = true; }
  });

  const key = (row, column) => {
    const cell = row.cells[column];
    if (cell.dataset.v !== undefined) { return Number(cell.dataset.v); }
    return cell.classList.contains("text") ? cell.textContent : NaN;
  };
  const compare = (a, b, ascending) => {
    const missing = (v) => typeof v === "number" && Number.isNaN(v);
    if (missing(a) || missing(b)) { return missing(a) - missing(b); }  // blanks last, either way
    const order = typeof a === "number" ? a - b : a.localeCompare(b, undefined, {numeric: true});
    return ascending ? order : -order;
  };
  for (const table of document.querySelectorAll("table.sortable")) {
    const heads = Array.from(table.tHead.rows[0].cells);
    heads.forEach((head, column) => {
      head.tabIndex = 0;
      head.title = "sort by " + head.textContent;
      const sort = () => {
        const now = head.getAttribute("aria-sort");
        // Numbers sort largest first on the first click, text A to Z; a second click reverses.
        const ascending = now ? now === "descending" : head.classList.contains("text");
        heads.forEach((h) => h.removeAttribute("aria-sort"));
        head.setAttribute("aria-sort", ascending ? "ascending" : "descending");
        const body = table.tBodies[0];
        const rows = Array.from(body.rows);
        rows.sort((a, b) => compare(key(a, column), key(b, column), ascending));
        body.append(...rows);
      };
      head.addEventListener("click", sort);
      head.addEventListener("keydown", (event) => {
        if (event.key === "Enter" || event.key === " ") { event.preventDefault(); sort(); }
      });
    });
  }
})();
"""
_TEXT_COLUMNS = {"layer", "type", "bound"}
# The raw column a displayed number sorts by (both tables), so "1.2 ms" sorts after "900 us".
_SORT_KEYS = {"#": "order", "calls": "calls", "MACs": "macs", "FLOPs": "flops", "params": "params", "bytes": "bytes",
              "FLOP/B": "arithmetic_intensity", "predicted": "predicted_s", "80% interval": "predicted_high_s",
              "share": "share", "measured": "measured_s",
              "meas/pred": "measured_over_predicted", "predicted in pass": "predicted_in_pass_s",
              "measured in pass": "measured_in_pass_s"}


def _html_table(frame: pd.DataFrame, raw: pd.DataFrame | None = None, row_ids: Sequence[str] | None = None,
                table_id: str | None = None) -> str:
    """A sortable table: text columns left-aligned, numbers right-aligned (the CSS default).

    Each number cell keeps the value it sorts by in data-v, taken from `raw`'s column of `_SORT_KEYS`
    (missing values get none and sort last); `row_ids` are the targets of the charts' links.
    """
    def cell(tag: str, column: object, value: object, sort_value: Any = None) -> str:
        css = ' class="text"' if column in _TEXT_COLUMNS else ""
        number = "" if sort_value is None or pd.isna(sort_value) else f' data-v="{float(sort_value)!r}"'
        return f"<{tag}{css}{number}>{html.escape(str(value))}</{tag}>"

    columns = list(frame.columns)
    keys = [raw[_SORT_KEYS[c]].tolist() if raw is not None and _SORT_KEYS.get(str(c)) in raw else None for c in columns]
    head = "".join(cell("th", c, c) for c in columns)
    rows = []
    for i, row in enumerate(frame.itertuples(index=False)):
        row_id = f' id="{html.escape(row_ids[i])}"' if row_ids is not None else ""
        cells = "".join(cell("td", c, v, k[i] if k is not None else None) for c, v, k in zip(columns, row, keys))
        rows.append(f"<tr{row_id}>{cells}</tr>")
    table = f' id="{html.escape(table_id)}"' if table_id else ""
    return f'<table{table} class="sortable"><thead><tr>{head}</tr></thead><tbody>{"".join(rows)}</tbody></table>'


def _layer_tip(row: Mapping[str, Any]) -> str:
    """What hovering a layer's point or bar shows: name, type, work, intensity, predicted and measured time."""
    measured = float(row.get("measured_s", math.nan))
    timed = not math.isnan(measured)
    ratio = float(row.get("measured_over_predicted", math.nan))
    against = f" ({ratio:.3g}x predicted)" if timed and not math.isnan(ratio) else ""
    intensity = row["arithmetic_intensity"]
    return "\n".join([
        f"{row['name']} ({row['type']})",
        f"FLOPs: {format_si(row['flops'])}",
        f"bytes: {format_bytes(row['bytes'])}",
        f"intensity: {f'{intensity:.3g} FLOP/B' if pd.notna(intensity) else '-'}",
        f"predicted: {format_time(row['predicted_s'])}, {row['bound']}-bound",
        f"measured: {format_time(measured) + against if timed else 'not measured'}",
    ])


def _type_tip(row: Mapping[str, Any]) -> str:
    """What hovering a layer type's bar shows: its calls, work and times."""
    measured = row.get("measured_s")
    return "\n".join([
        f"{row['type']}: {row['calls']} call{'s' if row['calls'] != 1 else ''}",
        f"FLOPs: {format_si(row['flops'])}",
        f"bytes: {format_bytes(row['bytes'])}",
        f"predicted: {format_time(row['predicted_s'])} ({row['share']:.1%}), mostly {row['bound']}-bound",
        f"measured: {format_time(measured) if measured is not None and pd.notna(measured) else 'not measured'}",
    ])


def _tips(data: ReportData) -> dict[str, str]:
    """Tooltip text by the link each chart element carries (plots.layer_link / type_link)."""
    from roofline import plots

    tips = {plots.layer_link(row["name"]): _layer_tip(row) for row in data.layers.to_dict(orient="records")}
    tips.update({plots.type_link(row["type"]): _type_tip(row) for row in data.types.to_dict(orient="records")})
    return tips


_SVG_LINK = re.compile(r'<a xlink:href="(#[^"]*)"(?: target="_blank")?>')
_SVG_ID = re.compile(r'(?<=\s)id="([^"]+)"')
_SVG_REF = re.compile(r'(url\(#|xlink:href="#)([^")]+)')


def _inline_svg(svg: str, prefix: str, label: str, tips: Mapping[str, str]) -> str:
    """A chart's SVG file as an element of the page: each linked point gets a <title> with its tip.

    The XML prologue and metadata go (their DTD and namespace URLs are nothing a page should carry), and
    every id is prefixed with the chart's name so that three charts' ids cannot clash in one document.
    Links stay same-page (no new tab) and become SVG 2 `href`, so the id rewrite cannot touch them.
    """
    text = svg[svg.index("<svg"):]
    text = re.sub(r"\s*<metadata>.*?</metadata>", "", text, count=1, flags=re.DOTALL)

    def link(match: re.Match[str]) -> str:
        target = match.group(1)
        tip = tips.get(target)
        title = f"<title>{html.escape(tip, quote=False)}</title>" if tip else ""
        return f'<a href="{html.escape(target)}">{title}'

    text = _SVG_LINK.sub(link, text)
    ids = set(_SVG_ID.findall(text))
    text = _SVG_ID.sub(lambda m: f'id="{prefix}-{m.group(1)}"', text)
    text = _SVG_REF.sub(lambda m: m.group(1) + (f"{prefix}-{m.group(2)}" if m.group(2) in ids else m.group(2)), text)
    return text.replace("<svg ", f'<svg class="chart" role="img" aria-label="{html.escape(label)}" ', 1)


def _write_html(data: ReportData, directory: Path, charts: Mapping[str, tuple[list[Path], str]]) -> None:
    from roofline import plots

    e = html.escape
    body = [f"<h1>Roofline report: {e(data.analysis.model_name)}</h1>", f'<p class="sub">{e(_subtitle(data))}</p>']
    if data.notes:
        body.append('<div class="notes"><ul>' + "".join(f"<li>{e(n)}</li>" for n in data.notes) + "</ul></div>")
    body.append('<h2>Summary</h2><ul class="summary">' + "".join(f"<li>{e(s)}</li>" for s in summary_lines(data)) + "</ul>")
    key = "".join(f"<tr><td>{e(k)}</td><td>{e(v)}</td></tr>" for k, v in _key_figures(data))
    body.append(f'<h2>Key figures</h2><table class="key"><tbody>{key}</tbody></table>')
    tips = _tips(data)
    for name, (files, caption) in charts.items():
        png = next(path for path in files if path.suffix == ".png")
        svg = next(path for path in files if path.suffix == ".svg")
        title = _CHART_TITLES[name]
        chart = _inline_svg(svg.read_text(encoding="utf-8"), f"chart-{name}", f"{title} chart", tips)
        body.append(f'<h2>{e(title)}</h2><figure id="chart-{e(name)}">{chart}'
                    f'<figcaption>{e(caption)} Hover a point or bar for its figures; click it for its row. '
                    f'<a href="{e(svg.name)}">SVG</a> · <a href="{e(png.name)}">PNG</a></figcaption></figure>')
    body.append("<h2>By layer type</h2>" + _html_table(
        _type_display(data.types), data.types, [plots.type_link(t)[1:] for t in data.types["type"]], "types"))
    layers = data.layers.assign(order=np.arange(1, len(data.layers) + 1))
    shown = _display_table(layers)
    shown.insert(0, "#", layers["order"].astype(str).tolist())  # execution order, to sort back to
    table = _html_table(shown, layers, [plots.layer_link(name)[1:] for name in layers["name"]], "layers")
    body.append(f"<h2>Layers ({len(data.layers)})</h2><p class=\"sub\">One row per module call, in execution order "
                "(#); click a header to sort by it. The same rows with every column are in "
                "<a href=\"layers.csv\">layers.csv</a> and <a href=\"report.json\">report.json</a>.</p>"
                f'<div class="scroll">{table}</div>')
    body.append("<footer>Files: index.html, report.md, layers.csv, report.json, "
                + ", ".join(path.name for files, _ in charts.values() for path in files) + ".</footer>")
    page = (f'<!DOCTYPE html>\n<html lang="en"><head><meta charset="utf-8">'
            f'<meta name="viewport" content="width=device-width, initial-scale=1">'
            f"<title>Roofline report: {e(data.analysis.model_name)} on {e(data.profile.name)}</title>"
            f"<style>{_CSS}</style></head><body>\n" + "\n".join(body)
            + f'\n<div id="tip" role="tooltip" hidden></div>\n<script>{_SCRIPT}</script>\n</body></html>\n')
    (directory / "index.html").write_text(page, encoding="utf-8")


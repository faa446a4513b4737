"""Calibration: fit, per op class, how this machine's ops relate to their roofline time.

A stage of its own ABOVE prediction: it times representative ops, costs them with roofline's own rules
and the profile's roofs (roofline.predict), and fits time_measured = fixed + time_roofline / efficiency
per class (HardwareProfile.efficiency's docstring defines the factors). roofline.hardware only measures
roofs; nothing here runs unless asked (`roofline hw measure`, `--recalibrate`, `--measure-hw`).
"""
from __future__ import annotations

import dataclasses
import datetime
import functools
import itertools
import math
import statistics
import warnings
from collections.abc import Callable, Sequence
from typing import Any

import torch
import torch.nn.functional as F

from roofline.analysis import Analysis
from roofline.errors import RooflineError
from roofline.hardware import microbench
from roofline.hardware.microbench import BenchConfig, _Progress, config_of, local_device
from roofline.hardware.profile import CalibrationSample, HardwareProfile, load_profile_file, save_profile
from roofline.precision import get_precision
from roofline.predict import Prediction
from roofline.timing import reference_matmul, retained_heap, time_callable, time_interleaved, time_ratio
from roofline.trace import trace

__all__ = ["calibrated_types", "efficiency_steps", "ensure_measured_profile", "fit_class", "fit_efficiency", "fit_line",
           "fit_rounds", "group_rate_steps", "measure_chain_pass_call", "measure_conv_group_rate", "measure_efficiency",
           "measure_profile", "recalibrate", "recalibration_device", "representative_ops"]


def efficiency_steps(config: BenchConfig, device: str, types: int = 1) -> int:
    """Progress steps of measure_efficiency over `types` compute types: each op per round and one reference."""
    return config.rounds * (types * len(representative_ops("meta", 0.01)) + 1)


# The compute types whose ops a profile may carry lines of their own for (HardwareProfile.for_compute_type),
# by the torch dtype their representative ops are timed in; fp32's lines are the unprefixed keys.
_CALIBRATED_DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}


def calibrated_types(profile: HardwareProfile) -> list[str]:
    """fp32, then each of bf16 and fp16 that the profile has a peak for at a fast-path rate (at least
    microbench's slow-path fraction of fp32's): their kernels, not fp32's, run those precisions, and a
    slow path is said in the peak's note rather than timed at length."""
    fp32 = profile.peak_flops_per_s.get("fp32", 0.0)
    return ["fp32", *(t for t in ("bf16", "fp16")
                      if profile.peak_flops_per_s.get(t, 0.0) >= microbench.SLOW_PATH_FRACTION * fp32)]


class _Call(torch.nn.Module):
    """Wraps one functional call so the tracer can cost it with the project's own rules."""

    def __init__(self, fn: Callable[..., object]) -> None:
        super().__init__()
        self.fn = fn

    def forward(self, *inputs: torch.Tensor) -> object:
        return self.fn(*inputs)


# (op class, description, function, inputs)
RepresentativeOp = tuple[str, str, Callable[..., object], list[torch.Tensor]]


def representative_ops(device: str, scale: float, dtype: torch.dtype = torch.float32) -> list[RepresentativeOp]:
    """(op class, description, function, inputs): per class, one or two ops of `dtype` at three sizes.

    Three sizes (small, cache-sized, large) separate a class's fixed per-call cost from its
    efficiency; the sizes bracket the layers of common CNNs and transformers at batch 1.
    """

    def dim(base: int) -> int:
        return max(2, int(base * scale))

    def randn(*shape: int) -> torch.Tensor:
        return torch.randn(*shape, device=device, dtype=dtype)

    ops: list[RepresentativeOp] = []
    # Transformer-shaped products too (MLP up and down projections, an LM head whose weight does not
    # fit in cache): square products alone overstate what real layers reach.
    for m, k, n in ((dim(16), 256, 256), (dim(128), 768, 768), (dim(128), 768, 3072), (dim(128), 3072, 768),
                    (dim(512), 1024, 1024), (dim(64), 768, 16384), (dim(128), 1024, 16384)):
        ops.append(("gemm", f"linear {m}x{k} @ {k}x{n}", F.linear, [randn(m, k), randn(n, k)]))
    for c, hw in ((32, dim(14)), (64, dim(28)), (64, dim(56))):
        ops.append(("conv", f"conv3x3 {c}->{c} at {hw}x{hw}", lambda x, w: F.conv2d(x, w, padding=1),
                    [randn(1, c, hw, hw), randn(c, c, 3, 3)]))
        ops.append(("pointwise_conv", f"conv1x1 {4 * c}->{c} at {hw}x{hw}", F.conv2d,
                    [randn(1, 4 * c, hw, hw), randn(c, 4 * c, 1, 1)]))
    for c, hw in ((64, dim(14)), (128, dim(28)), (256, dim(56))):
        ops.append(("grouped_conv", f"depthwise 3x3 {c}ch at {hw}x{hw}",
                    lambda x, w: F.conv2d(x, w, padding=1, groups=w.shape[0]), [randn(1, c, hw, hw), randn(c, 1, 3, 3)]))
    for n in (dim(4096), dim(262144), dim(4194304)):
        ops.append(("elementwise", f"add of {n}", torch.add, [randn(n), randn(n)]))
        ops.append(("activation", f"gelu of {n}", F.gelu, [randn(n)]))
        ops.append(("memory", f"cat of two {n // 2}", lambda a, b: torch.cat([a, b]), [randn(n // 2), randn(n // 2)]))
    for rows in (dim(8), dim(128), dim(2048)):
        ops.append(("norm", f"layer_norm {rows}x768", lambda x: F.layer_norm(x, (768,)), [randn(rows, 768)]))
        ops.append(("softmax", f"softmax {rows}x512", lambda x: torch.softmax(x, -1), [randn(rows, 512)]))
        ops.append(("reduction", f"mean {rows}x1024", lambda x: x.mean(-1), [randn(rows, 1024)]))
    for c, hw in ((32, dim(14)), (64, dim(28)), (64, dim(56))):
        stats = [randn(c), randn(c).abs() + 1]
        ops.append(("norm", f"batch_norm {c}ch at {hw}x{hw}", lambda x, m, v: F.batch_norm(x, m, v),
                    [randn(1, c, hw, hw), *stats]))
    for c, hw in ((16, dim(28)), (32, dim(56)), (64, dim(112))):
        ops.append(("pool", f"max_pool 3x3/2 {c}ch at {hw}x{hw}", lambda x: F.max_pool2d(x, 3, 2, 1), [randn(1, c, hw, hw)]))
    for length in (dim(32), dim(128), dim(512)):
        q = randn(1, 8, length, 64)
        ops.append(("attention", f"SDPA 8 heads, L={length}, d=64", F.scaled_dot_product_attention, [q, q, q]))
    return ops


def _roofline_s(fn: Callable[..., object], inputs: list[torch.Tensor], profile: HardwareProfile,
                compute_type: str = "fp32") -> tuple[float, str]:
    """The op's uncalibrated roofline time at `compute_type` (its peak, its element sizes), costed by
    roofline's own rules (no overhead), and the memory level its largest op streams from."""
    ops = Prediction(Analysis(trace(_Call(fn), inputs), get_precision(compute_type)), profile).ops
    level = str(ops.loc[ops["bytes"].idxmax(), "memory_level"])
    return float((ops[["compute_s", "memory_s"]].max(axis=1)).sum()), level


_MAX_FITTED_EFFICIENCY = 1.5  # above the roof by up to 50%: cache effects the level model misses


def fit_line(roofline_s: list[float], measured_s: list[float]) -> tuple[float, float]:
    """(fixed seconds, efficiency) of measured = fixed + roofline / efficiency, least squares in
    relative error (every size counts alike), fixed >= 0 and efficiency in (0, 1.5]."""
    r = torch.tensor(roofline_s, dtype=torch.float64)
    t = torch.tensor(measured_s, dtype=torch.float64)
    weight = 1.0 / t
    design = torch.stack([torch.ones_like(r), r], dim=1) * weight[:, None]
    solution = torch.linalg.lstsq(design, t * weight, rcond=None).solution
    fixed, slope = float(solution[0]), float(solution[1])
    if fixed < 0 or slope <= 0:  # no sensible intercept: a pure proportional fit
        fixed = 0.0
        slope = float((t * r * weight**2).sum() / (r * r * weight**2).sum())
    efficiency = min(_MAX_FITTED_EFFICIENCY, max(1e-6, 1.0 / slope))
    return max(fixed, 1e-9), efficiency


def measure_efficiency(
    profile: HardwareProfile, device: str, config: BenchConfig, progress: _Progress
) -> tuple[dict[str, dict[str, float]], dict[str, str]]:
    """Per op class: efficiency and fixed per-call cost, fitted to measured = fixed + roofline / eff.

    Roofline times come from the measured profile itself and roofline's own cost rules, so a factor
    says how close ops of the class get to this device's own roofs, and the fixed part is what a
    call costs however small it is. Returns the profile fields (efficiency, fixed_overhead_s) and
    metadata. (What a pass adds to its layers is measured on a network: measure_pass_call.)

    Each of calibrated_types(profile) is fitted on its own ops (bf16 ops run other kernels than fp32
    ones: a CPU's bf16 GEMM may reach twice fp32's rate while its bf16 elementwise ops convert and run
    slower per element); fp32's keys are plain (gemm), the others' carry their type (bf16:gemm). All
    types' ops are timed in the same interleaved rounds, so a slow spell of a shared machine cannot
    land on one type's lines and not another's (their ratio is what a precision comparison shows).
    """
    types = calibrated_types(profile)
    per_type = [representative_ops(device, config.efficiency_scale, _CALIBRATED_DTYPES[t]) for t in types]
    ops = [op for typed in per_type for op in typed]
    fns, labels, reference_flops = efficiency_callables(ops, device)
    labels = [*(f"{type_prefix(t)}{op[0]}" for t, typed in zip(types, per_type, strict=True) for op in typed), "reference"]
    bounds = list(itertools.accumulate([0, *(len(typed) for typed in per_type)]))
    alone_rounds: list[list[float]] = []  # per round, per callable (the reference last): median seconds
    for _ in range(config.rounds):
        # Each round times every op alone, interleaved, so a slow spell of a shared machine does not land on
        # one class and not another.
        alone = time_interleaved(fns, 1, min_run_time_s=config.min_run_time_s / config.rounds, labels=labels,
                                 step=lambda index: progress.step(labels[index]), device=device)
        alone_rounds.append([m.median_s for m in alone])
    fields: dict[str, dict[str, float]] = {}
    metadata: dict[str, str] = {}
    for index, compute_type in enumerate(types):
        low, high = bounds[index], bounds[index + 1]
        typed_fields, typed_metadata = fit_rounds(
            profile, per_type[index], [[*row[low:high], row[-1]] for row in alone_rounds], reference_flops,
            compute_type)
        for name, values in typed_fields.items():
            fields.setdefault(name, {}).update(values)
        metadata |= typed_metadata
    return fields, metadata


def fit_rounds(profile: HardwareProfile, ops: list[RepresentativeOp], alone_rounds: Sequence[Sequence[float]],
               reference_flops: float, compute_type: str = "fp32") -> tuple[dict[str, dict[str, float]], dict[str, str]]:
    """The profile fields (efficiency, fixed_overhead_s) and metadata fitted from per-round median times of
    `compute_type` ops: `alone_rounds` per round, per op then the reference matmul last."""
    medians = [statistics.median(column) for column in zip(*alone_rounds, strict=True)]
    efficiency, fixed, metadata = fit_efficiency(profile, ops, medians[:-1], reference_flops / medians[-1],
                                                 compute_type=compute_type)
    prefix = type_prefix(compute_type)
    metadata |= _spread_metadata(ops, [row[:-1] for row in alone_rounds], "efficiency", prefix)
    return {"efficiency": efficiency, "fixed_overhead_s": fixed}, metadata


def type_prefix(compute_type: str) -> str:
    """How a profile's factor keys name the compute type their ops ran in: none for fp32, 'bf16:' for bf16."""
    return "" if compute_type == "fp32" else f"{compute_type}:"


def _spread_metadata(ops: list[RepresentativeOp], rounds: Sequence[Sequence[float]], name: str,
                     prefix: str = "") -> dict[str, str]:
    """Per class, how much its ops' times moved from round to round: the median over its ops of half the
    range over rounds, relative to the median (a prediction interval's timing part; HardwareProfile.spread)."""
    if len(rounds) < 2:
        return {}
    per_class: dict[str, list[float]] = {}
    for (op_class, *_), times in zip(ops, zip(*rounds, strict=True), strict=True):
        middle = statistics.median(times)
        if middle > 0:
            per_class.setdefault(op_class, []).append((max(times) - min(times)) / (2 * middle))
    return {f"{name}_spread.{prefix}{c}": f"{statistics.median(v):.4g}" for c, v in per_class.items()}


def efficiency_callables(ops: list[RepresentativeOp], device: str) -> tuple[list[Callable[[], object]], list[str], float]:
    """What to time for `ops`: each op on its inputs, then the reference matmul (the machine's speed
    while they ran); their labels; the reference's FLOPs per call."""
    reference, reference_flops = reference_matmul(device)
    fns = [lambda fn=fn, inputs=inputs: fn(*inputs) for _, _, fn, inputs in ops]
    return [*fns, reference], [op[0] for op in ops] + ["reference"], reference_flops


def fit_efficiency(
    profile: HardwareProfile, ops: list[RepresentativeOp], medians_s: Sequence[float],
    reference_flops_per_s: float | None = None, name: str = "efficiency", compute_type: str = "fp32",
) -> tuple[dict[str, float], dict[str, float], dict[str, str]]:
    """(efficiency, fixed_overhead_s, metadata) from the median time of each of `ops` (of `compute_type`),
    fitted per class; metadata keys start with `name`, class keys with the type's prefix (type_prefix)."""
    prefix = type_prefix(compute_type)
    points: dict[str, list[tuple[float, float, str, str]]] = {}
    for (op_class, description, fn, inputs), median_s in zip(ops, medians_s, strict=True):
        roofline_s, level = _roofline_s(fn, inputs, profile, compute_type)
        points.setdefault(op_class, []).append((roofline_s, median_s, level, description))
    efficiency: dict[str, float] = {}
    fixed: dict[str, float] = {}
    metadata: dict[str, str] = {}
    if reference_flops_per_s is not None:
        metadata["reference_flops_per_s"] = f"{reference_flops_per_s:.4g}"
    last_level = profile.memory_levels[-1].name
    for op_class, samples in points.items():
        factors, fixed[prefix + op_class] = fit_class(samples, last_level)
        efficiency.update({prefix + (op_class if level is None else f"{op_class}@{level}"): f
                           for level, f in factors.items()})
        metadata[f"{name}.{prefix}{op_class}"] = "; ".join(
            str(CalibrationSample(description, r, t, level)) for r, t, level, description in samples
        )
    return efficiency, fixed, metadata


def fit_class(samples: list[tuple[float, float, str, str]], last_level: str) -> tuple[dict[str | None, float], float]:
    """({None: class efficiency, maybe last_level: its own}, fixed seconds) from (roofline s, measured
    s, level, description) samples.

    With two or more in-cache sizes, the line is fitted to those alone and the sizes that stream
    from the last level (DRAM/HBM) get their own factor over the same fixed cost: a GEMM whose
    weights do not fit in cache runs at a lower fraction of its roof than one whose weights do, and
    one line through both would misstate each.
    """
    cached = [(r, t) for r, t, level, _ in samples if level != last_level]
    streamed = [(r, t) for r, t, level, _ in samples if level == last_level]
    if len(cached) < 2 or not streamed:
        fixed, factor = fit_line([r for r, _, _, _ in samples], [t for _, t, _, _ in samples])
        return {None: factor}, fixed
    fixed, factor = fit_line([r for r, _ in cached], [t for _, t in cached])
    # A streamed size no slower than the fixed cost says nothing about its rate: left out.
    ratios = [r / (t - fixed) for r, t in streamed if t > fixed]
    if not ratios:
        return {None: factor}, fixed
    streamed_factor = min(_MAX_FITTED_EFFICIENCY, max(1e-6, statistics.median(ratios)))
    return {None: factor, last_level: streamed_factor}, fixed



# The grouped convolutions measure_conv_group_rate times against dense ones: 3x3, at these (channels, size)
# (none of them a convolution of benchmarks/ratio_accuracy.py), at these channels per group. The rate at one
# count moved by about 20% from size to size; two sizes take the middle.
GROUP_RATE_SHAPES = ((384, 14), (192, 28))
GROUP_RATE_COUNTS = (2, 4, 8, 16, 32, 64)
GROUP_RATE_SIGMA = "conv_group_rate_sigma"  # metadata key: the rates' spread over sizes (sigma of log rate)


def group_rate_steps(config: BenchConfig) -> int:
    """Progress steps of measure_conv_group_rate: each convolution (the dense ones too) per round."""
    return config.rounds * len(GROUP_RATE_SHAPES) * (len(GROUP_RATE_COUNTS) + 1)


def measure_conv_group_rate(device: str, config: BenchConfig,
                            progress: _Progress) -> tuple[dict[int, float], str, dict[str, str]]:
    """(HardwareProfile.conv_group_rate, its note, metadata): per channels per group, a grouped 3x3 convolution's
    rate per FLOP against a dense one of the same channels and size, timed interleaved with it, at
    GROUP_RATE_SHAPES (the geometric mean over them). The metadata's GROUP_RATE_SIGMA is how far the sizes'
    rates lay from that mean (RMS over the counts of their standard deviation in log): what a grouped
    convolution of another size may be off by, which its prediction interval carries.

    Dense convolution is one GEMM-like kernel with full vectors; split into groups of a few channels, each
    group's product is too narrow to fill them (on the 2-core AVX-512 VM, 4 channels per group ran at 0.23-0.34
    of dense's rate across four sizes, 8 at 0.43-0.70, 32 at 0.82-0.99), a fraction no class line of FLOPs
    and bytes can see. The largest count timed, dense, is kept at rate 1, so counts between 64 and it are
    interpolated towards it; no rate is above 1. Sizes are not scaled with the other ops (--quick): on a
    smaller map dense's kernel falls off first.
    """
    fns: list[Callable[[], object]] = []
    labels: list[str] = []
    for channels, size in GROUP_RATE_SHAPES:
        x = torch.randn(1, channels, size, size, device=device)
        for count in (channels, *GROUP_RATE_COUNTS):
            fns.append(functools.partial(F.conv2d, x, torch.randn(channels, count, 3, 3, device=device), padding=1,
                                         groups=channels // count))
            labels.append(f"conv 3x3 {channels}ch at {size}x{size}, {count} per group")
    measured = time_interleaved(fns, config.rounds, min_run_time_s=config.min_run_time_s, labels=labels,
                                step=lambda index: progress.step(labels[index]), device=device)
    per_shape = len(GROUP_RATE_COUNTS) + 1
    logs: dict[int, list[float]] = {}
    for index, (channels, _) in enumerate(GROUP_RATE_SHAPES):
        dense, *grouped = measured[index * per_shape:(index + 1) * per_shape]
        # FLOPs grow with the channels per group: the rate per FLOP is dense time x count / (channels x its time).
        for count, m in zip(GROUP_RATE_COUNTS, grouped, strict=True):
            logs.setdefault(count, []).append(math.log(dense.median_s * count / (channels * m.median_s)))
    # A grouped convolution timed faster per FLOP than dense is noise, or dense's kernel off its best: held at 1.
    rates = {count: min(1.0, math.exp(statistics.fmean(values))) for count, values in logs.items()}
    rates[max(channels for channels, _ in GROUP_RATE_SHAPES)] = 1.0
    sigma = math.sqrt(statistics.fmean(statistics.pvariance(values) for values in logs.values()))
    spread = max(m.iqr_s / m.median_s for m in measured)
    shapes = " and ".join(f"{channels} channels at {size}x{size}" for channels, size in GROUP_RATE_SHAPES)
    note = (f"measured: 3x3 convolutions of {shapes}, grouped ({', '.join(map(str, GROUP_RATE_COUNTS))} channels per "
            f"group) against dense, timed interleaved over {config.rounds} rounds: time per FLOP, dense over grouped, "
            f"geometric mean over the sizes (largest IQR {spread:.1%} of a median; the sizes' rates lay {sigma:.2f} "
            "from it in log, RMS)")
    return rates, note, {GROUP_RATE_SIGMA: f"{sigma:.4g}"}


def recalibration_device(profile: HardwareProfile) -> str:
    """The device here to time `profile`'s efficiency ops on; a one-line error when it has none or no
    factors. Cheap: callers check it before slow work."""
    device, why_not = local_device(profile)
    if device is None:
        raise RooflineError(f"cannot recalibrate: {why_not}")
    if profile.source != "measured" or not profile.efficiency:
        raise RooflineError(f"{profile.where} is not a measured profile with efficiency factors, so there is "
                            "nothing to recalibrate; make one with: roofline hw measure --save FILE")
    return device


def recalibrate(profile: HardwareProfile, device: str | None = None, progress: bool = True) -> HardwareProfile:
    """The measured `profile` with its efficiency lines (and, on a CPU, its pass model) timed again now, on
    `device` (default: recalibration_device(profile)).

    A shared machine's speed drifts by tens of percent over minutes; bandwidths and peaks are what
    the hardware can do, but the factors say what it does now. Re-timing only the efficiency ops
    (10-60 s) just before a measurement puts prediction and measurement in the same minutes. The
    profile's own roofs and benchmark sizes are kept, so the factors mean what they meant.
    """
    here = recalibration_device(profile)  # the one-line errors: no device of its kind here, nothing to refit
    device = device or here
    config = config_of(profile)
    bar = _Progress(efficiency_steps(config, device, len(calibrated_types(profile))) + group_rate_steps(config)
                    + network_steps(device, config), progress, f"recalibrating on {device}")
    try:
        with torch.inference_mode(), retained_heap():
            fields, metadata = measure_efficiency(profile, device, config, bar)
            rates, rate_note, rate_metadata = measure_conv_group_rate(device, config, bar)
        date = datetime.datetime.now().isoformat(timespec="seconds")
        # The samples of the lines refitted, and a retired pass line's (a profile measured before the pass model).
        stale = ("efficiency.", "efficiency_spread.", "pass_efficiency.", "pass_efficiency_spread.")
        kept = {key: value for key, value in profile.metadata.items() if not key.startswith(stale)}
        notes = {key: value for key, value in profile.notes.items() if key != "pass_efficiency"}
        notes["conv_group_rate"] = rate_note
        refit: dict[str, Any] = {**fields, "conv_group_rate": rates}
        return _with_network_evidence(dataclasses.replace(
            profile, **refit,
            metadata={**kept, **metadata, **rate_metadata, "recalibrated": date},
            notes={**notes, "recalibrated": f"efficiency factors timed again on {date}; roofs from {profile.metadata.get('date', '?')}"},
        ), device, bar)
    finally:
        bar.close()



def measure_profile(device: str = "cpu", quick: bool = False, progress: bool = True,
                    config: BenchConfig | None = None) -> HardwareProfile:
    """The full measured profile of `device`: its roofs (roofline.hardware.microbench.measure_roofs), then,
    when the config asks for them, the efficiency lines fitted against those roofs."""
    microbench.check_bench_device(device)
    config = config or (microbench.QUICK if quick else microbench.FULL)
    steps = microbench.roof_steps(config, device) + (
        efficiency_steps(config, device) + group_rate_steps(config) + network_steps(device, config)
        if config.efficiency else 0)
    bar = _Progress(steps, progress, f"measuring {device}")
    try:
        profile = microbench.measure_roofs(device, config, bar)
        if not config.efficiency or not any(level.bandwidth_bytes_per_s for level in profile.memory_levels):
            return profile
        types = calibrated_types(profile)  # known once the peaks are: the steps counted above were fp32's
        bar.extend(efficiency_steps(config, device, len(types)) - efficiency_steps(config, device))
        with torch.inference_mode(), retained_heap():
            fields, metadata = measure_efficiency(profile, device, config, bar)
            rates, rate_note, rate_metadata = measure_conv_group_rate(device, config, bar)
        notes = {**profile.notes, "conv_group_rate": rate_note, "efficiency": (
            f"fitted per op class over ops at three sizes (in metadata), per compute type ({', '.join(types)}; "
            "fp32's keys plain, the others' prefixed: bf16:gemm): "
            "time_measured = fixed_overhead_s + time_roofline / efficiency; time_calibrated uses that line")}
        refit: dict[str, Any] = {**fields, "conv_group_rate": rates, "notes": notes,
                                 "metadata": {**profile.metadata, **metadata, **rate_metadata}}
        return _with_network_evidence(dataclasses.replace(profile, **refit), device, bar)
    finally:
        bar.close()


# Metadata keys of the prediction's own error on a network (issue 16), sigma of log time: layers alone, layers
# in a real pass, and a whole pass. Prediction intervals add them in quadrature (Prediction.model_sigma).
ALONE_MODEL_SIGMA = "alone_model_sigma"
PASS_MODEL_SIGMA = "pass_model_sigma"
PASS_MODEL_TOTAL_SIGMA = "pass_model_total_sigma"
MODEL_EVIDENCE_KEYS = (ALONE_MODEL_SIGMA, PASS_MODEL_SIGMA, PASS_MODEL_TOTAL_SIGMA)
PASS_MODEL_ROUNDS = 3


def network_steps(device: str, config: BenchConfig) -> int:
    """Progress steps of _with_network_evidence: the chain of small layers and the reference network, on a CPU."""
    return 2 if device == "cpu" and config.pass_blocks >= 1 else 0


def _with_network_evidence(profile: HardwareProfile, device: str, bar: _Progress) -> HardwareProfile:
    """`profile` with its pass model's per-call cost (measured on a chain of small layers) and the evidence of
    its prediction's error (on the reference network), both measured anew (a CPU profile); on a GPU neither
    (kernels queue behind the host: no pass model there). Each of the two is one step of `bar`."""
    kept = {key: value for key, value in profile.metadata.items()
            if not key.startswith((*MODEL_EVIDENCE_KEYS, *PASS_CALL_KEYS, "model_sigma."))}
    notes = {key: value for key, value in profile.notes.items() if key != "pass_call_s"}
    profile = dataclasses.replace(profile, pass_call_s=None, metadata=kept, notes=notes)
    config = config_of(profile)
    if device != "cpu" or profile.kind != "cpu" or config.pass_blocks < 1:
        return profile
    with torch.no_grad(), retained_heap():
        measured = measure_chain_pass_call(profile, config)
        profile = dataclasses.replace(
            profile, pass_call_s=measured.pass_call_s, metadata={**kept, **measured.metadata()},
            notes={**notes, "pass_call_s": measured.note()})
        bar.step("pass model: a chain of small layers")
        module, inputs = _reference_network()
        counted = Analysis(trace(module, inputs, model_name="reference network"), get_precision("fp32"))
    evidence = reference_network_evidence(profile, device, module, inputs, counted)
    bar.step("the reference network")
    return dataclasses.replace(profile, metadata={**profile.metadata, **evidence})


# Metadata keys of the pass model's measurement (measure_pass_call).
PASS_CALL_KEYS = ("pass_call.",)
# Each layer is called this many times in a row on the "layers alone" side of the pass measurement.
_LAYER_REPEATS = 10
# Fresh builds of the network the pass is measured on: which layers run slow in a pass depends on where their
# buffers land (on the 2-core VM one build's batch norm took 48 us in the pass, another's 219 us).
_PASS_INSTANCES = 4


@dataclasses.dataclass(frozen=True)
class PassMeasurement:
    """A network's pass against its layers alone, timed in alternation, and the per-call cost of a pass that
    the pass model's cold-data terms leave (measure_pass_call)."""

    pass_s: float  # the whole pass, median over blocks
    alone_s: float  # its layers each timed alone (warm), summed
    penalty_quartiles: tuple[float, float]  # of (pass - layers alone) / layers alone over the blocks
    cold_data_s: float  # the pass model's fresh-buffer and cold-weight terms over the network's ops
    ops: int
    threads: int
    instances: int

    @property
    def penalty_s(self) -> float:
        return self.pass_s - self.alone_s

    @property
    def pass_call_s(self) -> float:
        """What is left per op call (at least 1 ns: a profile's times are positive)."""
        return max(1e-9, (self.penalty_s - self.cold_data_s) / self.ops)

    def metadata(self) -> dict[str, str]:
        low, high = self.penalty_quartiles
        return {"pass_call.pass_s": f"{self.pass_s:.4g}", "pass_call.alone_s": f"{self.alone_s:.4g}",
                "pass_call.penalty_iqr": f"{low:.4g} {high:.4g}", "pass_call.cold_data_s": f"{self.cold_data_s:.4g}",
                "pass_call.ops": str(self.ops), "pass_call.threads": str(self.threads),
                "pass_call.instances": str(self.instances)}

    def note(self) -> str:
        low, high = self.penalty_quartiles
        return (f"measured: a chain of small layers' pass ({self.pass_s * 1e6:.0f} us) against its layers each "
                f"repeated alone ({self.alone_s * 1e6:.0f} us), in alternating blocks over {self.instances} builds "
                f"of it (pass / alone - 1: block quartiles {low:+.1%} {high:+.1%}); less its fresh output buffers "
                f"and cold weights ({self.cold_data_s * 1e6:.0f} us), per op call over its {self.ops} ops")


def measure_pass_call(profile: HardwareProfile, build: Callable[[], tuple[torch.nn.Module, list[torch.Tensor]]],
                      counted: Analysis, config: BenchConfig, instances: int = _PASS_INSTANCES) -> PassMeasurement:
    """The pass model's per-call cost on this CPU, from a network (`build` makes it afresh; `counted` is its
    analysis): calibration's is _pass_call_chain, whose cold data is a few percent of its pass penalty, so
    what is left is the calls' own cost, not a model's guess at its data.

    A: one forward pass. B: each layer on its captured inputs, _LAYER_REPEATS times in a row, layer after
    layer: (R - 1) of every R calls are warm, as `measure` times a layer alone, and the first pays about what
    it would in a pass. So A = L + P and B = R L + P (L: the layers alone, P: the pass penalty), and each
    block's ratio rho = A / B gives P / L = (rho R - 1) / (1 - rho), free of the machine's speed in that
    block. Timed A B, B A, ... (timing.time_ratio) on each of `instances` builds, config.pass_blocks blocks
    in all; the median of the per-block P / L, with L from B."""
    from roofline.measure.capture import Capture, forward_callable, layer_callable

    repeats = _LAYER_REPEATS
    shares: list[float] = []
    layer_side_s: list[float] = []  # per build, B's median time
    for _ in range(instances):
        module, inputs = build()
        modules = dict(module.named_modules())
        layers = [layer_callable(row, modules) for row in Capture(module).run(inputs)]

        def layers_alone(layers: list[Callable[[], object]] = layers) -> None:
            for call in layers:
                for _ in range(repeats):
                    call()

        timed = time_ratio(forward_callable(module, inputs), layers_alone,
                           blocks=max(1, config.pass_blocks // instances), block_s=config.pass_block_s)
        shares.extend((rho * repeats - 1) / (1 - rho) for rho in timed.block_ratios if rho < 1)
        layer_side_s.append(timed.b.median_s)
    if not shares:
        raise RooflineError("a network's pass took longer than its layers each repeated "
                            f"{repeats} times: the pass model cannot be measured on this machine now")
    share = statistics.median(shares)
    alone = statistics.median(layer_side_s) / (repeats + share)
    low, high = ((min(shares), max(shares)) if len(shares) < 2 else
                 [statistics.quantiles(shares, n=4, method="inclusive")[i] for i in (0, 2)])
    return PassMeasurement(pass_s=alone * (1 + share), alone_s=alone, penalty_quartiles=(low, high),
                           cold_data_s=Prediction(counted, profile).cold_data_s(), ops=len(counted.records),
                           threads=torch.get_num_threads(), instances=instances)


def _reference_network() -> tuple[torch.nn.Module, list[torch.Tensor]]:
    """A small network of the layer kinds models are made of: dense, depthwise and pointwise convolutions,
    batch norm, ReLU and ReLU6 (in place), pooling, then linear layers with layer norm and GELU. No benchmark
    or example uses it, so the error it shows is evidence the accuracy checks never fitted."""
    from torch import nn

    class Reference(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.stem = nn.Sequential(nn.Conv2d(3, 32, 3, stride=2, padding=1), nn.BatchNorm2d(32), nn.ReLU(inplace=True))
            self.block = nn.Sequential(
                nn.Conv2d(32, 32, 3, padding=1, groups=32), nn.BatchNorm2d(32), nn.ReLU6(inplace=True),
                nn.Conv2d(32, 64, 1), nn.BatchNorm2d(64), nn.ReLU(inplace=True), nn.MaxPool2d(2))
            self.head = nn.Sequential(nn.Linear(64, 256), nn.LayerNorm(256), nn.GELU(), nn.Linear(256, 64))

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            x = self.block(self.stem(x))
            out: torch.Tensor = self.head(x.flatten(2)[0].t())  # each position a token: 1024 x 64
            return out

    torch.manual_seed(0)
    return Reference().eval(), [torch.randn(1, 3, 128, 128)]


def measure_chain_pass_call(profile: HardwareProfile, config: BenchConfig) -> PassMeasurement:
    """measure_pass_call on calibration's own network, _pass_call_chain: the per-call cost a profile keeps."""
    chain, inputs = _pass_call_chain()
    counted = Analysis(trace(chain, inputs, model_name="pass-call chain"), get_precision("fp32"))
    return measure_pass_call(profile, _pass_call_chain, counted, config)


def _pass_call_chain() -> tuple[torch.nn.Module, list[torch.Tensor]]:
    """A chain of small layers of the kinds models are made of (dense, depthwise and pointwise convolutions,
    batch norm, in-place ReLU and ReLU6, Hardswish, SiLU, pooling; then linear, layer norm, GELU, softmax) on
    16 x 16 x 16 activations: each call moves a few KiB, so in a pass what a layer pays beyond its time alone
    is the call itself, running cold (on the 2-core VM, 5-6 us per call against 0 for a network whose cold
    data the pass model over-costs)."""
    from torch import nn

    channels = 16

    def unit() -> list[nn.Module]:
        return [nn.Conv2d(channels, channels, 3, padding=1), nn.BatchNorm2d(channels), nn.ReLU(inplace=True),
                nn.Conv2d(channels, channels, 3, padding=1, groups=channels), nn.BatchNorm2d(channels),
                nn.ReLU6(inplace=True), nn.Conv2d(channels, channels, 1), nn.BatchNorm2d(channels), nn.Hardswish(),
                nn.SiLU()]

    torch.manual_seed(0)
    head = [nn.MaxPool2d(2), nn.Flatten(), nn.Linear(channels * 64, 64), nn.LayerNorm(64), nn.GELU(),
            nn.Linear(64, 10), nn.Softmax(dim=-1)]
    return nn.Sequential(*unit(), *unit(), *head).eval(), [torch.randn(1, channels, 16, 16)]


def _log_errors(measured: dict[str, float], predicted: Any) -> tuple[list[str], list[float]]:
    """The layers with both a measured and a predicted time, and log(measured / predicted) of each."""
    both = [name for name in predicted.index if measured.get(name, 0.0) > 0 and float(predicted[name]) > 0]
    return both, [math.log(measured[name] / float(predicted[name])) for name in both]


def _rms(values: list[float]) -> float:
    return math.sqrt(statistics.fmean(v * v for v in values))


def reference_network_evidence(profile: HardwareProfile, device: str, module: torch.nn.Module,
                               inputs: list[torch.Tensor], counted: Analysis) -> dict[str, str]:
    """How far the calibrated prediction misses real layers, as metadata for prediction intervals.

    A line's residuals at the three sizes it was fitted on understate its error on layers of other shapes,
    and the pass model is a model. So time the reference network's layers alone (roofline.measure) and inside
    real passes (torch.profiler, the median of PASS_MODEL_ROUNDS rounds of 10 passes), predict them with
    `profile` (`counted` is the network's analysis), and keep the root mean square of log(measured /
    predicted) over its layers, bias included, alone and in the pass; and the log error of the whole pass,
    timed without the profiler (the profiler's own cost per op is no part of a pass). Nothing of the pass
    model was fitted on this network (its per-call cost comes from _pass_call_chain). CPU only."""
    from roofline.measure.api import measure
    from roofline.measure.capture import forward_callable
    from roofline.measure.passes import profile_pass_times

    timed: dict[str, list[float]] = {}
    with torch.no_grad(), retained_heap():  # as roofline.measure runs a pass: the same aten ops, the heap kept
        for _ in range(PASS_MODEL_ROUNDS):  # a median over rounds: one preempted pass must not set the evidence
            times = profile_pass_times(forward_callable(module, inputs), device, counted.trace.records,
                                       "reference network", passes=10)
            for name, seconds in times.in_pass_s.items():
                timed.setdefault(name, []).append(seconds)
        pass_s = time_callable(forward_callable(module, inputs), device=device, min_run_time_s=0.1).median_s
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # a noisy figure is part of the evidence, not a message for the user
        alone = measure(module, inputs, device=device, batch_sizes=[1], progress=False).layers
    in_pass = {name: statistics.median(values) for name, values in timed.items()}
    prediction = Prediction(counted, profile, calibrated=True)
    layers = prediction.layers.set_index("name")
    both, pass_errors = _log_errors(in_pass, layers["in_pass_s"])
    alone_names, alone_errors = _log_errors(dict(zip(alone["name"], alone["measured_s"], strict=True)),
                                            layers["predicted_s"])
    if len(both) < 3 or len(alone_names) < 3:
        return {}
    sigma, alone_sigma = _rms(pass_errors), _rms(alone_errors)
    total = abs(math.log(pass_s / prediction.totals["predicted_latency_s"]))
    return {ALONE_MODEL_SIGMA: f"{alone_sigma:.4g}", PASS_MODEL_SIGMA: f"{sigma:.4g}",
            PASS_MODEL_TOTAL_SIGMA: f"{total:.4g}",
            "model_sigma.evidence": (
                f"{len(both)} layers of a reference network against their calibrated predictions: alone "
                f"(roofline.measure), RMS of log(measured / predicted) {alone_sigma:.3f} (mean "
                f"{statistics.fmean(alone_errors):+.3f}); in a real pass (torch.profiler, median of {PASS_MODEL_ROUNDS} "
                f"rounds of 10 passes), {sigma:.3f} (mean {statistics.fmean(pass_errors):+.3f}); the whole pass "
                f"timed without the profiler, |log(measured / predicted)| {total:.3f} (one network: one sample)")}


def ensure_measured_profile(progress: bool = True) -> HardwareProfile:
    """This machine's saved measured profile; when there is none, measure one now (quick) and save it.
    Only for callers that were asked to measure (`--measure-hw`): loading a profile never measures."""
    from roofline.hardware import default_measured_path, detect, saved_measurement

    detected = detect()
    saved = saved_measurement(detected)
    if saved is not None:
        return saved
    device = "cuda" if detected.kind == "gpu" else "cpu"
    path = default_measured_path(detected)
    warnings.warn(f"no measured profile of this machine yet: measuring it once (--quick), saving {path}", stacklevel=2)
    save_profile(measure_profile(device=device, quick=True, progress=progress), path)
    return load_profile_file(path)

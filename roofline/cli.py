"""The `roofline` command line: parse, make one API call, format the result.

Every subcommand is a (setup, handler) pair in COMMANDS. Errors from bad input (RooflineError) become
one line on stderr and exit code 2, in `main` only.
"""
from __future__ import annotations

import argparse
import math
import sys
import warnings
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, NoReturn

from roofline.errors import RooflineError
from roofline.outdir import Terminated, terminate_as_interrupt

__all__ = ["main"]

Handler = Callable[[argparse.Namespace], int]

FORMATS = ("table", "csv", "json", "markdown")


class _UsageError(RooflineError):
    """A command line argparse rejected: reported by `main` in one line like every other error."""


class _Parser(argparse.ArgumentParser):
    """argparse that raises instead of printing its usage block, so a usage error is one line too."""

    def error(self, message: str) -> NoReturn:
        raise _UsageError(f"{message} (usage: {self.prog} --help)")


def _positive(value: float | None, flag: str) -> None:
    """Reject a count or duration that is zero or negative, naming the flag (None: not given)."""
    if value is not None and not (value > 0 and math.isfinite(value)):
        raise RooflineError(f"{flag} must be a positive number, got {value:g}")


def _positive_list(text: str, flag: str) -> list[int]:
    """'1,8,64' -> [1, 8, 64]; anything but positive integers is an error naming the flag."""
    try:
        values = [int(part) for part in text.split(",")]
    except ValueError as error:
        raise RooflineError(f"{flag} must be comma-separated positive integers, got {text!r}") from error
    if any(value < 1 for value in values):
        raise RooflineError(f"{flag} must be comma-separated positive integers, got {text!r}")
    return values


def _add_format(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--format", choices=FORMATS, default="table", help="output format (default: table)")


def _add_model_options(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("model", help="torchvision:NAME, timm:NAME, hf:TYPE[?k=v&...], path.py:callable or zoo:NAME")
    parser.add_argument("--input-shape", help="input shape such as 1x3x224x224 (several: 1x3x224x224,1x10)")
    parser.add_argument("--batch", type=int, help="batch size (default 1)")
    parser.add_argument("--seq-len", type=int, help="sequence length for language models (default 128)")


def _add_precision(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--precision", default="fp32", help="fp32, tf32, fp16, bf16, int8, fp8, w8a16, w4a16")


def _add_mode(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--mode", choices=("inference", "train"), default="inference",
                        help="inference (one forward pass) or train (forward, backward from the loss, optimizer "
                             "step; bf16/fp16 are mixed precision with fp32 master weights)")
    parser.add_argument("--optimizer", choices=("adamw", "sgd"), default="adamw",
                        help="with --mode train: the optimizer step counted (default: adamw)")


def _add_counting(parser: argparse.ArgumentParser, progress: bool = True) -> None:
    """Options of every command that counts a model: the trace cache, and (where the command has no other
    bar to silence) --no-progress for the tracing bar."""
    parser.add_argument("--no-cache", action="store_true",
                        help="trace the model again, and keep no copy: the trace cache is neither read nor written "
                             "(`roofline cache clear` empties it)")
    if progress:
        parser.add_argument("--no-progress", action="store_true", help="no progress bar while tracing")


class _TraceBar:
    """The tracing bar on stderr: tqdm, shown only once a trace has run for a second (short ones draw nothing)."""

    def __init__(self, model: str) -> None:
        self._model = model
        self._bar: Any = None

    def __call__(self, done: int, total: int) -> None:
        if self._bar is None:
            from tqdm import tqdm

            self._bar = tqdm(total=total, desc=f"tracing {self._model}", unit="module", delay=1.0, leave=False,
                             file=sys.stderr)
        self._bar.update(done - self._bar.n)
        if done >= total:
            self._bar.close()


def _counted(args: argparse.Namespace, precision: str | None = None, batch: int | None = None) -> Any:
    """The analysis of the mode asked for (one forward pass, or one training step) of args.model, from the trace
    cache unless --no-cache; batch replaces --batch (compare's --batches)."""
    options: dict[str, Any] = {
        "input_shape": args.input_shape, "batch": batch or args.batch, "seq_len": args.seq_len,
        "cache": not args.no_cache, "progress": None if args.no_progress else _TraceBar(args.model),
    }
    if getattr(args, "mode", "inference") == "train":
        from roofline.train import analyze_train

        return analyze_train(args.model, precision=precision or args.precision, optimizer=args.optimizer, **options)
    from roofline import analysis

    return analysis.analyze(args.model, precision=precision or args.precision, **options)


def _loaded(args: argparse.Namespace) -> Any:
    """The module itself, for the commands that need more than its counts (a tensor-parallel plan)."""
    from roofline import models

    return models.load(args.model, input_shape=args.input_shape, batch=args.batch, seq_len=args.seq_len)


def _check_precision(args: argparse.Namespace) -> None:
    from roofline.precision import get_precision, training_precision

    for name in args.precision.split(","):
        (training_precision if getattr(args, "mode", "inference") == "train" else get_precision)(name)


# ---- analyze -------------------------------------------------------------------------------------

def _setup_analyze(parser: argparse.ArgumentParser) -> None:
    _add_model_options(parser)
    _add_precision(parser)
    parser.add_argument("--by", choices=("layer", "op", "type"), default="layer", help="table rows (default: layer)")
    _add_mode(parser)
    _add_counting(parser)
    _add_format(parser)


def _run_analyze(args: argparse.Namespace) -> int:
    from roofline import analysis

    _check_precision(args)  # validate before the (possibly slow) model build
    result = _counted(args)
    print(analysis.render(result, by=args.by, fmt=args.format))
    moe = result.trace.moe
    if moe is not None and args.format == "table":
        from roofline.formatting import format_si

        print(f"  mixture of experts: top-{moe.top_k} of {moe.experts} experts; parameters {format_si(moe.total)} "
              f"total (all held in memory), {format_si(moe.active)} active per token (FLOPs count routed experts only)")
    return 0


# ---- predict, explain, sweep, compare, llm ------------------------------------------------------

def _add_hw(parser: argparse.ArgumentParser, required: bool = True, calibrated: bool = True) -> None:
    parser.add_argument("--hw", required=required, help="profile name from hwprofiles/, a profile file, or auto")
    parser.add_argument("--measure-hw", action="store_true",
                        help="with --hw auto: if this machine has no saved measured profile, measure one first "
                             "(roofline hw measure --quick, 40-100 s on a 2-core CPU) and save it")
    if calibrated:
        parser.add_argument("--calibrated", action="store_true",
                            help="scale each op class by the efficiency measured on the device (measured profiles)")


def _profile(name: str, args: argparse.Namespace) -> Any:
    """The profile `name` names; with --measure-hw, `auto` measures this machine first when it must."""
    from roofline.hardware import load_profile

    if name.strip().lower() == "auto" and getattr(args, "measure_hw", False):
        from roofline.calibrate import ensure_measured_profile

        return ensure_measured_profile(progress=not getattr(args, "no_progress", False))
    return load_profile(name)


def _add_out(parser: argparse.ArgumentParser, what: str, default: str | None = None) -> None:
    parser.add_argument("--out", default=default, help=f"directory for {what}" + (f" (default: {default})" if default else ""))
    parser.add_argument("--force", action="store_true",
                        help="write into an --out that holds files roofline did not write: replace only the files "
                        "of the names it writes, keep the others")


def _add_recalibrate(parser: argparse.ArgumentParser, why: str) -> None:
    parser.add_argument("--recalibrate", action="store_true",
                        help="time a measured profile's efficiency ops again first, 10-60 s (implies --calibrated): "
                             f"on a machine whose speed drifts, {why}")


def _add_split(parser: argparse.ArgumentParser, auto: bool = False) -> None:
    more = " or auto (the smallest split that fits)" if auto else ""
    parser.add_argument("--tp", default=None, help=f"tensor-parallel devices (default 1){more}")
    parser.add_argument("--pp", default=None, help=f"pipeline-parallel stages (default 1){more}")
    parser.add_argument("--microbatches", type=int, help="microbatches through the pipeline (default: up to --pp)")


def _degree(text: str | None, name: str, auto: bool = False) -> int | None:
    """--tp/--pp: a positive integer, or None for 'auto' where the command searches."""
    if text is None:
        return 1
    if auto and text.strip().lower() == "auto":
        return None
    if not text.strip().isdigit() or int(text) < 1:
        accepted = "a positive integer" + (" or auto" if auto else "")
        raise RooflineError(f"--{name} must be {accepted}, got {text!r}")
    return int(text)


def _setup_predict(parser: argparse.ArgumentParser) -> None:
    _add_model_options(parser)
    _add_precision(parser)
    _add_hw(parser)
    _add_split(parser)
    _add_recalibrate(parser, "the prediction is then for the machine as it is now")
    parser.add_argument("--no-progress", action="store_true", help="no progress bars (tracing, recalibrating)")
    _add_mode(parser)
    _add_counting(parser, progress=False)
    _add_format(parser)


def _run_predict(args: argparse.Namespace) -> int:
    from roofline import predict

    profile = _profile(args.hw, args)
    _check_precision(args)
    device = None
    if args.recalibrate:
        from roofline.calibrate import recalibration_device

        device = recalibration_device(profile)
    result = _counted(args)  # a bad profile, then a bad model: both fail before the timing
    if device is not None:
        from roofline.calibrate import recalibrate

        profile = recalibrate(profile, device, progress=not args.no_progress)
    calibrated = args.calibrated or args.recalibrate
    tp, pp = _degree(args.tp, "tp") or 1, _degree(args.pp, "pp") or 1
    if tp * pp > 1:
        if result.trace.mode == "train":
            raise RooflineError("--tp/--pp split an inference pass; --mode train models one device")
        from roofline.parallel import plan_for, shard

        loaded = _loaded(args)
        result = shard(result, plan_for(loaded.module, loaded.meta.get("config")), tp, pp)
    prediction = predict.predict(result, profile, calibrated=calibrated)
    if result.trace.mode != "train":
        print(predict.render(prediction, fmt=args.format))
        if pp > 1 and args.format == "table":
            from roofline.formatting import format_time
            from roofline.parallel import bubble_fraction, pipeline_factor

            batch = predict.batch_size(result)
            micro = args.microbatches or max(d for d in range(1, min(pp, batch) + 1) if batch % d == 0)
            if micro < 1 or batch % micro:
                raise RooflineError(f"--microbatches {micro} must be a positive divisor of the batch ({batch})")
            micro_s = predict.predict(result.scaled_batch(1 / micro), profile,
                                      calibrated=calibrated).totals["predicted_latency_s"]
            print(f"  pipeline: {pp} stages, {micro} microbatches: a pass takes "
                  f"{format_time(micro_s * pipeline_factor(pp, micro))} per device group (bubble "
                  f"{bubble_fraction(pp, micro):.0%}; the table above is one device's share of the whole model, a "
                  "stage runs 1/PP of it)")
        return 0
    import json

    from roofline import train

    step = train.StepPrediction(prediction)
    whatif = train.checkpoint_whatif(result, profile, calibrated=calibrated)
    if args.format == "json":
        payload = json.loads(predict.render(prediction, fmt="json"))
        payload["training"] = {**step.to_dict(), "memory": result.training.memory(result.precision),
                               "checkpointing": whatif.to_dict() if whatif else None}
        print(json.dumps(payload, indent=2, default=str))
    else:
        print(predict.render(prediction, fmt=args.format))
        print("\n" + "\n".join(train.step_lines(step, whatif)))
    return 0


def _setup_explain(parser: argparse.ArgumentParser) -> None:
    _add_model_options(parser)
    _add_precision(parser)
    _add_hw(parser)
    parser.add_argument("--layer", help="layer name (as in `roofline analyze`); omit for the model's top layers")
    parser.add_argument("--top", type=int, default=10, help="layers listed when --layer is omitted (default 10)")
    parser.add_argument("--vs", metavar="PROFILES", help="comma-separated other profiles for a what-if row each")
    _add_counting(parser)
    parser.add_argument("--format", choices=("table", "json"), default="table")


def _run_explain(args: argparse.Namespace) -> int:
    import json

    from roofline import explain
    from roofline.formatting import format_table

    profile = _profile(args.hw, args)
    _check_precision(args)
    result = _counted(args)
    if args.layer:
        others = [_profile(name, args) for name in args.vs.split(",")] if args.vs else []
        diagnosis = explain.explain(result, args.layer, profile, calibrated=args.calibrated, other_profiles=others)
        print(json.dumps(diagnosis.to_dict(), indent=2, default=str) if args.format == "json" else diagnosis.text())
        return 0
    table = explain.explain_model(result, profile, top=args.top, calibrated=args.calibrated)
    if args.format == "json":
        print(table.to_json(orient="records", indent=2))
    else:
        print(format_table(table))  # times and shares: formatting's column rules
    return 0


def _setup_sweep(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("kind", choices=("conv",), help="what to sweep: conv (group count of a convolution)")
    parser.add_argument("--channels", type=int, default=256, help="input = output channels (default 256)")
    parser.add_argument("--size", default="56x56", help="spatial size HxW (default 56x56)")
    parser.add_argument("--groups", help="comma-separated group counts (default: 1, 2, 4, ... channels)")
    parser.add_argument("--kernel", type=int, default=3)
    parser.add_argument("--batch", type=int, default=1)
    _add_precision(parser)
    _add_hw(parser)
    parser.add_argument("--measure", action="store_true", help="also time each convolution on --device")
    parser.add_argument("--device", default="cpu", choices=("cpu", "cuda"))
    _add_out(parser, "the sweep's CSV and chart")
    parser.add_argument("--format", choices=("table", "csv", "json"), default="table")


# The files a sweep --out may hold (a chart, where plots draws one): with --force only these are replaced.
SWEEP_FILES = frozenset({"sweep.csv", "sweep.png", "sweep.svg"})


def _run_sweep(args: argparse.Namespace) -> int:
    from roofline import explain
    from roofline.formatting import format_bytes, format_si, format_table, format_time
    from roofline.models import parse_input_shape
    from roofline.outdir import check_out, write_atomically

    if args.out:
        check_out(args.out, force=args.force, names=SWEEP_FILES)  # before the sweep, which may time convolutions
    for flag, value in (("--channels", args.channels), ("--kernel", args.kernel), ("--batch", args.batch)):
        _positive(value, flag)
    shape = parse_input_shape(args.size)[0]
    if len(shape) != 2:
        raise RooflineError(f"--size must be HxW, got {args.size!r}")
    if args.groups:
        groups = _positive_list(args.groups, "--groups")
    else:
        groups = [2**i for i in range(args.channels.bit_length()) if args.channels % 2**i == 0]
    if args.measure and args.device == "cuda":
        import torch

        if not torch.cuda.is_available():
            raise RooflineError("no CUDA device: torch.cuda.is_available() is False")
    profile = _profile(args.hw, args)
    table = explain.sweep_conv(args.channels, (shape[0], shape[1]), groups, profile, batch=args.batch,
                               kernel=args.kernel, precision=args.precision, measure=args.measure,
                               calibrated=args.calibrated, device=args.device)
    if args.out:
        from roofline import plots

        def write(directory: Path) -> None:
            chart = plots.sweep_chart(table, title=f"conv {args.channels}ch {args.size} k{args.kernel} on {profile.name}")
            plots.save_chart(chart, directory)
            table.to_csv(directory / "sweep.csv", index=False)

        out = write_atomically(args.out, write, force=args.force, names=SWEEP_FILES)
        print("wrote " + " ".join(str(out / name) for name in sorted(SWEEP_FILES) if (out / name).is_file()))
    if args.format == "csv":
        print(table.to_csv(index=False).rstrip("\n"))
    elif args.format == "json":
        print(table.to_json(orient="records", indent=2))
    else:
        formatters: dict[str, Callable[[Any], str]] = {"macs": format_si, "params": format_si, "bytes": format_bytes, "predicted_s": format_time,
                      "measured_s": format_time}
        print(format_table(table, formatters))
        print()
        print(explain.explain_sweep(table))
    return 0


def _setup_compare(parser: argparse.ArgumentParser) -> None:
    _add_model_options(parser)
    parser.add_argument("--hw", required=True, help="comma-separated profiles, e.g. a100-80gb-sxm,h100-sxm,t4,auto")
    parser.add_argument("--measure-hw", action="store_true", help="with auto: measure this machine first if it must be")
    parser.add_argument("--precision", default=None,
                        help="comma-separated precisions, e.g. fp32,fp16,int8 (default fp32; with --tp/--pp: bf16)")
    parser.add_argument("--batches", default=None, help="comma-separated batch sizes to compare (default: --batch)")
    parser.add_argument("--calibrated", action="store_true")
    _add_mode(parser)
    _add_counting(parser)
    parser.add_argument("--format", choices=("table", "csv", "json", "markdown"), default="table")
    parser.add_argument("--tp", default=None, help="with a causal LM: tensor-parallel devices, or auto (the smallest "
                                                   "TP x PP that fits each device): compares tokens/s")
    parser.add_argument("--pp", default=None, help="with a causal LM: pipeline stages (default 1, or auto with --tp auto)")
    parser.add_argument("--prompt-len", type=int, default=1024, help="with --tp/--pp: prompt tokens (default 1024)")
    parser.add_argument("--gen-len", type=int, default=256, help="with --tp/--pp: generated tokens (default 256)")
    _add_out(parser, "the table (CSV, Markdown) and the chart, with --tp/--pp")


def _run_compare(args: argparse.Namespace) -> int:
    from roofline import explain
    from roofline.formatting import format_markdown, format_table
    from roofline.precision import get_precision
    from roofline.predict import batch_size

    if args.tp is not None or args.pp is not None:
        return _compare_llm(args)
    args.precision = args.precision or "fp32"
    _check_precision(args)
    batches = _positive_list(args.batches, "--batches") if args.batches else None
    if batches and args.batch is not None:
        warnings.warn(f"--batch {args.batch} is ignored: --batches {args.batches} sets the batch sizes", stacklevel=1)
    precisions = [get_precision(p).name for p in args.precision.split(",")]
    profiles = [_profile(name, args) for name in args.hw.split(",")]
    # Without --batches, the model's own batch (--batch, or --input-shape's first dimension) is compared.
    result = _counted(args, precision="fp32", batch=batches[0] if batches else None)
    table = explain.compare(result, profiles, precisions, batches or [batch_size(result)], calibrated=args.calibrated)
    notes = explain.compare_notes(table)
    if args.format == "csv":
        print(table.to_csv(index=False).rstrip("\n"))
    elif args.format == "json":
        print(table.to_json(orient="records", indent=2))
    else:
        shown = table[[c for c in ("device", "precision", "batch", "predicted_latency_s", "throughput_samples_per_s",
                                   "memory_bound_fraction", "efficiency_bound_fraction", "overhead_bound_fraction",
                                   "speedup", "bound_changes", "changed_layers", "note") if c in table]]
        if not args.calibrated and "efficiency_bound_fraction" in shown:
            shown = shown.drop(columns="efficiency_bound_fraction")  # always 0 on a plain roofline
        if args.format == "markdown":
            print(format_markdown(shown))
        else:
            # NaN: the device has no peak for that precision. Times and fractions (as percentages) follow
            # formatting's column rules.
            print(format_table(shown, {"speedup": lambda v: "-" if math.isnan(v) else f"{v:.2f}x",
                                       "bound_changes": lambda v: "-" if math.isnan(v) else f"{v:.0f}"}))
        if notes:
            print("\n" + "\n".join(notes))
    return 0


def _compare_llm(args: argparse.Namespace) -> int:
    """compare --tp/--pp: a causal LM's split, memory per device and tokens/s on each device."""
    from pathlib import Path

    from roofline import llm, serving
    from roofline.precision import get_precision

    if args.precision and "," in args.precision:
        raise RooflineError("compare --tp/--pp takes one precision, got " + repr(args.precision))
    precision = get_precision(args.precision or "bf16")
    tp, pp = _degree(args.tp, "tp", auto=True), _degree(args.pp, "pp", auto=True)
    if args.out:
        from roofline.outdir import check_out

        check_out(args.out, force=args.force, names=serving.DEVICE_FILES)  # before the trace, not after
    profiles = [_profile(name, args) for name in args.hw.split(",")]
    traces = llm.trace_llm(args.model, prompt_len=args.prompt_len, gen_len=args.gen_len, batch=args.batch or 1,
                           progress=not args.no_progress, cache=not args.no_cache)
    auto = tp is None or pp is None
    table = serving.compare_devices(traces, profiles, precision, tp=None if auto else tp, pp=None if auto else pp,
                                    calibrated=args.calibrated)
    text = serving.render_devices(table, traces, precision, fmt=args.format)
    print(text)
    if args.out:
        command = (f"roofline compare '{args.model}' --hw {args.hw} --tp {args.tp or 1} --pp {args.pp or ('auto' if auto else 1)} "
                   f"--precision {precision.name} --batch {traces.batch} --prompt-len {traces.prompt_len} "
                   f"--gen-len {traces.gen_len}")
        paths = serving.write_devices(table, traces, precision, Path(args.out), model=args.model, command=command,
                                      force=args.force)
        print("wrote " + " ".join(str(p) for p in paths))
    return 0


def _setup_llm(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("model", help="a causal LM: hf:llama, hf:gpt2, hf:mistral?num_hidden_layers=4, ...")
    parser.add_argument("--hw", required=True, help="profile name, file, or auto")
    parser.add_argument("--precision", default="fp16", help="weights/activations: fp16, bf16, fp8, int8, w8a16, w4a16")
    parser.add_argument("--kv-precision", help="KV-cache precision (default: the activation precision)")
    parser.add_argument("--prompt-len", type=int, default=1024)
    parser.add_argument("--gen-len", type=int, default=256)
    parser.add_argument("--batch", type=int, default=1)
    parser.add_argument("--attention", choices=("fused", "eager"), default="fused")
    parser.add_argument("--calibrated", action="store_true")
    parser.add_argument("--measure", choices=("cpu", "cuda"), help="also time prefill and decode on this device")
    parser.add_argument("--format", choices=("table", "csv", "json"), default="table")
    _add_counting(parser)
    _add_split(parser, auto=True)
    parser.add_argument("--routing-skew", help="MoE: measured expert loads, a Zipf exponent (0 = uniform, the default "
                                               "assumption) or comma-separated per-expert shares")
    parser.add_argument("--continuous-batching", action="store_true",
                        help="also sweep tokens/s, time per output token and time to first token against batch and "
                             "context under continuous batching (prefill and decode tokens in one step)")
    parser.add_argument("--contexts", help="with --continuous-batching: comma-separated context lengths "
                                           "(default: prompt-len + gen-len / 2)")


def _run_llm(args: argparse.Namespace) -> int:
    from roofline import llm, serving
    from roofline.precision import get_precision

    tp, pp = _degree(args.tp, "tp", auto=True), _degree(args.pp, "pp", auto=True)
    names = args.hw.split(",")
    if tp is None or pp is None or len(names) > 1:  # which split of which device: one row per device
        precision = get_precision(args.precision).with_kv(args.kv_precision)
        profiles = [_profile(name, args) for name in names]
        traces = llm.trace_llm(args.model, prompt_len=args.prompt_len, gen_len=args.gen_len, batch=args.batch,
                               attention=args.attention, routing_skew=args.routing_skew, cache=not args.no_cache,
                               progress=not args.no_progress)
        auto = tp is None or pp is None
        table = serving.compare_devices(traces, profiles, precision, tp=None if auto else tp,
                                        pp=None if auto else pp, calibrated=args.calibrated)
        print(serving.render_devices(table, traces, precision, fmt=args.format))
        return 0
    contexts = None
    if args.contexts:
        try:
            contexts = [int(c) for c in args.contexts.split(",")]
        except ValueError as error:
            raise RooflineError(f"--contexts must be comma-separated integers, got {args.contexts!r}") from error
    report = llm.llm(args.model, args.hw, precision=args.precision, kv_precision=args.kv_precision,
                     prompt_len=args.prompt_len, gen_len=args.gen_len, batch=args.batch, attention=args.attention,
                     calibrated=args.calibrated, measure_device=args.measure, tp=tp, pp=pp,
                     microbatches=args.microbatches, routing_skew=args.routing_skew, cache=not args.no_cache,
                     progress=not args.no_progress)
    print(llm.render(report, fmt=args.format))
    if args.continuous_batching and report.traces is not None:
        table = serving.continuous_batching(report.traces, report.profile, report.precision, tp=report.tp,
                                            pp=report.pp, contexts=contexts, calibrated=args.calibrated)
        print("\n" + serving.render_serving(table, fmt=args.format))
    return 0


# ---- hw ------------------------------------------------------------------------------------------

def _setup_hw(parser: argparse.ArgumentParser) -> None:
    hw = parser.add_subparsers(dest="hw_command", required=True, metavar="SUBCOMMAND")
    listing = hw.add_parser("list", help="the shipped and saved hardware profiles: peaks, DRAM bandwidth, ridge points")
    listing.add_argument("--format", choices=("table", "json"), default="table", help="output format (default: table)")
    show = hw.add_parser("show", help="one profile with the source of every figure")
    show.add_argument("name", help="profile name (roofline hw list), path to a .yaml file, or auto")
    show.add_argument("--format", choices=("table", "json"), default="table", help="output format (default: table)")
    detect = hw.add_parser("detect", help="build a profile of this machine from py-cpuinfo and NVML")
    detect.add_argument("--device", choices=("cpu", "cuda"), help="default: the GPU if there is one, else the CPU")
    detect.add_argument("--save", metavar="FILE", help="also write the profile to FILE (YAML)")
    detect.add_argument("--format", choices=("table", "json"), default="table", help="output format (default: table)")
    measure = hw.add_parser("measure", help="measure bandwidths, matmul peaks, overhead and efficiency here")
    measure.add_argument("--device", choices=("cpu", "cuda"), default="cpu", help="default: cpu")
    measure.add_argument("--quick", action="store_true", help="a shorter run (40-100 s on a 2-core CPU; a full run about 5 min)")
    measure.add_argument("--save", metavar="FILE", help="write the profile here (default: the user profile dir, used by --hw auto)")
    measure.add_argument("--no-progress", action="store_true", help="no progress bar")
    measure.add_argument("--format", choices=("table", "json"), default="table", help="output format (default: table)")


def _run_hw(args: argparse.Namespace) -> int:
    from roofline import hardware
    from roofline.hardware import render

    if args.hw_command == "list":
        print(render.render_list(hardware.list_profiles(), args.format, saved=hardware.saved_profiles()))
        return 0
    if args.hw_command == "show":
        print(render.render_profile(hardware.load_profile(args.name), args.format))
        return 0
    if args.hw_command == "detect":
        profile = hardware.detect(args.device)
    else:
        from roofline.calibrate import measure_profile

        profile = measure_profile(device=args.device, quick=args.quick, progress=not args.no_progress)
    print(render.render_profile(profile, args.format))
    target = args.save or (hardware.default_measured_path(profile) if args.hw_command == "measure" else None)
    if target:
        print(f"saved {hardware.save_profile(profile, target)}", file=sys.stderr)
    return 0


# ---- cache ---------------------------------------------------------------------------------------

def _setup_cache(parser: argparse.ArgumentParser) -> None:
    cache = parser.add_subparsers(dest="cache_command", required=True, metavar="SUBCOMMAND")
    cache.add_parser("info", help="where traces are kept, how many, and their size")
    cache.add_parser("clear", help="remove the kept traces (only the files roofline wrote there)")


def _run_cache(args: argparse.Namespace) -> int:
    from roofline import tracecache
    from roofline.formatting import format_bytes

    if args.cache_command == "clear":
        removed, freed = tracecache.clear()
        print(f"removed {removed} trace{'s' if removed != 1 else ''} ({format_bytes(freed)}) from {tracecache.cache_dir()}")
        return 0
    kept = tracecache.entries()
    size = sum(p.stat().st_size for p in kept)
    print(f"{tracecache.cache_dir()}: {len(kept)} trace{'s' if len(kept) != 1 else ''}, {format_bytes(size)} "
          "($ROOFLINE_TRACE_DIR moves it; --no-cache skips it)")
    return 0


# ---- measure -------------------------------------------------------------------------------------

def _setup_measure(parser: argparse.ArgumentParser) -> None:
    _add_model_options(parser)
    _add_precision(parser)
    parser.add_argument("--device", default="cpu", help="cpu or cuda[:N] (default: cpu)")
    parser.add_argument("--batch-sizes", help="end-to-end batch sizes, e.g. 1,8,32 (default: the batch, 2x and 4x)")
    parser.add_argument("--min-run-time", type=float, default=0.05,
                        help="seconds of timing per layer and per batch size (default: 0.05)")
    parser.add_argument("--rounds", type=int, default=3,
                        help="interleaved passes over all layers that share that time, so drift in the machine's "
                        "speed touches every layer alike (default: 3)")
    parser.add_argument("--threads", type=int, help="torch CPU threads (default: torch's; recorded either way)")
    parser.add_argument("--no-progress", action="store_true", help="no progress bar on stderr")
    _add_mode(parser)
    _add_trace(parser)
    _add_format(parser)


def _add_trace(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--trace", metavar="TRACE.json[.gz]",
                        help="read per-layer times from a Chrome trace torch.profiler wrote in your own run (any "
                             "device) instead of timing the model here; matched to the model's ops by name and shapes")


def _run_measure(args: argparse.Namespace) -> int:
    from roofline.measure import measure, parse_batch_sizes, render

    _positive(args.min_run_time, "--min-run-time")
    if args.mode == "train":
        return _measure_train(args)
    sizes = parse_batch_sizes(args.batch_sizes) if args.batch_sizes else None
    result = measure(args.model, device=args.device, precision=args.precision, batch_sizes=sizes,
                     progress=not args.no_progress, min_run_time_s=args.min_run_time, num_threads=args.threads,
                     rounds=args.rounds, input_shape=args.input_shape, batch=args.batch, seq_len=args.seq_len,
                     trace=args.trace)
    print(render(result, fmt=args.format))
    return 0


def _measure_train(args: argparse.Namespace) -> int:
    from roofline.formatting import format_table, format_time
    from roofline.train_measure import measure_train

    _check_precision(args)
    result = measure_train(args.model, device=args.device, precision=args.precision, optimizer=args.optimizer,
                           min_run_time_s=max(args.min_run_time, 0.2), input_shape=args.input_shape,
                           batch=args.batch, seq_len=args.seq_len)
    if args.format == "json":
        import json

        print(json.dumps({"metadata": result.metadata, "end_to_end": result.end_to_end.to_dict("records"),
                          "layers": result.layers.to_dict("records")}, indent=2, default=str))
        return 0
    if args.format == "csv":
        print(result.layers.to_csv(index=False).rstrip("\n"))
        return 0
    print(format_table(result.layers, {"measured_s": format_time, "iqr_s": format_time}))
    row = result.end_to_end.iloc[0]
    phases = ", ".join(f"{k} {format_time(v)}" for k, v in result.phases.items())
    print(f"\ntraining step: {format_time(row['latency_s'])} (IQR {format_time(row['iqr_s'])}); rows by phase: {phases}")
    for note in result.metadata["notes"]:
        print(f"  {note}")
    return 0


# ---- report --------------------------------------------------------------------------------------

def _setup_report(parser: argparse.ArgumentParser) -> None:
    _add_model_options(parser)
    _add_precision(parser)
    _add_hw(parser)
    parser.add_argument("--no-measure", action="store_true", help="predict only; do not time the model here")
    _add_recalibrate(parser, "prediction and measurement then share the same minutes")
    parser.add_argument("--min-run-time", type=float, default=0.05, metavar="S",
                        help="measurement budget per layer and per batch size in seconds (default 0.05)")
    _add_out(parser, "the report", default="roofline-report")
    parser.add_argument("--no-progress", action="store_true", help="no progress messages or bars")
    _add_mode(parser)
    _add_counting(parser, progress=False)
    _add_trace(parser)


def _run_report(args: argparse.Namespace) -> int:
    from roofline.report import REPORT_FILES, check_out, report

    _positive(args.min_run_time, "--min-run-time")
    check_out(args.out, force=args.force, names=REPORT_FILES)  # before the profile, which --measure-hw may measure
    out = report(args.model, _profile(args.hw, args), out=args.out, precision=args.precision, measure=not args.no_measure,
                 calibrated=args.calibrated, progress=not args.no_progress, min_run_time_s=args.min_run_time,
                 input_shape=args.input_shape, batch=args.batch, seq_len=args.seq_len, recalibrate=args.recalibrate,
                 force=args.force, trace=args.trace, mode=args.mode, optimizer=args.optimizer, cache=not args.no_cache)
    print(f"report written to {out}\nopen {out / 'index.html'}")
    return 0


# ---- the command table ---------------------------------------------------------------------------

COMMANDS: dict[str, tuple[str, Callable[[argparse.ArgumentParser], None], Handler]] = {
    "analyze": ("count MACs, FLOPs, bytes and memory per layer", _setup_analyze, _run_analyze),
    "hw": ("hardware profiles: list, show, detect this machine, measure it", _setup_hw, _run_hw),
    "predict": ("predict per-layer latency on a hardware profile", _setup_predict, _run_predict),
    "measure": ("measure per-layer and end-to-end latency on this machine", _setup_measure, _run_measure),
    "explain": ("why a layer is slow, and what would change it", _setup_explain, _run_explain),
    "sweep": ("sweeps that teach: convolution groups", _setup_sweep, _run_sweep),
    "compare": ("compare devices, precisions and batch sizes", _setup_compare, _run_compare),
    "llm": ("LLM prefill and decode: time to first token, tokens/s, KV cache", _setup_llm, _run_llm),
    "report": ("write an HTML/Markdown/CSV/JSON report with charts", _setup_report, _run_report),
    "cache": ("the trace cache: info, clear", _setup_cache, _run_cache),
}


def version() -> str:
    """The installed distribution's version; a checkout run without installing falls back to __version__."""
    from importlib import metadata

    try:
        return metadata.version("roofline")
    except metadata.PackageNotFoundError:
        import roofline

        return str(roofline.__version__)


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(prog="roofline", description="Roofline analysis for PyTorch models.")
    parser.add_argument("--version", action="version", version=f"roofline {version()}")
    parser.add_argument("--no-warnings", action="store_true", help="silence roofline's warnings")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for name, (help_text, setup, handler) in COMMANDS.items():
        command_parser = sub.add_parser(name, help=help_text, description=help_text)
        setup(command_parser)
        command_parser.set_defaults(handler=handler)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    try:
        args = parser.parse_args(argv)
    except _UsageError as error:
        print(f"roofline: error: {error}", file=sys.stderr)
        return 2
    if args.no_warnings:
        warnings.filterwarnings("ignore", module="roofline")
    warnings.formatwarning = lambda message, category, *rest: f"roofline: warning: {message}\n"
    try:
        with terminate_as_interrupt():  # SIGTERM cleans up as Ctrl-C does: no half-written --out left behind
            return int(args.handler(args))
    except RooflineError as error:
        print(f"roofline: error: {error}", file=sys.stderr)
        return 2
    except Terminated:
        print("roofline: terminated", file=sys.stderr)
        return 143  # 128 + SIGTERM, as a shell reports a process the signal killed
    except KeyboardInterrupt:
        print("roofline: interrupted", file=sys.stderr)
        return 130
    except BrokenPipeError:
        # The reader went away (`roofline hw list | head`): not an error of ours, and no traceback.
        # Point stdout at devnull so the interpreter's final flush does not raise again.
        import os

        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 141  # 128 + SIGPIPE, what a shell reports for a program the pipe ended


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())

"""A real training step on CPU or CUDA: the step's time, per-row forward/backward/optimizer times, peak memory.

Never estimates. Rows are named exactly as roofline.train names them (StepAttribution), so they join
the training analysis on `name`.

Timers:
- the whole step (forward, loss, backward, optimizer step, zero_grad) with timing.time_callable, the
  one timer (warm-up, blocks, median and IQR; CUDA synchronised inside);
- per row, inside the real step: a dispatch mode stamps time.perf_counter around every aten op and adds
  it to the op's row (on CUDA it synchronises after each op, so the kernel's time is the op's), over
  `steps` steps, median per row. Python between ops (module calls, autograd bookkeeping) is in no
  row, so the rows add up to less than the step; the difference is reported.
Peak memory: torch.cuda.max_memory_allocated on CUDA; a CPU has no allocator statistic to ask, so none.
"""
from __future__ import annotations

import datetime
import platform
import statistics
import time
from dataclasses import dataclass, field
from typing import Any

import pandas as pd
import torch
from torch.utils._python_dispatch import TorchDispatchMode

from roofline import costs, models
from roofline.errors import RooflineError
from roofline.models import LoadedModel
from roofline.precision import MEASURABLE_DTYPES, training_precision
from roofline.records import ROOT_NAME
from roofline.timing import time_callable
from roofline.trace import ModuleCallTracker
from roofline.train import LossFn, StepAttribution, default_loss, make_optimizer, trainable_parameters

__all__ = ["TrainMeasurement", "measure_train"]


@dataclass(frozen=True)
class TrainMeasurement:
    """Measured training step: `layers` (name, phase, measured_s, iqr_s, repeats, noisy), `end_to_end`, metadata."""

    layers: pd.DataFrame
    end_to_end: pd.DataFrame
    metadata: dict[str, Any] = field(default_factory=dict)

    @property
    def phases(self) -> dict[str, float]:
        by_phase = self.layers.groupby("phase")["measured_s"].sum()
        return {str(k): float(v) for k, v in by_phase.items()}


class _OpTimer(TorchDispatchMode):
    """Adds each aten op's wall time to the row the step attribution names."""

    def __init__(self, step: StepAttribution, device: str, times: dict[str, float], phases: dict[str, str]) -> None:
        super().__init__()  # type: ignore[no-untyped-call]  # torch's TorchDispatchMode is untyped
        self.step, self.device, self.times, self.phases = step, device, times, phases

    def __torch_dispatch__(self, func: Any, types: Any, args: tuple[Any, ...] = (), kwargs: Any = None) -> Any:
        if costs.is_alias(func) or costs.is_free(func):  # views and metadata: no rows in the trace either
            return func(*args, **(kwargs or {}))
        row = self.step.current()
        if row is None:
            call = self.step.tracker.current()
            name, phase = (call.name if call is not None else ROOT_NAME), "forward"
        else:
            name, phase = row.name, row.phase
        start = time.perf_counter()
        out = func(*args, **(kwargs or {}))
        if self.device.startswith("cuda"):
            torch.cuda.synchronize()
        self.times[name] = self.times.get(name, 0.0) + time.perf_counter() - start
        self.phases.setdefault(name, phase)
        return out


def _call(module: torch.nn.Module, inputs: Any) -> Any:
    return module(**inputs) if isinstance(inputs, dict) else module(*inputs)


def measure_train(model: Any, inputs: Any = None, device: str = "cpu", precision: str = "fp32", *,
                  optimizer: str = "adamw", loss: LossFn | None = None, steps: int = 5, min_run_time_s: float = 0.5,
                  **load_options: Any) -> TrainMeasurement:
    """Time real training steps of `model` on `device` (real weights, real tensors)."""
    base = training_precision(precision)
    dtype = MEASURABLE_DTYPES[base.name.removesuffix("-mixed")]
    if device.startswith("cuda") and not torch.cuda.is_available():
        raise RooflineError("no CUDA device: torch.cuda.is_available() is False")
    if not (device == "cpu" or device.startswith("cuda")):
        raise RooflineError(f"unknown device {device!r}; choose cpu or cuda[:N]")
    loaded = model if isinstance(model, LoadedModel) else models.load(model, inputs=inputs, device=device,
                                                                      **load_options)
    module = loaded.module.to(device)
    module.train()
    params = trainable_parameters(module)
    optim = make_optimizer(optimizer, params)
    loss_fn = loss or loaded.meta.get("loss") or default_loss
    autocast = torch.autocast(device_type=device.split(":")[0], dtype=dtype, enabled=dtype != torch.float32)

    def one_step(step: StepAttribution | None = None) -> None:
        with autocast:
            out = _call(module, loaded.inputs)
            if step is not None:
                with step.loss():
                    value = loss_fn(out)
            else:
                value = loss_fn(out)
        if step is not None:
            step.phase = "backward"
        value.backward()
        if step is not None:
            step.phase = "optimizer"
            step.override = step.optimizer_row("")
        optim.step()
        optim.zero_grad()
        if step is not None:
            step.override = None
            step.phase = "forward"

    try:
        one_step()  # allocates the optimizer state; the steps timed below are steady-state steps
    except Exception as error:
        raise RooflineError(f"the training step failed on {device}: {type(error).__name__}: "
                            f"{str(error).strip().splitlines()[0] if str(error).strip() else ''}") from error
    if device.startswith("cuda"):
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats(device)
    whole = time_callable(one_step, device=device, min_run_time_s=min_run_time_s, warmup=1, label="training step")
    peak_bytes = float(torch.cuda.max_memory_allocated(device)) if device.startswith("cuda") else None

    per_step: list[dict[str, float]] = []
    phases: dict[str, str] = {}
    for _ in range(steps):
        tracker = ModuleCallTracker(module)
        step = StepAttribution(module, tracker)
        tracker._on_enter = lambda call, mod, args, s=step: s.enter(call)
        tracker._on_exit = lambda call, mod, out, s=step: s.exit(call)
        times: dict[str, float] = {}
        with tracker.active(), _OpTimer(step, device, times, phases):
            one_step(step)
        per_step.append(_optimizer_rows(times, step, module))
    layers = _layer_table(per_step, phases)
    batch = int(loaded.input_shapes()[0][0]) if loaded.input_shapes() and loaded.input_shapes()[0] else 1
    end_to_end = pd.DataFrame([{"batch": batch, "latency_s": whole.median_s, "iqr_s": whole.iqr_s,
                                "throughput_samples_per_s": batch / whole.median_s}])
    notes = [
        ("Per-row times: time.perf_counter around each aten op of a real step, in a dispatch mode "
        f"(median of {steps} steps); Python between ops is in no row. Step time: timing.time_callable."),
        f"Rows sum to {layers['measured_s'].sum() * 1e3:.3g} ms of the {whole.median_s * 1e3:.3g} ms step.",
    ]
    if peak_bytes is None:
        notes.append("Peak memory: not measured on CPU (no allocator statistic).")
    metadata = {
        "mode": "train", "optimizer": optimizer, "precision": base.name, "device": device,
        "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "torch_version": torch.__version__, "python_version": platform.python_version(),
        "platform": platform.platform(), "num_threads": torch.get_num_threads(),
        "inputs": loaded.input_shapes(), "batch": batch, "peak_memory_bytes": peak_bytes,
        "timer": {"step": "roofline.timing.time_callable", "rows": "time.perf_counter per aten op, dispatch mode",
                  "steps": steps},
        "step_raw_times_s": list(whole.raw_times_s), "notes": notes,
    }
    return TrainMeasurement(layers, end_to_end, metadata)


def _optimizer_rows(times: dict[str, float], step: StepAttribution, module: torch.nn.Module) -> dict[str, float]:
    """The optimizer ran as one torch.optim step over all parameters: its time is split over the modules'
    optimizer rows by their parameters' share (every parameter gets the same per-element update)."""
    name = step.optimizer_row("").name
    total = times.pop(name, 0.0)
    sizes: dict[str, int] = {}
    for path, child in module.named_modules(remove_duplicate=True):
        owned = sum(p.numel() for p in child.parameters(recurse=False) if p.requires_grad)
        if owned:
            sizes[step.optimizer_row(path).name] = owned
    elements = sum(sizes.values())
    for row, owned in sizes.items():
        times[row] = times.get(row, 0.0) + total * owned / elements
    return times


def _layer_table(per_step: list[dict[str, float]], phases: dict[str, str]) -> pd.DataFrame:
    names = list(dict.fromkeys(name for times in per_step for name in times))
    rows = []
    for name in names:
        values = [times.get(name, 0.0) for times in per_step]
        median = statistics.median(values)
        q = statistics.quantiles(values, n=4, method="inclusive") if len(values) > 1 else [median, median, median]
        iqr = q[2] - q[0]
        phase = phases.get(name, "optimizer" if name.endswith(" (optimizer)") else "forward")
        rows.append({"name": name, "phase": phase, "measured_s": median, "iqr_s": iqr, "repeats": len(values),
                     "noisy": bool(median and iqr > 0.1 * median)})
    return pd.DataFrame(rows, columns=["name", "phase", "measured_s", "iqr_s", "repeats", "noisy"])


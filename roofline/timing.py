"""The one timer for the whole project, shaped like torch.utils.benchmark.Timer.

It warms up, sizes blocks of calls so the clock's own cost is negligible, synchronises CUDA inside the
timed region (CUDA events on the GPU, time.perf_counter on the CPU), fixes and records the thread
count, and keeps every block's per-call time so statistics are derived, never stored.
"""
from __future__ import annotations

import contextlib
import ctypes
import ctypes.util
import math
import statistics
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from typing import Any

import torch

from roofline.errors import RooflineError

__all__ = ["Measurement", "Ratio", "check_budget", "reference_matmul", "retained_heap", "time_callable",
           "time_interleaved", "time_ratio"]

# A measurement whose IQR exceeds this fraction of its median is flagged (torch's Measurement does too).
NOISY_IQR_FRACTION = 0.10
# Each timed block lasts at least this long, so perf_counter's ~100 ns cost stays below 0.1%.
_MIN_BLOCK_S = 1e-3
_MIN_REPEATS = 5


@dataclass(frozen=True)
class Measurement:
    """Per-call times of `repeats` timed blocks of `number` calls each; statistics are properties."""

    raw_times_s: tuple[float, ...]  # one entry per block: block time / number
    number: int  # calls per block
    device: str
    num_threads: int
    label: str = ""

    def __post_init__(self) -> None:
        if not self.raw_times_s:
            raise ValueError("a Measurement needs at least one time")

    @property
    def median_s(self) -> float:
        return float(statistics.median(self.raw_times_s))

    @property
    def iqr_s(self) -> float:
        """Interquartile range (Q3 - Q1); zero with fewer than two blocks."""
        if len(self.raw_times_s) < 2:
            return 0.0
        q1, _, q3 = statistics.quantiles(self.raw_times_s, n=4, method="inclusive")
        return float(q3 - q1)

    @property
    def min_s(self) -> float:
        return min(self.raw_times_s)

    @property
    def mean_s(self) -> float:
        return float(statistics.fmean(self.raw_times_s))

    @property
    def repeats(self) -> int:
        return len(self.raw_times_s)

    @property
    def noisy(self) -> bool:
        """True when IQR > 10% of the median: the figure should not be trusted as is."""
        return self.iqr_s > NOISY_IQR_FRACTION * self.median_s

    @property
    def warning(self) -> str | None:
        """What to do about a noisy measurement, or None."""
        if not self.noisy:
            return None
        share = 100 * self.iqr_s / self.median_s
        return (
            f"{self.label or 'measurement'}: IQR is {share:.0f}% of the median ({self.repeats} blocks); "
            "close other programs, pin threads or raise --min-run-time (min_run_time_s= in Python)"
        )

    def __repr__(self) -> str:
        from roofline.formatting import format_time

        flag = f"  (! {100 * self.iqr_s / self.median_s:.0f}% IQR)" if self.noisy else ""
        return (
            f"Measurement({self.label!r}: median {format_time(self.median_s)}, IQR {format_time(self.iqr_s)}, "
            f"{self.repeats} x {self.number} calls on {self.device}, {self.num_threads} threads){flag}"
        )


def check_budget(min_run_time_s: float, warmup: int = 0, max_repeats: int = 1) -> None:
    """A timing budget must be a positive, finite time (a negative one would time the minimum and call it
    a measurement); warm-up calls at least 0 and blocks at least 1."""
    if isinstance(min_run_time_s, bool) or not isinstance(min_run_time_s, (int, float)) \
            or not math.isfinite(min_run_time_s) or min_run_time_s <= 0:
        raise RooflineError(f"min_run_time_s (--min-run-time) must be a positive number of seconds, got {min_run_time_s!r}")
    if isinstance(warmup, bool) or not isinstance(warmup, int) or warmup < 0:
        raise RooflineError(f"warmup must be a whole number of calls, at least 0, got {warmup!r}")
    if isinstance(max_repeats, bool) or not isinstance(max_repeats, int) or max_repeats < 1:
        raise RooflineError(f"max_repeats must be a positive integer, got {max_repeats!r}")


def _synchronize(device: str) -> None:
    if device.startswith("cuda"):
        torch.cuda.synchronize(device)


def _time_block(fn: Callable[[], object], number: int, device: str) -> float:
    """Seconds for `number` calls: CUDA events around the block on the GPU, perf_counter on the CPU."""
    if device.startswith("cuda"):
        # torch.cuda.Event is untyped in torch's stubs
        start = torch.cuda.Event(enable_timing=True)  # type: ignore[no-untyped-call]
        end = torch.cuda.Event(enable_timing=True)  # type: ignore[no-untyped-call]
        start.record()
        for _ in range(number):
            fn()
        end.record()
        end.synchronize()
        return float(start.elapsed_time(end)) / 1e3
    begin = time.perf_counter()
    for _ in range(number):
        fn()
    return time.perf_counter() - begin


def time_callable(
    fn: Callable[[], object],
    device: str = "cpu",
    min_run_time_s: float = 0.05,
    repeats: int | None = None,
    warmup: int = 2,
    num_threads: int | None = None,
    label: str = "",
    callback: Callable[[int, float], None] | None = None,
    max_repeats: int = 1000,
) -> Measurement:
    """Time `fn()` and return per-call times of several blocks.

    Warm-up calls run first (allocator, kernel selection, caches). The block size is then grown until
    one block lasts at least 1 ms, so the clock's cost is negligible. With `repeats` given, exactly that
    many blocks are timed; otherwise blocks are timed until `min_run_time_s` has passed and at least
    five exist. `num_threads` fixes torch's intra-op thread count for the run (restored afterwards);
    the count in force is recorded. `callback(number, block_seconds)` is called after each block.
    """
    if device.startswith("cuda") and not torch.cuda.is_available():
        raise RooflineError(f"device {device!r} requested but CUDA is not available; use --device cpu")
    if repeats is not None and repeats < 1:
        raise RooflineError(f"repeats must be at least 1, got {repeats}")
    check_budget(min_run_time_s, warmup, max_repeats)
    previous_threads = torch.get_num_threads()
    if num_threads is not None:
        torch.set_num_threads(num_threads)
    try:
        for _ in range(max(warmup, 0)):
            fn()
        _synchronize(device)
        number = 1
        while True:  # grow the block until it is long enough to time accurately
            elapsed = _time_block(fn, number, device)
            if elapsed >= _MIN_BLOCK_S or number >= 1 << 20:
                break
            number *= max(2, min(100, math.ceil(_MIN_BLOCK_S / max(elapsed, 1e-9))))
        times: list[float] = []
        started = time.perf_counter()
        wanted = repeats if repeats is not None else max_repeats
        while len(times) < wanted:
            elapsed = _time_block(fn, number, device)
            times.append(elapsed / number)
            if callback is not None:
                callback(number, elapsed)
            if repeats is None and len(times) >= _MIN_REPEATS and time.perf_counter() - started >= min_run_time_s:
                break
        return Measurement(tuple(times), number, device, torch.get_num_threads(), label)
    finally:
        if num_threads is not None:
            torch.set_num_threads(previous_threads)


def time_interleaved(
    fns: Sequence[Callable[[], object]],
    rounds: int = 3,
    min_run_time_s: float = 0.05,
    labels: Sequence[str] | None = None,
    step: Callable[[int], None] | None = None,
    **options: Any,
) -> list[Measurement]:
    """Time each callable in `rounds` passes over all of them and merge each one's blocks.

    A shared machine changes speed over seconds (other tenants on the core, frequency): timed one
    after another, a callable that ran during a slow spell looks slow next to one that did not.
    Interleaved, every callable samples the whole run alike, so their ratios hold (Google
    Benchmark's random interleaving, for the same reason; the order here is fixed). Each pass times
    a callable for `min_run_time_s / rounds`; the result's median and IQR are over all its blocks
    from all passes.
    `step(index)` is called after each timing, for progress; options go to time_callable. The merged
    Measurement's `number` is the first pass's block size (later passes size their own blocks).
    """
    if rounds < 1:
        raise RooflineError(f"rounds must be at least 1, got {rounds}")
    names = list(labels) if labels is not None else [""] * len(fns)
    parts: list[list[Measurement]] = [[] for _ in fns]
    for round_index in range(rounds):
        warmup = options.get("warmup", 2) if round_index == 0 else 1
        for index, fn in enumerate(fns):
            timer = {**options, "warmup": warmup, "min_run_time_s": min_run_time_s / rounds, "label": names[index]}
            parts[index].append(time_callable(fn, **timer))
            if step is not None:
                step(index)
    return [_merged(measured, names[index]) for index, measured in enumerate(parts)]


def _merged(measured: Sequence[Measurement], label: str) -> Measurement:
    """One Measurement of the blocks of several timings of the same callable (its block size: the first's)."""
    first = measured[0]
    return Measurement(tuple(t for m in measured for t in m.raw_times_s), first.number, first.device,
                       first.num_threads, label)


@dataclass(frozen=True)
class Ratio:
    """time(a) / time(b), measured in alternation: the per-block ratios and their median and quartiles."""

    block_ratios: tuple[float, ...]
    a: Measurement
    b: Measurement

    @property
    def median(self) -> float:
        return statistics.median(self.block_ratios)

    @property
    def quartiles(self) -> tuple[float, float]:
        """The 25th and 75th percentiles of the block ratios (both the median for fewer than two blocks)."""
        if len(self.block_ratios) < 2:
            return self.median, self.median
        q = statistics.quantiles(self.block_ratios, n=4, method="inclusive")
        return q[0], q[2]

    @property
    def spread(self) -> float:
        """Half the interquartile range of the block ratios, relative to their median."""
        low, high = self.quartiles
        return (high - low) / (2 * self.median) if self.median else 0.0


def time_ratio(a: Callable[[], object], b: Callable[[], object], blocks: int = 12, block_s: float = 0.05,
               device: str = "cpu", num_threads: int | None = None) -> Ratio:
    """How many times longer `a` takes than `b`, timed A B, B A, A B, ... in short blocks.

    A shared machine drifts 1.2-1.6x over minutes, and an absolute time inherits all of it; two
    callables timed back to back in the same few hundred milliseconds see the same machine, so each
    block's ratio cancels most of the drift, and the order swaps each block so a steady trend within
    a block cancels too. The result is the median of the per-block ratios, with their quartiles.
    """
    if blocks < 1:
        raise RooflineError(f"blocks must be at least 1, got {blocks}")
    ratios: list[float] = []
    parts: dict[str, list[Measurement]] = {"a": [], "b": []}
    for index in range(blocks):
        order = (("a", a), ("b", b)) if index % 2 == 0 else (("b", b), ("a", a))
        timed = {}
        for name, fn in order:
            m = time_callable(fn, device=device, min_run_time_s=block_s, warmup=2 if index == 0 else 1,
                              num_threads=num_threads, label=name)
            parts[name].append(m)
            timed[name] = m.median_s
        ratios.append(timed["a"] / timed["b"])

    return Ratio(tuple(ratios), _merged(parts["a"], "a"), _merged(parts["b"], "b"))


def reference_matmul(device: str = "cpu") -> tuple[Callable[[], object], float]:
    """(callable, FLOPs per call): a fixed fp32 matmul whose rate says how fast the machine is right now.

    Timed among the items of a measurement and of a profile's efficiency ops, it shows whether the
    machine ran at the same speed for both: on a shared VM it may not, and a calibrated prediction
    can be no closer to a measurement than that change. 256 on a CPU (in cache, no DRAM traffic),
    4096 on a GPU (long enough to hide launch cost).
    """
    n = 4096 if device.startswith("cuda") else 256
    a = torch.randn(n, n, device=device)
    out = torch.empty(n, n, device=device)
    # plain fp32 even inside a measurement that turned TF32 on
    return with_matmul_tf32(lambda: torch.mm(a, a, out=out), enabled=False), 2.0 * n**3


def with_matmul_tf32(fn: Callable[[], object], enabled: bool) -> Callable[[], object]:
    """`fn` with CUDA matmul TF32 set to `enabled` for each call and restored after it."""

    def call() -> object:
        previous = torch.backends.cuda.matmul.allow_tf32
        torch.backends.cuda.matmul.allow_tf32 = enabled
        try:
            return fn()
        finally:
            torch.backends.cuda.matmul.allow_tf32 = previous

    return call


# ---- allocator state -------------------------------------------------------------------------------

# glibc mallopt parameters and the most its own dynamic thresholds reach on 64-bit Linux.
_M_TRIM_THRESHOLD, _M_MMAP_THRESHOLD = -1, -3
_GLIBC_MMAP_THRESHOLD_MAX = 32 * 1024 * 1024
_GLIBC_DYNAMIC_TRIM_MAX = 2 * _GLIBC_MMAP_THRESHOLD_MAX
_TIMING_TRIM_THRESHOLD = 1 << 30


def _mallopt() -> Callable[[int, int], int] | None:
    name = ctypes.util.find_library("c")
    try:
        function = ctypes.CDLL(name).mallopt if name else None
    except (OSError, AttributeError):  # no C library found, or one without glibc's mallopt (musl)
        return None
    return function if callable(function) else None


@contextlib.contextmanager
def retained_heap() -> Iterator[str]:
    """Keep freed memory in the process while timing, so a result does not depend on what ran before.

    glibc gives freed memory above its trim threshold back to the OS, and that threshold moves with
    the process's history, so the same forward pass may or may not pay a page fault on every fresh
    4 KiB of activations (2-4x slower for small CNNs on a VM, see benchmarks/alloc_effect.py).
    Inside, buffers up to 32 MiB come from a heap that is trimmed only above 1 GiB: the state of a
    long-running server. Afterwards the thresholds stay at the maxima glibc's own rule reaches
    (32 MiB mmap, 64 MiB trim). Yields a description for metadata; a no-op without glibc's mallopt.
    """
    mallopt = _mallopt()
    if mallopt is None or not mallopt(_M_MMAP_THRESHOLD, _GLIBC_MMAP_THRESHOLD_MAX):
        yield "system default (glibc mallopt unavailable): freed memory may return to the OS between calls"
        return
    mallopt(_M_TRIM_THRESHOLD, _TIMING_TRIM_THRESHOLD)
    _retained_depth[0] += 1
    try:
        yield "glibc heap retained while timing (M_MMAP_THRESHOLD 32 MiB, M_TRIM_THRESHOLD 1 GiB)"
    finally:
        _retained_depth[0] -= 1
        if not _retained_depth[0]:  # the outermost exit restores; an inner one keeps the outer's state
            mallopt(_M_TRIM_THRESHOLD, _GLIBC_DYNAMIC_TRIM_MAX)


_retained_depth = [0]  # open retained_heap contexts in this process

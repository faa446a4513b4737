"""The one machine-metadata record (pyperf's `_metadata.py` habit), shared by measured profiles and
measurements: one schema, UTC dates, counts as ints, and the machine's state when timing began.

A measurement's JSON holds it typed (`to_dict`); a profile's YAML metadata holds strings, so
`to_profile_metadata` writes the same keys as text and `num_threads` reads either back (older profiles
wrote `threads`).
"""
from __future__ import annotations

import datetime
import os
import platform
from collections.abc import Mapping
from dataclasses import dataclass, fields
from functools import cache
from typing import Any

import torch

__all__ = ["MachineRecord", "collect", "cpu_info", "device_name", "num_threads"]


@cache
def cpu_info() -> tuple[str, frozenset[str]]:
    """The CPU's brand and feature flags (py-cpuinfo takes about a second, so once per process)."""
    try:
        import cpuinfo

        info = cpuinfo.getcpu_info()
        return str(info.get("brand_raw") or platform.processor() or "cpu"), frozenset(info.get("flags", []))
    except Exception:  # noqa: BLE001  py-cpuinfo failing must not stop a measurement; the name is only metadata
        return platform.processor() or "cpu", frozenset()


def device_name(device: str) -> str:
    if device.startswith("cuda"):
        return str(torch.cuda.get_device_name(device))
    return cpu_info()[0]


@dataclass(frozen=True)
class MachineRecord:
    """Where and when figures were measured; the same keys in profiles and measurements."""

    date: str  # ISO 8601, UTC
    roofline_version: str
    torch_version: str
    python_version: str
    platform: str
    device: str  # "cpu" or "cuda:N"
    device_name: str
    cpu_name: str
    num_threads: int  # torch's intra-op threads in force
    cpu_count: int
    load_average_1min: float | None  # when timing began; None where the OS has none
    allocator: str  # how freed host memory was kept while timing (timing.retained_heap)
    cuda_version: str | None = None

    def __post_init__(self) -> None:
        if not self.date.endswith("+00:00"):
            raise ValueError(f"machine record dates are UTC, got {self.date!r}")
        if isinstance(self.num_threads, bool) or not isinstance(self.num_threads, int) or self.num_threads < 1:
            raise ValueError(f"num_threads must be a positive int, got {self.num_threads!r}")

    def to_dict(self) -> dict[str, Any]:
        return {f.name: getattr(self, f.name) for f in fields(self)}  # not asdict: it deep-copies

    def to_profile_metadata(self) -> dict[str, str]:
        """The same keys as strings, for a profile's YAML metadata ("" for what is unknown)."""
        return {key: "" if value is None else str(value) for key, value in self.to_dict().items()}


def collect(device: str, allocator: str = "", load_average_1min: float | None = None) -> MachineRecord:
    """This machine now; `load_average_1min` as read when timing began (read now when not given)."""
    import roofline

    if load_average_1min is None and hasattr(os, "getloadavg"):
        load_average_1min = os.getloadavg()[0]
    on_gpu = device.startswith("cuda")
    return MachineRecord(
        date=datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        roofline_version=roofline.__version__, torch_version=torch.__version__,
        python_version=platform.python_version(), platform=platform.platform(), device=device,
        device_name=device_name(device), cpu_name=cpu_info()[0], num_threads=torch.get_num_threads(),
        cpu_count=os.cpu_count() or 1, load_average_1min=load_average_1min, allocator=allocator,
        cuda_version=torch.version.cuda if on_gpu else None,
    )


def num_threads(metadata: Mapping[str, Any]) -> int | None:
    """The thread count of a profile's or a measurement's metadata (`num_threads`, or an older `threads`)."""
    value = metadata.get("num_threads", metadata.get("threads"))
    try:
        return int(value) if value not in (None, "") else None
    except (TypeError, ValueError):
        return None

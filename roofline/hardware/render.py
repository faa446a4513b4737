"""Text and JSON views of hardware profiles for `roofline hw`; computes nothing new.

The `hw` views build plain row dicts, not DataFrames, so `roofline hw list` starts without pandas.
"""
from __future__ import annotations

import json
import math
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from roofline.formatting import format_bytes, format_records, format_si, format_time
from roofline.hardware.profile import HardwareProfile, user_profile_dir

if TYPE_CHECKING:
    import pandas as pd

__all__ = ["profile_rows", "profiles_table", "render_list", "render_profile"]

# Peak columns of `hw list`, and the ridge points it shows: fp32 and fp16 only, to keep the table within
# a wide terminal (the others follow from the peaks and the DRAM bandwidth shown; the JSON has them all).
_TABLE_TYPES = ("fp32", "bf16", "fp16", "fp8", "int8")
_RIDGE_TYPES = ("fp32", "fp16")


def _source(profile: HardwareProfile, saved: bool) -> str:
    """datasheet for a shipped file; 'measured (saved)' for one `hw measure` or `--hw auto` kept."""
    return f"{profile.source} (saved)" if saved else profile.source


def profiles_table(profiles: Sequence[HardwareProfile], saved: Sequence[HardwareProfile] = ()) -> pd.DataFrame:
    """profile_rows as a DataFrame."""
    import pandas as pd

    return pd.DataFrame(profile_rows(profiles, saved))


def profile_rows(profiles: Sequence[HardwareProfile], saved: Sequence[HardwareProfile] = ()) -> list[dict[str, Any]]:
    """One row per profile, shipped then saved: peaks and DRAM bandwidth in base units, ridge points in
    FLOP/byte (NaN = none). `name` is what --hw accepts: the file stem, or the path of a saved file
    whose stem a shipped profile already takes."""
    shipped_names = {_stem(p.path) for p in profiles if p.path}
    rows = []
    for profile, is_saved in [*((p, False) for p in profiles), *((p, True) for p in saved)]:
        bandwidth = profile.dram.bandwidth_bytes_per_s
        name = _stem(profile.path) if profile.path else profile.name
        if is_saved and profile.path and name.lower() in shipped_names:
            name = profile.path
        row: dict[str, object] = {"name": name, "device": profile.name, "kind": profile.kind,
                                  "source": _source(profile, is_saved), "saved": is_saved}
        for compute_type in _TABLE_TYPES:
            row[f"{compute_type}_flops_per_s"] = profile.peak_flops_per_s.get(compute_type, math.nan)
        row["dram_bytes_per_s"] = bandwidth if bandwidth is not None else math.nan
        for compute_type in _TABLE_TYPES:
            peak = profile.peak_flops_per_s.get(compute_type)
            row[f"ridge_{compute_type}"] = peak / bandwidth if peak and bandwidth else math.nan
        rows.append(row)
    return rows


def _stem(path: str) -> str:
    return Path(path).stem.lower()


def render_list(profiles: Sequence[HardwareProfile], fmt: str, saved: Sequence[HardwareProfile] = ()) -> str:
    """The `hw list` table (shipped datasheet profiles, then the user's saved ones), or JSON records with base units."""
    table = profile_rows(profiles, saved)
    if fmt == "json":
        records = [{k: (None if isinstance(v, float) and math.isnan(v) else v) for k, v in row.items()} for row in table]
        return json.dumps(records, indent=2)
    # Peaks under the compute type's own name (the cells carry FLOP/s); ridge headers get their unit
    # from formatting.display_header like every other table.
    columns = ["name", "device", "kind", "source", *(f"{t}_flops_per_s" for t in _TABLE_TYPES), "dram_bytes_per_s",
               *(f"ridge_{t}" for t in _RIDGE_TYPES)]
    renamed = {f"{t}_flops_per_s": t for t in _TABLE_TYPES} | {"dram_bytes_per_s": "dram"}
    shown = [{renamed.get(c, c): row[c] for c in columns} for row in table]
    peak = lambda v: format_si(v, "FLOP/s") if not math.isnan(v) else "-"
    formatters: dict[str, Callable[[Any], str]] = {
        **{t: peak for t in _TABLE_TYPES},
        "dram": lambda v: format_si(v, "B/s") if not math.isnan(v) else "not measured",
    }
    notes = ["ridge = FLOP per DRAM byte where compute and memory time are equal; '-' = no peak for that type"]
    where = user_profile_dir()
    notes.append(f"saved profiles ({where}): {len(saved)}" + ("" if saved else "; `roofline hw measure` adds one"))
    return format_records(shown, formatters) + "\n" + "\n".join(notes)


def render_profile(profile: HardwareProfile, fmt: str) -> str:
    """The `hw show` view: every figure with its source note, or the profile as JSON."""
    if fmt == "json":
        return json.dumps({**profile.to_dict(), "path": profile.path}, indent=2)
    lines = [
        f"{profile.name}",
        f"  kind: {profile.kind}   vendor: {profile.vendor}   source: {profile.source}",
        f"  file: {profile.where}",
        f"  reference: {profile.reference}",
        "  peaks (dense):",
    ]
    for compute_type, value in profile.peak_flops_per_s.items():
        ridge = ""
        if profile.dram.bandwidth_bytes_per_s:
            ridge = f"   ridge {value / profile.dram.bandwidth_bytes_per_s:.1f} FLOP/B"
        note = profile.notes.get(f"peak_flops_per_s.{compute_type}", "")
        lines.append(f"    {compute_type:5s} {format_si(value, 'FLOP/s'):>14s}{ridge}" + (f"   [{note}]" if note else ""))
    lines.append("  memory levels (fastest first):")
    for level in profile.memory_levels:
        capacity = format_bytes(level.capacity_bytes) if level.capacity_bytes is not None else "?"
        if level.effective_capacity_bytes is not None:
            capacity += f" (in use {format_bytes(level.effective_capacity_bytes)})"
        bandwidth = format_si(level.bandwidth_bytes_per_s, "B/s") if level.bandwidth_bytes_per_s is not None else "not measured"
        lines.append(f"    {level.name:6s} {capacity:>10s} {bandwidth:>14s}" + (f"   [{level.note}]" if level.note else ""))
    note = profile.notes.get("overhead_s", "")
    lines.append(f"  per-op overhead: {format_time(profile.overhead_s)}" + (f"   [{note}]" if note else ""))
    if profile.module_call_s:
        lines.append(f"  module call: {format_time(profile.module_call_s)}   [{profile.notes.get('module_call_s', '')}]")
    if profile.pass_call_s is not None:
        pass_note = profile.notes.get("pass_call_s")
        lines.append(f"  in a pass, per op call: {format_time(profile.pass_call_s)} and its cold data (the pass model)"
                     + (f"   [{pass_note}]" if pass_note else ""))
    if profile.efficiency:
        lines.append("  efficiency (time_calibrated = fixed + time_roofline / factor):")
        for key, factor in profile.efficiency.items():
            op_class = key.partition("@")[0]
            lines.append(f"    {key:18s} {factor:6.3f}  fixed "
                         f"{format_time(profile.fixed_overhead_s.get(op_class, profile.overhead_s)):>9s}")
    other = {k: v for k, v in profile.notes.items()
             if not k.startswith("peak_flops_per_s.") and k not in ("overhead_s", "pass_call_s")}
    for key, text in other.items():
        lines.append(f"  note {key}: {text}")
    if profile.metadata:
        lines.append("  metadata:")
        lines.extend(f"    {key}: {value}" for key, value in profile.metadata.items())
    return "\n".join(lines)

"""Human-readable numbers and terminal tables: the only place that applies SI prefixes."""
from __future__ import annotations

import math
from collections.abc import Callable, Mapping
from typing import Any

import pandas as pd

__all__ = ["format_bytes", "format_markdown", "format_si", "format_table", "format_time", "json_records", "json_value"]

_PREFIXES = [(1e15, "P"), (1e12, "T"), (1e9, "G"), (1e6, "M"), (1e3, "k")]
_BINARY = [(2**50, "Pi"), (2**40, "Ti"), (2**30, "Gi"), (2**20, "Mi"), (2**10, "Ki")]


def format_si(value: float, unit: str = "", digits: int = 3) -> str:
    """1.23e9 -> '1.23 G<unit>' (decimal prefixes, as datasheets count FLOP/s and B/s)."""
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "-"
    magnitude = abs(value)
    for scale, prefix in _PREFIXES:
        if magnitude >= scale:
            return f"{value / scale:.{digits}g} {prefix}{unit}".rstrip()
    return f"{value:.{digits}g} {unit}".rstrip()


def format_bytes(value: float, digits: int = 3) -> str:
    """Byte counts with binary prefixes: 1536 -> '1.5 KiB'."""
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "-"
    magnitude = abs(value)
    for scale, prefix in _BINARY:
        if magnitude >= scale:
            return f"{value / scale:.{digits}g} {prefix}B"
    return f"{value:.{digits}g} B"


def format_time(seconds: float, digits: int = 3) -> str:
    """Seconds in the unit a person reads best: 3.2e-5 -> '32 us'."""
    if seconds is None or (isinstance(seconds, float) and math.isnan(seconds)):
        return "-"
    magnitude = abs(seconds)
    for scale, unit in ((1.0, "s"), (1e-3, "ms"), (1e-6, "us")):
        if magnitude >= scale:
            return f"{seconds / scale:.{digits}g} {unit}"
    return f"{seconds / 1e-9:.{digits}g} ns"


def format_table(df: pd.DataFrame, formatters: Mapping[str, Callable[[Any], str]] | None = None,
                 max_rows: int | None = None) -> str:
    """A plain-text table with right-aligned numbers, formatted per column."""
    shown = df if max_rows is None or len(df) <= max_rows else df.head(max_rows)
    cells: dict[str, list[str]] = {}
    for column in shown.columns:
        formatter = (formatters or {}).get(column)
        values = shown[column].tolist()
        cells[column] = [formatter(v) if formatter is not None else _default_cell(v) for v in values]
    widths = {c: max([len(str(c))] + [len(s) for s in cells[c]]) for c in shown.columns}
    numeric = {c: pd.api.types.is_numeric_dtype(shown[c]) for c in shown.columns}

    def align(column: str, text: str) -> str:
        return text.rjust(widths[column]) if numeric[column] else text.ljust(widths[column])

    lines = ["  ".join(align(c, str(c)) for c in shown.columns)]
    lines.append("  ".join("-" * widths[c] for c in shown.columns))
    for i in range(len(shown)):
        lines.append("  ".join(align(c, cells[c][i]) for c in shown.columns).rstrip())
    if len(shown) < len(df):
        lines.append(f"... {len(df) - len(shown)} more rows")
    return "\n".join(lines)


def format_markdown(df: pd.DataFrame) -> str:
    """A GitHub-flavoured Markdown table (pandas' to_markdown needs the tabulate package)."""
    header = "| " + " | ".join(str(c) for c in df.columns) + " |"
    rule = "|" + "|".join("---:" if pd.api.types.is_numeric_dtype(df[c]) else "---" for c in df.columns) + "|"
    body = ["| " + " | ".join(_default_cell(v) for v in row) + " |" for row in df.itertuples(index=False)]
    return "\n".join([header, rule, *body])


def _default_cell(value: object) -> str:
    if isinstance(value, float):
        if math.isnan(value):
            return "-"
        return f"{value:.4g}"
    return str(value)


def json_value(value: Any) -> Any:
    """numpy and pandas scalars -> plain Python values, so json.dumps accepts them; NaN (not
    measured) and infinities -> null, since strict JSON has neither."""
    value = value.item() if hasattr(value, "item") else value
    return None if isinstance(value, float) and not math.isfinite(value) else value


def json_records(df: pd.DataFrame) -> list[dict[str, Any]]:
    """A DataFrame as a list of JSON-ready row dicts."""
    return [{str(k): json_value(v) for k, v in row.items()} for row in df.to_dict(orient="records")]

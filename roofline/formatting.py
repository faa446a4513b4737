"""Human-readable numbers and terminal tables: the only place that applies SI prefixes.

pandas is imported only by the DataFrame paths, so `roofline hw list` (format_records) starts without it.
"""
from __future__ import annotations

import math
from collections.abc import Callable, Mapping, Sequence
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    import pandas as pd

__all__ = ["column_formatter", "display_header", "format_bytes", "format_markdown", "format_number", "format_percent",
           "format_records", "format_si", "format_table", "format_time", "json_records", "json_value"]

_PREFIXES = [(1e15, "P"), (1e12, "T"), (1e9, "G"), (1e6, "M"), (1e3, "k")]
_BINARY = [(2**50, "Pi"), (2**40, "Ti"), (2**30, "Gi"), (2**20, "Mi"), (2**10, "Ki")]
_TIMES = [(1.0, "s"), (1e-3, "ms"), (1e-6, "us"), (1e-9, "ns")]


def _missing(value: object) -> bool:
    return value is None or (isinstance(value, float) and math.isnan(value))


def _fixed(value: float, digits: int) -> str:
    """`digits` significant digits in plain fixed-point notation (what '.{digits}g' gives, never e-notation),
    thousands separated: 12345.6 -> '12,346', 295.37 -> '295.4', 0.012345 -> '0.01235' (digits=4)."""
    if math.isinf(value):
        return "inf" if value > 0 else "-inf"
    if value == 0:
        return "0"
    decimals = max(0, digits - 1 - math.floor(math.log10(abs(value))))
    text = f"{value:,.{decimals}f}"
    return text.rstrip("0").rstrip(".") if "." in text else text


def _scaled(value: float, scales: Sequence[tuple[float, str]], digits: int, floor_unit: str) -> str:
    """value / scale with the largest scale it reaches, moving up one when rounding reaches the next
    (999,999 -> '1 M', not '1e+03 k'); below the smallest scale, the value itself in `floor_unit`."""
    magnitude = abs(value)
    for i, (scale, prefix) in enumerate(scales):
        if magnitude >= scale:
            rounded = float(f"{value / scale:.{digits}g}")
            if i > 0 and abs(rounded) >= scales[i - 1][0] / scale:
                scale, prefix = scales[i - 1]
            return f"{_fixed(value / scale, digits)} {prefix}".rstrip()
    return f"{_fixed(value, digits)} {floor_unit}".rstrip()


def format_si(value: float, unit: str = "", digits: int = 3) -> str:
    """1.23e9 -> '1.23 G<unit>' (decimal prefixes, as datasheets count FLOP/s and B/s); never e-notation."""
    if _missing(value):
        return "-"
    text = _scaled(float(value), _PREFIXES, digits, "")
    return f"{text}{unit}" if text[-1].isalpha() else f"{text} {unit}".rstrip()


def format_bytes(value: float, digits: int = 3) -> str:
    """Byte counts with binary prefixes: 1536 -> '1.5 KiB'."""
    if _missing(value):
        return "-"
    return _scaled(float(value), _BINARY, digits, "") + "B" if abs(value) >= 2**10 else f"{_fixed(float(value), digits)} B"


def format_time(seconds: float, digits: int = 3) -> str:
    """Seconds in the unit a person reads best: 3.2e-5 -> '32 us'."""
    if _missing(seconds):
        return "-"
    if seconds != 0 and abs(seconds) < 1e-9:
        return f"{_fixed(seconds / 1e-9, digits)} ns"
    return _scaled(float(seconds), _TIMES, digits, "s")


def format_number(value: float, digits: int = 4) -> str:
    """A plain number with `digits` significant digits, thousands separated, never e-notation:
    throughputs (11,111 samples/s), intensities and ridge points (295.4 FLOP/B)."""
    return "-" if _missing(value) else _fixed(float(value), digits)


def format_percent(fraction: float) -> str:
    """A fraction as a percentage: 0.4567 -> '45.7%'."""
    return "-" if _missing(fraction) else f"{float(fraction):.1%}"


# ---- the display rules for table columns --------------------------------------------------------------
# DataFrame columns keep their names (they are the CSV/JSON contract, units in the name: `predicted_s`,
# `weight_bytes`); a table for people shows them through these rules, in this one place. Intensities and
# ridge points carry their unit in the header (their cells are bare numbers); fractions print as
# percentages; throughputs, times, byte counts and rates print with their unit in each cell.
_INTENSITY_COLUMNS = ("arithmetic_intensity", "fused_arithmetic_intensity", "ridge_point")


def _is_intensity(column: str) -> bool:
    return column in _INTENSITY_COLUMNS or column.endswith("_intensity") or column.startswith("ridge_")


def _is_fraction(column: str) -> bool:
    return column == "share" or column.endswith(("_fraction", "_share"))


def display_header(column: str) -> str:
    """The header a table shows for a column: its name, with the unit where the cells have none."""
    return f"{column} (FLOP/B)" if _is_intensity(column) else column


def column_formatter(column: str) -> Callable[[Any], str] | None:
    """The cell format a column's name implies (units in field names), or None for the plain default."""
    if _is_fraction(column):
        return format_percent
    if _is_intensity(column):
        return format_number
    if column.endswith("flops_per_s"):
        return lambda v: format_si(v, "FLOP/s")
    if column.endswith("bytes_per_s"):
        return lambda v: format_si(v, "B/s")
    if column.endswith("_per_s"):  # throughput: samples/s, tokens/s
        return format_number
    if column.endswith("_s"):
        return format_time
    if column == "bytes" or column.startswith("bytes_") or column.endswith("_bytes"):
        return format_bytes
    if column in ("macs", "flops", "params"):
        return format_si
    return None


def _cells(values: Sequence[Any], column: Any, formatters: Mapping[str, Callable[[Any], str]] | None) -> list[str]:
    explicit = (formatters or {}).get(column)
    if explicit is not None:
        return [explicit(v) for v in values]
    implied = column_formatter(str(column))
    return [implied(v) if implied is not None and _is_number(v) else _default_cell(v) for v in values]


def _is_number(value: object) -> bool:
    """Rules format numbers only: a column a caller already rendered as text (a report) stays as it is."""
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def _text_table(columns: Sequence[Any], cells: Mapping[Any, list[str]], numeric: Mapping[Any, bool],
                more_rows: int) -> str:
    """The plain-text layout both table entry points share: numbers right-aligned, text left-aligned."""
    headers = {c: display_header(str(c)) for c in columns}
    widths = {c: max([len(headers[c])] + [len(s) for s in cells[c]]) for c in columns}

    def align(column: Any, text: str) -> str:
        return text.rjust(widths[column]) if numeric[column] else text.ljust(widths[column])

    lines = ["  ".join(align(c, headers[c]) for c in columns)]
    lines.append("  ".join("-" * widths[c] for c in columns))
    rows = len(cells[columns[0]]) if columns else 0
    for i in range(rows):
        lines.append("  ".join(align(c, cells[c][i]) for c in columns).rstrip())
    if more_rows:
        lines.append(f"... {more_rows} more rows")
    return "\n".join(lines)


def format_table(df: pd.DataFrame, formatters: Mapping[str, Callable[[Any], str]] | None = None,
                 max_rows: int | None = None) -> str:
    """A plain-text table with right-aligned numbers: each column by `formatters`, else by its name's rule."""
    import pandas as pd

    shown = df if max_rows is None or len(df) <= max_rows else df.head(max_rows)
    cells = {c: _cells(shown[c].tolist(), c, formatters) for c in shown.columns}
    numeric = {c: bool(pd.api.types.is_numeric_dtype(shown[c])) for c in shown.columns}
    return _text_table(list(shown.columns), cells, numeric, len(df) - len(shown))


def format_records(rows: Sequence[Mapping[str, Any]], formatters: Mapping[str, Callable[[Any], str]] | None = None) -> str:
    """format_table for plain row dicts (same columns in each row), without pandas: a column is numeric,
    so right-aligned, when every value in it is a number (a bool counts, as in pandas)."""
    columns = list(rows[0]) if rows else []
    values = {c: [row[c] for row in rows] for c in columns}
    numeric = {c: all(isinstance(v, (int, float)) for v in values[c]) for c in columns}
    return _text_table(columns, {c: _cells(values[c], c, formatters) for c in columns}, numeric, 0)


def format_markdown(df: pd.DataFrame, formatters: Mapping[str, Callable[[Any], str]] | None = None) -> str:
    """A GitHub-flavoured Markdown table with the same headers and cells as format_table (pandas'
    to_markdown needs the tabulate package)."""
    import pandas as pd

    cells = {c: _cells(df[c].tolist(), c, formatters) for c in df.columns}
    header = "| " + " | ".join(display_header(str(c)) for c in df.columns) + " |"
    rule = "|" + "|".join("---:" if pd.api.types.is_numeric_dtype(df[c]) else "---" for c in df.columns) + "|"
    body = ["| " + " | ".join(cells[c][i] for c in df.columns) + " |" for i in range(len(df))]
    return "\n".join([header, rule, *body])


def _default_cell(value: object) -> str:
    if isinstance(value, float):
        return format_number(value)
    return str(value)


def json_value(value: Any) -> Any:
    """numpy and pandas scalars -> plain Python values, so json.dumps accepts them; NaN (not
    measured) and infinities -> null, since strict JSON has neither."""
    value = value.item() if hasattr(value, "item") else value
    return None if isinstance(value, float) and not math.isfinite(value) else value


def json_records(df: pd.DataFrame) -> list[dict[str, Any]]:
    """A DataFrame as a list of JSON-ready row dicts."""
    return [{str(k): json_value(v) for k, v in row.items()} for row in df.to_dict(orient="records")]

"""Number formats and table display rules: units in headers, fractions as percentages, no e-notation."""
import math
import re

import pandas as pd
import pytest

from roofline.formatting import (
    display_header,
    format_bytes,
    format_markdown,
    format_number,
    format_percent,
    format_si,
    format_table,
    format_time,
)

E_NOTATION = re.compile(r"\d[eE][-+]?\d")


@pytest.mark.parametrize(("value", "expected"), [
    (12345.6, "12,346"), (11111.11, "11,111"), (295.37, "295.4"), (0.012345, "0.01235"), (2.0, "2"),
    (1e-9, "0.000000001"), (0, "0"), (-1234.6, "-1,235"), (float("nan"), "-"), (math.inf, "inf"),
])
def test_format_number_is_plain_digits(value: float, expected: str) -> None:
    assert format_number(value) == expected


@pytest.mark.parametrize(("value", "expected"), [
    (1.23e9, "1.23 GFLOP/s"), (989.5e12, "990 TFLOP/s"), (1979e12, "1.98 PFLOP/s"),
    (999_999, "1 MFLOP/s"),  # rounds up into the next prefix, not '1e+03 kFLOP/s'
    (999.4, "999 FLOP/s"), (2.5e18, "2,500 PFLOP/s"), (1e-5, "0.00001 FLOP/s"), (float("nan"), "-"),
])
def test_format_si(value: float, expected: str) -> None:
    assert format_si(value, "FLOP/s") == expected


@pytest.mark.parametrize(("value", "expected"), [
    (1536, "1.5 KiB"), (12, "12 B"), (85_520_809_984, "79.6 GiB"), (80e9, "74.5 GiB"), (2**20, "1 MiB"),
])
def test_format_bytes(value: float, expected: str) -> None:
    assert format_bytes(value) == expected


@pytest.mark.parametrize(("value", "expected"), [
    (3.2e-5, "32 us"), (0.9999999, "1 s"), (1234.0, "1,234 s"), (5e-10, "0.5 ns"), (2.5e-3, "2.5 ms"),
])
def test_format_time(value: float, expected: str) -> None:
    assert format_time(value) == expected


def test_no_e_notation_over_many_magnitudes() -> None:
    for exponent in range(-12, 20):
        for mantissa in (1.0, 9.9999, 5.55):
            value = mantissa * 10.0**exponent
            for text in (format_si(value, "B/s"), format_number(value), format_time(value), format_bytes(value)):
                assert not E_NOTATION.search(text), (value, text)


def test_headers_carry_units_and_fractions_are_percentages() -> None:
    df = pd.DataFrame({
        "name": ["a", "b"], "arithmetic_intensity": [12.345, 1500.0], "ridge_point": [295.37, 20.0],
        "memory_bound_fraction": [0.4567, 1.0], "share": [0.25, 0.75], "throughput_samples_per_s": [11111.1, 2.5e5],
        "predicted_s": [3.2e-5, 1.0], "bytes": [1536, 2**20], "attainable_flops_per_s": [1.23e12, 67e12],
    })
    table = format_table(df)
    header = table.splitlines()[0].split("  ")
    assert "arithmetic_intensity (FLOP/B)" in table and "ridge_point (FLOP/B)" in table
    assert "name" in header[0] and all("(FLOP/B)" not in h for h in header if "fraction" in h or "share" in h)
    first, second = table.splitlines()[2:4]
    for cell in ("12.35", "295.4", "45.7%", "25.0%", "11,111", "32 us", "1.5 KiB", "1.23 TFLOP/s"):
        assert cell in first
    for cell in ("1,500", "100.0%", "75.0%", "250,000", "1 s", "1 MiB", "67 TFLOP/s"):
        assert cell in second
    assert not E_NOTATION.search(table)
    markdown = format_markdown(df)
    assert markdown.splitlines()[0].startswith("| name | arithmetic_intensity (FLOP/B) | ridge_point (FLOP/B) |")
    assert "| a | 12.35 | 295.4 | 45.7% | 25.0% | 11,111 | 32 us | 1.5 KiB | 1.23 TFLOP/s |" in markdown
    # The DataFrame is untouched: its column names are the CSV/JSON contract.
    assert list(df.columns)[1] == "arithmetic_intensity" and df["share"].tolist() == [0.25, 0.75]


def test_explicit_formatter_wins_and_text_cells_stay() -> None:
    df = pd.DataFrame({"share": ["12.5%"], "predicted_s": [0.5]})  # a column a caller already rendered
    assert "12.5%" in format_table(df)
    assert "half" in format_table(df, {"predicted_s": lambda v: "half"})


def test_format_percent() -> None:
    assert format_percent(0.4567) == "45.7%" and format_percent(float("nan")) == "-"


def test_display_header_rule() -> None:
    assert display_header("arithmetic_intensity") == "arithmetic_intensity (FLOP/B)"
    assert display_header("fused_arithmetic_intensity") == "fused_arithmetic_intensity (FLOP/B)"
    assert display_header("ridge_fp32") == "ridge_fp32 (FLOP/B)"
    assert display_header("predicted_s") == "predicted_s" and display_header("share") == "share"

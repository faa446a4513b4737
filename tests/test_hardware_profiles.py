"""Shipped profiles against the schema and the reference figures; malformed files give clear errors."""
from __future__ import annotations

import csv
import dataclasses
import math
from pathlib import Path

import pytest

from roofline import cli
from roofline.errors import RooflineError
from roofline.hardware import (
    HardwareProfile,
    MemoryLevel,
    list_profiles,
    load_profile,
    save_profile,
)
from roofline.hardware.profile import hwprofiles_dir, load_profile_file
from roofline.precision import COMPUTE_TYPES

FIXTURES = Path(__file__).parent / "fixtures"
# Reference figures (copied from the project's datasheet tables, with the column each came from).
REFERENCE = list(csv.DictReader((FIXTURES / "reference_figures.csv").read_text(encoding="utf-8").splitlines()))

REQUIRED_DEVICES = [
    "v100-sxm2-32gb", "t4", "a10", "a100-40gb-sxm", "a100-80gb-sxm", "a100-80gb-pcie", "l4", "l40s", "h100-sxm",
    "h100-pcie", "h200-sxm", "b200", "rtx3090", "rtx4090", "jetson-agx-orin-64gb", "xeon-8480plus", "epyc-9654",
    "apple-m2", "raspberry-pi-5",
]


def test_every_shipped_profile_loads_and_is_consistent() -> None:
    profiles = list_profiles()
    stems = {Path(p.path or "").stem for p in profiles}
    assert set(REQUIRED_DEVICES) <= stems
    for profile in profiles:
        assert profile.source == "datasheet" and profile.reference
        assert set(profile.peak_flops_per_s) <= set(COMPUTE_TYPES)
        assert profile.dram.bandwidth_bytes_per_s is not None
        assert profile.kind == "cpu" or profile.memory_levels[0].name == "L2"
        # Estimates are never passed off as datasheet figures.
        assert "ESTIMATE" in profile.notes["overhead_s"]
        for level in profile.memory_levels[:-1]:
            assert level.bandwidth_bytes_per_s is None or "ESTIMATE" in level.note


@pytest.mark.parametrize("row", REFERENCE, ids=lambda r: f"{r['profile']}:{r['field']}")
def test_profile_figures_match_reference(row: dict[str, str]) -> None:
    profile = load_profile(row["profile"])
    field = row["field"]
    if field.startswith("peak_flops_per_s."):
        value = profile.peak(field.split(".", 1)[1])
    else:
        index = -1 if field.startswith("memory_levels[-1]") else 0
        value = getattr(profile.memory_levels[index], field.rsplit(".", 1)[1])
    assert value == pytest.approx(float(row["value"]), rel=1e-4)


def test_dense_not_sparse() -> None:
    # H100 SXM: the datasheet prints 1,979 TFLOPS FP16 "with sparsity"; dense = 1979 / 2 = 989.5.
    assert load_profile("h100-sxm").peak("fp16") == pytest.approx(989.5e12)
    # RTX 4090: FP16 with FP32 accumulate (165.2), not FP16 accumulate (330.3), is the roof.
    assert load_profile("RTX4090").peak("fp16") == pytest.approx(165.2e12)


def test_device_memory_is_the_usable_capacity_reported() -> None:
    from roofline.formatting import format_bytes

    # nvidia-smi on an H100 80GB HBM3 reports 81559 MiB (79.6 GiB), not the marketed 80 GB (74.5 GiB).
    h100 = load_profile("h100-sxm").dram
    assert h100.capacity_bytes == 81559 * 2**20 and format_bytes(h100.capacity_bytes) == "79.6 GiB"
    assert format_bytes(load_profile("a100-80gb-sxm").dram.capacity_bytes) == "79.2 GiB"  # CUDA-visible
    assert load_profile("t4").dram.capacity_bytes == 16 * 2**30 * 15 / 16  # ECC on GDDR6 takes 1/16
    for profile in list_profiles():
        level = profile.dram
        if profile.kind == "gpu" and "Jetson" not in profile.name:  # Jetson: shared memory, nominal kept (the note says why)
            assert level.capacity_bytes is not None and "usable capacity as the device reports it" in level.note
            nominal = float(level.note.rsplit("Datasheet: ", 1)[1].split(" GB")[0]) * 1e9
            assert 0.8 * nominal < level.capacity_bytes < 1.1 * nominal, profile.name


def test_profile_api() -> None:
    h100 = load_profile("h100-sxm")
    assert h100.ridge_point("fp16") == pytest.approx(989.5e12 / 3350e9)
    assert h100.ridge_point("fp16", "L2") == pytest.approx(989.5e12 / h100.bandwidth("L2"))
    assert h100.memory_level_for(1e6).name == "L2"
    assert h100.memory_level_for(1e9) is h100.dram
    assert h100.memory_level_for(1e12) is h100.dram  # larger than everything: still the last level
    with pytest.raises(RooflineError, match=r"hwprofiles/t4\.yaml: field 'peak_flops_per_s\.bf16'.*has: .*fp16"):
        load_profile("t4").peak("bf16")
    assert "H100" in repr(h100) and "<pre>" in h100._repr_html_()


def test_save_and_reload_round_trip(tmp_path: Path) -> None:
    original = load_profile("a100-80gb-sxm")
    target = save_profile(original, tmp_path / "copy.yaml")
    again = load_profile(str(target))
    assert again.to_dict() == original.to_dict()
    measured = dataclasses.replace(original, module_call_s=1.3e-6)  # the optional field survives a round trip
    assert load_profile(str(save_profile(measured, tmp_path / "measured.yaml"))).module_call_s == 1.3e-6


def test_a_path_object_loads_like_its_string(tmp_path: Path) -> None:
    """load_profile takes a pathlib.Path as it takes the path's string (a Path once raised AttributeError)."""
    path = tmp_path / "mine.yaml"
    save_profile(load_profile("t4"), path)
    assert load_profile(path) == load_profile(str(path)) == load_profile_file(path)


def test_unknown_name_suggests_close_matches() -> None:
    with pytest.raises(RooflineError, match="did you mean: h100-sxm"):
        load_profile("h100sxm")


def test_hwprofiles_dir_is_overridable(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    save_profile(load_profile("t4"), tmp_path / "my-gpu.yaml")
    monkeypatch.setenv("ROOFLINE_HWPROFILES", str(tmp_path))
    assert hwprofiles_dir() == tmp_path
    assert [p.name for p in list_profiles()] == ["NVIDIA T4"]
    assert load_profile("MY-GPU").name == "NVIDIA T4"


def test_profiles_are_package_data() -> None:
    # Inside the package, so a wheel carries them (pyproject package-data) and importlib.resources finds them.
    import roofline

    assert hwprofiles_dir() == Path(roofline.__file__).resolve().parent / "hwprofiles"
    assert load_profile("h100-sxm").where == "roofline/hwprofiles/h100-sxm.yaml"


def test_no_profiles_is_an_error_not_an_empty_list(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    # The bug of a wheel without its package data: `hw list` printed an empty table.
    monkeypatch.setenv("ROOFLINE_HWPROFILES", str(tmp_path))
    with pytest.raises(RooflineError, match=r"no hardware profiles \(\*\.yaml\) in .*\$ROOFLINE_HWPROFILES"):
        list_profiles()
    with pytest.raises(RooflineError, match="no hardware profiles"):
        load_profile("h100-sxm")


# ---- malformed profiles ----------------------------------------------------------------------------

GOOD = """\
name: Test GPU
kind: gpu
vendor: Test
source: datasheet
reference: test
peak_flops_per_s: {fp32: 10e12, fp16: 100e12}
memory_levels:
  - {name: L2, capacity_bytes: 4e6, bandwidth_bytes_per_s: 3e12}
  - {name: HBM, capacity_bytes: 16e9, bandwidth_bytes_per_s: 1e12}
overhead_s: 5e-6
"""

MALFORMED = [
    ("missing peak", GOOD.replace("peak_flops_per_s: {fp32: 10e12, fp16: 100e12}\n", ""), "field 'peak_flops_per_s': missing"),
    ("negative bandwidth", GOOD.replace("bandwidth_bytes_per_s: 1e12", "bandwidth_bytes_per_s: -1"),
     r"field 'memory_levels\[1\]\.bandwidth_bytes_per_s': must be a positive number in bytes/s, got -1"),
    ("wrong units", GOOD.replace("fp16: 100e12", "fp16: 100"), r"field 'peak_flops_per_s\.fp16': 100 is implausibly small \(wrong units\?"),
    ("absurd peak", GOOD.replace("fp16: 100e12", "fp16: 1e20"), r"field 'peak_flops_per_s\.fp16': .*implausibly large"),
    ("unknown key", GOOD + "colour: green\n", "field 'colour': unknown key"),
    ("unknown compute type", GOOD.replace("fp16:", "fp17:"), r"field 'peak_flops_per_s\.fp17': unknown compute type \(did you mean: fp16"),
    ("not yaml", "name: [unclosed\n", "not valid YAML"),
    ("not a mapping", "- just\n- a list\n", "must be a YAML mapping"),
    ("wrong type", GOOD.replace("overhead_s: 5e-6", "overhead_s: fast"), "field 'overhead_s': must be a positive number in seconds, got 'fast'"),
    ("bad kind", GOOD.replace("kind: gpu", "kind: tpu"), "field 'kind': must be one of gpu, cpu"),
    ("levels out of order", GOOD.replace("capacity_bytes: 4e6", "capacity_bytes: 40e9"), r"memory_levels\[1\]\.capacity_bytes"),
    ("bad efficiency", GOOD + "efficiency: {gemm: 2.5}\n", r"field 'efficiency\.gemm'"),
    ("bad module call", GOOD + "module_call_s: -1\n", r"field 'module_call_s': must be a positive number in seconds"),
    ("efficiency for an unknown level", GOOD + "efficiency: {gemm: 0.8, gemm@DRAM: 0.5}\n",
     r"field 'efficiency\.gemm@DRAM': unknown memory level.*this profile's levels: L2, HBM"),
    ("efficiency for an unknown class at a level", GOOD + "efficiency: {gemn@HBM: 0.5}\n",
     r"field 'efficiency\.gemn@HBM': unknown op class \(did you mean: gemm"),
    ("bad pass call", GOOD + "pass_call_s: -1e-5\n", r"field 'pass_call_s': must be a positive number in seconds"),
    ("pass call in microseconds", GOOD + "pass_call_s: 20\n", r"field 'pass_call_s': 20 is implausibly large"),
]


def test_good_fixture_loads(tmp_path: Path) -> None:
    path = tmp_path / "good.yaml"
    path.write_text(GOOD)
    profile = load_profile(str(path))
    assert profile.peak("fp16") == 100e12 and profile.dram.capacity_bytes == 16e9


def test_efficiency_per_memory_level_falls_back_to_the_class(tmp_path: Path) -> None:
    path = tmp_path / "levels.yaml"
    path.write_text(GOOD + "efficiency: {gemm: 0.8, gemm@HBM: 0.5}\n")
    profile = load_profile(str(path))
    assert profile.efficiency_for("gemm", "HBM") == 0.5
    assert profile.efficiency_for("gemm", "L2") == 0.8
    assert profile.efficiency_for("conv", "HBM") is None


def test_the_pass_call_survives_a_round_trip_and_a_retired_pass_line_is_read_and_dropped(tmp_path: Path) -> None:
    path = tmp_path / "pass.yaml"
    path.write_text(GOOD + "efficiency: {gemm: 0.8}\nfixed_overhead_s: {gemm: 1.0e-5}\npass_call_s: 2.0e-5\n")
    profile = load_profile(str(path))
    assert profile.pass_call_s == 2.0e-5 and "in a pass, per op call: 20" in profile.summary()
    again = load_profile(str(save_profile(profile, tmp_path / "saved.yaml")))
    assert again.pass_call_s == 2.0e-5 and again.to_dict() == profile.to_dict()
    # A profile measured before the pass model, with its pass line: it loads, without one (in-pass = alone).
    old = tmp_path / "old.yaml"
    old.write_text(GOOD + "efficiency: {gemm: 0.8}\npass_efficiency: {gemm: 0.6}\npass_fixed_overhead_s: {gemm: 4e-5}\n")
    retired = load_profile(old)
    assert retired.pass_call_s is None and "pass_efficiency" not in retired.to_dict()


@pytest.mark.parametrize(("case", "text", "message"), MALFORMED, ids=[m[0] for m in MALFORMED])
def test_malformed_profile_names_file_and_field(tmp_path: Path, case: str, text: str, message: str) -> None:
    path = tmp_path / "bad.yaml"
    path.write_text(text)
    with pytest.raises(RooflineError, match=message) as info:
        load_profile_file(path)
    assert str(info.value).startswith(str(path))


def test_cli_reports_bad_profile_in_one_line(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path = tmp_path / "bad.yaml"
    path.write_text(MALFORMED[1][1])
    assert cli.main(["hw", "show", str(path)]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith("roofline: error: ") and "bandwidth_bytes_per_s" in err


def test_cli_unknown_profile_exit_2(capsys: pytest.CaptureFixture[str]) -> None:
    assert cli.main(["hw", "show", "h100sxm"]) == 2
    assert "did you mean: h100-sxm" in capsys.readouterr().err


def test_cli_list_and_show(capsys: pytest.CaptureFixture[str]) -> None:
    assert cli.main(["hw", "list"]) == 0
    out = capsys.readouterr().out
    assert "h100-sxm" in out and "ridge_fp16 (FLOP/B)" in out and "295.4" in out  # 989.5e12 / 3.35e12
    assert cli.main(["hw", "list", "--format", "json"]) == 0
    import json

    rows = {r["name"]: r for r in json.loads(capsys.readouterr().out)}
    assert rows["t4"]["int8_flops_per_s"] == pytest.approx(130e12) and rows["v100-sxm2-32gb"]["int8_flops_per_s"] is None
    assert cli.main(["hw", "show", "raspberry-pi-5"]) == 0
    assert "ESTIMATE" in capsys.readouterr().out


def _table_rows(text: str) -> dict[str, dict[str, str]]:
    """A format_table text back into cells, cut at the spans of its dashed rule: row name -> header -> cell."""
    import re

    lines = text.splitlines()
    spans = [m.span() for m in re.finditer(r"-+", lines[1])]
    cut = lambda line: [line[a:b].strip() for a, b in spans]
    header = cut(lines[0])
    rows = [cut(line.ljust(len(lines[1]))) for line in lines[2:] if line and not line.startswith(("ridge =", "saved "))]
    return {row[0]: dict(zip(header, row)) for row in rows}


def test_cli_list_has_bf16_and_fp8_columns(capsys: pytest.CaptureFixture[str]) -> None:
    assert cli.main(["hw", "list"]) == 0
    rows = _table_rows(capsys.readouterr().out)
    # Datasheet dense peaks: BF16 1,979 / 2 = 989.5 TFLOP/s (3 digits: 990), FP8 3,958 / 2 = 1,979 TFLOP/s.
    assert rows["h100-sxm"] == {
        "name": "h100-sxm", "device": "NVIDIA H100 SXM 80GB", "kind": "gpu", "source": "datasheet",
        "fp32": "67 TFLOP/s", "bf16": "990 TFLOP/s", "fp16": "990 TFLOP/s", "fp8": "1.98 PFLOP/s", "int8": "1.98 PFLOP/s",
        "dram": "3.35 TB/s", "ridge_fp32 (FLOP/B)": "20", "ridge_fp16 (FLOP/B)": "295.4",  # 67e12 / 3.35e12; 989.5e12 / 3.35e12
    }
    # Volta has neither bf16 nor fp8 (reference table: unsupported_types tf32;bf16;fp8).
    assert (rows["v100-sxm2-32gb"]["bf16"], rows["v100-sxm2-32gb"]["fp8"], rows["v100-sxm2-32gb"]["fp16"]) == ("-", "-", "125 TFLOP/s")


def test_cli_list_shows_saved_profiles_marked(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                              capsys: pytest.CaptureFixture[str]) -> None:
    import json

    saved_dir = tmp_path / "saved"
    monkeypatch.setenv("ROOFLINE_PROFILE_DIR", str(saved_dir))
    measured = dataclasses.replace(load_profile("t4"), name="my box (measured)", source="measured", path=None)
    save_profile(measured, saved_dir / "measured-my-box.yaml")
    save_profile(measured, saved_dir / "t4.yaml")  # a stem the shipped t4 takes: listed by its path
    (saved_dir / "broken.yaml").write_text("name: [unclosed\n")
    with pytest.warns(UserWarning, match=r"skipping saved profile .*broken\.yaml: .*not valid YAML"):
        assert cli.main(["hw", "list"]) == 0
    out = capsys.readouterr().out
    row = next(line for line in out.splitlines() if line.startswith("measured-my-box "))
    assert "my box (measured)" in row and "measured (saved)" in row
    assert f"{saved_dir / 't4.yaml'} " in out
    assert f"saved profiles ({saved_dir}): 2" in out
    with pytest.warns(UserWarning):
        assert cli.main(["hw", "list", "--format", "json"]) == 0
    rows = json.loads(capsys.readouterr().out)
    by_name = {r["name"]: r for r in rows}
    assert by_name["measured-my-box"]["saved"] is True and by_name["measured-my-box"]["source"] == "measured (saved)"
    assert by_name["t4"]["saved"] is False and by_name["t4"]["source"] == "datasheet"
    assert by_name["measured-my-box"]["fp16_flops_per_s"] == pytest.approx(65e12)
    # The name a saved row shows is one --hw accepts.
    assert load_profile("measured-my-box").name == "my box (measured)"
    assert load_profile(str(saved_dir / "t4.yaml")).source == "measured"


def test_profile_built_in_code_is_validated() -> None:
    with pytest.raises(RooflineError, match=r"profile 'x': field 'overhead_s'"):
        HardwareProfile("x", "cpu", "v", "measured", "r", {"fp32": 1e11}, (MemoryLevel("DRAM", None, 1e10),), overhead_s=0.0)
    assert math.isclose(
        HardwareProfile("x", "cpu", "v", "measured", "r", {"fp32": 1e11}, (MemoryLevel("DRAM", None, 1e10),), 1e-6).ridge_point("fp32"), 10.0
    )


def test_group_rates_survive_a_round_trip_and_bad_ones_are_named(tmp_path: Path) -> None:
    """conv_group_rate (channels per group -> rate against dense) is saved and read back as whole counts; a count
    under 2, a count that is not a number, or a rate out of range is a one-line error naming the field."""
    import yaml

    rates = {2: 0.06, 4: 0.27, 64: 0.98, 384: 1.0}
    measured = dataclasses.replace(load_profile("t4"), conv_group_rate=rates)
    again = load_profile(str(save_profile(measured, tmp_path / "rated.yaml")))
    assert dict(again.conv_group_rate) == rates
    assert "grouped conv against dense, by channels per group: 2: 0.06" in again.summary()
    for bad, field in (({1: 0.5}, "conv_group_rate.1"), (({"four": 0.5}), "conv_group_rate.four"),
                       ({4: 0.0}, "conv_group_rate.4"), ({4: 3.0}, "conv_group_rate.4"), ({4: "fast"}, "conv_group_rate.4")):
        data = yaml.safe_load((tmp_path / "rated.yaml").read_text())
        data["conv_group_rate"] = bad
        path = tmp_path / "bad.yaml"
        path.write_text(yaml.safe_dump(data))
        with pytest.raises(RooflineError, match=rf"bad\.yaml: field '{field}'"):
            load_profile(str(path))

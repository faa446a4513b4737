"""Commands that need no model start without torch, pandas or matplotlib (issue 19).

Each check runs in a fresh interpreter (the test process has them all imported already) and reads
`sys.modules` after the command ran; the `--help` timing lives in benchmarks/count_speed.py.
"""
from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent

CHILD = """
import contextlib, io, json, sys
argv = json.loads(sys.argv[1])
out = io.StringIO()
if argv is None:
    import roofline.cli
    import roofline
    roofline.get_precision("fp16")  # an API call that needs no model
    code = 0
else:
    from roofline.cli import main
    with contextlib.redirect_stdout(out):
        try:
            code = main(argv)
        except SystemExit as exit:  # --help, --version
            code = exit.code
print(json.dumps({"code": code, "heavy": sorted(m for m in ("torch", "pandas", "matplotlib") if m in sys.modules), "out": out.getvalue()}))
"""


def _run(argv: list[str] | None, tmp_path: Path) -> dict[str, object]:
    env = {"PYTHONPATH": str(ROOT), "HOME": str(tmp_path), "PATH": "/usr/bin:/bin"}
    done = subprocess.run([sys.executable, "-c", CHILD, json.dumps(argv)], capture_output=True, text=True, env=env,
                          check=True, cwd=tmp_path)
    result: dict[str, object] = json.loads(done.stdout.strip().splitlines()[-1])
    return result


@pytest.mark.parametrize("argv", [None, ["hw", "list"], ["hw", "show", "t4"], ["hw", "list", "--format", "json"],
                                  ["hw", "detect", "--device", "cpu"], ["--help"], ["--version"], ["cache", "info"],
                                  ["cache", "clear"]],
                         ids=lambda a: "import" if a is None else " ".join(a))
def test_commands_without_a_model_import_no_heavy_package(argv: list[str] | None, tmp_path: Path) -> None:
    result = _run(argv, tmp_path)
    assert result["code"] == 0
    assert result["heavy"] == []


def test_the_check_can_fail(tmp_path: Path) -> None:
    """A command that does need torch shows up: the sys.modules check is not vacuous."""
    result = _run(["analyze", "zoo:mlp"], tmp_path)
    assert "torch" in result["heavy"]


def test_hw_list_is_the_same_table_as_before(tmp_path: Path) -> None:
    """The pandas-free table lays out like format_table does for the same rows."""
    import pandas as pd

    from roofline.formatting import format_records, format_table

    rows = [{"name": "a", "peak_flops_per_s": 1.5e12, "ok": True}, {"name": "bb", "peak_flops_per_s": float("nan"),
                                                                   "ok": False}]
    assert format_records(rows) == format_table(pd.DataFrame(rows))
    assert "1.5 TFLOP/s" in format_records(rows)

"""benchmarks/gpu_validation.sh on its CPU path (issue 16), so the GPU run cannot rot before a GPU is at hand."""
from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest

ROOT = Path(__file__).resolve().parents[1]


@pytest.mark.slow
def test_the_gpu_validation_script_runs_on_its_cpu_path(tmp_path: Path) -> None:
    out = tmp_path / "results"
    env = {**os.environ, "PYTHON": sys.executable}
    done = subprocess.run(["bash", str(ROOT / "benchmarks" / "gpu_validation.sh"), "--device", "cpu", "--quick",
                           "--out", str(out)], check=False, capture_output=True, text=True, env=env, timeout=900)
    assert done.returncode == 0, done.stderr[-2000:]
    stems = [p.name.removesuffix(".txt") for p in out.glob("*.txt")]
    assert len(stems) == 1 and stems[0].startswith("cpu-")
    stem = stems[0]
    models = pd.read_csv(out / f"{stem}-models.csv")
    assert len(models) == 3 and (models["measured_s"] > 0).all() and models["calibrated_error"].notna().all()
    # The table's figures are the CSV's: the errors are predicted / measured - 1.
    assert (models["calibrated_s"] / models["measured_s"] - 1).round(9).equals(models["calibrated_error"].round(9))
    assert (out / f"{stem}.profile.yaml").is_file() and (out / f"report-{stem}" / "index.html").is_file()
    assert "calibrated end to end within 10%" in (out / f"{stem}.txt").read_text()
    assert len(pd.read_csv(out / f"{stem}-sweep.csv")) == 4

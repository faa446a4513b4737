"""benchmarks/pass_features.py (issue 16, part 4): its rules against hand-made data, and its run on the saved results."""
from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "benchmarks"))

import pass_features


def test_the_fit_recovers_known_coefficients_and_keeps_them_non_negative() -> None:
    rng = np.random.default_rng(0)
    x = np.column_stack([rng.integers(1, 4, 200), rng.uniform(0, 3, 200), rng.uniform(0, 50, 200)]).astype(float)
    truth = np.array([6.0, 20.0, 3.0])
    extra = x @ truth
    assert pass_features._fit(x, extra, 10.0 + extra) == pytest.approx(truth, rel=1e-9)
    # A penalty that falls with fresh bytes cannot be fitted by a negative cost: that feature is dropped.
    falling = x @ np.array([6.0, -20.0, 3.0])
    coef = pass_features._fit(x, falling, np.abs(falling) + 10.0)
    assert coef[1] == 0.0 and (coef >= 0).all()


def test_the_weighted_median_weighs_by_time() -> None:
    values = np.array([0.5, 0.1, 0.2])
    assert pass_features._weighted_median(values, np.array([1.0, 1.0, 1.0])) == 0.2
    assert pass_features._weighted_median(values, np.array([10.0, 1.0, 1.0])) == 0.5


@pytest.mark.slow
def test_the_study_runs_on_the_saved_accuracy_runs(tmp_path: Path) -> None:
    done = subprocess.run([sys.executable, str(ROOT / "benchmarks" / "pass_features.py"), "--out-dir", str(tmp_path),
                           "--pass-call"],
                          capture_output=True, text=True, check=False, timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    table = pd.read_csv(tmp_path / "pass_features.csv")
    # Every saved layer timed both ways is there, and a held-out penalty is never negative.
    assert len(table) > 1000 and table["features_s"].ge(table["measured_s"]).all()
    assert (tmp_path / "pass_features.txt").read_text().strip() == done.stdout.strip()
    # --pass-call measures the per-call cost now and adds the pass model prediction uses, whose penalty is never negative either.
    assert table["pass_model_s"].ge(table["measured_s"]).all()
    assert "us per op call" in done.stdout.splitlines()[-1]


def test_a_missing_run_is_one_line_and_exit_2() -> None:
    done = subprocess.run([sys.executable, str(ROOT / "benchmarks" / "pass_features.py"), "--runs", "no-such-run"],
                          capture_output=True, text=True, check=False, timeout=120)
    assert done.returncode == 2 and done.stderr.count("\n") == 1 and "no-such-run" in done.stderr

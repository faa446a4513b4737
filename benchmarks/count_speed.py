"""Speed of the tool (issue 19): start-up, counting against FlopCounterMode, large models, a cached second run.

Every figure is measured for two source trees in one run, in alternation (before, after, before, after, ...):
this checkout, and a baseline revision checked out into a temporary git worktree (default: 9248327, main before
issue 19's work). Both run with this interpreter and its installed packages; only `roofline` differs (PYTHONPATH).
Each whole-process figure is a fresh `python` process's wall time from the parent (imports included) and its
peak RSS; each keeps its trace cache in a fresh temporary directory. Counting speed is a ratio measured inside
one process: analyze and FlopCounterMode on the same module, alternated per round, median of the per-round
ratios (the machine's drift cancels in a ratio, not in an absolute time).

    .venv/bin/python benchmarks/count_speed.py [--rounds 3] [--baseline REV | --no-baseline] [--csv FILE]

Prints the table with each target and whether it is met, and the spread beside each figure: the range over the
rounds (times) or the interquartile range of the per-round ratios (ratios).
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
BASELINE = "9248327"  # main before issue 19: torch imported at start, no meta-output memo, no trace cache
LLAMA_7B = "hf:llama"  # the config class defaults: 6.74 B parameters
LLAMA_70B = ("hf:llama?hidden_size=8192&intermediate_size=28672&num_hidden_layers=80&num_attention_heads=64"
             "&num_key_value_heads=8&vocab_size=128256")
RATIO_MODELS = ("torchvision:resnet50", "torchvision:vit_b_16", "hf:gpt2")

RATIO_CHILD = """
import json, statistics, sys, time
import torch
from torch.utils.flop_counter import FlopCounterMode
import roofline
from roofline.trace import trace
spec, rounds = sys.argv[1], int(sys.argv[2])
loaded = roofline.load(spec)
args, kwargs = ((), loaded.inputs) if isinstance(loaded.inputs, dict) else (loaded.inputs, {})
def ours():
    result = roofline.Analysis(trace(loaded.module, loaded.inputs, model_name=spec), roofline.get_precision("fp32"))
    result.layers, result.totals  # the per-layer table and totals too
def theirs():
    with torch.no_grad(), FlopCounterMode(display=False):
        loaded.module(*args, **kwargs)
def timed(fn):
    start = time.perf_counter(); fn(); return time.perf_counter() - start
ours(); theirs()  # warm-up: first-call costs of both
ratios, mine, reference = [], [], []
for _ in range(rounds):
    a, b = timed(ours), timed(theirs)
    mine.append(a); reference.append(b); ratios.append(a / b)
print(json.dumps({"ratios": ratios, "ours_s": statistics.median(mine), "theirs_s": statistics.median(reference)}))
"""

PROCESS_CHILD = """
import json, resource, sys
{body}
print(json.dumps({{"peak_rss_mib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024}}))
"""


@dataclass(frozen=True)
class Tree:
    label: str
    path: Path


def _env(tree: Tree, cache: str) -> dict[str, str]:
    env = dict(os.environ)
    env["PYTHONPATH"] = str(tree.path)
    env["ROOFLINE_TRACE_DIR"] = cache
    return env


def _process(tree: Tree, argv: list[str], cache: str) -> dict[str, float]:
    """Run `python argv...` outside the repository; its wall time from here and its peak RSS."""
    start = time.perf_counter()
    done = subprocess.run([sys.executable, *argv], capture_output=True, text=True, env=_env(tree, cache), check=False,
                          cwd=tempfile.gettempdir())
    wall = time.perf_counter() - start
    if done.returncode != 0:
        raise SystemExit(f"{tree.label}: {' '.join(argv)} failed:\n{done.stderr[-2000:]}")
    rss = next((json.loads(line)["peak_rss_mib"] for line in reversed(done.stdout.splitlines())
                if line.startswith('{"peak_rss_mib"')), float("nan"))
    return {"wall_s": wall, "peak_rss_mib": rss}


def _code(body: str) -> list[str]:
    return ["-c", PROCESS_CHILD.format(body=body)]


def _whole_process(trees: list[Tree], rounds: int, argv: list[str], fresh_cache_each: bool = True,
                   warm_first: bool = False) -> dict[str, dict[str, float]]:
    """Alternate the trees round by round; each round a fresh process (and a fresh trace cache, unless the figure is
    a second run: warm_first runs the same command once first in the same cache, untimed)."""
    walls: dict[str, list[float]] = {t.label: [] for t in trees}
    rss: dict[str, list[float]] = {t.label: [] for t in trees}
    for _ in range(rounds):
        for tree in trees:
            with tempfile.TemporaryDirectory(prefix="roofline-bench-cache-") as cache:
                if warm_first:
                    _process(tree, argv, cache)
                got = _process(tree, argv, cache)
            walls[tree.label].append(got["wall_s"])
            rss[tree.label].append(got["peak_rss_mib"])
    return {label: {"median": statistics.median(w), "low": min(w), "high": max(w),
                    "rss_mib": max(rss[label])} for label, w in walls.items()}


def _ratios(trees: list[Tree], rounds: int, spec: str) -> dict[str, dict[str, float]]:
    found = {}
    for tree in trees:
        with tempfile.TemporaryDirectory(prefix="roofline-bench-cache-") as cache:
            done = subprocess.run([sys.executable, "-c", RATIO_CHILD, spec, str(rounds)], capture_output=True, check=False,
                                  text=True, env=_env(tree, cache), cwd=tempfile.gettempdir())
        if done.returncode != 0:
            raise SystemExit(f"{tree.label}: ratio of {spec} failed:\n{done.stderr[-2000:]}")
        data = json.loads(done.stdout.strip().splitlines()[-1])
        ratios = sorted(data["ratios"])
        q1, _, q3 = statistics.quantiles(ratios, n=4) if len(ratios) > 1 else (ratios[0],) * 3
        found[tree.label] = {"median": statistics.median(ratios), "low": q1, "high": q3, "ours_s": data["ours_s"],
                             "theirs_s": data["theirs_s"]}
    return found


def _baseline_tree(rev: str, into: Path) -> Tree:
    subprocess.run(["git", "-C", str(REPO), "worktree", "add", "--detach", "--quiet", str(into), rev], check=True)
    return Tree(f"before ({rev})", into)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=3, help="alternating rounds per figure (default 3)")
    parser.add_argument("--baseline", default=BASELINE, help=f"git revision to compare against (default {BASELINE})")
    parser.add_argument("--no-baseline", action="store_true", help="measure this checkout only")
    parser.add_argument("--csv", help="also write the rows to this CSV file")
    options = parser.parse_args()
    if options.rounds < 1:
        parser.error("--rounds must be at least 1")
    head = subprocess.run(["git", "-C", str(REPO), "rev-parse", "--short", "HEAD"], capture_output=True, check=False,
                          text=True).stdout.strip() or "this checkout"
    after = Tree(f"after ({head})", REPO)
    temp = Path(tempfile.mkdtemp(prefix="roofline-baseline-"))
    trees = [after] if options.no_baseline else [_baseline_tree(options.baseline, temp / "tree"), after]
    rows: list[dict[str, object]] = []
    try:
        rows = _measure(trees, options.rounds)
    finally:
        if not options.no_baseline:
            subprocess.run(["git", "-C", str(REPO), "worktree", "remove", "--force", str(temp / "tree")], check=False)
        if temp.exists() and not any(temp.iterdir()):
            temp.rmdir()
    _print(rows, trees)
    if options.csv:
        import pandas as pd

        pd.DataFrame(rows).to_csv(options.csv, index=False)


def _measure(trees: list[Tree], rounds: int) -> list[dict[str, object]]:
    rows: list[dict[str, object]] = []

    def add(figure: str, unit: str, target: float, found: dict[str, dict[str, float]], rss_target: float | None = None,
            ) -> None:
        for tree in trees:
            value = found[tree.label]
            rows.append({"figure": figure, "tree": tree.label, "unit": unit, "median": value["median"],
                         "low": value["low"], "high": value["high"], "target": target,
                         "met": value["median"] < target if unit == "s" else value["median"] <= target,
                         "peak_rss_mib": value.get("rss_mib"), "rss_target_mib": rss_target})
        print(f"  measured: {figure}", file=sys.stderr)

    for argv, figure in ((["-m", "roofline", "--help"], "roofline --help"),
                         (["-m", "roofline", "hw", "list"], "roofline hw list"),
                         (["-m", "roofline", "hw", "show", "t4"], "roofline hw show t4"),
                         (["-m", "roofline", "--version"], "roofline --version")):
        add(figure, "s", 0.5, _whole_process(trees, rounds, argv))
    for spec in RATIO_MODELS:
        add(f"analyze / FlopCounterMode, {spec}", "x", 1.0, _ratios(trees, max(rounds, 5), spec))
    llama = "import roofline; roofline.analyze({spec!r}, seq_len=128, warn_unsupported=False).totals"
    add("hf:llama 7B (1x128) on meta, whole process", "s", 6.0,
        _whole_process(trees, rounds, _code(llama.format(spec=LLAMA_7B))), rss_target=1024)
    add("70B llama on meta, whole process", "s", 15.0,
        _whole_process(trees, rounds, _code(llama.format(spec=LLAMA_70B))))
    train = ("from roofline.train import analyze_train; "
             "analyze_train({spec!r}, seq_len=2048, precision='bf16', warn_unsupported=False).totals")
    add("hf:llama 7B training step (1x2048, bf16, AdamW) on meta, whole process", "s", 30.0,
        _whole_process(trees, 1, _code(train.format(spec=LLAMA_7B))), rss_target=2048)
    predict = ["-m", "roofline", "predict", LLAMA_7B, "--hw", "h100-sxm", "--precision", "bf16"]
    add("predict of the 7B model, first (empty cache)", "s", float("inf"), _whole_process(trees, rounds, predict))
    add("predict of the 7B model, second (cached)", "s", 2.0, _whole_process(trees, rounds, predict, warm_first=True))
    return rows


def _print(rows: list[dict[str, object]], trees: list[Tree]) -> None:
    import platform

    print(f"\ncount_speed on {platform.processor() or platform.machine()} ({os.cpu_count()} CPUs), "
          f"{time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}; Python {platform.python_version()}")
    print("times: median over the rounds [min, max] of a fresh process; ratios: median [IQR] of per-round ratios\n")
    labels = [t.label for t in trees]
    header = f"{'figure':48} " + " ".join(f"{label:>32}" for label in labels) + f" {'target':>10}  met (after)"
    print(header)
    print("-" * len(header))
    figures = list(dict.fromkeys(str(r["figure"]) for r in rows))
    for figure in figures:
        cells = []
        met = ""
        target_text = ""
        for label in labels:
            row = next(r for r in rows if r["figure"] == figure and r["tree"] == label)
            unit, median, low, high = str(row["unit"]), float(row["median"]), float(row["low"]), float(row["high"])
            text = f"{median:.2f} {unit} [{low:.2f}, {high:.2f}]"
            rss = row["peak_rss_mib"]
            if rss is not None and figure.endswith("whole process"):
                text += f" {float(rss) / 1024:.2f} GiB"
            cells.append(f"{text:>32}")
            target = float(row["target"])
            if target != float("inf"):
                rss_target = row["rss_target_mib"]
                target_text = f"< {target:g} {unit}" if unit == "s" else f"<= {target:g}x"
                if rss_target is not None:
                    target_text += f", < {float(rss_target) / 1024:g} GiB"
                ok = bool(row["met"]) and (rss_target is None or float(rss) < float(rss_target))
                met = "yes" if ok else "no"
        print(f"{figure:48} " + " ".join(cells) + f" {target_text:>10}  {met}")


if __name__ == "__main__":
    main()

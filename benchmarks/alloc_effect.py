"""End-to-end CPU forward time with glibc's default allocator settings and with freed memory kept in
the process (roofline's own timing state, timing.retained_heap), each in a fresh process: the
page-fault cost a pass pays when glibc hands its buffers back to the OS.

    .venv/bin/python benchmarks/alloc_effect.py [--models torchvision:mobilenet_v2,zoo:mobile-block]
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys

CHILD = """
import json, sys, torch, roofline
from roofline.timing import time_callable
torch.set_num_threads(1)
loaded = roofline.load(sys.argv[1], device="cpu")
with torch.inference_mode():
    m = time_callable(lambda: loaded.module(*loaded.inputs), min_run_time_s=1.0)
print(json.dumps({"median_s": m.median_s, "iqr_s": m.iqr_s}))
"""

# The state timing.retained_heap sets for roofline's own measurements.
NO_TRIM = {"MALLOC_MMAP_THRESHOLD_": str(32 * 1024 * 1024), "MALLOC_TRIM_THRESHOLD_": str(1 << 30)}


def run(spec: str, extra_env: dict[str, str]) -> dict[str, float]:
    env = {**os.environ, **extra_env}
    done = subprocess.run([sys.executable, "-c", CHILD, spec], capture_output=True, text=True, env=env, check=True)
    return json.loads(done.stdout.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", default="torchvision:mobilenet_v2,zoo:mobile-block,torchvision:resnet18")
    args = parser.parse_args()
    print(f"{'model':28} {'default glibc':>14} {'no mmap/trim':>14} {'ratio':>7}   (1 thread, median of >= 1 s)")
    for spec in args.models.split(","):
        default, raised = run(spec, {}), run(spec, NO_TRIM)
        print(f"{spec:28} {1e3 * default['median_s']:11.2f} ms {1e3 * raised['median_s']:11.2f} ms "
              f"{default['median_s'] / raised['median_s']:7.2f}")


if __name__ == "__main__":
    main()

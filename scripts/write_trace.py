"""Write a torch.profiler Chrome trace of a model's forward pass, as a user's own script would.

    python scripts/write_trace.py torchvision:resnet18 T.json [--passes 3]

This is an ordinary user script: the model is built and run without roofline's measurer, and the three
lines marked below are all a user adds to their own code (README, "Import a trace"). roofline reads
the file with `roofline report MODEL --hw PROFILE --trace T.json` (or `measure --trace`).
"""
from __future__ import annotations

import argparse

import torch

from roofline import models


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("model", help="a roofline MODEL spec, e.g. torchvision:resnet18")
    parser.add_argument("out", help="the trace to write (.json, or .json.gz to compress it)")
    parser.add_argument("--passes", type=int, default=3)
    args = parser.parse_args()
    loaded = models.load(args.model, device="cpu")  # random weights, real tensors
    model, inputs = loaded.module.eval(), loaded.inputs
    with torch.no_grad():
        model(*inputs)  # warm-up, outside the profile
        from torch.profiler import ProfilerActivity, profile  # (1) the user's three lines:

        activities = [ProfilerActivity.CPU, *([ProfilerActivity.CUDA] if torch.cuda.is_available() else [])]
        with profile(activities=activities, record_shapes=True) as prof:  # (2)
            for _ in range(args.passes):
                model(*inputs)
        prof.export_chrome_trace(args.out)  # (3)
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()

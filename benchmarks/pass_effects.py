"""Why a full forward pass on a CPU takes longer than the sum of its layers timed alone.

roofline measures each layer alone, repeated on the inputs it saw in a real pass: the layer's input,
weights and output buffer stay warm in cache between repeats. In a full pass each layer runs once,
and its output goes to memory last touched long ago. Same process, same allocator state (heap
retained), interleaved rounds, 1 thread. Per model it prints:

- the whole forward pass;
- a sequential replay: every captured layer called once, in order, on its captured inputs
  (no Python between layers beyond the loop; inputs are copies, so colder still than in the pass);
- the sum of the layers each timed alone (what `roofline measure` reports per layer).

Then the cause, in isolation: an elementwise op over 4.6 MiB writing its output to the same buffer
each call (warm) or to one of 16 buffers in turn (76 MiB, larger than the last-level cache: cold).

    .venv/bin/python benchmarks/pass_effects.py [--models zoo:mobile-block,torchvision:mobilenet_v2]
"""
from __future__ import annotations

import argparse
import warnings

import torch

import roofline
from roofline.measure.capture import Capture as _Capture
from roofline.measure.capture import layer_callable as _layer_callable
from roofline.timing import retained_heap, time_interleaved

MODELS = "zoo:convnet,zoo:mobile-block,torchvision:mobilenet_v2,torchvision:resnet18,hf:gpt2?n_layer=2"


def pass_against_layers(spec: str, rounds: int) -> tuple[float, float, float]:
    """(whole pass, sequential replay, sum of layers alone) in seconds."""
    loaded = roofline.load(spec, device="cpu")
    module, inputs = loaded.module, loaded.inputs
    rows = _Capture(module).run(inputs)
    modules = dict(module.named_modules())
    layers = [_layer_callable(row, modules) for row in rows]

    def forward() -> object:
        return module(**inputs) if isinstance(inputs, dict) else module(*inputs)

    def replay() -> None:
        for layer in layers:
            layer()

    timed = time_interleaved([forward, replay, *layers], rounds, min_run_time_s=0.3)
    return timed[0].median_s, timed[1].median_s, sum(m.median_s for m in timed[2:])


def warm_against_cold_writes(rounds: int) -> tuple[float, float, int]:
    """(warm s, cold s, bytes moved) of clamp_min over 1.2 M floats."""
    n = 1_200_000
    x = torch.randn(n)
    buffers = [torch.empty(n) for _ in range(16)]
    turn = [0]

    def warm() -> None:
        torch.clamp_min(x, 0.0, out=buffers[0])

    def cold() -> None:
        turn[0] = (turn[0] + 1) % len(buffers)
        torch.clamp_min(x, 0.0, out=buffers[turn[0]])

    w, c = time_interleaved([warm, cold], rounds, min_run_time_s=0.5)
    return w.median_s, c.median_s, 8 * n


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", default=MODELS)
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()
    warnings.simplefilter("ignore")  # noisy-timing warnings: the table shows the figures
    torch.set_num_threads(1)
    print(f"{'model':28} {'pass':>10} {'replay':>10} {'layers alone':>13} {'pass / alone':>13}   (1 thread)")
    with torch.inference_mode(), retained_heap():
        for spec in args.models.split(","):
            whole, replay, alone = pass_against_layers(spec, args.rounds)
            print(f"{spec:28} {1e3 * whole:7.2f} ms {1e3 * replay:7.2f} ms {1e3 * alone:10.2f} ms {whole / alone:12.2f}x")
        warm, cold, moved = warm_against_cold_writes(args.rounds)
    print(f"\nclamp_min over 4.6 MiB: output warm {1e6 * warm:.0f} us ({moved / warm / 1e9:.1f} GB/s), "
          f"output cold {1e6 * cold:.0f} us ({moved / cold / 1e9:.1f} GB/s): {cold / warm:.1f}x")


if __name__ == "__main__":
    main()

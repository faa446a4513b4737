"""The measurement half: real inputs per layer (capture), the one device/precision check (device),
in-pass times from torch.profiler and from a user's trace (passes), and the API (api)."""
from roofline.measure.api import (
    ModelMeasurement,
    NotMeasurable,
    batch_of,
    measure,
    measure_trace,
    parse_batch_sizes,
    render,
    speed_note,
    speed_range,
    speed_ratio,
    speed_spread,
    unsteady_note,
)

__all__ = ["ModelMeasurement", "NotMeasurable", "batch_of", "measure", "measure_trace", "parse_batch_sizes", "render", "speed_note",
           "speed_range", "speed_ratio", "speed_spread", "unsteady_note"]


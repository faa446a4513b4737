"""The one device and precision check every measurer uses (`measure`, `llm --measure`, `sweep --measure`,
the microbenchmarks' device), so an unsupported precision is refused the same way everywhere."""
from __future__ import annotations

import contextlib
import re
from collections.abc import Iterator

import torch

from roofline.errors import RooflineError
from roofline.machine import cpu_info, device_name
from roofline.precision import MEASURABLE_DTYPES, get_precision

__all__ = ["NotMeasurable", "check_device", "check_precision", "float_dtype", "math_mode"]


class NotMeasurable(RooflineError):
    """The device cannot run the model at the requested precision; the message says why."""


def float_dtype(name: str, device: str, measurer: str) -> torch.dtype:
    """The torch dtype a float-only measurer (llm --measure, sweep --measure) runs `name` in: first the
    common check (check_precision), then int8, which only `measure` runs (torch's dynamic quantisation)."""
    precision = check_precision(name, device)
    dtype = MEASURABLE_DTYPES.get(precision)
    if dtype is None:
        raise NotMeasurable(f"{precision} is not measurable by {measurer}: it times float models only "
                            f"({', '.join(MEASURABLE_DTYPES)}); `roofline measure` runs int8 on a CPU")
    return dtype


def check_device(device: str) -> str:
    """'cpu' or 'cuda:N' (from 'cuda[:N]', with a GPU present); a one-line error otherwise."""
    device = device.strip().lower()
    if device == "cpu":
        return device
    if not re.fullmatch(r"cuda(:\d+)?", device):
        raise RooflineError(f"unknown device {device!r}; choose cpu or cuda[:N]")
    if not torch.cuda.is_available():
        raise RooflineError("no CUDA device: torch.cuda.is_available() is False")
    index = int(device.partition(":")[2] or torch.cuda.current_device())
    if index >= torch.cuda.device_count():
        raise RooflineError(f"no device {device}: this machine has {torch.cuda.device_count()} CUDA device(s)")
    return f"cuda:{index}"  # the form tensors report, so device comparisons hold


def check_precision(name: str, device: str) -> str:
    """The precision's name if `device` can run it in eager PyTorch; NotMeasurable with the reason if not."""
    precision = get_precision(name).name
    on_gpu = device.startswith("cuda")
    if precision in ("w8a16", "w4a16"):
        raise NotMeasurable(
            f"{precision} is not measurable on {device}: weight-only quantised kernels are not part of PyTorch's"
            " eager modules (they come from libraries such as torchao)"
        )
    if precision == "fp8":
        raise NotMeasurable(
            f"fp8 is not measurable on {device}: PyTorch's eager modules have no fp8 kernels"
            " (fp8 matmuls need torch._scaled_mm or a compiler)"
        )
    if precision == "tf32":
        if not on_gpu:
            raise NotMeasurable(
                f"tf32 is not measurable on {device}: TF32 is a math mode of NVIDIA GPUs (Ampere and newer)"
            )
        if torch.cuda.get_device_capability(device) < (8, 0):
            raise NotMeasurable(f"tf32 is not measurable on {device_name(device)}: TF32 needs compute capability 8.0+")
    if precision == "bf16" and on_gpu and not torch.cuda.is_bf16_supported(including_emulation=False):
        raise NotMeasurable(f"bf16 is not measurable on {device_name(device)}: no native bfloat16 support")
    if precision == "int8":
        if on_gpu:
            raise NotMeasurable(
                f"int8 is not measurable on {device}: PyTorch's eager int8 modules (torch.ao dynamic quantisation)"
                " run on the CPU only"
            )
        if torch.backends.quantized.engine == "none":
            raise NotMeasurable("int8 is not measurable on cpu: this PyTorch build has no quantized engine")
    return precision


@contextlib.contextmanager
def math_mode(precision: str, device: str) -> Iterator[None]:
    """TF32 on for tf32 and off otherwise (cuDNN enables it for fp32 convolutions by default); MHA fast path off."""
    matmul, cudnn = torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32
    fastpath = torch.backends.mha.get_fastpath_enabled()
    tf32 = precision == "tf32"
    torch.backends.cuda.matmul.allow_tf32 = tf32
    torch.backends.cudnn.allow_tf32 = tf32
    torch.backends.mha.set_fastpath_enabled(False)
    try:
        yield
    finally:
        torch.backends.cuda.matmul.allow_tf32 = matmul
        torch.backends.cudnn.allow_tf32 = cudnn
        torch.backends.mha.set_fastpath_enabled(fastpath)


def precision_notes(precision: str, device: str) -> list[str]:
    """Why a reduced precision may be slower than fp32 on this CPU: said, not hidden."""
    if device != "cpu" or precision not in ("bf16", "fp16"):
        return []
    native = {"bf16": ("avx512_bf16", "amx_bf16"), "fp16": ("avx512_fp16", "amx_fp16")}[precision]
    flags = cpu_info()[1]
    if any(flag in flags for flag in native):
        return []
    return [(f"this CPU has no native {precision} math (no {' or '.join(native)} flag): kernels convert to fp32"
             " or use reference code, so it can be slower than fp32")]



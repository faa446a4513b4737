"""MODEL spec -> (module, example inputs), on the meta device by default.

Specs: `torchvision:NAME`, `timm:NAME`, `hf:MODEL_TYPE[?field=value&...]` (a Hugging Face model built
from its config class, random weights, never downloaded), `path/to/file.py:callable` (returns a
module, or a module and its inputs) and `zoo:NAME` (the built-in examples). Weights are never
downloaded: models are built from code with random (or, on meta, no) weights.
"""
from __future__ import annotations

import contextlib
import importlib
import importlib.util
import re
import sys
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn

from roofline.errors import RooflineError, close_matches

__all__ = ["LoadedModel", "load", "parse_input_shape"]

DEFAULT_SEQ_LEN = 128
DEFAULT_IMAGE_SIZE = 224
SCHEMES = ("torchvision", "timm", "hf", "zoo")


@dataclass
class LoadedModel:
    """A module in eval mode and the inputs of one forward pass (positional list or keyword dict)."""

    name: str
    module: nn.Module
    inputs: list[Any] | dict[str, Any]
    device: str = "meta"
    meta: dict[str, Any] = field(default_factory=dict)

    def input_shapes(self) -> list[list[int]]:
        values = self.inputs.values() if isinstance(self.inputs, dict) else self.inputs
        return [list(v.shape) for v in values if isinstance(v, torch.Tensor)]


def parse_input_shape(text: str) -> list[tuple[int, ...]]:
    """'1x3x224x224' or '1x3x224x224,1x10' -> list of shapes; a clear error otherwise."""
    shapes = []
    for part in text.split(","):
        part = part.strip()
        if not re.fullmatch(r"\d+(x\d+)*", part) or any(int(d) == 0 for d in part.split("x")):
            raise RooflineError(
                f"malformed input shape {text!r}: expected positive integers joined by 'x', e.g. 1x3x224x224"
                " (several inputs separated by commas)"
            )
        shapes.append(tuple(int(d) for d in part.split("x")))
    return shapes


@contextlib.contextmanager
def _on_device(device: str) -> Iterator[None]:
    with torch.device(device):
        yield


@contextlib.contextmanager
def _weights_on(device: str) -> Iterator[None]:
    """Put parameters and buffers on `device` as modules register them; other tensors stay on CPU.

    Some constructors compute with tensors in Python (regnet's block widths call .item()), which a
    global meta device breaks; moving only what a module registers keeps them working.
    """
    if device != "meta":
        with torch.device(device):
            yield
        return
    register_parameter = nn.Module.register_parameter
    register_buffer = nn.Module.register_buffer

    def parameter_on_meta(self: nn.Module, name: str, param: Any) -> None:
        register_parameter(self, name, param)
        if param is not None and param.device.type != "meta":
            self._parameters[name] = nn.Parameter(param.to("meta"), requires_grad=param.requires_grad)

    def buffer_on_meta(self: nn.Module, name: str, tensor: Any, persistent: bool = True) -> None:
        register_buffer(self, name, tensor, persistent)
        if tensor is not None and tensor.device.type != "meta":
            self._buffers[name] = tensor.to("meta")

    nn.Module.register_parameter = parameter_on_meta  # type: ignore[method-assign]
    nn.Module.register_buffer = buffer_on_meta  # type: ignore[method-assign]
    try:
        yield
    finally:
        nn.Module.register_parameter = register_parameter  # type: ignore[method-assign]
        nn.Module.register_buffer = register_buffer  # type: ignore[method-assign]


@contextlib.contextmanager
def _skip_weight_download() -> Iterator[None]:
    """Run a torchvision builder with weights=DEFAULT without fetching or loading the weights.

    The builder then makes exactly the architecture the published weights describe (vit_h_14 at
    518 px, googlenet without its training-only auxiliary heads), which is what meta["_ops"] and
    meta["num_params"] count.
    """
    from torchvision.models._api import WeightsEnum

    skipped: dict[str, Any] = {}
    get_state_dict = WeightsEnum.get_state_dict
    load_state_dict = nn.Module.load_state_dict

    def no_download(self: Any, *args: Any, **kwargs: Any) -> dict[str, Any]:
        return skipped

    def no_load(self: nn.Module, state_dict: Any, *args: Any, **kwargs: Any) -> Any:
        if state_dict is skipped:
            return None
        return load_state_dict(self, state_dict, *args, **kwargs)

    WeightsEnum.get_state_dict = no_download
    nn.Module.load_state_dict = no_load  # type: ignore[method-assign]
    try:
        yield
    finally:
        WeightsEnum.get_state_dict = get_state_dict
        nn.Module.load_state_dict = load_state_dict  # type: ignore[method-assign]


def load(spec: str | nn.Module, *, inputs: Any = None, input_shape: str | None = None, batch: int | None = None,
         seq_len: int | None = None, device: str = "meta", attention: str = "sdpa") -> LoadedModel:
    """Resolve a MODEL spec (or a module plus inputs) to a LoadedModel on `device`."""
    if batch is not None and batch < 1:
        raise RooflineError(f"batch must be a positive integer, got {batch}")
    if seq_len is not None and seq_len < 1:
        raise RooflineError(f"seq-len must be a positive integer, got {seq_len}")
    shapes = parse_input_shape(input_shape) if input_shape else None
    if isinstance(spec, nn.Module):
        return _finish(type(spec).__name__, spec, inputs, shapes, device, batch)
    if not isinstance(spec, str) or not spec.strip():
        raise RooflineError("MODEL must be a spec string such as torchvision:resnet50, hf:gpt2 or zoo:convnet")
    spec = spec.strip()
    scheme, _, rest = spec.partition(":")
    if spec.rpartition(":")[0].endswith(".py"):
        return _load_file(spec, inputs, shapes, device, batch)
    if scheme not in SCHEMES or not rest:
        raise RooflineError(
            f"unknown model spec {spec!r}: use torchvision:NAME, timm:NAME, hf:MODEL_TYPE, path/to/file.py:callable"
            " or zoo:NAME"
        )
    if scheme == "torchvision":
        return _load_torchvision(rest, spec, inputs, shapes, device, batch)
    if scheme == "timm":
        return _load_timm(rest, spec, inputs, shapes, device, batch)
    if scheme == "hf":
        return _load_hf(rest, spec, device, batch, seq_len, attention)
    return _load_zoo(rest, spec, inputs, shapes, device, batch, seq_len)


def _load_zoo(name: str, spec: str, inputs: Any, shapes: list[tuple[int, ...]] | None, device: str,
              batch: int | None, seq_len: int | None) -> LoadedModel:
    from roofline.zoo import ZOO

    entry = ZOO.get(name)
    if entry is None:
        raise RooflineError(f"unknown zoo model {name!r}{close_matches(name, ZOO)}; choose one of: {', '.join(ZOO)}")
    with _weights_on(device):
        module = entry.build()
    if inputs is None and shapes is None:
        module.eval()
        return LoadedModel(spec, module, entry.make_inputs(batch or 1, seq_len or 64, device), device)
    return _finish(spec, module, inputs, shapes, device, batch)


def _finish(name: str, module: nn.Module, inputs: Any, shapes: list[tuple[int, ...]] | None, device: str,
            batch: int | None, default_shapes: list[tuple[int, ...]] | None = None,
            meta: dict[str, Any] | None = None) -> LoadedModel:
    """Put the module in eval mode and settle its inputs: given, from --input-shape, or the default."""
    module.eval()
    if inputs is not None:
        if isinstance(inputs, torch.Tensor):
            inputs = [inputs]
        elif isinstance(inputs, tuple):
            inputs = list(inputs)
        return LoadedModel(name, module, inputs, device, meta or {})
    shapes = shapes or default_shapes
    if not shapes:
        raise RooflineError(f"{name}: give the input shape, e.g. --input-shape 1x3x224x224")
    if batch is not None:
        shapes = [(batch, *shape[1:]) for shape in shapes]
    tensors = [torch.randn(shape, device=device) for shape in shapes]
    return LoadedModel(name, module, tensors, device, meta or {})


def _load_torchvision(name: str, spec: str, inputs: Any, shapes: Any, device: str, batch: int | None) -> LoadedModel:
    try:
        import torchvision
    except ImportError as error:
        raise RooflineError("torchvision is not installed: pip install torchvision") from error
    available = torchvision.models.list_models()
    if name not in available:
        raise RooflineError(f"unknown torchvision model {name!r}{close_matches(name, available)}")
    image_size = torchvision_input_size(name)
    weights = _default_weights(name)
    with _weights_on(device), _skip_weight_download():
        module = torchvision.models.get_model(name, weights=weights)
    default: list[tuple[int, ...]] = [(1, 3, image_size, image_size)]
    return _finish(spec, module, inputs, shapes, device, batch, default)


def _default_weights(name: str) -> Any:
    import torchvision

    try:
        return torchvision.models.get_model_weights(name).DEFAULT
    except (ValueError, KeyError, AttributeError):
        return None


def torchvision_input_size(name: str) -> int:
    """The resolution the model's default published weights were evaluated at (224 if none)."""
    weights = _default_weights(name)
    if weights is None:
        return DEFAULT_IMAGE_SIZE
    crop = weights.transforms.keywords.get("crop_size") if hasattr(weights.transforms, "keywords") else None
    if isinstance(crop, (list, tuple)):
        crop = crop[0]
    return int(crop) if crop else DEFAULT_IMAGE_SIZE


def _load_timm(name: str, spec: str, inputs: Any, shapes: Any, device: str, batch: int | None) -> LoadedModel:
    try:
        import timm
    except ImportError as error:
        raise RooflineError("timm is not installed: pip install timm") from error
    available = timm.list_models()
    if name not in available:
        raise RooflineError(f"unknown timm model {name!r}{close_matches(name, available)}")
    with _weights_on(device):
        module = timm.create_model(name, pretrained=False)
    size = module.default_cfg.get("input_size", (3, DEFAULT_IMAGE_SIZE, DEFAULT_IMAGE_SIZE))
    return _finish(spec, module, inputs, shapes, device, batch, [(1, *size)])


def _parse_value(text: str) -> Any:
    lowered = text.lower()
    if lowered in ("true", "false"):
        return lowered == "true"
    if lowered in ("none", "null"):
        return None
    for convert in (int, float):
        try:
            return convert(text)
        except ValueError:
            pass
    return text


def parse_hf_spec(rest: str) -> tuple[str, dict[str, Any]]:
    """'llama?num_hidden_layers=4&hidden_size=512' -> ('llama', {...})."""
    model_type, _, query = rest.partition("?")
    overrides: dict[str, Any] = {}
    for item in filter(None, query.split("&")):
        key, sep, value = item.partition("=")
        if not sep or not key:
            raise RooflineError(f"malformed config override {item!r} in hf:{rest}: expected field=value")
        overrides[key.strip()] = _parse_value(value.strip())
    return model_type.strip(), overrides


def hf_config(rest: str, attention: str = "sdpa") -> Any:
    """The transformers config for an `hf:` spec: the class defaults plus overrides."""
    try:
        import transformers
    except ImportError as error:
        raise RooflineError("transformers is not installed: pip install transformers") from error
    model_type, overrides = parse_hf_spec(rest)
    known = list(transformers.CONFIG_MAPPING.keys())
    if model_type not in known:
        raise RooflineError(f"unknown Hugging Face model type {model_type!r}{close_matches(model_type, known)}")
    config = transformers.AutoConfig.for_model(model_type)
    for key, value in overrides.items():
        if not hasattr(config, key):
            raise RooflineError(f"hf:{model_type} config has no field {key!r}")
        setattr(config, key, value)
    config._attn_implementation = attention
    return config


def _load_hf(rest: str, spec: str, device: str, batch: int | None, seq_len: int | None,
             attention: str) -> LoadedModel:
    import transformers

    config = hf_config(rest, attention)
    module = None
    with _on_device(device), _quiet_transformers():
        for auto in (transformers.AutoModelForCausalLM, transformers.AutoModel):
            try:
                module = auto.from_config(config)  # type: ignore[no-untyped-call]  # transformers' auto classes are untyped
                break
            except ValueError:
                continue
    if module is None:
        raise RooflineError(f"{spec}: transformers has no model class for this config")
    batch = batch or 1
    seq_len = seq_len or DEFAULT_SEQ_LEN
    name = getattr(module, "main_input_name", "input_ids")
    inputs: dict[str, Any]
    if name == "pixel_values":
        size = getattr(config, "image_size", DEFAULT_IMAGE_SIZE)
        channels = getattr(config, "num_channels", 3)
        inputs = {"pixel_values": torch.randn(batch, channels, size, size, device=device)}
    elif name == "input_ids":
        vocab = getattr(config, "vocab_size", 32000) or 32000
        ids = torch.randint(0, vocab, (batch, seq_len), device=device)
        inputs = {"input_ids": ids}
        if getattr(config, "is_encoder_decoder", False):
            inputs["decoder_input_ids"] = ids
        if "use_cache" in module.forward.__code__.co_varnames:
            inputs["use_cache"] = False
    else:
        raise RooflineError(f"{spec}: input {name!r} is not supported yet (text and image models are)")
    module.eval()
    return LoadedModel(spec, module, inputs, device, {"config": config})


@contextlib.contextmanager
def _quiet_transformers() -> Iterator[None]:
    try:
        from transformers.utils import logging as hf_logging
    except ImportError:  # pragma: no cover
        yield
        return
    level = hf_logging.get_verbosity()
    hf_logging.set_verbosity_error()
    try:
        yield
    finally:
        hf_logging.set_verbosity(level)


def _load_file(spec: str, inputs: Any, shapes: Any, device: str, batch: int | None) -> LoadedModel:
    path_text, _, attribute = spec.rpartition(":")
    path = Path(path_text)
    if not path.is_file():
        raise RooflineError(f"model file {path_text!r} not found")
    if not attribute.isidentifier():
        raise RooflineError(f"{spec!r}: expected path/to/file.py:callable")
    module_name = f"_roofline_user_{abs(hash(str(path.resolve())))}"
    loader_spec = importlib.util.spec_from_file_location(module_name, path)
    if loader_spec is None or loader_spec.loader is None:
        raise RooflineError(f"cannot import {path_text!r} as Python")
    user_module = importlib.util.module_from_spec(loader_spec)
    sys.modules[module_name] = user_module
    try:
        loader_spec.loader.exec_module(user_module)
    except Exception as error:
        raise RooflineError(f"importing {path_text} failed: {type(error).__name__}: {error}") from error
    factory = getattr(user_module, attribute, None)
    if factory is None:
        names = [n for n in vars(user_module) if not n.startswith("_") and callable(getattr(user_module, n))]
        raise RooflineError(f"{path_text} does not define {attribute!r}{close_matches(attribute, names)}")
    if not callable(factory):
        raise RooflineError(f"{path_text}:{attribute} is not callable")
    with _on_device(device):
        try:
            made = factory()
        except Exception as error:
            raise RooflineError(f"{spec}() failed: {type(error).__name__}: {error}") from error
    if isinstance(made, tuple) and len(made) == 2 and isinstance(made[0], nn.Module):
        inputs = inputs if inputs is not None else made[1]
        made = made[0]
    if not isinstance(made, nn.Module):
        raise RooflineError(f"{spec} returned {type(made).__name__}, expected an nn.Module or (module, inputs)")
    # A training step's loss (--mode train): a `loss(output) -> scalar tensor` function in the same file.
    loss = getattr(user_module, "loss", None)
    meta = {"loss": loss} if callable(loss) else None
    return _finish(spec, made, inputs, shapes, device, batch, meta=meta)

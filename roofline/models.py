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
import warnings
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn
from torch.utils._pytree import tree_leaves

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


def _ignored(option: str, why: str) -> None:
    """Warn that an option was given but has no effect, so no one reads a figure for a size they did not get."""
    warnings.warn(f"{option} is ignored: {why}", stacklevel=3)


SEQ_LEN_OPTION = "seq_len= (--seq-len)"
BATCH_OPTION = "batch= (--batch)"
SHAPE_OPTION = "input_shape= (--input-shape)"


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
        if seq_len is not None:
            _ignored(SEQ_LEN_OPTION, "a module's inputs come from inputs= or input_shape=")
        return _finish(type(spec).__name__, spec, inputs, shapes, device, batch)
    if not isinstance(spec, str) or not spec.strip():
        raise RooflineError("MODEL must be a spec string such as torchvision:resnet50, hf:gpt2 or zoo:convnet")
    spec = spec.strip()
    scheme, _, rest = spec.partition(":")
    if spec.rpartition(":")[0].endswith(".py"):
        if seq_len is not None:
            _ignored(SEQ_LEN_OPTION, f"{spec}'s inputs come from its builder or {SHAPE_OPTION}")
        return _load_file(spec, inputs, shapes, device, batch)
    if scheme not in SCHEMES or not rest:
        raise RooflineError(
            f"unknown model spec {spec!r}: use torchvision:NAME, timm:NAME, hf:MODEL_TYPE, path/to/file.py:callable"
            " or zoo:NAME"
        )
    if scheme in ("torchvision", "timm") and seq_len is not None:
        _ignored(SEQ_LEN_OPTION, f"{spec} takes images, not token sequences")
    if scheme == "torchvision":
        return _load_torchvision(rest, spec, inputs, shapes, device, batch)
    if scheme == "timm":
        return _load_timm(rest, spec, inputs, shapes, device, batch)
    if scheme == "hf":
        if shapes is not None or inputs is not None:
            _ignored(SHAPE_OPTION if shapes is not None else "inputs=",
                     f"{spec} builds its own inputs; set their size with {BATCH_OPTION} and {SEQ_LEN_OPTION}")
        return _load_hf(rest, spec, device, batch, seq_len, attention)
    return _load_zoo(rest, spec, inputs, shapes, device, batch, seq_len)


def _load_zoo(name: str, spec: str, inputs: Any, shapes: list[tuple[int, ...]] | None, device: str,
              batch: int | None, seq_len: int | None) -> LoadedModel:
    from roofline.zoo import ZOO

    entry = ZOO.get(name)
    if entry is None:
        raise RooflineError(f"unknown zoo model {name!r}{close_matches(name, ZOO)}; choose one of: {', '.join(ZOO)}")
    if seq_len is not None and not (entry.sequences and inputs is None and shapes is None):
        _ignored(SEQ_LEN_OPTION, "its inputs were given" if entry.sequences else f"{spec} takes no token sequences")
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
        _check_inputs(name, inputs)
        if shapes is not None:
            _ignored(SHAPE_OPTION, f"{name} comes with its own inputs")
        if batch is not None:
            _ignored(f"{BATCH_OPTION} {batch}", f"{name} comes with its own inputs, shapes {_shapes_of(inputs)}")
        return LoadedModel(name, module, inputs, device, meta or {})
    given = shapes
    shapes = shapes or default_shapes
    if not shapes:
        raise RooflineError(
            f"{name}: give the input shape, e.g. input_shape='1x3x224x224' (--input-shape 1x3x224x224 on the command line)"
        )
    if batch is not None:
        if given is not None and any(shape[0] != batch for shape in given):
            warnings.warn(f"{BATCH_OPTION} {batch} replaces the first dimension of {SHAPE_OPTION} "
                          f"{','.join('x'.join(map(str, shape)) for shape in given)}", stacklevel=3)
        shapes = [(batch, *shape[1:]) for shape in shapes]
    tensors = [torch.randn(shape, device=device) for shape in shapes]
    return LoadedModel(name, module, tensors, device, meta or {})


def _check_inputs(name: str, inputs: list[Any] | dict[str, Any]) -> None:
    """Inputs are a list of positional arguments or a dict of keyword ones, with at least one tensor among them."""
    if isinstance(inputs, dict) and not all(isinstance(key, str) for key in inputs):
        raise RooflineError(f"{name}: the inputs dict must map argument names (str) to tensors, got keys {list(inputs)}")
    if not isinstance(inputs, (list, dict)) or not any(isinstance(v, torch.Tensor) for v in tree_leaves(inputs)):
        if isinstance(inputs, (list, dict)):
            kinds = sorted({type(v).__name__ for v in tree_leaves(inputs)})
            got = f"a {type(inputs).__name__} of {', '.join(kinds) or 'nothing'}"
        else:
            got = f"{type(inputs).__name__} {inputs!r}"[:80]
        raise RooflineError(
            f"{name}: the inputs must be tensors (a tensor, a tuple or list of tensors, or a dict of name -> tensor); "
            f"got {got}"
        )


def _shapes_of(inputs: list[Any] | dict[str, Any]) -> str:
    return ", ".join("x".join(map(str, v.shape)) for v in tree_leaves(inputs) if isinstance(v, torch.Tensor))


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
    with _quiet_transformers():
        default = transformers.AutoConfig.for_model(model_type)
    for key in overrides:
        if not hasattr(default, key):
            raise RooflineError(f"hf:{model_type} config has no field {key!r}")
    _check_hf_sizes(model_type, default, overrides)
    # Overrides go to the constructor, not setattr afterwards: fields derived from them (llama's
    # head_dim = hidden_size / heads, num_key_value_heads = heads) must follow, and the config's own
    # validation runs on them.
    try:
        with _quiet_transformers():
            config = transformers.AutoConfig.for_model(model_type, **overrides) if overrides else default
    except _hf_validation_errors() as error:
        raise RooflineError(_hf_rejected(model_type, overrides, error)) from error
    _check_hf_heads(model_type, config, overrides)
    config._attn_implementation = attention
    return config


# Config sizes an override must keep positive integers (None allowed where the config derives it).
_HF_SIZES = ("vocab_size", "hidden_size", "num_hidden_layers", "num_attention_heads")
_HF_OPTIONAL_SIZES = ("num_key_value_heads", "head_dim", "intermediate_size", "max_position_embeddings")


def _hf_validation_errors() -> tuple[type[Exception], ...]:
    """What a transformers config constructor raises for a bad field: huggingface_hub's strict-dataclass
    errors (transformers 5), ValueError and TypeError (older versions' own checks)."""
    try:
        from huggingface_hub.errors import StrictDataclassError
    except ImportError:  # pragma: no cover  (huggingface_hub < 1.0)
        return (ValueError, TypeError)
    return (StrictDataclassError, ValueError, TypeError)


def _hf_rejected(model_type: str, overrides: dict[str, Any], error: Exception) -> str:
    """One line naming the override transformers rejected, its value, and transformers' reason."""
    cause = error.__cause__ if isinstance(error.__cause__, Exception) else error
    reason = (str(cause).strip().splitlines() or [type(cause).__name__])[0]
    named = re.search(r"[Ff]ield '([^']+)'", str(error))
    if named and named.group(1) in overrides:
        field_name = named.group(1)
        return f"hf:{model_type}: config field {field_name}={overrides[field_name]!r} rejected: {reason}"
    given = "&".join(f"{k}={v!r}" for k, v in overrides.items())
    return f"hf:{model_type}: config rejected the overrides {given}: {reason}"


def _hf_field(config: Any, name: str) -> str:
    """The name a config uses for a standard field (GPT-2 keeps hidden_size as n_embd), shown with both."""
    real = getattr(config, "attribute_map", {}).get(name, name)
    return name if real == name else f"{real} ({name})"


def _hf_override(config: Any, overrides: dict[str, Any], name: str) -> tuple[bool, Any]:
    """(given, value): whether the user overrode a standard field under either of its names, and its value."""
    real = getattr(config, "attribute_map", {}).get(name, name)
    for key in (name, real):
        if key in overrides:
            return True, overrides[key]
    return False, getattr(config, name, None)


def _check_hf_sizes(model_type: str, default: Any, overrides: dict[str, Any]) -> None:
    """Sizes the user set must be positive integers, and hidden_size must divide by the head count
    where the model derives its head width from them (llama, gpt2; not gemma, whose head_dim is its own)."""
    for name in (*_HF_SIZES, *_HF_OPTIONAL_SIZES):
        given, value = _hf_override(default, overrides, name)
        if not given or (value is None and name in _HF_OPTIONAL_SIZES):
            continue
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise RooflineError(f"hf:{model_type}: {_hf_field(default, name)} must be a positive integer, got {value!r}")
    hidden_given, hidden = _hf_override(default, overrides, "hidden_size")
    heads_given, heads = _hf_override(default, overrides, "num_attention_heads")
    if not (hidden_given or heads_given) or "head_dim" in overrides:
        return
    if not (isinstance(hidden, int) and isinstance(heads, int)):
        return  # a config with per-stage lists (swin) or no such fields
    head_dim = getattr(default, "head_dim", None)
    default_hidden, default_heads = getattr(default, "hidden_size", None), getattr(default, "num_attention_heads", None)
    derived = head_dim is None or (isinstance(default_heads, int) and head_dim * default_heads == default_hidden)
    if derived and hidden % heads:
        near = min((d for d in range(1, hidden + 1) if hidden % d == 0), key=lambda d: (abs(d - heads), d))
        raise RooflineError(
            f"hf:{model_type}: {_hf_field(default, 'hidden_size')} {hidden} must divide by "
            f"{_hf_field(default, 'num_attention_heads')} {heads} (each head gets hidden_size / heads dimensions); "
            f"choose a head count that divides it, such as {near}"
        )


def _check_hf_heads(model_type: str, config: Any, overrides: dict[str, Any]) -> None:
    """Grouped-query attention shares each key/value head among heads / kv_heads query heads: it must divide."""
    heads_given, heads = _hf_override(config, overrides, "num_attention_heads")
    kv_given, kv = _hf_override(config, overrides, "num_key_value_heads")
    if (heads_given or kv_given) and isinstance(heads, int) and isinstance(kv, int) and heads % kv:
        raise RooflineError(
            f"hf:{model_type}: {_hf_field(config, 'num_attention_heads')} {heads} must divide by "
            f"num_key_value_heads {kv} (each key/value head serves heads / num_key_value_heads query heads)"
        )


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
            except ValueError as error:
                if "Unrecognized configuration class" in str(error):  # this auto class has no model for it
                    continue
                raise RooflineError(f"{spec}: building the model failed: {_first_line(error)}") from error
            except Exception as error:
                raise RooflineError(f"{spec}: building the model failed: {_first_line(error)}") from error
    if module is None:
        raise RooflineError(f"{spec}: transformers has no model class for this config")
    batch = batch or 1
    name = getattr(module, "main_input_name", "input_ids")
    inputs: dict[str, Any]
    if name == "pixel_values":
        if seq_len is not None:
            _ignored(SEQ_LEN_OPTION, f"{spec} takes images, not token sequences")
        size = getattr(config, "image_size", DEFAULT_IMAGE_SIZE)
        channels = getattr(config, "num_channels", 3)
        inputs = {"pixel_values": torch.randn(batch, channels, size, size, device=device)}
    elif name == "input_ids":
        vocab = getattr(config, "vocab_size", 32000) or 32000
        ids = torch.randint(0, vocab, (batch, seq_len or DEFAULT_SEQ_LEN), device=device)
        inputs = {"input_ids": ids}
        if getattr(config, "is_encoder_decoder", False):
            inputs["decoder_input_ids"] = ids
        if "use_cache" in module.forward.__code__.co_varnames:
            inputs["use_cache"] = False
    else:
        raise RooflineError(f"{spec}: input {name!r} is not supported yet (text and image models are)")
    module.eval()
    return LoadedModel(spec, module, inputs, device, {"config": config})


def _first_line(error: BaseException) -> str:
    return f"{type(error).__name__}: {(str(error).strip().splitlines() or [''])[0]}"


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
        with contextlib.redirect_stdout(sys.stderr):  # the user's prints must not mix into --format json
            loader_spec.loader.exec_module(user_module)
    except SystemExit as error:
        raise RooflineError(f"importing {path_text} called sys.exit({error.code!r}); a model file must not exit") from error
    except Exception as error:
        raise RooflineError(f"importing {path_text} failed: {type(error).__name__}: {error}") from error
    factory = getattr(user_module, attribute, None)
    if factory is None:
        names = [n for n in vars(user_module) if not n.startswith("_") and callable(getattr(user_module, n))]
        raise RooflineError(f"{path_text} does not define {attribute!r}{close_matches(attribute, names)}")
    if not callable(factory):
        raise RooflineError(f"{path_text}:{attribute} is not callable")
    with _on_device(device), contextlib.redirect_stdout(sys.stderr):  # its prints must not mix into --format json
        try:
            made = factory()
        except SystemExit as error:
            raise RooflineError(f"{spec}() called sys.exit({error.code!r}) instead of returning a module") from error
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

"""Traces kept on disk: a second analyze, predict, report, compare or explain of a model skips tracing (issue 19).

An entry is one gzip-compressed JSON file named by the SHA-256 of what is traced: the model spec and every option
that shapes the trace (input shape, batch, sequence length, mode, optimizer, attention). Inside, the entry records
what traced it: the cache format, the versions of torch, torchvision, transformers and timm, roofline's version and
a digest of roofline's own source files (so an edit to a cost rule in a development checkout counts too). An entry
written by other versions, or whose contents do not check out, is ignored with a warning naming why and rebuilt in
place, never trusted. A write goes to a temporary file in the same directory and is renamed into place, so two
processes tracing the same model at once leave one complete entry.

Re-costing for a precision or a profile needs no trace, so one entry serves every precision and device. A model
file (`path.py:callable`) or a module object is never cached: its code can change, or import code that changes,
without the key seeing it. Torch-free, so a hit imports neither torch nor the model's library.
"""
from __future__ import annotations

import dataclasses
import functools
import gzip
import hashlib
import importlib.metadata
import json
import os
import sys
import tempfile
import warnings
import zlib
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Generic, TypeVar

from roofline.records import LayerCall, MoEParams, OpRecord, Trace, Traffic, TrainingInfo

__all__ = [
    "FORMAT_VERSION",
    "TRACE_CODEC",
    "Cached",
    "Codec",
    "Invalid",
    "TraceKey",
    "cache_dir",
    "clear",
    "decode_trace",
    "encode_trace",
    "entries",
    "is_cacheable",
    "key_for",
    "load",
    "store",
    "traced",
]

FORMAT_VERSION = 1
T = TypeVar("T")
SUFFIX = ".trace.json.gz"
_TEMP_PREFIX = ".writing-"
# The libraries whose code builds or runs the models: a new version may change what a model traces to.
VERSIONED_PACKAGES = ("torch", "torchvision", "transformers", "timm", "roofline")


def cache_dir() -> Path:
    """Where traces are kept: $ROOFLINE_TRACE_DIR, or ~/.cache/roofline/traces beside the measured profiles."""
    override = os.environ.get("ROOFLINE_TRACE_DIR")
    return Path(override) if override else Path.home() / ".cache" / "roofline" / "traces"


def is_cacheable(model: Any, inputs: Any = None) -> bool:
    """Only a spec string naming a library or zoo model, with inputs the spec and options decide."""
    return (isinstance(model, str) and inputs is None and ":" in model
            and not model.strip().rpartition(":")[0].endswith(".py"))


_PLAIN_OPTION = (str, int, float, bool, type(None))


def key_for(model: Any, inputs: Any, mode: str, options: Mapping[str, Any]) -> TraceKey | None:
    """The cache key of a trace, or None when it cannot be cached (see is_cacheable; options must be plain)."""
    if not is_cacheable(model, inputs) or not all(isinstance(v, _PLAIN_OPTION) for v in options.values()):
        return None
    routing = _routing_in_force()
    return TraceKey.of(model, mode, {**options, "routing": routing} if routing else options)


def _routing_in_force() -> str | None:
    """The MoE routing a caller set around the trace (roofline.moe.routing), which changes an MoE trace's bytes;
    None when it is the default. A process that never imported roofline.moe has set none (and a hit stays
    torch-free)."""
    moe = sys.modules.get("roofline.moe")
    if moe is None:
        return None
    current = moe.current_routing()
    return None if current == moe.Routing() else repr(current)


@functools.lru_cache(maxsize=1)
def versions() -> dict[str, str | None]:
    """Installed versions of the packages in VERSIONED_PACKAGES (None when absent) and roofline's source digest."""
    found: dict[str, str | None] = {}
    for package in VERSIONED_PACKAGES:
        try:
            found[package] = importlib.metadata.version(package)
        except importlib.metadata.PackageNotFoundError:
            found[package] = None
    found["roofline_source"] = _source_digest()
    return found


def _source_digest() -> str:
    """SHA-256 over roofline's Python files, names and contents: any edit to the package changes it."""
    root = Path(__file__).resolve().parent
    digest = hashlib.sha256()
    for path in sorted(root.rglob("*.py")):
        digest.update(str(path.relative_to(root)).encode())
        digest.update(b"\0")
        digest.update(path.read_bytes())
    return digest.hexdigest()


@dataclass(frozen=True)
class TraceKey:
    """Everything a trace depends on. `options` are the load and trace options, None values left out."""

    spec: str
    mode: str
    options: tuple[tuple[str, Any], ...]

    @classmethod
    def of(cls, spec: str, mode: str, options: Mapping[str, Any]) -> TraceKey:
        return cls(spec.strip(), mode, tuple(sorted((k, v) for k, v in options.items() if v is not None)))

    def traced(self) -> dict[str, Any]:
        """What is traced: the part of the key that names the entry's file."""
        return {"spec": self.spec, "mode": self.mode, "options": {k: v for k, v in self.options}}

    def fields(self) -> dict[str, Any]:
        """The whole key: what is traced, and what traced it."""
        return {"format": FORMAT_VERSION, **self.traced(), "versions": versions()}

    def digest(self) -> str:
        return hashlib.sha256(json.dumps(self.traced(), sort_keys=True).encode()).hexdigest()

    def path(self) -> Path:
        return cache_dir() / f"{self.digest()}{SUFFIX}"


@dataclass(frozen=True)
class RecordedWarning:
    """A warning roofline gave while loading and tracing the model, replayed on a hit so a cached result says it
    too (an ignored --seq-len, a --batch that replaced a shape)."""

    message: str
    category: str
    filename: str
    lineno: int
    module: str


@dataclass(frozen=True)
class Cached(Generic[T]):
    """What an entry holds: the traced value (a Trace, or a bundle of them such as an LLM's passes) and the
    warnings its build gave."""

    value: T
    warnings: tuple[RecordedWarning, ...]

    def replay(self) -> None:
        """Warn again, through the filters in force now (so --no-warnings silences a hit as it does a miss)."""
        for w in self.warnings:
            category = _WARNING_CATEGORIES.get(w.category, UserWarning)
            warnings.warn_explicit(w.message, category, w.filename, w.lineno, module=w.module, registry={})


_WARNING_CATEGORIES: dict[str, type[Warning]] = {
    cls.__name__: cls for cls in (UserWarning, RuntimeWarning, DeprecationWarning, FutureWarning, ResourceWarning)
}


def _roofline_module(filename: str) -> str | None:
    """'roofline.models' for a file of this package, None for any other (its warnings are not about the result)."""
    root = Path(__file__).resolve().parent
    try:
        relative = Path(filename).resolve().relative_to(root.parent)
    except ValueError:
        return None
    parts = relative.with_suffix("").parts
    return ".".join(parts) if parts and parts[0] == root.name else None


@dataclass(frozen=True)
class Codec(Generic[T]):
    """How a traced value becomes JSON and back. `decode` raises Invalid (or KeyError, TypeError, ValueError) for
    anything that does not check out."""

    encode: Callable[[T], Any]
    decode: Callable[[Any], T]


def traced(key: TraceKey | None, build: Callable[[], T], codec: Codec[T] | None = None) -> T:
    """The value for `key`: from the cache when an entry checks out, else `build()`, stored for next time.

    key None: no caching (the model is not cacheable, or the caller asked for none). codec: how to store the value;
    by default it is one Trace (TRACE_CODEC).
    """
    chosen: Codec[Any] = codec if codec is not None else TRACE_CODEC
    if key is None:
        return build()
    hit = load(key, chosen)
    if hit is not None:
        hit.replay()
        return hit.value  # type: ignore[no-any-return]  # the codec decodes what it encoded: a T
    with warnings.catch_warnings(record=True) as caught:
        value = build()
    # Show what the build warned, as it would have been shown (the filters were applied when it was caught).
    recorded = []
    for w in caught:
        warnings.showwarning(w.message, w.category, w.filename, w.lineno, w.file, w.line)
        module = _roofline_module(w.filename)
        if module is not None:
            recorded.append(RecordedWarning(str(w.message), w.category.__name__, w.filename, w.lineno, module))
    store(key, value, recorded, chosen)
    return value


# ---- reading and writing -------------------------------------------------------------------------

def _field_names(cls: Any) -> list[str]:
    return [f.name for f in dataclasses.fields(cls)]


def encode_trace(trace: Trace) -> dict[str, Any]:
    """A Trace as JSON-ready data: records and layers as rows under their field names (the file stays small)."""
    record_fields, layer_fields, traffic_fields = _field_names(OpRecord), _field_names(LayerCall), _field_names(Traffic)
    training = None
    if trace.training is not None:
        training = {name: getattr(trace.training, name) for name in _field_names(type(trace.training))}
    return {
        "record_fields": record_fields,
        "records": [[getattr(r, name) for name in record_fields] for r in trace.records],
        "layer_fields": layer_fields,
        "layers": [[getattr(c, name) for name in layer_fields] for c in trace.layers],
        "traffic_fields": traffic_fields,
        "fused": {layer: [getattr(t, name) for name in traffic_fields] for layer, t in trace.fused.items()},
        "trace": {"model_name": trace.model_name, "inputs": trace.inputs, "layer_params": trace.layer_params,
                  "total_params": trace.total_params, "peak_activation_elements": trace.peak_activation_elements,
                  "peak_fixed_bytes": trace.peak_fixed_bytes, "unsupported": trace.unsupported,
                  "attention": trace.attention, "tensor_parallel": trace.tensor_parallel, "mode": trace.mode},
        "training": training,
        "moe": dataclasses.asdict(trace.moe) if trace.moe is not None else None,
    }


class Invalid(Exception):
    """An entry that does not check out; the message says why."""


def _rows(payload: dict[str, Any], fields_key: str, rows_key: str, cls: Any) -> list[Any]:
    if payload[fields_key] != _field_names(cls):
        raise Invalid(f"its {cls.__name__} fields differ from this roofline's")
    return [cls(*row) for row in payload[rows_key]]


def decode_trace(payload: dict[str, Any]) -> Trace:
    """encode_trace's data back to a Trace, every part checked against this roofline's record types."""
    records = _rows(payload, "record_fields", "records", OpRecord)
    layers = _rows(payload, "layer_fields", "layers", LayerCall)
    if payload["traffic_fields"] != _field_names(Traffic):
        raise Invalid("its Traffic fields differ from this roofline's")
    fused = {layer: Traffic(*values) for layer, values in payload["fused"].items()}
    training = None
    if payload["training"] is not None:
        raw = payload["training"]
        if sorted(raw) != sorted(_field_names(TrainingInfo)):
            raise Invalid("its training fields differ from this roofline's")
        training = TrainingInfo(**{**raw, "timeline": tuple(tuple(entry) for entry in raw["timeline"]),
                                   "timeline_layers": tuple(raw["timeline_layers"]),
                                   "blocks": tuple(tuple(block) for block in raw["blocks"])})
        if len(training.timeline) != len(records):
            raise Invalid("its memory timeline does not match its records")
    if [r.seq for r in records] != list(range(len(records))):
        raise Invalid("its op records are not numbered 0..n-1")
    known_layers = {c.name for c in layers}
    if not {r.layer for r in records} <= known_layers:
        raise Invalid("an op record names a layer the entry does not list")
    moe = MoEParams(**payload["moe"]) if payload["moe"] is not None else None
    return Trace(records=records, layers=layers, fused=fused, training=training, moe=moe, **payload["trace"])


TRACE_CODEC: Codec[Trace] = Codec(encode_trace, decode_trace)


def load(key: TraceKey, codec: Codec[T] | None = None) -> Cached[T] | None:
    """The entry for `key`, or None when there is none. A broken entry warns, is removed, and reads as none."""
    chosen: Codec[Any] = codec if codec is not None else TRACE_CODEC
    path = key.path()
    try:
        data = path.read_bytes()
    except (FileNotFoundError, NotADirectoryError):  # no entry (an unusable directory warns when written)
        return None
    except OSError as error:
        warnings.warn(f"trace cache entry {path} cannot be read ({error.strerror}); tracing again", stacklevel=2)
        return None
    try:
        payload = json.loads(gzip.decompress(data))
        if not isinstance(payload, dict) or not isinstance(payload.get("key"), dict):
            raise Invalid("it holds no key")
        _check_key(payload["key"], key)
        return Cached(chosen.decode(payload["value"]), tuple(RecordedWarning(**w) for w in payload["warnings"]))
    except (Invalid, OSError, EOFError, zlib.error, json.JSONDecodeError, UnicodeDecodeError, KeyError, TypeError,
            ValueError) as error:
        why = str(error) if isinstance(error, Invalid) else f"it is truncated or corrupt ({type(error).__name__})"
        warnings.warn(f"ignoring trace cache entry {path.name}: {why}; tracing again", stacklevel=2)
        _remove(path)
        return None


def _check_key(stored: dict[str, Any], key: TraceKey) -> None:
    """Raise Invalid naming the first thing that differs between an entry's key and `key`."""
    current = key.fields()
    if stored.get("format") != current["format"]:
        raise Invalid(f"it is in cache format {stored.get('format')!r}, this roofline reads {current['format']}")
    if {k: stored.get(k) for k in key.traced()} != key.traced():
        raise Invalid("it was written for another model or options")
    recorded = stored.get("versions")
    was: dict[str, Any] = recorded if isinstance(recorded, dict) else {}
    for name, now in current["versions"].items():
        if was.get(name) != now:
            if name == "roofline_source":
                raise Invalid("roofline's source files changed since it was written")
            raise Invalid(f"it was written with {name} {was.get(name) or 'absent'}, this is {name} {now or 'absent'}")


def store(key: TraceKey, value: Any, recorded: list[RecordedWarning] | tuple[RecordedWarning, ...] = (),
          codec: Codec[Any] | None = None) -> None:
    """Write the entry atomically; a cache that cannot be written warns and is skipped (the result stands)."""
    path = key.path()
    entry = {"key": key.fields(), "warnings": [dataclasses.asdict(w) for w in recorded],
             "value": (codec or TRACE_CODEC).encode(value)}
    data = gzip.compress(json.dumps(entry, separators=(",", ":")).encode(), compresslevel=5)
    temp: str | None = None
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        handle, temp = tempfile.mkstemp(prefix=_TEMP_PREFIX, suffix=SUFFIX, dir=path.parent)
        with os.fdopen(handle, "wb") as file:
            file.write(data)
        os.replace(temp, path)
        temp = None
    except OSError as error:
        warnings.warn(f"could not write the trace cache in {path.parent} ({error.strerror or error}); "
                      "the result is not cached", stacklevel=2)
    finally:
        if temp is not None:
            _remove(Path(temp))


def _remove(path: Path) -> None:
    try:
        path.unlink()
    except OSError:
        pass


def _ours(path: Path) -> bool:
    """A file this module wrote: a 64-hex-digit entry, or one of its temporary files."""
    name = path.name
    if name.startswith(_TEMP_PREFIX):
        return name.endswith(SUFFIX)
    stem = name[: -len(SUFFIX)] if name.endswith(SUFFIX) else ""
    return len(stem) == 64 and all(ch in "0123456789abcdef" for ch in stem)


def entries() -> list[Path]:
    directory = cache_dir()
    return sorted(p for p in directory.iterdir() if p.is_file() and _ours(p)) if directory.is_dir() else []


def clear() -> tuple[int, int]:
    """Remove the cache's entries (only files it wrote; anything else in the directory stays): (files, bytes)."""
    removed = freed = 0
    for path in entries():
        size = path.stat().st_size
        try:
            path.unlink()
        except FileNotFoundError:
            continue
        removed += 1
        freed += size
    return removed, freed


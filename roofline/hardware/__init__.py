"""Hardware profiles: datasheet files shipped in roofline/hwprofiles/, detection of this machine, measurement.

`load_profile` is the one way in: a name from roofline/hwprofiles/ or the user directory (file stem,
case-insensitive), a path to a YAML file, or "auto" (this machine, preferring a measured profile of it saved in the user directory,
and measuring one when detection alone leaves a figure unknown).
"""
from __future__ import annotations

import warnings
from pathlib import Path

from roofline.errors import RooflineError, close_matches
from roofline.hardware.detect import detect
from roofline.hardware.microbench import measure_profile
from roofline.hardware.profile import (
    EFFICIENCY_CLASSES,
    HardwareProfile,
    MemoryLevel,
    hwprofiles_dir,
    list_profiles,
    load_profile_file,
    profile_paths,
    save_profile,
    saved_profiles,
    user_profile_dir,
)

__all__ = [
    "EFFICIENCY_CLASSES",
    "HardwareProfile",
    "MemoryLevel",
    "default_measured_path",
    "detect",
    "hwprofiles_dir",
    "list_profiles",
    "load_profile",
    "measure_profile",
    "save_profile",
    "saved_profiles",
    "user_profile_dir",
]


def _slug(text: str) -> str:
    return "-".join("".join(ch.lower() if ch.isalnum() else " " for ch in text).split()) or "device"


def default_measured_path(profile: HardwareProfile) -> Path:
    """Where `hw measure` keeps a measured profile of this machine: the user dir, named after the machine."""
    return user_profile_dir() / f"measured-{_slug(profile.metadata.get('machine', profile.name))}.yaml"


def _saved_measurement(detected: HardwareProfile) -> HardwareProfile | None:
    """The newest measured profile in the user dir whose recorded machine is this one."""
    directory = user_profile_dir()
    machine = detected.metadata.get("machine")
    if not machine or not directory.is_dir():
        return None
    candidates = []
    for path in directory.glob("*.yaml"):
        try:
            profile = load_profile_file(path)
        except RooflineError:
            continue  # a broken file in the cache must not stop `auto`; `hw show` reports it
        if profile.source == "measured" and profile.metadata.get("machine") == machine:
            candidates.append(profile)
    return max(candidates, key=lambda p: p.metadata.get("date", ""), default=None)


def _auto_profile() -> HardwareProfile:
    """This machine: a saved measurement of it, else detection, measured once (quick) when detection
    cannot know a figure (a CPU's memory bandwidths) and saved for next time."""
    detected = detect()
    saved = _saved_measurement(detected)
    if saved is not None:
        return saved
    if detected.dram.bandwidth_bytes_per_s is not None:
        return detected
    device = "cuda" if detected.kind == "gpu" else "cpu"
    path = default_measured_path(detected)
    warnings.warn(f"no measured profile of this machine yet: measuring it once (--quick), saving {path}", stacklevel=3)
    measured = measure_profile(device=device, quick=True)
    save_profile(measured, path)
    return load_profile_file(path)


def load_profile(name_or_path: str) -> HardwareProfile:
    """A profile by name (a shipped or saved file stem), by path (.yaml), or 'auto' for this machine."""
    key = name_or_path.strip()
    if key.lower() == "auto":
        return _auto_profile()
    path = Path(key).expanduser()
    if path.suffix.lower() in (".yaml", ".yml") or "/" in key or path.is_file():
        return load_profile_file(path)
    paths = profile_paths()
    if key.lower() in paths:
        return load_profile_file(paths[key.lower()])
    names = sorted(paths)
    raise RooflineError(
        f"unknown hardware profile {name_or_path!r}{close_matches(key.lower(), names)}; "
        f"choose one of: {', '.join(names)} (`roofline hw list`), a .yaml path, or auto"
    )

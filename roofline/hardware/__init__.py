"""Hardware profiles: datasheet files shipped in roofline/hwprofiles/, detection of this machine, measurement.

`load_profile` is the one way in: a name from roofline/hwprofiles/ or the user directory (file stem,
case-insensitive), a path to a YAML file, or "auto" (this machine: a measured profile of it saved in the
user directory, else what detection gives). Loading never benchmarks: measuring is `roofline hw measure`,
or `--measure-hw` (roofline.calibrate.ensure_measured_profile), always asked for.
"""
from __future__ import annotations

import os
from pathlib import Path

from roofline.errors import RooflineError, close_matches
from roofline.hardware.detect import detect
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
    "save_profile",
    "saved_measurement",
    "saved_profiles",
    "user_profile_dir",
]


def _slug(text: str) -> str:
    return "-".join("".join(ch.lower() if ch.isalnum() else " " for ch in text).split()) or "device"


def default_measured_path(profile: HardwareProfile) -> Path:
    """Where `hw measure` keeps a measured profile of this machine: the user dir, named after the machine."""
    return user_profile_dir() / f"measured-{_slug(profile.metadata.get('machine', profile.name))}.yaml"


def saved_measurement(detected: HardwareProfile) -> HardwareProfile | None:
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
    """This machine: a saved measurement of it, else detection when that knows every roof (a GPU's
    datasheet-class figures from NVML); a CPU's bandwidths need measuring, which is asked for, not done."""
    detected = detect()
    saved = saved_measurement(detected)
    if saved is not None:
        return saved
    if detected.dram.bandwidth_bytes_per_s is not None:
        return detected
    raise RooflineError(
        f"no measured profile of this machine ({detected.name}) yet, and detection cannot know its memory "
        "bandwidth: measure it once with `roofline hw measure --quick` (40-100 s), or pass --measure-hw"
    )


def load_profile(name_or_path: str | os.PathLike[str]) -> HardwareProfile:
    """A profile by name (a shipped or saved file stem), by path (.yaml, a str or a Path), or 'auto' for this machine."""
    if isinstance(name_or_path, os.PathLike):
        return load_profile_file(Path(name_or_path).expanduser())
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

"""Output directories (`--out`): roofline replaces only what it wrote itself.

Every directory roofline writes (a report, a sweep) holds a marker, MARKER, listing each file it wrote
with its SHA-256. A directory may be replaced when it is empty, or when every entry in it is a file
listed in its marker and unchanged since; anything else is the user's, and `check_out` refuses before
any work starts. With `force` roofline writes its files into such a directory one by one, replacing
only files of the names it writes, and leaves every other entry alone. Otherwise the files are
written into a hidden sibling and swapped in whole, so an interrupted run (an error, Ctrl-C, SIGTERM)
leaves the previous directory or none, and nothing hidden beside it.
"""
from __future__ import annotations

import contextlib
import hashlib
import json
import os
import shutil
import signal
import tempfile
import threading
import uuid
import warnings
from collections.abc import Callable, Collection, Iterator
from dataclasses import dataclass
from pathlib import Path
from types import FrameType

import roofline
from roofline.errors import RooflineError

__all__ = ["MARKER", "Terminated", "check_out", "terminate_as_interrupt", "write_atomically"]

MARKER = ".roofline-report.json"
# Version of the marker's own fields.
MARKER_FORMAT_VERSION = 1


class Terminated(KeyboardInterrupt):
    """SIGTERM, raised as Ctrl-C's KeyboardInterrupt is, so the same cleanup runs."""


@dataclass(frozen=True)
class _Plan:
    out: Path  # absolute, symbolic links resolved
    owned: dict[str, str]  # the earlier marker's files: name -> sha256 (empty when none)
    foreign: tuple[str, ...]  # entries roofline did not write, or that changed since
    in_place: bool  # write file by file into `out` rather than swap a whole new directory in


def check_out(out: str | Path, *, force: bool = False, names: Collection[str] = ()) -> Path:
    """Refuse, before any work, an `out` that roofline may not or cannot write; returns it absolute.

    `names` are the files the writer may produce: a refusal names some other entry first, and with
    `force` one of them that is a directory here is refused too, since a file cannot replace it.
    """
    return _plan(Path(out), force, names).out


def write_atomically(out: str | Path, write: Callable[[Path], None], *, force: bool = False,
                     names: Collection[str] = ()) -> Path:
    """Call `write(directory)` on a fresh hidden directory, then install its files as `out`; returns `out`.

    `out` is checked before and again after `write` (it may have changed while the caller worked).
    SIGTERM is handled as Ctrl-C meanwhile, where it still has its default action: whatever stops the
    run, the hidden directory goes, and `out` stays as it was.
    """
    with terminate_as_interrupt():
        plan = _plan(Path(out), force, names)
        out = plan.out
        created = [parent for parent in reversed(out.parents) if not parent.exists()]
        staging: Path | None = None
        try:
            try:
                out.parent.mkdir(parents=True, exist_ok=True)
                staging = Path(tempfile.mkdtemp(prefix=f".{out.name}.writing-", dir=out if plan.in_place else out.parent))
            except OSError as error:
                raise RooflineError(f"--out {out}: cannot write there ({error.strerror or error}); "
                                    "choose another --out") from error
            write(staging)
            files = _staged_files(staging)
            plan = _plan(out, force, names, staging=staging)
            if plan.in_place or staging.parent == out:
                _move_in(plan, staging, files)
            else:
                _swap_in(plan, staging, files)
        except BaseException:
            if staging is not None:
                shutil.rmtree(staging, ignore_errors=True)
            for parent in reversed(created):  # the parents this run made, if nothing else went into them
                with contextlib.suppress(OSError):
                    parent.rmdir()
            raise
        if plan.in_place or staging.parent == out:
            shutil.rmtree(staging, ignore_errors=True)  # emptied by the moves; a swapped-in one is `out` now
    return out


@contextlib.contextmanager
def terminate_as_interrupt() -> Iterator[None]:
    """Inside, SIGTERM raises Terminated (a KeyboardInterrupt), so `finally` and `except BaseException`
    cleanup runs as for Ctrl-C; a second SIGTERM is ignored while that cleanup runs.

    Only in the main thread, and only where SIGTERM still has its default action (killing the process
    with no cleanup): a handler that someone else installed, such as an outer use of this one, stays.
    """
    if threading.current_thread() is not threading.main_thread() or signal.getsignal(signal.SIGTERM) != signal.SIG_DFL:
        yield
        return

    def handler(signum: int, frame: FrameType | None) -> None:
        signal.signal(signal.SIGTERM, signal.SIG_IGN)
        raise Terminated(f"terminated by signal {signum}")

    previous = signal.signal(signal.SIGTERM, handler)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


# ---- the rule --------------------------------------------------------------------------------------

def _plan(out: Path, force: bool, names: Collection[str], staging: Path | None = None) -> _Plan:
    """What writing `out` would do, or a RooflineError saying why not; `staging` is this run's own directory."""
    out = Path(os.path.realpath(out.expanduser()))  # a link to a directory: the directory is what is replaced
    if not out.exists():
        if staging is None:
            _check_writable(_nearest_existing(out), out)
        return _Plan(out, {}, (), in_place=False)
    if not out.is_dir():
        raise RooflineError(f"--out {out} exists and is not a directory; choose another --out")
    owned = _read_marker(out)
    foreign = sorted(_foreign_entries(out, owned, staging), key=lambda entry: entry in names)  # stable: the user's first
    if foreign and not force:
        why = "holds files roofline did not write" if owned else "is not a directory roofline wrote"
        raise RooflineError(f"--out {out} {why} ({_describe(out, foreign[0], owned)}); choose another --out, "
                            "or pass --force to write roofline's files into it and keep the others")
    blocked = [name for name in names if (out / name).is_dir() and not (out / name).is_symlink()]
    if force and blocked:
        raise RooflineError(f"--out {out}: {blocked[0]} is a directory where roofline writes a file; "
                            "choose another --out")
    in_place = bool(foreign) or _holds_cwd(out)  # never move the user's working directory away
    if staging is None:
        _check_writable(out if in_place else out.parent, out)
    return _Plan(out, owned, tuple(foreign), in_place)


def _describe(out: Path, entry: str, owned: dict[str, str]) -> str:
    if entry in owned:
        return f"{entry} changed since roofline wrote it"
    if owned:
        return entry
    marker = "no" if not (out / MARKER).exists() else "no valid"
    return f"{marker} {MARKER} in it; {entry} is not roofline's"


def _nearest_existing(out: Path) -> Path:
    for parent in out.parents:
        if parent.exists():
            if not parent.is_dir():
                raise RooflineError(f"--out {out}: {parent} is a file, not a directory; choose another --out")
            return parent
    return Path(out.anchor)  # pragma: no cover  (the root always exists)


def _check_writable(directory: Path, out: Path) -> None:
    """Create and remove a directory there: os.access says yes to root on a read-only file system."""
    try:
        os.rmdir(tempfile.mkdtemp(prefix=f".{out.name}.check-", dir=directory))
    except OSError as error:
        raise RooflineError(f"--out {out}: cannot write in {directory} ({error.strerror or error}); "
                            "choose another --out") from error


def _holds_cwd(out: Path) -> bool:
    try:
        cwd = Path.cwd().resolve()
    except OSError:
        return False
    return cwd == out or out in cwd.parents


def _read_marker(out: Path) -> dict[str, str]:
    """The files an earlier run recorded as written: name -> sha256; {} when the marker is missing or not ours."""
    marker = out / MARKER
    if not marker.is_file() or marker.is_symlink():
        return {}
    try:
        content = json.loads(marker.read_text())
    except (OSError, ValueError):
        return {}
    files = content.get("files") if isinstance(content, dict) else None
    if not isinstance(files, dict) or not str(content.get("generator", "")).startswith("roofline"):
        return {}
    return {name: digest for name, digest in files.items()
            if isinstance(name, str) and isinstance(digest, str) and _plain_name(name)}


def _plain_name(name: str) -> bool:
    return bool(name) and name not in (".", "..", MARKER) and "/" not in name and "\\" not in name


def _foreign_entries(out: Path, owned: dict[str, str], staging: Path | None = None) -> list[str]:
    """Entries of `out` that roofline did not write: unlisted, not a plain file, or changed since.

    A report is flat, so any directory (or link) in it is foreign. Listed files come after unlisted
    ones, so a refusal names the user's file rather than an edited one of ours.
    """
    unlisted, changed = [], []
    for entry in sorted(out.iterdir(), key=lambda p: p.name):
        if (entry.name == MARKER and entry.is_file() and not entry.is_symlink()) or entry == staging:
            continue
        if entry.name not in owned or entry.is_symlink() or not entry.is_file():
            unlisted.append(entry.name + ("/" if entry.is_dir() and not entry.is_symlink() else ""))
        elif _sha256(entry) != owned[entry.name]:
            changed.append(entry.name)
    return unlisted + changed


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as file:
        for block in iter(lambda: file.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


# ---- writing ---------------------------------------------------------------------------------------

def _staged_files(staging: Path) -> dict[str, str]:
    files = {}
    for entry in sorted(staging.iterdir(), key=lambda p: p.name):
        if entry.is_symlink() or not entry.is_file() or not _plain_name(entry.name):
            raise RuntimeError(f"a writer made {entry.name!r}: only plain files are expected")  # our bug
        files[entry.name] = _sha256(entry)
    return files


def _write_marker(directory: Path, files: dict[str, str], staging: Path) -> None:
    content = {"format_version": MARKER_FORMAT_VERSION, "generator": f"roofline {roofline.__version__}",
               "note": "the files roofline wrote here; it replaces this directory only while nothing else is in it",
               "files": files}
    temporary = staging / f"{MARKER}.new"
    temporary.write_text(json.dumps(content, indent=1) + "\n")
    os.replace(temporary, directory / MARKER)


def _swap_in(plan: _Plan, staging: Path, files: dict[str, str]) -> None:
    """Rename the staged directory into place, the earlier one (if any) aside and then away."""
    out = plan.out
    _write_marker(staging, files, staging)
    staging.chmod(0o755)  # mkdtemp makes it private; a report is for reading
    if not out.exists():
        os.replace(staging, out)
        return
    retired = out.parent / f".{out.name}.old-{uuid.uuid4().hex[:8]}"
    os.replace(out, retired)
    try:
        os.replace(staging, out)
    except BaseException:
        os.replace(retired, out)
        raise
    _remove_owned(retired, plan.owned)


def _remove_owned(retired: Path, owned: dict[str, str]) -> None:
    """Delete the earlier directory's files by name; keep it if anything else turned up in the last instant."""
    for name in (*owned, MARKER):
        with contextlib.suppress(FileNotFoundError):
            (retired / name).unlink()
    try:
        retired.rmdir()
    except OSError:
        warnings.warn(f"kept {retired}: it holds files roofline did not write, added while it worked", stacklevel=4)


def _move_in(plan: _Plan, staging: Path, files: dict[str, str]) -> None:
    """Move each staged file over its namesake in `out` (--force, or `out` holds the working directory);
    each file is replaced atomically, the set is not."""
    out = plan.out
    blocked = [name for name in files if (out / name).is_dir() and not (out / name).is_symlink()]
    if blocked:
        raise RooflineError(f"--out {out}: {blocked[0]} is a directory where roofline writes a file; "
                            "choose another --out")
    for name in files:
        os.replace(staging / name, out / name)
    for name in sorted(set(plan.owned) - set(files)):  # the earlier run's files this one does not make
        target = out / name
        if target.is_file() and not target.is_symlink() and name not in plan.foreign:  # unchanged since
            target.unlink()
    _write_marker(out, files, staging)

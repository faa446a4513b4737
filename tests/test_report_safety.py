"""--out never costs the user a file: roofline replaces only a directory it wrote (its marker lists the
files), refuses anything else in one line before any work, and leaves nothing behind when stopped."""
from __future__ import annotations

import hashlib
import json
import os
import shutil
import signal
import subprocess
import sys
import textwrap
from collections.abc import Callable
from pathlib import Path

import pytest

import roofline
from roofline import explain, hardware, models, outdir
from roofline.cli import main
from roofline.errors import RooflineError

REPO = Path(__file__).resolve().parents[1]
REPORT = ["report", "zoo:mlp", "--hw", "t4", "--no-measure", "--no-progress"]
REPORT_FILES = {"index.html", "report.md", "layers.csv", "report.json", "roofline.png", "roofline.svg", "time.png",
                "time.svg"}


def _snapshot(directory: Path) -> dict[str, bytes]:
    """Every file under `directory` (hidden ones too) with its content."""
    return {p.relative_to(directory).as_posix(): p.read_bytes() for p in sorted(directory.rglob("*")) if p.is_file()}


def _report(capsys: pytest.CaptureFixture[str], out: Path, *extra: str) -> tuple[int, str]:
    code = main([*REPORT, "--out", str(out), *extra])
    return code, capsys.readouterr().err


def _one_line_refusal(code: int, err: str, *words: str) -> None:
    assert code == 2, err
    assert err.startswith("roofline: error: --out ") and err.count("\n") == 1, err
    assert "Traceback" not in err
    for word in words:
        assert word in err, err


@pytest.fixture(scope="module")
def earlier_report(tmp_path_factory: pytest.TempPathFactory) -> dict[str, bytes]:
    """One real report, written once; each test copies it (drawing the charts is the slow part)."""
    out = tmp_path_factory.mktemp("earlier") / "rep"
    assert main([*REPORT, "--out", str(out)]) == 0
    return _snapshot(out)


def _copy_of(report: dict[str, bytes], out: Path) -> Path:
    out.mkdir()
    for name, content in report.items():
        (out / name).write_bytes(content)
    return out


# ---- the marker ------------------------------------------------------------------------------------

def test_a_report_records_every_file_it_wrote_with_its_digest(earlier_report: dict[str, bytes]) -> None:
    marker = json.loads(earlier_report[outdir.MARKER])
    assert set(earlier_report) == REPORT_FILES | {outdir.MARKER}
    assert marker["files"] == {name: hashlib.sha256(earlier_report[name]).hexdigest() for name in REPORT_FILES}
    assert marker["generator"] == f"roofline {roofline.__version__}" and marker["format_version"] == 1


def test_a_directory_roofline_wrote_is_replaced_whole(capsys: pytest.CaptureFixture[str], tmp_path: Path,
                                                     earlier_report: dict[str, bytes]) -> None:
    out = _copy_of(earlier_report, tmp_path / "rep1")
    code, err = _report(capsys, out, "--precision", "fp16")
    assert code == 0, err
    assert json.loads((out / "report.json").read_text())["precision"] == "fp16"
    assert set(_snapshot(out)) == REPORT_FILES | {outdir.MARKER}
    assert [p.name for p in tmp_path.iterdir()] == ["rep1"]  # no staging or retired directory beside it


# ---- the data-loss cases of issue 14 -----------------------------------------------------------------

def test_earlier_report_plus_a_user_file_is_refused_and_the_file_survives(
        capsys: pytest.CaptureFixture[str], tmp_path: Path, earlier_report: dict[str, bytes]) -> None:
    out = _copy_of(earlier_report, tmp_path / "rep1")
    (out / "MY_NOTES.txt").write_text("mine\n")
    before = _snapshot(out)
    code, err = _report(capsys, out)
    _one_line_refusal(code, err, "MY_NOTES.txt", "--force")
    assert _snapshot(out) == before


def test_foreign_report_json_with_format_version_is_refused_and_photos_survive(
        capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    out = tmp_path / "userdir2"
    (out / "photos").mkdir(parents=True)
    (out / "photos" / "a.jpg").write_bytes(b"\xff\xd8 a photo")
    (out / "report.json").write_text('{"format_version": 1, "mine": true}\n')
    before = _snapshot(out)
    code, err = _report(capsys, out)
    _one_line_refusal(code, err, "photos/", outdir.MARKER, "--force")
    assert _snapshot(out) == before


def test_a_report_file_the_user_edited_is_refused(capsys: pytest.CaptureFixture[str], tmp_path: Path,
                                                  earlier_report: dict[str, bytes]) -> None:
    out = _copy_of(earlier_report, tmp_path / "rep1")
    with (out / "report.md").open("a") as notes:
        notes.write("\nMy conclusions: ...\n")
    before = _snapshot(out)
    code, err = _report(capsys, out)
    _one_line_refusal(code, err, "report.md changed since roofline wrote it")
    assert _snapshot(out) == before


def test_force_replaces_only_roofline_files_and_keeps_the_others(capsys: pytest.CaptureFixture[str],
                                                                 tmp_path: Path) -> None:
    out = tmp_path / "userdir2"
    (out / "photos").mkdir(parents=True)
    (out / "photos" / "a.jpg").write_bytes(b"\xff\xd8 a photo")
    (out / "report.json").write_text('{"format_version": 1, "mine": true}\n')
    (out / "MY_NOTES.txt").write_text("mine\n")
    code, err = _report(capsys, out, "--force")
    assert code == 0, err
    assert (out / "photos" / "a.jpg").read_bytes() == b"\xff\xd8 a photo"
    assert (out / "MY_NOTES.txt").read_text() == "mine\n"
    assert json.loads((out / "report.json").read_text())["model"] == "zoo:mlp"  # the foreign one, replaced as asked
    written = json.loads((out / outdir.MARKER).read_text())["files"]
    assert set(written) == REPORT_FILES  # the user's files are not claimed as roofline's
    assert not [p for p in out.iterdir() if ".writing-" in p.name]
    code, err = _report(capsys, out)  # still the user's directory: refused again without --force
    _one_line_refusal(code, err, "MY_NOTES.txt")


# ---- checked before any work ---------------------------------------------------------------------------

def _no_work(monkeypatch: pytest.MonkeyPatch) -> None:
    def work(*args: object, **kwargs: object) -> None:
        raise AssertionError("the work started before --out was checked")

    monkeypatch.setattr(models, "load", work)
    monkeypatch.setattr(hardware, "load_profile", work)
    monkeypatch.setattr(explain, "sweep_conv", work)


@pytest.mark.parametrize("case", ["user file", "existing file", "below a file"])
def test_refusal_comes_before_any_work(capsys: pytest.CaptureFixture[str], tmp_path: Path,
                                       monkeypatch: pytest.MonkeyPatch, case: str) -> None:
    _no_work(monkeypatch)
    if case == "user file":
        out = tmp_path / "rep1"
        out.mkdir()
        (out / "MY_NOTES.txt").write_text("mine\n")
        words = ["MY_NOTES.txt"]
    elif case == "existing file":
        out = tmp_path / "rep1"
        out.write_text("mine\n")
        words = ["exists and is not a directory"]
    else:
        (tmp_path / "notes").write_text("mine\n")
        out = tmp_path / "notes" / "rep1"
        words = ["is a file, not a directory"]
    before = _snapshot(tmp_path)
    _one_line_refusal(*_report(capsys, out), *words)
    code = main(["sweep", "conv", "--hw", "t4", "--out", str(out)])
    _one_line_refusal(code, capsys.readouterr().err, *words)
    with pytest.raises(RooflineError, match="--out"):
        roofline.report("zoo:mlp", "t4", out=out, measure=False, progress=False)
    assert _snapshot(tmp_path) == before


def _read_only(directory: Path) -> list[str]:
    """A command prefix under which `directory` cannot be written, even by root; [] when chmod does it."""
    directory.mkdir()
    directory.chmod(0o555)
    probe = directory / "probe"
    try:
        probe.mkdir()
    except PermissionError:
        return []
    probe.rmdir()  # root ignores the mode: mount a read-only file system there instead, in a namespace of its own
    if shutil.which("unshare") is None:
        pytest.skip("running as root without unshare: no way to make a directory read-only")
    mount = f"mount -t tmpfs -o ro,size=64k tmpfs {directory} && exec \"$0\" \"$@\""
    check = subprocess.run(["unshare", "-m", "sh", "-c", mount, "true"], capture_output=True, text=True, check=False)
    if check.returncode:
        pytest.skip(f"running as root and cannot mount read-only: {check.stderr.strip()}")
    return ["unshare", "-m", "sh", "-c", mount]


def test_out_under_a_read_only_directory_is_one_line(tmp_path: Path) -> None:
    locked = tmp_path / "locked"
    prefix = _read_only(locked)
    try:
        for command in (REPORT, ["sweep", "conv", "--hw", "t4"]):
            done = subprocess.run([*prefix, sys.executable, "-m", "roofline", *command, "--out", str(locked / "rep1")],
                                  capture_output=True, text=True, check=False, cwd=tmp_path,
                                  env={**os.environ, "PYTHONPATH": str(REPO)})
            _one_line_refusal(done.returncode, done.stderr, f"cannot write in {locked}")
            assert done.stdout == ""
    finally:
        locked.chmod(0o755)
    assert list(locked.iterdir()) == []


# ---- sweep --out ---------------------------------------------------------------------------------------------

def test_sweep_out_follows_the_same_rule(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    out = tmp_path / "new" / "sweep"  # parents made as needed
    sweep = ["sweep", "conv", "--channels", "8", "--size", "8x8", "--hw", "t4", "--format", "csv", "--out", str(out)]
    assert main(sweep) == 0
    printed = capsys.readouterr().out
    assert f"wrote {out / 'sweep.csv'}" in printed
    assert (out / "sweep.csv").read_text() == printed.split("\n", 1)[1]  # the table it printed, as written
    assert set(json.loads((out / outdir.MARKER).read_text())["files"]) == {"sweep.csv", "sweep.png", "sweep.svg"}
    assert main(sweep) == 0  # its own directory: replaced
    capsys.readouterr()
    (out / "MY_NOTES.txt").write_text("mine\n")
    _one_line_refusal(main(sweep), capsys.readouterr().err, "MY_NOTES.txt", "--force")
    assert main([*sweep, "--force"]) == 0
    assert (out / "MY_NOTES.txt").read_text() == "mine\n"


# ---- the writer's own rules ---------------------------------------------------------------------------------

def _writer(files: dict[str, str]) -> Callable[[Path], None]:
    def write(directory: Path) -> None:
        for name, text in files.items():
            (directory / name).write_text(text)

    return write


def test_files_of_the_earlier_run_that_this_one_does_not_make_go(tmp_path: Path) -> None:
    out = tmp_path / "out"
    outdir.write_atomically(out, _writer({"a.txt": "1", "measured.png": "old"}))
    outdir.write_atomically(out, _writer({"a.txt": "2"}))
    assert _snapshot(out).keys() == {"a.txt", outdir.MARKER} and (out / "a.txt").read_text() == "2"
    # the same with --force, where the directory also holds a user's file
    outdir.write_atomically(out, _writer({"a.txt": "3", "measured.png": "old"}))
    (out / "mine.txt").write_text("mine")
    outdir.write_atomically(out, _writer({"a.txt": "4"}), force=True)
    assert _snapshot(out).keys() == {"a.txt", "mine.txt", outdir.MARKER} and (out / "mine.txt").read_text() == "mine"


def test_a_failed_write_leaves_not_even_the_parents_it_made(tmp_path: Path) -> None:
    def fail(directory: Path) -> None:
        (directory / "a.txt").write_text("half")
        raise OSError("disk full (simulated)")

    with pytest.raises(OSError, match="simulated"):
        outdir.write_atomically(tmp_path / "new" / "deeper" / "out", fail)
    assert list(tmp_path.iterdir()) == []


def test_a_file_added_while_working_is_kept(tmp_path: Path) -> None:
    out = tmp_path / "out"
    outdir.write_atomically(out, _writer({"a.txt": "1"}))

    def meanwhile(directory: Path) -> None:
        (out / "mine.txt").write_text("mine")  # the user saves into it during a long measurement
        (directory / "a.txt").write_text("2")

    with pytest.raises(RooflineError, match="mine.txt"):
        outdir.write_atomically(out, meanwhile)
    assert _snapshot(out).keys() == {"a.txt", "mine.txt", outdir.MARKER} and (out / "a.txt").read_text() == "1"
    assert [p.name for p in tmp_path.iterdir()] == ["out"]


def test_the_working_directory_is_written_in_place(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    out = tmp_path / "out"
    outdir.write_atomically(out, _writer({"a.txt": "1"}))
    inode = out.stat().st_ino
    monkeypatch.chdir(out)
    assert outdir.write_atomically(".", _writer({"a.txt": "2"})) == out
    assert out.stat().st_ino == inode and Path.cwd() == out and Path("a.txt").read_text() == "2"


def test_a_link_to_a_report_keeps_pointing_at_it(tmp_path: Path) -> None:
    real = tmp_path / "real"
    outdir.write_atomically(real, _writer({"a.txt": "1"}))
    (tmp_path / "link").symlink_to(real)
    outdir.write_atomically(tmp_path / "link", _writer({"a.txt": "2"}))
    assert (tmp_path / "link").is_symlink() and (tmp_path / "link" / "a.txt").read_text() == "2"


def test_sigterm_default_is_restored_after_writing(tmp_path: Path) -> None:
    assert signal.getsignal(signal.SIGTERM) == signal.SIG_DFL
    outdir.write_atomically(tmp_path / "out", _writer({"a.txt": "1"}))
    assert signal.getsignal(signal.SIGTERM) == signal.SIG_DFL


# ---- SIGTERM while writing --------------------------------------------------------------------------------

# The child writes the CSV, says so, and waits: the signal lands deterministically mid-write.
CHILD = textwrap.dedent("""
    import importlib, sys, time
    report_module = importlib.import_module("roofline.report")
    write_csv = report_module._write_csv
    def slow_csv(data, directory):
        write_csv(data, directory)
        print("writing", flush=True)
        time.sleep(120)
    report_module._write_csv = slow_csv
    if sys.argv[1] == "cli":
        from roofline.cli import main
        sys.exit(main(sys.argv[2:]))
    import roofline
    roofline.report("zoo:mlp", "t4", out=sys.argv[2], measure=False, progress=False, force="--force" in sys.argv)
""")


@pytest.mark.parametrize(("entry", "force"), [("cli", False), ("cli", True), ("library", False)])
def test_sigterm_while_writing_leaves_the_earlier_report_and_nothing_else(
        tmp_path: Path, earlier_report: dict[str, bytes], entry: str, force: bool) -> None:
    out = _copy_of(earlier_report, tmp_path / "rep1")
    if force:
        (out / "MY_NOTES.txt").write_text("mine\n")
    before = _snapshot(tmp_path)
    args = [*REPORT, "--out", str(out)] if entry == "cli" else [str(out)]
    child = subprocess.Popen([sys.executable, "-c", CHILD, entry, *args, *(["--force"] if force else [])],
                             stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd=tmp_path,
                             env={**os.environ, "PYTHONPATH": str(REPO)})
    try:
        assert child.stdout is not None and child.stdout.readline() == "writing\n"
        staged = [p for p in [*tmp_path.iterdir(), *out.iterdir()] if p.name.startswith(".rep1.writing-")]
        assert len(staged) == 1 and (staged[0] / "layers.csv").is_file()  # caught in the middle of writing
        child.send_signal(signal.SIGTERM)
        _, err = child.communicate(timeout=60)
    finally:
        child.kill()
    if entry == "cli":
        assert child.returncode == 143 and err == "roofline: terminated\n", err
    else:
        assert child.returncode != 0 and "Terminated" in err
    assert _snapshot(tmp_path) == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["rep1"]


def test_compare_tp_out_follows_the_same_rule_before_tracing(capsys: pytest.CaptureFixture[str], tmp_path: Path,
                                                             monkeypatch: pytest.MonkeyPatch) -> None:
    from roofline import llm

    def no_trace(*args: object, **kwargs: object) -> None:
        raise AssertionError("traced before --out was checked")

    monkeypatch.setattr(llm, "trace_llm", no_trace)
    out = tmp_path / "study"
    out.mkdir()
    (out / "MY_NOTES.txt").write_text("mine\n")
    code = main(["compare", "hf:llama?num_hidden_layers=1", "--hw", "h100-sxm", "--tp", "auto", "--out", str(out)])
    _one_line_refusal(code, capsys.readouterr().err, "MY_NOTES.txt", "--force")
    assert (out / "MY_NOTES.txt").read_text() == "mine\n"

import warnings

import pytest


@pytest.fixture(autouse=True)
def _quiet_library_warnings():
    """Third-party FutureWarnings (torchvision init notes) are noise here; roofline's own stay visible."""
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", category=FutureWarning)
        warnings.filterwarnings("ignore", category=UserWarning, module="torchvision")
        yield


@pytest.fixture(autouse=True, scope="session")
def _isolated_user_dirs_for_wide_fixtures(tmp_path_factory):
    """Module- and session-scoped fixtures are set up before the function-scoped isolation below: they get
    directories of their own too, never the user's saved profiles or trace cache."""
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("ROOFLINE_PROFILE_DIR", str(tmp_path_factory.mktemp("session-profiles")))
        patch.setenv("ROOFLINE_TRACE_DIR", str(tmp_path_factory.mktemp("session-traces")))
        yield


@pytest.fixture(autouse=True)
def _isolated_profile_dir(tmp_path_factory, monkeypatch):
    """Measured profiles saved in the user's cache must not change what the tests see."""
    monkeypatch.setenv("ROOFLINE_PROFILE_DIR", str(tmp_path_factory.mktemp("profiles")))


@pytest.fixture(autouse=True)
def _isolated_trace_cache(tmp_path_factory, monkeypatch):
    """Traces the CLI keeps must not leak between tests (a hit would hide what a test means to trace)."""
    monkeypatch.setenv("ROOFLINE_TRACE_DIR", str(tmp_path_factory.mktemp("traces")))


@pytest.fixture
def tiny_bench(monkeypatch):
    """Microbenchmark sizes small enough for a test, patched in as both FULL and QUICK: a measured
    profile's own mode decides the sizes when it is recalibrated, so those stay tiny too."""
    from roofline.hardware import microbench

    tiny = microbench.BenchConfig(min_bytes=16 * 1024, max_bytes=1024 * 1024, past_llc=False, size_step=4.0,
                                  min_run_time_s=0.002, matmul_sizes=(64, 128), efficiency_scale=0.1,
                                  pass_blocks=2, pass_block_s=0.005)
    monkeypatch.setattr(microbench, "FULL", tiny)
    monkeypatch.setattr(microbench, "QUICK", tiny)
    return tiny

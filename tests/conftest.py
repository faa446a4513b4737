import warnings

import pytest


@pytest.fixture(autouse=True)
def _quiet_library_warnings():
    """Third-party FutureWarnings (torchvision init notes) are noise here; roofline's own stay visible."""
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", category=FutureWarning)
        warnings.filterwarnings("ignore", category=UserWarning, module="torchvision")
        yield


@pytest.fixture(autouse=True)
def _isolated_profile_dir(tmp_path_factory, monkeypatch):
    """Measured profiles saved in the user's cache must not change what the tests see."""
    monkeypatch.setenv("ROOFLINE_PROFILE_DIR", str(tmp_path_factory.mktemp("profiles")))

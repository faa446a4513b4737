import warnings

import pytest


@pytest.fixture(autouse=True)
def _quiet_library_warnings():
    """Third-party FutureWarnings (torchvision init notes) are noise here; roofline's own stay visible."""
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", category=FutureWarning)
        warnings.filterwarnings("ignore", category=UserWarning, module="torchvision")
        yield

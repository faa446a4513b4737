"""Totals against torchvision's published operation counts (meta["_ops"] in GMACs, meta["num_params"])."""
import pytest

torchvision = pytest.importorskip("torchvision")

import roofline


def _published():
    cases = []
    for name in torchvision.models.list_models(module=torchvision.models):
        try:
            meta = torchvision.models.get_model_weights(name).DEFAULT.meta
        except (ValueError, KeyError):
            continue
        if "_ops" in meta:
            cases.append(pytest.param(name, meta["_ops"], meta["num_params"], id=name))
    return cases


PUBLISHED = _published()


def test_enough_models_published():
    assert len(PUBLISHED) > 60


@pytest.mark.parametrize("name, gmacs, num_params", PUBLISHED)
def test_macs_and_params_match_torchvision(name, gmacs, num_params):
    result = roofline.analyze(f"torchvision:{name}", warn_unsupported=False)
    totals = result.totals
    # Published figures are rounded to 3 decimals of GMACs (mobilenet_v3_small: 56.5 M -> "0.057"),
    # so the tolerance is 0.5% or half a unit of that last digit, whichever is larger.
    tolerance = max(0.005 * gmacs * 1e9, 0.0005e9)
    assert abs(totals["macs"] - gmacs * 1e9) <= tolerance
    assert totals["params"] == num_params
    assert result.layers["params"].sum() == num_params  # every parameter sits in exactly one row
    assert result.unsupported_ops == []

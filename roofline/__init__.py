"""roofline: how fast a PyTorch model should run on a chip, how fast it does, and why they differ.

The API names load on first use (module `__getattr__`, PEP 562), so `import roofline` and the commands
that need no model (`roofline --help`, `hw list`) do not pay for importing torch or pandas (issue 19).
"""
from __future__ import annotations

import importlib
import sys
import types
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from roofline.analysis import Analysis, analyze
    from roofline.errors import RooflineError
    from roofline.measure import ModelMeasurement, NotMeasurable, measure
    from roofline.models import LoadedModel, load
    from roofline.outdir import check_out
    from roofline.precision import PRECISIONS, Precision, get_precision
    from roofline.report import report

__all__ = ["PRECISIONS", "Analysis", "LoadedModel", "ModelMeasurement", "NotMeasurable", "Precision", "RooflineError",
           "analyze", "check_out", "get_precision", "load", "measure", "report"]
__version__ = "0.1.0"

# Each public name and the module that defines it.
_HOMES = {
    "Analysis": "analysis", "analyze": "analysis", "RooflineError": "errors", "ModelMeasurement": "measure",
    "NotMeasurable": "measure", "measure": "measure", "LoadedModel": "models", "load": "models",
    "check_out": "outdir", "PRECISIONS": "precision", "Precision": "precision", "get_precision": "precision",
    "report": "report",
}


def __getattr__(name: str) -> Any:
    home = _HOMES.get(name)
    if home is None:
        raise AttributeError(f"module 'roofline' has no attribute {name!r}")
    value = getattr(importlib.import_module(f"roofline.{home}"), name)
    globals()[name] = value  # the next lookup is a plain attribute read
    return value


def __dir__() -> list[str]:
    return sorted([*globals(), *_HOMES])


# API functions named like the module that defines them: `roofline.measure`, `roofline.report`.
_SHADOWED = frozenset(name for name, home in _HOMES.items() if name == home)


class _Package(types.ModuleType):
    """`roofline.measure` and `roofline.report` stay the API functions, as the eager `from roofline.report import
    report` made them: importing the submodule would otherwise rebind the name to the module (which stays
    reachable through import statements and sys.modules)."""

    def __setattr__(self, name: str, value: Any) -> None:
        if name in _SHADOWED and isinstance(value, types.ModuleType):
            return
        super().__setattr__(name, value)


sys.modules[__name__].__class__ = _Package

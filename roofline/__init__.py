"""roofline: how fast a PyTorch model should run on a chip, how fast it does, and why they differ."""
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

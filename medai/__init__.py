"""medai: chest-CT COVID-19 triage pipeline.

Research and triage support only; not a medical device and not for diagnosis.
"""

from medai.errors import InvalidSeriesError, ManifestError, MedaiError, ModelError, NoSeriesError, QCReason
from medai.ingest.discovery import find_series
from medai.ingest.load import load_series
from medai.ingest.qc import SelectionReport, SelectionRules, select_series
from medai.ingest.sources import SeriesInfo
from medai.labels import INTENDED_USE
from medai.volume import Volume

__version__ = "0.1.0"


__all__ = [
    "INTENDED_USE",
    "Classifier",
    "InvalidSeriesError",
    "ManifestError",
    "MedaiError",
    "ModelError",
    "NoSeriesError",
    "Prediction",
    "QCReason",
    "SelectionReport",
    "SelectionRules",
    "SeriesInfo",
    "Volume",
    "__version__",
    "find_series",
    "load_series",
    "select_series",
]


def __getattr__(name: str) -> object:
    """``medai.Classifier`` and ``medai.Prediction``, imported on first use (``import medai`` stays light)."""
    if name in ("Classifier", "Prediction"):
        from medai.inference import classifier as inference

        return getattr(inference, name)
    raise AttributeError(f"module 'medai' has no attribute {name!r}")
